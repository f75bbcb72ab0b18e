#!/usr/bin/env bash
# Nsight Compute reports of one SSD / LoRA step (development aid, device machine).
#   bash scripts/gpu_ncu.sh "ssd 130m-B32-L192" "lora 768 3352 8" ...
#   NCU_EXTRA="--graph-profiling node" bash scripts/gpu_ncu.sh "loragraph 1536 768 8"   # the graph path's kernels
# Each argument is the argument list of scripts/gpu_ncu.py. Writes $OUT/ncu.tgz (the .ncu-rep
# reports, details pages as text, source-level stall tables of the heaviest kernels).
set -uo pipefail
OUT=${OUT:-/tmp/ncu-out}; mkdir -p "$OUT/ncu"
source .gpu-kit/peers.sh >/dev/null
export PYTHONPATH="$PWD:$PYTHONPATH" PYTHONUNBUFFERED=1 TRITON_CACHE_DIR=/tmp/samkern-triton-cache
mkdir -p "$TRITON_CACHE_DIR"
[ -f .gpu-cache/cache.tgz ] && [ ! -f "$TRITON_CACHE_DIR/.unpacked" ] && tar xzf .gpu-cache/cache.tgz -C "$TRITON_CACHE_DIR" && touch "$TRITON_CACHE_DIR/.unpacked"
NCU=${NCU:-$(command -v ncu || echo /usr/local/cuda/bin/ncu)}
for spec in "$@"; do
  name=$(echo "$spec" | tr ' ' '_')
  rep="$OUT/ncu/$name"
  echo "=== $spec ($(date -u +%T))"
  # shellcheck disable=SC2086
  "$NCU" --clock-control none --profile-from-start off --set full --import-source yes ${NCU_EXTRA:-} \
    -o "$rep" -f python3 scripts/gpu_ncu.py $spec 2>&1 | grep -v "^==PROF==" | tail -5
  "$NCU" -i "$rep.ncu-rep" --page details --print-units base > "$rep-details.txt" 2>&1
  "$NCU" -i "$rep.ncu-rep" --page raw --csv --metrics gpu__time_duration.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active,smsp__cycles_active.avg > "$rep-summary.csv" 2>&1
  for k in ${NCU_SOURCE_KERNELS:-_ssd_bwd_chunk_kernel _ssd_fwd_kernel _lora_gemm _coop_kernel}; do
    "$NCU" -i "$rep.ncu-rep" --page source --csv --print-source cuda,sass -k "regex:$k" > "$rep-source-$k.csv" 2>&1 || true
  done
  grep -E "^  [_a-zA-Z].*\(|Duration|Registers Per|Achieved Occupancy|Theoretical Occupancy|Compute \(SM\) Throughput|Memory Throughput|Warp Cycles Per Issued|Issued Warp|No Eligible" "$rep-details.txt" | head -150
done
tar czf "$OUT/ncu.tgz" -C "$OUT" ncu && rm -rf "$OUT/ncu"
ls -la "$OUT"
