#!/usr/bin/env bash
# A/B of the SSD kernels: a base commit against the working tree, both profiled in ONE device call
# (per-kernel CUDA time and the fwd+bwd CUDA-graph total, scripts/gpu_ssd_profile.py), so that host
# drift between calls cannot fake a difference (session 13 used it for every kernel change).
#
#   bash scripts/gpu_ssd_ab.sh prepare <base-rev>   # here: writes ./abbase/ (git-ignored, so a commit
#                                                   # cannot pick it up: session 21's did, when it was not)
#   bash scripts/gpu_ssd_ab.sh run                  # device, carry [".gpu-kit", "abbase"]: logs in $OUT
#                                                   # (without abbase/: the tree and AB_VARIANTS only)
#   rm -rf abbase                                   # here, afterwards
#
# Environment: SSD_PROFILE_SHAPES (default: the four harness shapes), SSD_PROFILE_SWEEP (default
# '[{}]': the shipped launch settings only), AB_LIMIT (seconds per tree, default 200), AB_VARIANTS
# (optional: more runs of the tree, one per line "name VAR=value ...", e.g. a launch knob through
# SAMKERN_SSD_BWD_TUNING='{"scan_warps":8}'; values without spaces; logs profile-<name>.log).
set -uo pipefail
case ${1:-} in
prepare)
  rev=${2:?base revision}
  rm -rf abbase && mkdir abbase && git archive "$rev" samkern scripts benchmarks | tar -x -C abbase
  echo "abbase/ = $(git rev-parse --short=12 "$rev"); remove it after the device call"
  ;;
run)
  OUT=${OUT:-/tmp/samkern-out}; mkdir -p "$OUT/base" "$OUT/tree"
  # without abbase/ only the tree and its variants run (a knob's A/B needs no second tree)
  [ -d abbase ] || echo "no abbase/: the tree and AB_VARIANTS only"
  source .gpu-kit/peers.sh >/dev/null
  export PYTHONPATH="$PWD:$PYTHONPATH" PYTHONUNBUFFERED=1 SSD_PROFILE_PEER=0
  export SSD_PROFILE_SHAPES=${SSD_PROFILE_SHAPES:-130m-B32-L192,2.7b-B16-L192,2.7b-B8-L640,2.7b-B1-L16384}
  export SSD_PROFILE_SWEEP=${SSD_PROFILE_SWEEP:-'[{}]'}
  python3 -m pip install -q --no-build-isolation --no-deps -e . >/dev/null 2>&1
  # the profile script puts its own tree first on sys.path, so abbase/'s copy profiles the base
  names="tree"
  if [ -d abbase ]; then
    (cd abbase && OUT=$OUT/base timeout "${AB_LIMIT:-200}" python3 scripts/gpu_ssd_profile.py) >"$OUT/profile-base.log" 2>&1
    echo "base rc $?"
    names="base tree"
  fi
  OUT=$OUT/tree timeout "${AB_LIMIT:-200}" python3 scripts/gpu_ssd_profile.py >"$OUT/profile-tree.log" 2>&1
  echo "tree rc $?"
  while read -r name assigns; do
    [ -n "$name" ] || continue
    mkdir -p "$OUT/$name"
    # shellcheck disable=SC2086
    env $assigns OUT="$OUT/$name" timeout "${AB_LIMIT:-200}" python3 scripts/gpu_ssd_profile.py >"$OUT/profile-$name.log" 2>&1
    echo "$name rc $?"
    names="$names $name"
  done <<< "${AB_VARIANTS:-}"
  for f in $names; do echo "## $f"; grep -E "^==|fwdbwd_graph|Error" "$OUT/profile-$f.log" | cut -c1-250; done
  ;;
*) echo "usage: $0 prepare <base-rev> | run"; exit 2 ;;
esac
