"""A small PNG of an HTML page as headless Chromium draws it (the README's picture of the demo
page): `chromium --headless --screenshot`, then scaled and reduced to a palette with Pillow
(a matplotlib dependency) so that it stays small in the repository.

    python benchmarks/screenshot.py DEMO_DIR/index.html docs/demo_index.png
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import chromium_binary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--scale", type=float, default=0.75)
    parser.add_argument("--colors", type=int, default=160)
    args = parser.parse_args()
    binary = chromium_binary()
    if binary is None:
        raise SystemExit("Chromium is not installed (Debian: apt-get install chromium)")
    from PIL import Image

    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        subprocess.run(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--window-size={args.width},{args.height}",
                f"--screenshot={shot}",
                args.page.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        image = Image.open(shot).convert("RGB")
    size = (round(image.width * args.scale), round(image.height * args.scale))
    small = image.resize(size, Image.LANCZOS).quantize(args.colors, Image.Quantize.MEDIANCUT)
    args.png.parent.mkdir(parents=True, exist_ok=True)
    small.save(args.png, optimize=True)
    print(f"wrote {args.png} ({args.png.stat().st_size // 1024} KiB, {size[0]}x{size[1]})")


if __name__ == "__main__":
    main()
