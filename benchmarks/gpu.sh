#!/usr/bin/env bash
# Paper-config stage-1 train step in bf16 on one NVIDIA GPU: the largest per-device batch that
# fits, then step time, examples/s and MFU (about 5-8 minutes: one compile per batch tried).
# Needs a CUDA build of jax in the environment (e.g. pip install -e . "jax[cuda12]").
#   bash benchmarks/gpu.sh [OUT_JSON]
set -euo pipefail
cd "$(dirname "$0")/.."
python -c "import jax; assert jax.devices()[0].platform == 'gpu', jax.devices()" \
  || { echo "no GPU visible to jax: install a CUDA build of jax" >&2; exit 1; }
export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
python -m benchmarks.gpu_fit --config=configs/stage1.py --config.model.dtype=bfloat16 \
  --config.model.remat=true --batches=24,16,12,8,4 --steps=10 ${1:+--json="$1"}
