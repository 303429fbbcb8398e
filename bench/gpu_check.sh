#!/usr/bin/env bash
# GPU check for a machine with an NVIDIA GPU (sized for one H100/H200), in one run:
#   (a) the fast-path equivalence tests on the GPU (pytest; pass/fail recorded),
#   (b) bench/bench_gpu.py: a cross-check of the project, torch.nn.LSTM and jax.experimental.rnn
#       on one set of weights, then step times, interleaved in one process, of StackedLSTM (fast
#       path and lstm.fast.reference_path()), Flax, PyTorch nn.LSTM on cuDNN and
#       jax.experimental.rnn.lstm (cuDNN through JAX), with ratios,
#   (c) Markdown and JSON tables (and the logs) in $OUT (a new temporary folder when unset).
# On an H200 it ends within 7.7 minutes whatever happens (tests stopped at GPU_CHECK_TEST_S + 20 s,
# timed cases started no later than GPU_CHECK_BENCH_S into the benchmark, which is stopped at
# GPU_CHECK_BENCH_S + 110 s); about 5 minutes expected. Without a GPU (JAX_PLATFORMS=cpu,
# or no CUDA device for JAX) it runs the CPU form: a few of the tests, tiny sizes, and says what it
# skipped (jax.experimental.rnn's cuDNN path, torch on cuda); well under a minute.
#
#   bash bench/gpu_check.sh                          # on the GPU machine (files in $OUT)
#   JAX_PLATFORMS=cpu OUT=/tmp/gc bash bench/gpu_check.sh   # CPU form, anywhere
#
# Environment: PYTHON (default python3), OUT, GPU_CHECK_TESTS (pytest arguments instead of the
# default selection), GPU_CHECK_TEST_S (default 150), GPU_CHECK_BENCH_S (default 170),
# GPU_CHECK_WORKERS (pytest-xdist workers on the GPU, default 6; 0 = none), GPU_CHECK_ARGS (more
# arguments for bench_gpu.py, e.g. "--cases 0,1"). Files in $OUT (flat, at most 5): gpu_check.md,
# gpu_check.json, pytest.log, pytest_junit.xml, log.txt.
# Exit status: 0 all passed; 1 a test or the cross-check failed; 2 an implementation raised or
# the benchmark did not finish.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
exec > >(tee "$OUT/log.txt") 2>&1
start=$(date +%s)

if [ "${JAX_PLATFORMS:-}" = cpu ]; then
  backend=cpu
else
  backend=$("$PY" -c 'import jax; print(jax.default_backend())' 2>/dev/null | tail -n 1)
fi
if [ "$backend" = gpu ]; then
  mode=gpu
  nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used,clocks.sm,clocks.max.sm \
    --format=csv 2>/dev/null || true
else
  mode=cpu
  export JAX_PLATFORMS=cpu
  # Tiny programs: LLVM's optimisations cost more compile time than they save (the CPU form's
  # timings only show that the code runs).
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_backend_optimization_level=0"
  echo "gpu_check: no GPU for JAX (backend '${backend:-none}'): CPU form, tiny sizes;" \
    "SKIPPED: jax.experimental.rnn's cuDNN path and torch on cuda"
fi
echo "gpu_check: mode $mode, python $("$PY" -c 'import sys; print(sys.version.split()[0])'), out $OUT"

# (a) Equivalence tests. The files that need only jax, flax, numpy and pytest (tests/test_interop.py
# imports keras, which a GPU machine may lack). Deselected on the GPU:
# test_inference_loop_order_follows_the_size asserts the CPU-only dispatch rule of
# lstm.fast.feature_major_pays (feature-major inference at batch >= 32, hidden >= 256 on CPU);
# off the CPU every layer runs batch-major, and both loop orders are still compared with the
# reference by the `loop_order` fixture's tests.
TEST_FILES="tests/test_fast.py tests/test_layer.py tests/test_stack.py tests/test_cell.py tests/test_activations.py"
note=""
if [ -n "${GPU_CHECK_TESTS:-}" ]; then
  read -r -a test_args <<< "$GPU_CHECK_TESTS"
elif [ $mode = gpu ]; then
  read -r -a test_args <<< "$TEST_FILES --deselect tests/test_fast.py::test_inference_loop_order_follows_the_size"
  note="Deselected: tests/test_fast.py::test_inference_loop_order_follows_the_size (asserts the CPU-only feature-major dispatch rule). Not run: tests/test_interop.py (imports keras)."
  workers=${GPU_CHECK_WORKERS:-6}
  if [ "$workers" != 0 ] && "$PY" -c 'import xdist' 2>/dev/null; then
    test_args+=(-n "$workers")
    export XLA_PYTHON_CLIENT_PREALLOCATE=false  # several test processes share the GPU
  fi
else
  # CPU form: a few of the same tests (the full files run in CI on the CPU anyway).
  test_args=(tests/test_fast.py -k "test_layer_matches_reference and batch_major")
  note="CPU form: a subset (the full files run in CI)."
fi
test_s=${GPU_CHECK_TEST_S:-150}
echo "gpu_check: (a) $PY -m pytest -q ${test_args[*]} (at most ${test_s} s)"
t0=$(date +%s)
timeout --signal=INT --kill-after=20 "$test_s" \
  "$PY" -m pytest -q -p no:cacheprovider --junitxml="$OUT/pytest_junit.xml" "${test_args[@]}" \
  > "$OUT/pytest.log" 2>&1
test_rc=$?
test_secs=$(( $(date +%s) - t0 ))
unset XLA_PYTHON_CLIENT_PREALLOCATE
tail -n 15 "$OUT/pytest.log"
echo "gpu_check: tests exit status $test_rc in ${test_secs} s"

# (b), (c) Cross-check and benchmark; bench_gpu.py writes the tables after every case.
bench_s=${GPU_CHECK_BENCH_S:-170}
hard=$(( bench_s + 110 ))
read -r -a extra <<< "${GPU_CHECK_ARGS:-}"
echo "gpu_check: (b) bench/bench_gpu.py (cases start within ${bench_s} s; stopped at ${hard} s)"
timeout --signal=TERM --kill-after=10 "$hard" \
  "$PY" bench/bench_gpu.py --out "$OUT" --budget "$bench_s" \
  --pytest-log "$OUT/pytest.log" --junit "$OUT/pytest_junit.xml" --pytest-rc "$test_rc" \
  --pytest-seconds "$test_secs" --pytest-cmd "python3 -m pytest -q ${test_args[*]}" \
  --pytest-note "$note" --command "bash bench/gpu_check.sh" ${extra[@]+"${extra[@]}"}
bench_rc=$?
echo "gpu_check: benchmark exit status $bench_rc; total $(( $(date +%s) - start )) s; files in $OUT:"
ls "$OUT"
if [ $bench_rc -ne 0 ] && [ $bench_rc -ne 1 ]; then
  exit 2
fi
if [ $test_rc -ne 0 ] || [ $bench_rc -ne 0 ]; then
  exit 1
fi
exit 0
