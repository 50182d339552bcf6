#!/usr/bin/env bash
# GPU checks on a lent device machine, in one call (device time is short): the small-operation
# and curvature benchmarks (CURVATURE_LATE_S > 0: also from step 10,000; CURVATURE_K1_S > 0:
# also λ_max alone), the linear-algebra tests (float64 against eigh), training throughput and
# (SWEEP_S > 0) the sweep benchmark, all unchanged on GPU. Each step has a time limit (the
# *_S variables, seconds) and its output goes to $OUT/<step>.txt as it comes. CURVATURE_ROWS
# picks the tracker rows (default "block tol"), TESTS the test files, TEST_WORKERS their
# pytest-xdist workers (default 4), TEST_FLAGS pytest's other options (default -q; -v names each
# test as it ends, so a run cut short by its limit still says which passed). FIRST_CALL_S > 0
# also times post-hoc calls from plain Python (benchmarks/first_call.py).
#
#   bash benchmarks/device.sh            (from the repository root; output also under $OUT)
#
# An image with JAX, optax, xarray, matplotlib and pytest but not the rest gets the missing
# packages as wheels in .whl/ (keep it out of git), fetched where pip can reach an index:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl \
#     netCDF4 cftime tomli-w dask distributed partd locket tornado tblib zict
# PY picks the Python (default python3).
set -uo pipefail
PY=${PY:-python3}
OUT=${OUT:-/tmp/dynloss-device}
mkdir -p "$OUT"
if [ -d .whl ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export XLA_PYTHON_CLIENT_PREALLOCATE=false
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null
$PY -c "import jax; print('jax', jax.__version__, jax.devices())"

step() {
    local name=$1 limit=$2
    shift 2
    [ "$limit" -gt 0 ] || return 0
    echo "== $name (at most ${limit} s)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.txt"
    echo "== $name: exit ${PIPESTATUS[0]}"
}

step small_ops "${SMALL_OPS_S:-40}" $PY benchmarks/small_ops.py --steps 1000
ROWS=${CURVATURE_ROWS:-block tol}
step curvature "${CURVATURE_S:-150}" $PY benchmarks/curvature.py --steps 1000 200 \
    --rows $ROWS --no-post-hoc
step curvature_late "${CURVATURE_LATE_S:-0}" $PY benchmarks/curvature.py --steps 1000 200 \
    --start 10000 --rows $ROWS --no-post-hoc
step curvature_k1 "${CURVATURE_K1_S:-0}" $PY benchmarks/curvature.py --steps 1000 200 --k 1 \
    --rows $ROWS --no-post-hoc
step first_call "${FIRST_CALL_S:-0}" $PY benchmarks/first_call.py
TESTS=${TESTS:-tests/test_tracking.py tests/test_precision.py tests/test_hessian.py \
tests/test_lanczos.py tests/test_small.py}
step tests "${TESTS_S:-100}" $PY -m pytest -p no:cacheprovider -n "${TEST_WORKERS:-4}" \
    ${TEST_FLAGS:--q} $TESTS
step throughput "${THROUGHPUT_S:-60}" $PY benchmarks/train_throughput.py --steps 2000 \
    --repeats 1 --tracking
step sweep "${SWEEP_S:-0}" $PY benchmarks/sweep_throughput.py --runs 10 100 1000 --lanes 10 \
    --dask-runs 0 --max-run-steps 1e5
