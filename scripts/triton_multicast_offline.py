# SPDX-License-Identifier: Apache-2.0
"""Does this Triton emit TMA multicast for a cluster launch? Checked offline (no GPU needed).

#4's remaining rows are paced by L2 → SM traffic (op README, "That inference revisited"); cuBLAS's
kernels at those shapes run 2 × 1 clusters whose CTAs share one operand's TMA loads by multicast
(``cp.async.bulk.tensor ... .multicast::cluster``). Gluon's TMA copy has no multicast argument;
this script checks the other door: a plain Triton tensor-descriptor GEMM compiled for sm_90 with
``num_ctas`` 1 and 2 (a cluster launch), counting the multicast TMA loads in its PTX.

    python scripts/triton_multicast_offline.py

Triton 3.6.0 (session 35, ``dev-runs/s35-offline-triton-multicast.log``): both compile, 7
``cp.async.bulk.tensor`` each; at ``num_ctas=2`` the kernel is a cluster kernel
(``.reqnctapercluster 2``) but **none of its TMA copies multicast**: each CTA loads its own operands.
"""
from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)

import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


@triton.jit
def _gemm(a_desc, b_desc, c_desc, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    """C = A Bᵀ, one tile per program, operands by tensor descriptors (TMA on sm_90)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        acc = tl.dot(a_desc.load([pid_m * BM, k]), b_desc.load([pid_n * BN, k]).T, acc)
    c_desc.store([pid_m * BM, pid_n * BN], acc.to(tl.bfloat16))


def main() -> None:
    BM, BN, BK = 128, 128, 64
    sig = {"a_desc": f"tensordesc<bf16[{BM}, {BK}]>", "b_desc": f"tensordesc<bf16[{BN}, {BK}]>",
           "c_desc": f"tensordesc<bf16[{BM}, {BN}]>", "K": "i32", "BM": "constexpr", "BN": "constexpr",
           "BK": "constexpr"}
    print(f"triton {triton.__version__}, sm_90, {BM}x{BN}x{BK} tensor-descriptor GEMM")
    for num_ctas in (1, 2):
        src = ASTSource(_gemm, sig, constexprs={"BM": BM, "BN": BN, "BK": BK})
        try:
            kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                    options={"num_warps": 8, "num_stages": 3, "num_ctas": num_ctas})
        except Exception as e:  # a compile failure is an answer too
            print(f"num_ctas={num_ctas}: compile failed: {type(e).__name__}: {str(e)[:300]}")
            continue
        lines = kernel.asm["ptx"].splitlines()
        tma = [ln for ln in lines if "cp.async.bulk.tensor" in ln]
        multicast = [ln for ln in tma if "multicast" in ln]
        cluster = [ln.strip() for ln in lines if ".reqnctapercluster" in ln]
        print(f"num_ctas={num_ctas}: {len(tma)} TMA copies, {len(multicast)} with multicast; "
              f"cluster directive: {cluster[0] if cluster else 'none'}")
        if tma:
            print("   e.g.", tma[0].strip()[:150])


if __name__ == "__main__":
    main()
