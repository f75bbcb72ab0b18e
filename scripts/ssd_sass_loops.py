# SPDX-License-Identifier: Apache-2.0
"""Per-loop SASS statistics of one SSD kernel, compiled for sm_90 on a machine WITHOUT a GPU.

What ``ssd_regs_offline.py`` cannot say: where the spills sit. A kernel change that adds code
outside the hot loop (a peeled iteration, a branch per program) may raise ptxas's spill total and
still leave the loop alone; this prints, per loop of the SASS (a backward branch to an earlier
label), its instruction count, tensor-core ops (HGMMA), asynchronous copies (LDGSTS: the loop is
software-pipelined), global loads and spill loads / stores (LDL / STL).

    python scripts/ssd_sass_loops.py _ssd_fwd_kernel [--shape 130m-B32-L192] [--with-z] [--bars]

``--bars`` also maps the barriers (BAR) of the largest loop to the source lines they come from
(``nvdisasm -g`` line info; ``standard.py`` lines are Triton's ``tl.sum`` / ``tl.cumsum``, the
kernel's own lines mostly layout conversions of the values computed there).

Launch knobs come from the usual environment (``SAMKERN_SSD_FWD_TUNING`` /
``SAMKERN_SSD_BWD_TUNING``, JSON). Uses Triton's bundled ``nvdisasm``; no GPU, no TRITON_INTERPRET.
Compiles the benchmark's specialisation (no z) unless ``--with-z``.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import triton  # noqa: E402

import ssd_regs_offline as offline  # noqa: E402

_INSTR = re.compile(r"/\*[0-9a-f]{4,}\*/")  # an instruction's address comment (4+ hex digits)
_LABEL = re.compile(r"^\.(L_x_\d+):")
_BRANCH = re.compile(r"BRA\s+`?\(?\.(L_x_\d+)")
OPS = ("HGMMA", "LDGSTS", "LDG", "STG", "LDL", "STL", "BAR", "MUFU")


def sass_of(fn, args, kwargs, line_info: bool = False) -> str:
    """The kernel's SASS (Triton's compile for sm_90, disassembled; with source lines if asked)."""
    ck = offline.compile_launch(fn, args, kwargs)
    nvdisasm = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "nvdisasm")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(ck.asm["cubin"])
    try:
        flags = ["-c", "-g"] if line_info else ["-c"]
        return subprocess.run([nvdisasm, *flags, f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)


def _count(lines) -> dict:
    ins = [line for line in lines if _INSTR.search(line)]
    out = {"instrs": len(ins)}
    for op in OPS:
        out[op] = sum(bool(re.search(rf"\b{op}\b", line)) for line in ins)
    return out


def loop_stats(sass: str) -> tuple:
    """(whole-kernel counts, [(first line, last line, counts) per loop])."""
    lines = sass.splitlines()
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := _LABEL.match(line.strip()))}
    loops = []
    for i, line in enumerate(lines):
        m = _BRANCH.search(line)
        if m and labels.get(m.group(1), i) < i:
            start = labels[m.group(1)]
            loops.append((start, i, _count(lines[start:i + 1])))
    return _count(lines), loops


_SOURCE = re.compile(r'File "([^"]+)", line (\d+)')


def bars_by_line(sass: str, start: int, end: int) -> dict:
    """{(file name, line): BAR count} over SASS lines ``start .. end`` of a ``-g`` disassembly."""
    where, out = ("?", 0), {}
    for line in sass.splitlines()[start:end + 1]:
        m = _SOURCE.search(line)
        if m:
            where = (os.path.basename(m.group(1)), int(m.group(2)))
        if _INSTR.search(line) and re.search(r"\bBAR\b", line):
            out[where] = out.get(where, 0) + 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kernel", help="e.g. _ssd_fwd_kernel, _ssd_bwd_dstate_kernel, _ssd_bwd_chunk_kernel")
    ap.add_argument("--shape", default="130m-B32-L192")
    ap.add_argument("--with-z", action="store_true", help="the gated (z) specialisation")
    ap.add_argument("--bars", action="store_true", help="BARs of the largest loop per source line")
    args = ap.parse_args()
    for fn, _grid, a, kw in offline.capture_launches(args.shape, {}, with_z=args.with_z):
        if fn.__name__ != args.kernel:
            continue
        sass = sass_of(fn, a, kw, line_info=args.bars)
        total, loops = loop_stats(sass)
        print(args.kernel, args.shape, "whole kernel:", total)
        for start, end, counts in loops:
            if counts["instrs"] > 1:
                print(f"  loop (SASS lines {start}-{end}):", counts)
        if args.bars and loops:
            start, end, _ = max(loops, key=lambda t: t[2]["instrs"])
            print(f"  BARs of the largest loop by source line (lines {start}-{end}):")
            for (name, line), n in sorted(bars_by_line(sass, start, end).items()):
                print(f"    {name}:{line}  {n}")
        return
    raise SystemExit(f"{args.kernel} is not launched at {args.shape}")


if __name__ == "__main__":
    main()
