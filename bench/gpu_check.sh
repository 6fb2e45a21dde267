#!/usr/bin/env bash
# One-shot GPU check: bf16/fp16 throughput and peak memory of the paper's recurrent models, FLOP
# utilisation against the measured bf16 matmul rate, 200-step fp16 (dynamic loss scale) and bf16
# stability, and the effect of torch.compile on the recurrent layers. See bench/gpu_check.py.
#
#   bash bench/gpu_check.sh [--quick] [--budget-s 270]
#
# Needs one NVIDIA GPU and a CUDA build of torch; installs nothing (set GPU_CHECK_INSTALL=1 to pip-install
# the project's other Python dependencies first, without touching torch). Exit status: 0 all measured,
# 1 some sections recorded errors (see the JSON), 2 no GPU. Writes $OUT/gpu_check.json when OUT is set,
# else bench/gpu_check.json. The whole run stops after 290 s whatever happens (the JSON is rewritten
# after every section, so it keeps what was measured).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python

if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)' 2>/dev/null; then
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

if [ "${GPU_CHECK_INSTALL:-0}" = 1 ]; then
  # torch stays as it is: deepspeed only requires torch>=2.0, which the installed CUDA build satisfies.
  "$PY" -m pip install -q deepspeed omegaconf pyyaml hjson psutil || echo "gpu_check: pip install failed; continuing" >&2
fi

export PYTHONUNBUFFERED=1
exec timeout --signal=TERM --kill-after=10 290 "$PY" bench/gpu_check.py "$@"
