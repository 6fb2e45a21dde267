#!/usr/bin/env bash
# Wheels for what the GPU machine's image lacks, made HERE (it cannot reach a package registry).
#
#   bash bench/gpu_wheels.sh          # -> .whl/ (git-ignored, ~33 MB): then, through the device tool,
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=330)
#   (rehearse that first, here and at no device cost: bash bench/gpu_image_check.sh)
#
# Its image (Python 3.12, torch 2.11+cu130) has numpy, pillow, tqdm, psutil, pyyaml, einops, msgpack,
# ninja, py-cpuinfo, packaging, nvidia-ml-py; it lacks DeepSpeed (and its hjson, pydantic), webdataset
# (braceexpand), OmegaConf (antlr4) and imagecodecs. The versions are the ones installed here, which
# the tests pass with; DeepSpeed and antlr4 are source-only on PyPI, so they are built into pure-Python
# wheels. bench/gpu_check.sh installs .whl/*.whl into /tmp/site when the folder is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
v() { "$PY" -c "from importlib.metadata import version; print(version('$1'))"; }
rm -rf .whl && mkdir .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
binary=()
for name in webdataset braceexpand omegaconf hjson imagecodecs pydantic pydantic-core annotated-types typing-inspection; do
  binary+=("$name==$(v "$name")")
done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d .whl "${binary[@]}"
"$PY" -m pip wheel -q --no-deps -w .whl "deepspeed==$(v deepspeed)" "antlr4-python3-runtime==$(v antlr4-python3-runtime)"
ls .whl
du -sh .whl
