#!/usr/bin/env bash
# The one device check for a session lent a GPU (see the device tool): the
# CUDA tests, the whole suite with the GPU visible (estimators default to
# device="auto", so every fit in it then trains and computes kernels on the
# GPU), then the engine benchmarks on the GPU. It runs under the GPU image's
# own python3 and torch, with this checkout on PYTHONPATH instead of an
# install (GPU_CHECK_PYTHON names another interpreter). Each step has its own
# time limit and the steps go on past a failure, so one run brings back
# everything it can; each step's output is also written to $LOGS (the device
# tool's $OUT when set), and a summary of every step ends the output. Copy
# the numbers into benchmarks/RESULTS.md with the card's name.
# GPU_CHECK_STEPS="a b" runs only the steps named (a rerun inside a lease,
# say). The whole run keeps within GPU_CHECK_SECONDS (570 by default: a
# 10-minute device call with room to start): a step gets at most what is
# left, and none starts with less than 10 s left.
#
# --rehearse (or GPU_CHECK_REHEARSE=1) runs every step on the CPU with tiny
# sizes, so that a wrong argument, a missing import or path, a broken
# output or a time cap shows up on a machine without a GPU, not in a
# device lease: the CUDA tests are collected and skip, the suite step runs
# GPU_CHECK_SUITE (a few modules by default), the benchmarks take --quick
# or their smallest sizes. On a slow or shared machine the benchmarks may
# still need more than the GPU's limits: GPU_CHECK_SCALE=4 multiplies every
# limit (and the whole run's). Here, for example:
#   GPU_CHECK_PYTHON=.venv/bin/python GPU_CHECK_SCALE=4 benchmarks/gpu_check.sh --rehearse
# GPU_CHECK_SUITE also picks the suite's tests in a real run (default: all
# of pyproject.toml's testpaths).
set -uo pipefail
cd "$(dirname "$0")/.."
rehearse=${GPU_CHECK_REHEARSE:-0}
for arg in "$@"; do
    case $arg in
        --rehearse) rehearse=1 ;;
        *)
            echo "gpu_check.sh: unknown argument '$arg' (the only one is --rehearse)" >&2
            exit 2
            ;;
    esac
done
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${GPU_CHECK_PYTHON:-python3}
LOGS="${OUT:-${TMPDIR:-/tmp}/gpu_check}"
mkdir -p "$LOGS"
status=0
summary=()
# GPU_CHECK_SCALE multiplies every limit: room for a rehearsal on a slow,
# shared machine (the real run keeps 1).
scale=${GPU_CHECK_SCALE:-1}
total=$((${GPU_CHECK_SECONDS:-570} * scale))
workers=14
if [ "$rehearse" = 1 ]; then
    device=cpu workers=2
    echo "=== rehearsal: every step on the CPU, tiny sizes (logs in $LOGS)"
else
    device=cuda
fi

step() {  # step NAME SECONDS COMMAND...: run with a limit, log, keep going
    local name=$1 limit=$(($2 * scale))
    shift 2
    [[ " ${GPU_CHECK_STEPS:-$name} " == *" $name "* ]] || return 0
    local left=$((total - SECONDS))
    if [ "$left" -lt 10 ]; then
        echo "=== $name: skipped, ${left}s left of ${total}s"
        summary+=("$name: skipped, ${left}s left")
        status=1
        return 0
    fi
    [ "$limit" -le "$left" ] || limit=$left
    local shown="$*"
    echo "=== $name (limit ${limit}s): ${shown%%$'\n'*}"
    local start=$SECONDS
    # SIGTERM at the limit (to the step's whole process group: pytest's
    # workers too), SIGKILL 5 s later for anything that ignores it.
    timeout -k 5 "$((limit - 5))" "$@" 2>&1 | tee "$LOGS/$name.log"
    local rc=${PIPESTATUS[0]}
    local why=""
    [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && why=" (time limit)"
    echo "=== $name: exit $rc$why after $((SECONDS - start))s"
    summary+=("$name: exit $rc$why after $((SECONDS - start))s | $(grep -v '^\s*$' "$LOGS/$name.log" | tail -n 1 | cut -c1-160)")
    [ "$rc" -eq 0 ] || status=1
}

# The card, the software, and which of the package's dependencies and test
# extras this image lacks (a missing one fails or skips tests: said here).
machine_py='import importlib, importlib.util, sys
def version(name):
    try:
        return importlib.import_module(name).__version__
    except Exception as error:  # missing, or broken: say so, go on
        return f"unavailable ({type(error).__name__})"
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
print(sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
      "sklearn", version("sklearn"), "numpy", version("numpy"), "gpu", gpu)
needed = "numpy scipy sklearn joblib threadpoolctl tqdm psutil filelock".split()
tests = ("pytest xdist pytest_timeout hypothesis pandas matplotlib captum dask "
         "distributed sphinx numpydoc sphinx_gallery pydata_sphinx_theme myst_parser")
for kind, names in (("dependencies", needed), ("test extras", tests.split())):
    missing = [name for name in names if importlib.util.find_spec(name) is None]
    print(f"missing {kind}:", " ".join(missing) or "none")'
step machine 20 bash -c 'if command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv
    else
        echo "nvidia-smi: not on this machine"
    fi
    "$0" -c "$1"' "$PY" "$machine_py"
if [ "$rehearse" != 1 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "!!! torch finds no CUDA device: the GPU steps below will fail or skip."
    echo "!!! On a machine without a GPU, run benchmarks/gpu_check.sh --rehearse."
    status=1
fi
# The card's float32 matmul rate, TF32 off, in this run: the figure every
# fraction of a FLOP bound in RESULTS.md is taken against.
if [ "$rehearse" = 1 ]; then sizes="256 512"; else sizes="4096 8192"; fi
step matmul 30 "$PY" -c 'import sys, time, torch
device = torch.device(sys.argv[1])
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
for n in map(int, sys.argv[2:]):
    A = torch.randn(n, n, device=device)
    for _ in range(3):
        A @ A
    sync()
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(10):
            A @ A
        sync()
        best = min(best, (time.perf_counter() - start) / 10)
    print(f"float32 matmul {n} x {n} on {device.type}, TF32 off: "
          f"{2 * n**3 / best / 1e12:.3g} TFLOP/s")' "$device" $sizes
# pyproject.toml's addopts start pytest-xdist workers (-n, --dist); an image
# without pytest-xdist gets the same options without them.
parallel=() serial=()
if "$PY" -c "import xdist" 2>/dev/null; then
    parallel+=(-n "$workers") serial+=(-n 0)
else
    echo "(pytest-xdist is missing: the suite runs in one process)"
    addopts=$("$PY" -c 'import shlex, tomllib
with open("pyproject.toml", "rb") as file:
    options = tomllib.load(file)["tool"]["pytest"]["ini_options"]["addopts"]
kept, tokens = [], iter(shlex.split(options))
for token in tokens:  # drop -n N, -nN, --dist X, --dist=X, --numprocesses
    if token in ("-n", "--dist", "--numprocesses", "--maxprocesses"):
        next(tokens, None)
    elif not token.startswith(("-n", "--dist=", "--numprocesses=", "--maxprocesses=")):
        kept.append(token)
print(shlex.join(kept))') || exit 2
    parallel+=(-o "addopts=$addopts") serial+=(-o "addopts=$addopts")
fi
# The tests marked cuda: GPU against CPU for training, kernels, hooks,
# pickle, strip copies. One module: no workers to start.
step cuda_tests 60 "$PY" -m pytest -q -p no:cacheprovider -rfE --tb=short \
    "${serial[@]}" -m cuda tests
# Everything else (pyproject's testpaths: tests, doctests, docs) with the GPU
# visible, in parallel where pytest-xdist is there; -v names each failure as
# it happens, should the step run out of time.
if "$PY" -c "import pytest_timeout" 2>/dev/null; then
    parallel+=(--timeout 120)
else
    echo "(pytest-timeout is missing: a hung test is stopped by the step's limit only)"
fi
if [ "$rehearse" = 1 ]; then
    read -r -a suite <<<"${GPU_CHECK_SUITE:-tests/test_blocking.py tests/test_transfer.py sklearn_pathkernel/_compute/_transfer.py}"
else
    read -r -a suite <<<"${GPU_CHECK_SUITE:-}"
fi
step suite_on_gpu 220 "$PY" -m pytest -v -p no:cacheprovider -rfE --tb=short \
    --durations 15 "${parallel[@]}" -m "not cuda" "${suite[@]}"
if [ "$rehearse" = 1 ]; then
    step bench_kernel 90 "$PY" benchmarks/bench_kernel.py --device cpu --quick
    step bench_hooks 70 "$PY" benchmarks/bench_hooks.py --device cpu --quick \
        --only a d
    step bench_recording 30 "$PY" benchmarks/bench_recording.py --device cpu \
        --repeats 1 --before ""
    step bench_strips 40 "$PY" benchmarks/bench_device_tiles.py --overlap \
        --device cpu --overlap-rows 512 --checkpoints 2 --repeats 1
else
    step bench_kernel 90 "$PY" benchmarks/bench_kernel.py --device cuda
    step bench_hooks 70 "$PY" benchmarks/bench_hooks.py --device cuda
    # Recording against plain training (issue 21 item 3: at most 1.15x).
    step bench_recording 30 "$PY" benchmarks/bench_recording.py --device cuda \
        --repeats 3
    # Strips reaching the host through pinned buffers, overlapped with the
    # next strip (issue 21 item 1), against the synchronous write.
    step bench_strips 40 "$PY" benchmarks/bench_device_tiles.py --overlap \
        --device cuda --overlap-rows 10000 --checkpoints 8 --repeats 3
fi
echo "=== summary ($SECONDS s of ${total}s; logs in $LOGS)"
printf '%s\n' "${summary[@]}"
exit $status
