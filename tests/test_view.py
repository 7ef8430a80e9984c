"""The live view and control interface against a real server on loopback: a real line
(real bundles, a real video replayed at a camera's rate, real ONNX Runtime), real HTTP and
WebSocket clients (aiohttp's, and a raw socket that stops reading), the CLI in a subprocess,
and the page in a real headless Chromium (tests/browser.py)."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from test_line import TORCHLESS, _bundle_copy, _frames, _toml, _until, cli
from test_runtime import write_video

from dmgrd_edge.errors import ConfigError
from dmgrd_edge.runtime.line_config import load_line_config

pytest.importorskip("aiohttp", reason="the live view needs aiohttp (the line and dev extras)")

TOKEN = "line-7-secret"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("view_video") / "line.avi"
    write_video(path, 24)
    return path


def _config(tmp_path: Path, video: Path, bundle: Path, view: str, extra_camera: str = "") -> Path:
    text = (
        f'[line]\nworkers = "1"\nstatus_every_s = 1000\n{view}\n'
        f'[[camera]]\nname = "cam"\nsource = "{video}"\nbundle = "{bundle}"\ninput_fps = 25\n'
        f'loop = true\nsinks = ["{tmp_path / "cam.jsonl"}"]\n{extra_camera}'
    )
    return _toml(tmp_path / "line.toml", text)


class Running:
    """A line started in a thread, stopped (and its thread joined) at exit."""

    def __init__(self, config: Path):
        from dmgrd_edge.runtime.multicam import Line

        self.logs: list[str] = []
        self.line = Line(load_line_config(config), log=self.logs.append).open()
        self.port = self.line.view.port
        self.thread = threading.Thread(target=self.line.run, daemon=True)

    def __enter__(self) -> "Running":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.line.stop_event.set()
        self.thread.join(60)
        assert not self.thread.is_alive()

    def camera(self, name: str = "cam"):
        return next(c for c in self.line.cameras if c.config.name == name)


def _http(port: int, path: str, body=None, token: str | None = TOKEN, content_type=None):
    """(status, JSON reply) of a real request to the view."""
    data = (
        None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    )
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", content_type or "application/json")
    try:
        with urllib.request.urlopen(request, timeout=120) as reply:
            raw, status, kind = reply.read(), reply.status, reply.headers.get_content_type()
    except urllib.error.HTTPError as exc:
        raw, status, kind = exc.read(), exc.code, exc.headers.get_content_type()
    return status, (json.loads(raw) if kind == "application/json" else raw)


# -- configuration -----------------------------------------------------------------------------

CAM = '[[camera]]\nname = "a"\nsource = "x.mp4"\nbundle = "b"\n'


@pytest.mark.parametrize(
    "view, needle",
    [
        ("[view]\ntoken = 'abcdefghij'\n", "view.listen: missing"),
        ("[view]\nlisten = '127.0.0.1:8090'\nlisen = 1\n", "view.lisen: unknown key"),
        ("[view]\nlisten = 'localhost:http'\n", "view.listen: bad view address"),
        ("[view]\nlisten = '8090'\ntoken = 'short'\n", "view.token: the view's token is too short"),
        ("[view]\nlisten = '8090'\nmax_fps = 0\n", "view.max_fps"),
        ("[view]\nlisten = '8090'\nwindow = 'many'\n", "view.window: 'many' is not a whole"),
        ("[view]\nlisten = '8090'\nng_frames = 1000\n", "view.ng_frames"),
        ("[vue]\nlisten = '8090'\n", "vue: unknown table"),
    ],
)
def test_view_config_errors_name_the_key(tmp_path, view, needle):
    with pytest.raises(ConfigError, match=needle):
        load_line_config(_toml(tmp_path / "line.toml", view + CAM))


def test_view_config_defaults(tmp_path):
    cfg = load_line_config(_toml(tmp_path / "line.toml", "[view]\nlisten = '9000'\n" + CAM))
    assert (cfg.view.listen, cfg.view.token, cfg.view.max_fps) == ("9000", None, 5.0)
    assert (cfg.view.window, cfg.view.ng_frames) == (500, 8)
    assert load_line_config(_toml(tmp_path / "line.toml", CAM)).view is None


def test_a_configured_view_without_aiohttp_says_which_extra(tmp_path, video, fp32_bundle):
    code = TORCHLESS.replace("sys.modules['torch'] = None", "sys.modules['torch'] = None; "
                             "sys.modules['aiohttp'] = None")  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", str(fp32_bundle), "--source", str(video),
         "--headless", "--view", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    err = " ".join(proc.stderr.split())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "the live view needs the aiohttp package" in err
    assert 'pip install "dmgrd-edge[line]"' in err


def test_a_bare_run_imports_no_web_server(tmp_path, video, fp32_bundle):
    """Off unless configured: a run without a view never imports aiohttp or the routes."""
    code = TORCHLESS.replace(
        "main()",
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('IMPORTED', [m for m in ('aiohttp', 'dmgrd_edge.runtime.view_routes') "
        "if m in sys.modules])",
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "run", str(fp32_bundle), "--source", str(video),
         "--headless", "--max-frames", "4"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "IMPORTED []" in proc.stdout


def test_a_token_from_the_environment_needs_a_view_table(tmp_path):
    path = _toml(tmp_path / "line.toml", CAM)
    proc = cli("run", "--config", path, "--view-token", "abcdefghij")
    assert proc.returncode == 2 and "has no [view] table" in proc.stderr


# -- the control interface over HTTP -------------------------------------------------------------


def test_control_interface_tokens_thresholds_and_changeovers(tmp_path, video, fp32_bundle):
    first = _bundle_copy(fp32_bundle, tmp_path / "product_a")
    second = _bundle_copy(fp32_bundle, tmp_path / "product_b", threshold=0.0)  # all NG
    broken = _bundle_copy(fp32_bundle, tmp_path / "broken", corrupt=True)
    fixed = f'[[camera]]\nname = "fixed"\nsource = "{video}"\nbundle = "{first}"\nthreshold = 9.5\n'
    view = f'[view]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\nwindow = 50\n'
    with Running(_config(tmp_path, video, first, view, fixed)) as run:
        port, cam = run.port, run.camera()
        assert _until(lambda: cam.pipeline.stats.frames >= 12)
        assert _http(port, "/api/cameras", token=None)[0] == 401
        assert _http(port, "/api/cameras", token="wrong-token")[0] == 401
        status, reply = _http(port, "/api/cameras")
        assert status == 200 and [c["camera"] for c in reply["cameras"]] == ["cam", "fixed"]
        assert reply["cameras"][0]["frames"] >= 12 and reply["cameras"][0]["file"] == "model.onnx"
        assert _http(port, "/api/cameras/nope")[0] == 404
        status, one = _http(port, "/api/cameras/cam")
        assert status == 200 and 12 <= len(one["scores"]) <= 50  # the bounded window
        assert _http(port, "/api/cameras/cam/threshold", {"threshold": 1}, token=None)[0] == 401
        assert (
            _http(port, "/api/cameras/cam/threshold", b"0.5", content_type="text/plain")[0] == 415
        )
        assert _http(port, "/api/cameras/cam/threshold", {"threshold": "high"})[0] == 400

        scores = [s for _, s in one["scores"]]
        chosen = float(np.median(scores))
        status, reply = _http(port, "/api/cameras/cam/threshold", {"threshold": chosen})
        assert status == 200, reply
        assert reply["threshold"] == chosen and reply["file"] == "model.onnx"
        assert [r["camera"] for r in reply["changeovers"]] == ["cam"]  # not "fixed"
        record = reply["changeovers"][0]
        assert (record["what"], record["via"], record["threshold"]) == ("threshold", "view", chosen)
        entry = json.loads((first / "manifest.json").read_text())["files"]["model.onnx"]
        assert entry["threshold"] == chosen
        assert entry["threshold_calibration"]["method"] == "view"
        assert entry["threshold_calibration"]["camera"] == "cam"
        assert cam.pipeline.config.threshold == chosen
        assert run.camera("fixed").pipeline.config.threshold == 9.5
        assert _http(port, "/api/cameras/cam")[1]["threshold"] == chosen
        decided = cam.pipeline.stats.frames
        assert _until(lambda: cam.pipeline.stats.frames >= decided + 5)

        status, reply = _http(port, "/api/cameras/fixed/threshold", {"threshold": 1.0})
        assert status == 409 and "has its own threshold" in reply["error"] and reply["fix"]

        status, reply = _http(port, "/api/cameras/cam/changeover", {"bundle": str(broken)})
        assert status == 409 and "sha256" in reply["error"] and "keeps running" in reply["fix"]
        assert cam.group.root == first.resolve()
        decided = cam.pipeline.stats.frames
        assert _until(lambda: cam.pipeline.stats.frames >= decided + 5)  # the old one runs on

        status, reply = _http(port, "/api/cameras/cam/changeover", {"bundle": "product_b"})
        assert status == 200, reply  # relative: to the line configuration's folder
        assert (reply["what"], reply["via"]) == ("bundle", "request")
        assert reply["bundle"] == str(second.resolve()) and reply["in_flight"] >= 0
        assert cam.group.root == second.resolve()
        decided = cam.pipeline.stats.frames
        assert _until(lambda: cam.pipeline.stats.frames >= decided + 8)
        log = _http(port, "/api/changeovers")[1]["changeovers"]
    assert [(r["what"], r["via"]) for r in log] == [
        ("threshold", "view"),
        ("refused", "request"),
        ("bundle", "request"),
    ]
    assert any("changeover: threshold" in m for m in run.logs)
    history = run.line.summary["cameras"]["cam"]["bundles_used"]
    switched_at = history[1][0]
    # frames decided from 50 ms after the threshold's record on (a frame decided as it was
    # made may carry a time just after it) until the bundle changeover
    threshold_time = _when(log[0]["time"]) + dt.timedelta(milliseconds=50)
    frames = _frames(tmp_path / "cam.jsonl")
    with_chosen = [
        e for e in frames if _when(e["time"]) > threshold_time and e["frame"] < switched_at
    ]
    assert len(with_chosen) >= 5
    assert all((e["decision"] == "NG") == (e["score"] > chosen) for e in with_chosen)
    assert all(e["decision"] == "NG" for e in frames if e["frame"] >= switched_at)


def _when(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


# -- the stream --------------------------------------------------------------------------------


async def _read_frames(port: int, count: int, timeout: float = 120) -> list[dict]:
    import aiohttp

    got: list[dict] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.ws_connect(f"http://127.0.0.1:{port}/ws?camera=cam") as ws:
            deadline = time.monotonic() + timeout
            while len(got) < count and time.monotonic() < deadline:
                message = await ws.receive_json(timeout=timeout)
                if message["type"] == "frame":
                    got.append(message)
    return got


def _stalled_client(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: the window
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(b"0123456789abcdef").decode()
    sock.sendall(
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    return sock


def test_stream_encodes_only_while_watched_and_a_stalled_client_blocks_nothing(
    tmp_path, video, fp32_bundle
):
    view = f'[view]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\nmax_fps = 30\n'
    with Running(_config(tmp_path, video, fp32_bundle, view)) as run:
        cam = run.camera()
        live = run.line.view.cameras["cam"]
        assert _until(lambda: cam.pipeline.stats.frames >= 10)
        assert live.latest is None and live.version == 0  # nobody watched: nothing kept
        stalled = _stalled_client(run.port)
        try:
            assert _until(lambda: live.watchers == 1)

            def stalled_behind() -> int:
                clients = _http(run.port, "/api/cameras")[1]["clients"]
                return max(c["behind"]["cam"] for c in clients)

            # its sends wait once the buffers are full; frames are still decided and kept
            assert _until(lambda: stalled_behind() >= 30, timeout=180)
            decided = cam.pipeline.stats.frames
            frames = asyncio.run(_read_frames(run.port, 4))  # another client is served
            assert _until(lambda: cam.pipeline.stats.frames >= decided + 20)
        finally:
            stalled.close()
        assert _until(lambda: live.watchers == 0)
        numbers = [m["frame"] for m in frames]
        assert numbers == sorted(set(numbers)) and len(numbers) == 4
        for m in frames:
            for key in ("image", "heat"):
                assert m[key].startswith("data:image/jpeg;base64,")
                jpeg = base64.b64decode(m[key].split(",", 1)[1])
                assert jpeg[:2] == b"\xff\xd8"  # a JPEG
            assert m["decision"] in ("OK", "NG") and m["camera"] == "cam"
        version = live.version
        decided = cam.pipeline.stats.frames
        assert _until(lambda: cam.pipeline.stats.frames >= decided + 10)
        assert live.version == version  # no client: no frame kept for the stream any more


# -- the single-source run ------------------------------------------------------------------------


def test_single_source_run_with_view_sets_the_threshold_and_refuses_a_bundle(
    tmp_path, video, fp32_bundle
):
    bundle = _bundle_copy(fp32_bundle, tmp_path / "bundle")
    stats = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [sys.executable, "-c", TORCHLESS, "run", str(bundle), "--source", str(video),
         "--input-fps", "25", "--loop", "--headless", "--workers", "1", "--view", "127.0.0.1:0",
         "--stats-json", str(stats)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        port = None
        for line in proc.stdout:
            if "live view: http://127.0.0.1:" in line:
                port = int(line.rsplit(":", 1)[1].strip(" /\n"))
                break
        assert port is not None, "the view's address was not printed"

        def decided() -> int:  # the camera is shown once its pipeline is made (404 before)
            status, reply = _http(port, "/api/cameras/camera0", token=None)
            return reply["frames"] if status == 200 else 0

        assert _until(lambda: decided() >= 10)
        status, reply = _http(port, "/api/cameras/camera0/threshold", {"threshold": 0.0}, None)
        assert status == 200 and reply["changeovers"][0]["via"] == "view"
        status, reply = _http(port, "/api/cameras/camera0/changeover", {"bundle": "x"}, None)
        assert status == 409 and "run --config" in reply["error"]
        page = _http(port, "/", token=None)[1]
        assert b"dmgrd-edge live view" in page
    finally:
        proc.send_signal(2)
        out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    entry = json.loads((bundle / "manifest.json").read_text())["files"]["model.onnx"]
    assert entry["threshold"] == 0.0 and entry["threshold_calibration"]["method"] == "view"
    summary = json.loads(stats.read_text())
    assert summary["changeovers"][0]["threshold"] == 0.0
    assert summary["threshold"] == 0.0


# -- the page in a real browser ----------------------------------------------------------------


def test_the_page_streams_and_its_slider_sets_the_threshold(tmp_path, video, fp32_bundle):
    from browser import Chromium, chromium_binary

    binary = chromium_binary()
    if binary is None:
        pytest.skip("Chromium is not installed (apt-get install chromium): the page was not "
                    "checked in a browser")  # fmt: skip
    bundle = _bundle_copy(fp32_bundle, tmp_path / "bundle")
    view = f'[view]\nlisten = "127.0.0.1:0"\ntoken = "{TOKEN}"\nwindow = 40\n'
    with Running(_config(tmp_path, video, bundle, view)) as run, Chromium(binary) as browser:
        cam = run.camera()
        assert _until(lambda: cam.pipeline.stats.frames >= 20)
        session, report = browser.load(f"http://127.0.0.1:{run.port}/?token={TOKEN}")
        assert report.title == "dmgrd-edge live view"
        ev = lambda js: browser.evaluate(session, js)  # noqa: E731
        _wait_js(ev, "document.body.dataset.ready === '1'")
        _wait_js(ev, "document.querySelector('.frame-no').textContent !== '-'")
        first = ev("document.querySelector('.frame-no').textContent")
        _wait_js(ev, f"document.querySelector('.frame-no').textContent !== '{first}'")
        assert ev("document.querySelector('img.frame').src.startsWith('data:image/jpeg')")
        assert ev("document.querySelector('img.heat').naturalWidth") > 0
        before = float(ev("document.querySelector('.slider').value"))
        step = float(ev("document.querySelector('.slider').step"))
        # the slider starts at the threshold in use (on its grid of 200 steps)
        assert abs(before - cam.pipeline.config.threshold) <= step
        preview = ev("document.querySelector('.preview').textContent")
        ev("document.querySelector('.slider').focus()")
        for _ in range(40):  # the keyboard moves the slider as a person would
            _key(browser, session, "ArrowLeft")
        chosen = float(ev("document.querySelector('.slider').value"))
        assert chosen < before
        assert ev("document.querySelector('.preview').textContent") != preview
        ev("document.querySelector('.apply').click()")
        _wait_js(ev, "document.querySelector('.message').textContent.includes('in use')")
        assert cam.pipeline.config.threshold == pytest.approx(chosen, rel=1e-9)
        assert _http(run.port, "/api/cameras/cam")[1]["threshold"] == pytest.approx(chosen)
        log = _http(run.port, "/api/changeovers")[1]["changeovers"]
        assert [(r["what"], r["via"]) for r in log] == [("threshold", "view")]
        _wait_js(ev, "document.querySelector('#changeovers tbody').textContent.includes('view')")
        browser.collect(session, report)
        assert report.exceptions == [] and report.errors == []


def _wait_js(ev, condition: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ev(condition):
        assert time.monotonic() < deadline, f"not in time: {condition}"
        time.sleep(0.1)


def _key(browser, session, key: str) -> None:
    codes = {"ArrowLeft": 37, "ArrowRight": 39}
    for kind in ("keyDown", "keyUp"):
        browser.send(
            "Input.dispatchKeyEvent",
            {"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": codes[key]},
            session=session,
        )
