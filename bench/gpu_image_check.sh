#!/usr/bin/env bash
# Rehearse bench/gpu_check.sh on the GPU machine's software, here, without a GPU (no device time spent).
#
#   bash bench/gpu_image_check.sh     # first run: ~5 GB from PyPI into $VENV (about a minute here)
#
# The GPU image runs Python 3.12 with torch 2.11.0+cu130 and none of this project's pins; it lacks
# DeepSpeed, webdataset, OmegaConf, imagecodecs, MLflow and submitit and reaches no registry. This builds
# a Python 3.12 venv with PyPI's torch 2.11.0 (the same CUDA 13 build; it runs on CPU) and only the
# packages that image has which the check's code needs, installs .whl/*.whl (bench/gpu_wheels.sh) the
# way gpu_check.sh does there, then checks (1) the no-GPU exit (status 2, one line saying why) and
# (2) every section of `--cpu-smoke` on that stack. A missing import or a version clash shows up here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/pixelrnn-gpu-image}
if [ -z "${PY312:-}" ]; then  # a python3.12 that runs (pyenv's shim exists even where it cannot)
  for c in python3.12 "$(pyenv root 2>/dev/null)"/versions/3.12*/bin/python3.12; do
    if "$c" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then PY312=$c; break; fi
  done
fi
[ -n "${PY312:-}" ] || { echo "gpu_image_check: needs Python 3.12 (python3.12 on PATH, or PY312=/path/to/it)" >&2; exit 2; }
[ -d .whl ] || bash bench/gpu_wheels.sh

if [ ! -f "$VENV/.complete" ]; then  # the marker is written last: an interrupted install starts over
  rm -rf "$VENV" && "$PY312" -m venv "$VENV"
  # The image's own packages that the check imports (its list: the device tool's KINDS.md), and no other.
  "$VENV/bin/python" -m pip install -q torch==2.11.0 numpy pillow tqdm psutil pyyaml einops msgpack \
    ninja py-cpuinfo packaging nvidia-ml-py typing-extensions
  touch "$VENV/.complete"
fi

site=$(mktemp -d) out=$(mktemp -d)
trap 'rm -rf "$site" "$out"' EXIT
# The same install line as bench/gpu_check.sh runs on the GPU machine.
"$VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl

set +e
PYTHONPATH="$site" PYTHON="$VENV/bin/python" bash bench/gpu_check.sh 2>"$out/nogpu.err"
rc=$?
set -e
if [ "$rc" != 2 ] || ! grep -q "no CUDA GPU visible" "$out/nogpu.err"; then
  echo "gpu_image_check: without a GPU gpu_check.sh should exit 2 saying so; got $rc:" >&2
  cat "$out/nogpu.err" >&2
  exit 1
fi
echo "gpu_image_check: no-GPU exit OK ($(head -c 160 "$out/nogpu.err"))"

# Exit 1 if any section recorded an error (gpu_check.py's own status); set -e passes it on.
OUT="$out" PYTHONPATH="$site" PYTHON="$VENV/bin/python" bash bench/gpu_check.sh --cpu-smoke
echo "gpu_image_check: OK on $("$VENV/bin/python" -c 'import sys, torch; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}")')"
