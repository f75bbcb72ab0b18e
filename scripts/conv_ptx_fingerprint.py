# SPDX-License-Identifier: Apache-2.0
"""Fingerprints of the conv1d backward kernels' sm_90 PTX, compiled on a machine without a GPU:
a refactor whose fingerprints do not change is the same GPU code (no GPU run needed to trust it).

The PTX is normalised before hashing (debug sections, ``.loc`` / ``.file`` lines and the
``$L__tmp`` debug labels dropped: moving source lines, or code into an inlined helper, changes
nothing else). Every specialisation a training step can launch is covered:
one or three gradient tensors, with / without seq_idx, with / without SiLU, dx kernel with / without
the fused dw sums, the dw kernel.

    python scripts/conv_ptx_fingerprint.py before.json    # then edit, then:
    python scripts/conv_ptx_fingerprint.py after.json --compare before.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

os.environ.pop("TRITON_INTERPRET", None)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ssd_regs_offline import _signature  # noqa: E402


def normalised_ptx(ptx: str) -> str:
    cut = ptx.find(".section\t.debug")
    ptx = ptx[:cut] if cut >= 0 else ptx
    return "\n".join(line for line in ptx.splitlines()
                     if not line.strip().startswith((".loc", ".file", "$L__tmp")))


def fingerprint(fn, args, kwargs) -> str:
    sig, constexprs, attrs = _signature(fn, args, kwargs)
    ck = triton.compile(ASTSource(fn, sig, constexprs, attrs), target=GPUTarget("cuda", 90, 32),
                        options={k: kwargs[k] for k in ("num_warps", "num_stages") if k in kwargs})
    return hashlib.sha1(normalised_ptx(ck.asm["ptx"]).encode()).hexdigest()[:16]


def _rs(kernel) -> dict:
    # the row-stride unit (since session 17): 1 = the strides as given, the form every aligned call takes
    return {"RS": 1} if "RS" in kernel.arg_names else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--compare", default=None)
    a = ap.parse_args()
    import samkern.ops.conv1d.triton as ct

    batch, L, D, W = 16, 192, 5376, 4  # 2.7b B16 L192
    x = torch.zeros(batch, L, D, dtype=torch.bfloat16).transpose(1, 2)
    w, b = torch.zeros(D, W, dtype=torch.bfloat16), torch.zeros(D, dtype=torch.bfloat16)
    dx = torch.zeros(batch, L, D, dtype=torch.bfloat16)
    seq = torch.zeros(batch, L, dtype=torch.int32)
    dw_part, db_part = torch.zeros(64, W, D), torch.zeros(64, D)
    xs = (x.stride(0), x.stride(1), x.stride(2))
    out = {}
    for split in (False, True):
        for has_seq in (False, True):
            for silu in (False, True):
                spec = dict(W=W, HAS_BIAS=True, HAS_SEQ=has_seq, SILU=silu, SPLIT_DY=split)
                for need in (False, True):
                    args = (x, w, b, seq, x, x, x, dx, dw_part, db_part, L, D, D - 256, D - 128, *xs, *xs, *xs, *xs,
                            dx.stride(0), dx.stride(1), L)
                    kw = dict(spec, NEED_DW=need, BLOCK_L=ct.BWD_BLOCK_L, BLOCK_D=ct.BWD_BLOCK_D,
                              num_warps=ct.BWD_NUM_WARPS, **_rs(ct._conv_bwd_kernel))
                    out[f"dx split={split} seq={has_seq} silu={silu} fused_dw={need}"] = \
                        fingerprint(ct._conv_bwd_kernel, args, kw)
                args = (x, w, b, seq, x, x, x, dw_part, db_part, L, D, D - 256, D - 128, ct.DW_ROWS,
                        *xs, *xs, *xs, *xs, L)
                kw = dict(spec, BLOCK_L=ct.DW_BLOCK_L, BLOCK_D=ct.DW_BLOCK_D, num_warps=ct.DW_NUM_WARPS,
                          **({"NUM_STAGES": ct.DW_NUM_STAGES} if hasattr(ct, "DW_NUM_STAGES") else {}),
                          **_rs(ct._conv_dw_kernel))
                out[f"dw split={split} seq={has_seq} silu={silu}"] = fingerprint(ct._conv_dw_kernel, args, kw)
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)
    if a.compare:
        ref = json.load(open(a.compare))
        diff = sorted(k for k in out if ref.get(k) != out[k])
        print(f"{len(out) - len(diff)} of {len(out)} specialisations identical" + (": differ " + ", ".join(diff) if diff else ""))
    else:
        print(f"{len(out)} fingerprints written to {a.out}")


if __name__ == "__main__":
    main()
