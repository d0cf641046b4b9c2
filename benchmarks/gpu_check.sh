#!/usr/bin/env bash
# The one device check for a session lent a GPU (see the device tool): the
# CUDA tests, the whole suite with the GPU visible (estimators default to
# device="auto", so every fit in it then trains and computes kernels on the
# GPU), then the engine benchmarks on the GPU. It runs under the GPU image's
# own python3 and torch, with this checkout on PYTHONPATH instead of an
# install. Each step has its own time limit and the steps go on past a
# failure, so one run brings back everything it can; each step's output is
# also written to $LOGS (the device tool's $OUT when set). Copy the numbers
# into benchmarks/RESULTS.md with the card's name. GPU_CHECK_STEPS="a b"
# runs only the steps named (a rerun inside a lease, say). The whole run keeps
# within GPU_CHECK_SECONDS (570 by default: a 10-minute device call with room
# to start): a step gets at most what is left, and none starts with less than
# 10 s left.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOGS="${OUT:-${TMPDIR:-/tmp}/gpu_check}"
mkdir -p "$LOGS"
status=0

total=${GPU_CHECK_SECONDS:-570}

step() {  # step NAME SECONDS COMMAND...: run with a limit, log, keep going
    local name=$1 limit=$2
    shift 2
    [[ " ${GPU_CHECK_STEPS:-$name} " == *" $name "* ]] || return 0
    local left=$((total - SECONDS))
    if [ "$left" -lt 10 ]; then
        echo "=== $name: skipped, ${left}s left of ${total}s"
        status=1
        return 0
    fi
    [ "$limit" -le "$left" ] || limit=$left
    echo "=== $name (limit ${limit}s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    echo "=== $name: exit $rc after $((SECONDS - start))s"
    [ "$rc" -eq 0 ] || status=1
}

step machine 20 bash -c 'nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv;
    python3 -c "import sys, torch, sklearn, numpy; print(sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"sklearn\", sklearn.__version__, \"numpy\", numpy.__version__, \"gpu\", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"'
# The card's float32 matmul rate, TF32 off, in this run: the figure every
# fraction of a FLOP bound in RESULTS.md is taken against.
step matmul 30 python3 -c 'import time, torch
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
for n in (4096, 8192):
    A = torch.randn(n, n, device="cuda")
    for _ in range(3):
        A @ A
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            A @ A
        torch.cuda.synchronize()
        best = min(best, (time.perf_counter() - start) / 10)
    print(f"float32 matmul {n} x {n}, TF32 off: {2 * n**3 / best / 1e12:.1f} TFLOP/s")'
# pyproject.toml's addopts start pytest-xdist workers; an image without
# pytest-xdist gets the same options without them.
extra=()
if python3 -c "import xdist" 2>/dev/null; then
    extra+=(-n 14)
else
    extra+=(-o "addopts=$(python3 -c 'import tomllib
options = tomllib.load(open("pyproject.toml", "rb"))["tool"]["pytest"]["ini_options"]
print(options["addopts"].replace("-n auto --dist loadfile", ""))')")
fi
# The tests marked cuda: GPU against CPU for training, kernels, hooks, pickle.
step cuda_tests 80 python3 -m pytest -q -p no:cacheprovider -rfE --tb=short "${extra[@]}" -m cuda tests
# Everything else with the GPU visible, in parallel where pytest-xdist is
# there; -v names each failure as it happens, should the step run out of time.
python3 -c "import pytest_timeout" 2>/dev/null && extra+=(--timeout 120)
step suite_on_gpu 230 python3 -m pytest -v -p no:cacheprovider -rfE --tb=short \
    --durations 15 "${extra[@]}" tests
step bench_kernel 90 python3 benchmarks/bench_kernel.py --device cuda
step bench_hooks 80 python3 benchmarks/bench_hooks.py --device cuda
# Recording against plain training (issue 21 item 3: at most 1.15x).
step bench_recording 30 python3 benchmarks/bench_recording.py --device cuda --repeats 3
exit $status
