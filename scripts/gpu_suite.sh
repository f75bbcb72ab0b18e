#!/usr/bin/env bash
# The GPU test suite and the benchmarks in one device call (the GPU machine has no package registry).
#
#   device run, carry [".gpu-kit", ".gpu-cache"]  (.gpu-kit: a copy of ../shared/device;
#   .gpu-cache/cache.tgz: Triton's kernel and autotune cache from the last call; both git-ignored):
#     bash scripts/gpu_suite.sh all                          # build _C, GPU tests, benchmarks
#     bash scripts/gpu_suite.sh tests [pytest args / paths]  # default paths: tests/
#     bash scripts/gpu_suite.sh bench [pytest args / paths]  # default paths: benchmarks/
#
# Logs and benchmark results go to $OUT (they come back to the caller); unpack each
# $OUT/results-<phase>-<n>.tgz into benchmarks/ (it holds results/) and commit. With SAMKERN_SAVE_CACHE=1, $OUT/gpu-cache.tgz is
# the Triton cache: copy it to .gpu-cache/cache.tgz and carry it, so the next call compiles less.
# SAMKERN_TESTS_LIMIT / SAMKERN_BENCH_LIMIT (seconds) cut a phase short so the other still runs.
# Pass SAMKERN_COMMIT=<git rev-parse --short=12 HEAD, run here> in the device command: the device copy
# carries the git metadata of the session's start, so the harness would record a stale commit.
set -uo pipefail
what=${1:-all}; shift || true
OUT=${OUT:-/tmp/samkern-out}; mkdir -p "$OUT/results"
source .gpu-kit/peers.sh || { echo "peers kit missing: cp -r ../shared/device .gpu-kit"; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SAMKERN_RESULTS_DIR="$OUT/results"
export SAMKERN_INSTAFAIL=1 TRITON_CACHE_DIR=/tmp/samkern-triton-cache
mkdir -p "$TRITON_CACHE_DIR"
[ -f .gpu-cache/cache.tgz ] && [ ! -f "$TRITON_CACHE_DIR/.unpacked" ] && tar xzf .gpu-cache/cache.tgz -C "$TRITON_CACHE_DIR" && touch "$TRITON_CACHE_DIR/.unpacked"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# the install itself (no package registry there: no build isolation, dependencies from the image)
python3 -m pip install -q --no-build-isolation --no-deps -e . >"$OUT/pip-install.log" 2>&1 \
  && echo "pip install -e . (no build isolation) ok" || { echo "pip install -e . FAILED:"; tail -5 "$OUT/pip-install.log"; }
if [ "${SAMKERN_BUILD_EXT:-1}" != 0 ] && ! ls samkern/_C.cpython-3*-x86_64-linux-gnu.so 2>/dev/null | grep -q "$(python3 -c 'import sys;print(f"3{sys.version_info[1]}")')"; then
  # in-place build of samkern._C (CMake through setup.py); a failure is reported, not fatal
  python3 setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 && echo "built samkern._C" || { echo "extension build failed:"; tail -20 "$OUT/build.log"; }
fi
python3 -m samkern env
# logs are appended to (with a header), so several invocations in one device call keep every phase's output
header="=== gpu_suite.sh $what $* ($(date -u +%H:%M:%S))"
# paths given on the command line replace the default test/benchmark folder
has_path=0; for a in "$@"; do case $a in tests*|benchmarks*) has_path=1;; esac; done
rc=0
if [ "$what" = all ] || [ "$what" = tests ]; then
  [ $has_path = 1 ] && set_paths=() || set_paths=(tests/)
  echo "$header" >> "$OUT/gpu-tests.log"
  timeout "${SAMKERN_TESTS_LIMIT:-3000}" python3 -m pytest "${set_paths[@]}" -m gpu -q -rfEs --durations=25 "$@" 2>&1 | tee -a "$OUT/gpu-tests.log"
  rc=$((rc | ${PIPESTATUS[0]}))
fi
if [ "$what" = all ] || [ "$what" = bench ]; then
  [ $has_path = 1 ] && set_paths=() || set_paths=(benchmarks/)
  # mamba-ssm autotunes for the benchmarks (its fastest config); keep the timings in the cache
  echo "$header" >> "$OUT/bench.log"
  TRITON_CACHE_AUTOTUNING=1 timeout "${SAMKERN_BENCH_LIMIT:-3000}" python3 -m pytest "${set_paths[@]}" --benchmark -q -rfEs --benchmark-disable-gc "$@" 2>&1 | tee -a "$OUT/bench.log"
  rc=$((rc | ${PIPESTATUS[0]}))
  cat "$OUT"/results/*.md 2>/dev/null
fi
# at most 8 files come back from a device call: the results travel as one archive per invocation,
# numbered so that several invocations in one call do not overwrite each other
if [ -n "$(ls -A "$OUT/results" 2>/dev/null)" ]; then
  n=1; while [ -e "$OUT/results-$what-$n.tgz" ]; do n=$((n + 1)); done
  tar czf "$OUT/results-$what-$n.tgz" -C "$OUT" results && echo "results: \$OUT/results-$what-$n.tgz"
fi
rm -rf "$OUT/results"
# the Triton cache only on request (it outgrows the 16 MiB a returned file may have)
[ "${SAMKERN_SAVE_CACHE:-0}" = 1 ] && tar czf "$OUT/gpu-cache.tgz" -C "$TRITON_CACHE_DIR" . && ls -la "$OUT/gpu-cache.tgz"
exit $rc
