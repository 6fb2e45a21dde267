#!/usr/bin/env bash
# One-shot GPU check: bf16/fp16 throughput and peak memory of the paper's recurrent models, FLOP
# utilisation against the measured bf16 matmul rate, 200-step fp16 (dynamic loss scale) and bf16
# stability, and the effect of torch.compile on the recurrent layers. See bench/gpu_check.py.
#
#   bash bench/gpu_check.sh [--quick] [--budget-s 270]
#   bash bench/gpu_check.sh --cpu-smoke     # the same code on CPU at toy sizes (no GPU needed)
#
# Needs one NVIDIA GPU and a CUDA build of torch; installs only the wheels bench/gpu_wheels.sh put in .whl/
# (the GPU machine has no package registry; see that script). Exit status: 0 all measured,
# 1 some sections recorded errors (see the JSON), 2 no GPU. Writes $OUT/gpu_check.json when OUT is set,
# else bench/gpu_check.json. The whole run stops after 290 s whatever happens (the JSON is rewritten
# after every section, so it keeps what was measured).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python

case " $* " in *" --cpu-smoke "*) smoke=1 ;; *) smoke=0 ;; esac
if [ "$smoke" = 0 ] && ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)' 2>/dev/null; then
  "$PY" - <<'EOF' >&2
try:
    import torch
    print(f"gpu_check: no CUDA GPU visible (torch {torch.__version__}, CUDA build {torch.version.cuda}); "
          "run this on a machine with an NVIDIA GPU. Nothing was measured.")
except Exception as e:
    print(f"gpu_check: torch is not importable ({type(e).__name__}: {e}); nothing was measured.")
EOF
  command -v nvidia-smi >/dev/null && nvidia-smi -L >&2
  exit 2
fi

if [ "$smoke" = 0 ] && [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  # Wheels made by bench/gpu_wheels.sh for what the GPU machine lacks (it has no package registry);
  # torch stays as it is.
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl/*.whl failed" >&2; exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

export PYTHONUNBUFFERED=1
exec timeout --signal=TERM --kill-after=10 290 "$PY" bench/gpu_check.py "$@"
