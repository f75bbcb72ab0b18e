#!/usr/bin/env bash
# One device call that validates the Mamba-2 block's kernels (conv1d, gated RMSNorm, the block
# against mamba-ssm, SAM on CUDA) and benchmarks the block and the connector reorder, each phase
# under its own time limit so a slow phase cannot starve the next. Results: $OUT/results.tgz
# (unpack into benchmarks/results/), logs: $OUT/all.log.   carry: [".gpu-kit", ".gpu-cache"]
# (.gpu-cache/cache.tgz, optional: a Triton cache from scripts/gpu_suite.sh, autotune results included)
# Pass SAMKERN_COMMIT=<git rev-parse --short=12 HEAD, run here> in the device command: the device copy
# carries the git metadata of the session's start, so the harness would record a stale commit.
set -uo pipefail
OUT=${OUT:-/tmp/samkern-out}; mkdir -p "$OUT/results"; L="$OUT/all.log"
source .gpu-kit/peers.sh >>"$L" 2>&1 || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 SAMKERN_INSTAFAIL=1 SAMKERN_RESULTS_DIR="$OUT/results"
export TRITON_CACHE_DIR=/tmp/samkern-triton-cache; mkdir -p "$TRITON_CACHE_DIR"
[ -f .gpu-cache/cache.tgz ] && tar xzf .gpu-cache/cache.tgz -C "$TRITON_CACHE_DIR"
# the extension builds on the side while the tests run (the connector benchmark wants it)
(python3 setup.py -q build_ext --inplace >"$OUT/build.txt" 2>&1; echo "build rc=$?" >>"$OUT/build.txt") &
build=$!
timeout "${T_TESTS:-150}" python3 -m pytest -q -m gpu -rfE tests/ops/test_conv1d.py tests/ops/test_gated_rmsnorm.py \
  tests/layers/test_mamba2.py tests/models/test_sam.py tests/models/test_lm.py 2>&1 | tee -a "$L" | tail -12
TRITON_CACHE_AUTOTUNING=1 timeout "${T_BLOCKS:-200}" python3 -m pytest -q --benchmark -rfE benchmarks/bench_blocks.py -k "${K_BLOCKS:-130m or B16}" 2>&1 | tee -a "$L" | tail -4
wait $build; cat "$OUT/build.txt" >>"$L"; rm -f "$OUT/build.txt"
timeout "${T_CONNECTOR:-60}" python3 -m pytest -q --benchmark -rfE benchmarks/ops/bench_connector_reorder.py 2>&1 | tee -a "$L" | tail -4
cat "$OUT"/results/*.md
tar czf "$OUT/results.tgz" -C "$OUT" results && rm -rf "$OUT/results"
