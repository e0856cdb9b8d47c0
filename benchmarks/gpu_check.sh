#!/usr/bin/env bash
# Everything the GPU issue asks for, in one call on a bare GPU machine (no network): build for sm_90 only, print what
# was built, run the whole test suite (CUDA tests must run, not skip), the CUDA tests under compute-sanitizer
# (memcheck, racecheck, initcheck, synccheck), then the GPU benchmarks. Logs and JSON go to $OUT (default ./gpu-out).
#
#   bash benchmarks/gpu_check.sh            # on the device tool: OUT is set by the tool
#   QUICK=1 bash benchmarks/gpu_check.sh    # the quick benchmark sizes
set -uo pipefail
OUT="${OUT:-$PWD/gpu-out}"
mkdir -p "$OUT"
status=0
step() { echo "== $1" | tee -a "$OUT/summary.txt"; }
run() {  # run NAME CMD...: log to $OUT/NAME.log, record the exit status
  local name="$1"; shift
  local start=$SECONDS
  "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc ($((SECONDS - start)) s)" | tee -a "$OUT/summary.txt"
  [ $rc -eq 0 ] || status=1
  return $rc
}

step "build (sm_90)"
export TOKENSET_CUDA=ON TOKENSET_CUDA_ARCHS=90
run build pip install --no-build-isolation -v . || { tail -50 "$OUT/build.log"; exit 1; }
run info python -m tokenset info
cat "$OUT/info.log"
python - <<'PY' || { echo "tokenset sees no GPU: stopping" | tee -a "$OUT/summary.txt"; exit 1; }
import tokenset
info = tokenset.build_info()
assert info["cuda"] and info["cuda_devices"] > 0, info
PY

step "tests"
run tests python -m pytest -q -rs tests -p no:cacheprovider --junitxml="$OUT/tests.xml"
# CUDA tests must run: any skip that mentions the GPU is a failure here.
if grep -E "SKIPPED.*(GPU|cuda|CUDA)" "$OUT/tests.log"; then
  echo "CUDA tests were skipped" | tee -a "$OUT/summary.txt"; status=1
fi

step "compute-sanitizer"
CUDA_TESTS="tests/test_maxsim.py tests/test_quantize.py tests/test_residual.py tests/test_fde.py tests/test_inner_product.py tests/test_kcenter.py tests/test_coverage.py tests/test_segment_sum.py tests/test_merge.py tests/test_index.py tests/test_nearest.py tests/test_sparse_attention.py tests/test_attention_scores.py"
for tool in memcheck racecheck initcheck synccheck; do
  run "sanitizer-$tool" compute-sanitizer --tool "$tool" --error-exitcode 9 --target-processes all \
    python -m pytest -q -x -k "cuda or gpu" $CUDA_TESTS -p no:cacheprovider
done

step "benchmarks"
Q=${QUICK:+--quick}
run bench-maxsim python benchmarks/bench_maxsim.py --device cuda $Q
run bench-fde python benchmarks/bench_fde.py --device cuda $Q
cp -r benchmarks/results "$OUT/results" 2>/dev/null
echo "overall: $status" | tee -a "$OUT/summary.txt"
exit $status
