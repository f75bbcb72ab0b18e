# SPDX-License-Identifier: Apache-2.0
"""One benchmark harness for every op.

Each benchmark row is measured three ways on the same inputs, in the same process:

* ``p50/p20/p80_us``: ``triton.testing.do_bench`` quantiles of the eager call (CUDA events,
  L2 flushed between calls) — what a user gets, host/launch overhead included;
* ``graph_us``: median of CUDA-graph replays of the same call — the GPU-only time;
* ``host_us``: pytest-benchmark's wall-clock mean (call + ``torch.cuda.synchronize``), when the
  test uses the ``benchmark`` fixture.

Rows are collected by the ``results`` fixture (``benchmarks/conftest.py``) and written at the
end of the session to ``benchmarks/results/<op>-<gpu>.json`` plus a markdown table naming the
GPU, versions and commit (``SAMKERN_RESULTS_DIR`` overrides the folder).
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

__all__ = ["Row", "Recorder", "time_eager", "time_graph", "machine_info"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Row:
    op: str
    shape: str
    provider: str
    mode: str  # fwd | bwd | fwdbwd (suffix _graph rows are not used: graph_us is a column)
    p50_us: float
    p20_us: float
    p80_us: float
    graph_us: Optional[float] = None
    host_us: Optional[float] = None
    tflops: Optional[float] = None
    gbps: Optional[float] = None
    extra: Dict[str, object] = field(default_factory=dict)


def time_eager(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> tuple:
    """(p50, p20, p80) in microseconds, timed with CUDA events by ``triton.testing.do_bench``."""
    from triton.testing import do_bench

    q = do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.5, 0.2, 0.8])
    return tuple(1e3 * v for v in q)


def time_graph(fn: Callable[[], object], warmup: int = 25, rep: int = 100) -> float:
    """Median microseconds of CUDA-graph replays of ``fn`` (captured after 3 side-stream warm-ups,
    so autotuning and lazy initialisation happen outside the capture; ``samkern.backend.graph_replay_ms``)."""
    from samkern.backend import graph_replay_ms

    return 1e3 * graph_replay_ms(fn, warmup=warmup, rep=rep)


def _git_commit() -> str:
    if os.environ.get("SAMKERN_COMMIT"):
        return os.environ["SAMKERN_COMMIT"]
    try:
        return subprocess.check_output(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent, stderr=subprocess.DEVNULL, text=True
        ).strip()
    except Exception:  # noqa: BLE001 - no git on the GPU machine copy
        return "unknown"


def _version(mod: str) -> Optional[str]:
    try:
        m = __import__(mod)
        return getattr(m, "__version__", "?")
    except Exception:  # noqa: BLE001 - peers are optional
        return None


def machine_info() -> Dict[str, object]:
    info: Dict[str, object] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": _version("triton"),
        "samkern": _version("samkern"),
        "mamba_ssm": _version("mamba_ssm"),
        "fla": _version("fla"),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in s).strip("-").lower()


class Recorder:
    """Collects rows during a benchmark session; the files are rewritten after every row."""

    def __init__(self) -> None:
        self.rows: List[Row] = []
        self._info: Optional[Dict[str, object]] = None

    def time(
        self,
        op: str,
        shape: str,
        provider: str,
        mode: str,
        fn: Callable[[], object],
        *,
        flops: Optional[float] = None,
        bytes: Optional[float] = None,  # noqa: A002 - the natural name
        graph: bool = True,
        benchmark=None,
        **extra: object,
    ) -> Row:
        """Time ``fn`` eagerly (and under CUDA-graph replay unless ``graph=False``); record a row.

        ``flops``/``bytes`` turn the median into TFLOP/s / GB/s. Passing pytest-benchmark's
        ``benchmark`` fixture also records its host wall-clock mean (one call per test).
        """
        fn()
        torch.cuda.synchronize()
        p50, p20, p80 = time_eager(fn)
        graph_us, graph_error = None, None
        if graph:
            try:
                graph_us = time_graph(fn)
            except RuntimeError as e:  # torch.AcceleratorError is a RuntimeError
                # keep the eager row; the reason goes into the row instead of failing the run
                graph_error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
                torch.cuda.synchronize()
        host_us = None
        if benchmark is not None:

            def synced():
                fn()
                torch.cuda.synchronize()

            benchmark.pedantic(synced, rounds=20, iterations=1, warmup_rounds=3)
            host_us = 1e6 * benchmark.stats.stats.mean
            benchmark.extra_info.update(p50_us=p50, graph_us=graph_us)
        row = Row(
            op=op,
            shape=shape,
            provider=provider,
            mode=mode,
            p50_us=p50,
            p20_us=p20,
            p80_us=p80,
            graph_us=graph_us,
            host_us=host_us,
            tflops=None if flops is None else flops / (p50 * 1e-6) / 1e12,
            gbps=None if bytes is None else bytes / (p50 * 1e-6) / 1e9,
            extra=dict(extra, **({"graph_error": graph_error} if graph_error else {})),
        )
        self.rows.append(row)
        # Write after every row: a run cut off by a time limit keeps what it measured.
        self.write()
        return row

    def write(self, out_dir: Optional[Path] = None) -> List[Path]:
        if not self.rows:
            return []
        out_dir = Path(out_dir or os.environ.get("SAMKERN_RESULTS_DIR") or RESULTS_DIR)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self._info is None:
            self._info = machine_info()
        info = self._info
        gpu = _slug(str(info.get("gpu", "cpu")).replace("NVIDIA", ""))
        written = []
        for op in sorted({r.op for r in self.rows}):
            rows = [r for r in self.rows if r.op == op]
            base = out_dir / f"{op}-{gpu}"
            base.with_suffix(".json").write_text(
                json.dumps({"machine": info, "rows": [asdict(r) for r in rows]}, indent=1) + "\n"
            )
            base.with_suffix(".md").write_text(markdown_table(op, info, rows))
            written += [base.with_suffix(".json"), base.with_suffix(".md")]
        return written


def _fmt(v: Optional[float], nd: int = 1) -> str:
    return "" if v is None else f"{v:.{nd}f}"


def markdown_table(op: str, info: Dict[str, object], rows: List[Row]) -> str:
    head = (
        f"# {op} benchmark\n\n"
        f"GPU {info.get('gpu')}; torch {info['torch']} (CUDA {info['cuda']}), triton {info['triton']}, "
        f"mamba-ssm {info.get('mamba_ssm')}, fla {info.get('fla')}; samkern commit {info['commit']}; {info['date']}.\n"
        "Times in microseconds: eager p50 [p20–p80] from triton do_bench, and CUDA-graph replay median.\n\n"
        "| shape | mode | provider | eager p50 | p20–p80 | graph | TFLOP/s | GB/s |\n"
        "|---|---|---|---:|---:|---:|---:|---:|\n"
    )
    lines = [
        f"| {r.shape} | {r.mode} | {r.provider} | {_fmt(r.p50_us)} | {_fmt(r.p20_us)}–{_fmt(r.p80_us)} | "
        f"{_fmt(r.graph_us)} | {_fmt(r.tflops)} | {_fmt(r.gbps)} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"
