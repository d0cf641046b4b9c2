#!/usr/bin/env bash
# The one device check for a session lent a GPU (see the device tool): the
# CUDA tests, then the engine benchmark on the GPU. It runs under the GPU
# image's own python3 and torch, with this checkout on PYTHONPATH instead of
# an install. Copy its output into benchmarks/RESULTS.md with the card's name.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
# Every test marked cuda (persistence, trajectory, transformers...), then the
# engine modules whole, on the GPU image's torch.
python3 -m pytest -q -p no:cacheprovider -m cuda tests
python3 -m pytest -q -p no:cacheprovider tests/test_engines.py tests/test_blocking.py tests/test_path.py \
    tests/test_decompose.py
python3 benchmarks/bench_kernel.py --device cuda
