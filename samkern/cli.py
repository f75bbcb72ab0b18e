# SPDX-License-Identifier: Apache-2.0
"""The ``samkern`` command line. It only parses arguments and delegates; heavy imports are lazy."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

__all__ = ["main", "build_parser"]


def _cmd_env(args: argparse.Namespace) -> int:
    from samkern.env import collect, format_report

    info = collect()
    print(json.dumps(info, indent=1) if args.json else format_report(info))
    return 0


# --------------------------------------------------------------------------------------------
# SAM subcommands: caption / ask / analyze
# --------------------------------------------------------------------------------------------
class _SimpleProgress:
    """Fallback progress bar (stderr) when tqdm is not installed."""

    def __init__(self, total: int, desc: str, disable: bool) -> None:
        self.total, self.n, self.desc, self.disable = total, 0, desc, disable

    def update(self, k: int = 1) -> None:
        self.n += k
        if not self.disable:
            print(f"\r{self.desc}: {self.n}/{self.total}", end="" if self.n < self.total else "\n", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _progress(total: int, desc: str, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:
        return _SimpleProgress(total, desc, disable)
    return tqdm(total=total, desc=desc, disable=disable, file=sys.stderr, unit="file")


def _check_files(files: List[str]) -> Optional[str]:
    import os

    for f in files:
        if not os.path.exists(f):
            return f"error: audio file not found: {f}"
        if os.path.isdir(f):
            return f"error: {f} is a directory, not an audio file"
    return None


def _load_model(args: argparse.Namespace, device):
    from samkern.models.sam.model import SAM

    if args.checkpoint:
        model = SAM.load(args.checkpoint, device=device)
    else:
        print(
            "warning: no --checkpoint given: using the embedded tiny SAM with RANDOM, UNTRAINED weights; "
            "its outputs are meaningless (pass --checkpoint DIR written by SAM.save)",
            file=sys.stderr,
        )
        model = SAM.tiny().to(device)
    return model.eval()


def _gen_kwargs(args: argparse.Namespace, generator) -> dict:
    return dict(
        max_new_tokens=args.max_new_tokens,
        do_sample=args.sample,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        generator=generator,
    )


def _run_over_files(args: argparse.Namespace, desc: str, fn) -> int:
    """Shared driver: validate files, load the model, read each file, run
    ``fn(model, files, waves, generator)`` per batch of readable files (returns one JSON-able dict
    per file), print text or JSON. An unreadable file is reported on stderr (and as
    ``{"file", "error"}`` in the JSON list) without dropping the others; the exit code is then 1."""
    err = _check_files(args.files)
    if err:
        print(err, file=sys.stderr)
        return 2
    if args.batch_size <= 0:
        print("error: --batch-size must be positive", file=sys.stderr)
        return 2
    if getattr(args, "max_new_tokens", None) is not None and args.max_new_tokens <= 0:
        print(f"error: --max-new-tokens must be a positive int, got {args.max_new_tokens}", file=sys.stderr)
        return 2
    import torch

    from samkern.demo import pick_device
    from samkern.models.sam.audio import load_audio

    try:
        device = pick_device(args.device or "auto")  # the check `samkern eval` makes
    except ValueError as e:  # --device cuda without CUDA, or not a device string
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        model = _load_model(args, device)
    except (ValueError, OSError, RuntimeError) as e:  # bad checkpoint, unavailable device
        print(f"error: cannot load the model: {e}", file=sys.stderr)
        return 2
    generator = None
    if getattr(args, "sample", False):
        generator = torch.Generator(device=model.device)
        generator.manual_seed(args.seed)
    results = []
    failed = 0
    bar = _progress(len(args.files), desc, disable=args.quiet or len(args.files) < 2)
    try:
        for i in range(0, len(args.files), args.batch_size):
            batch = args.files[i : i + args.batch_size]
            # read per file, so one unreadable file does not take its batch down with it
            rows: List[Optional[dict]] = [None] * len(batch)
            ok, waves = [], []
            for j, f in enumerate(batch):
                try:
                    waves.append(load_audio(f))
                    ok.append(j)
                except ValueError as e:  # AudioError: not audio, no samples, NaN samples
                    print(f"\nerror: {e}", file=sys.stderr)
                    rows[j] = {"file": f, "error": str(e)}
                    failed += 1
            if ok:
                try:
                    out = fn(model, [batch[j] for j in ok], waves, generator)
                except ValueError as e:  # bad arguments
                    print(f"\nerror: {e}", file=sys.stderr)
                    return 1
                for j, r in zip(ok, out):
                    rows[j] = r
            results.extend(rows)
            bar.update(len(batch))
    finally:
        bar.close()
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for r in results:
            if "error" not in r:  # already reported on stderr
                print(_format_result(r))
    if failed:
        print(f"error: {failed} of {len(args.files)} file(s) could not be read", file=sys.stderr)
    return 1 if failed else 0


def _format_result(r: dict) -> str:
    if "caption" in r:
        return f"{r['file']}\t{r['caption']}"
    if "answer" in r:
        return f"{r['file']}\t{r['answer']}"
    enc, con = r["encoder"], r["connector"]
    return (
        f"{r['file']}\tencoder: rank {enc['effective_rank']}/{enc['num_tokens']} cos {enc['mean_cosine']:.4f}"
        f"\tconnector: rank {con['effective_rank']}/{con['num_tokens']} cos {con['mean_cosine']:.4f}"
    )


def _cmd_caption(args: argparse.Namespace) -> int:
    def fn(model, batch, waves, generator):
        texts = model.caption(waves, **_gen_kwargs(args, generator))
        return [{"file": f, "caption": t} for f, t in zip(batch, texts)]

    return _run_over_files(args, "caption", fn)


def _cmd_ask(args: argparse.Namespace) -> int:
    args.files = [args.file] + list(args.more_files)
    if not args.question.strip():
        print("error: the question is empty", file=sys.stderr)
        return 2

    def fn(model, batch, waves, generator):
        texts = model.ask(waves, args.question, **_gen_kwargs(args, generator))
        return [{"file": f, "question": args.question, "answer": t} for f, t in zip(batch, texts)]

    return _run_over_files(args, "ask", fn)


def _cmd_analyze(args: argparse.Namespace) -> int:
    if not 0.0 < args.tau <= 1.0:
        print("error: --tau must be in (0, 1]", file=sys.stderr)
        return 2

    def fn(model, batch, waves, generator):
        stats = model.audio_token_stats(waves, tau=args.tau, energy=args.energy)
        out = []
        for i, f in enumerate(batch):
            row = {"file": f, "tau": args.tau, "energy": args.energy}
            for part in ("encoder", "connector"):
                s = stats[part]
                row[part] = {
                    "effective_rank": int(s["effective_rank"][i]),
                    "mean_cosine": float(s["mean_cosine"][i]),
                    "num_tokens": int(s["num_tokens"]),
                }
            out.append(row)
        return out

    return _run_over_files(args, "analyze", fn)


def _add_model_args(sp: argparse.ArgumentParser, generation: bool, files: bool = True) -> None:
    if files:
        sp.add_argument("files", nargs="+", metavar="FILE", help="audio files (anything libsndfile reads)")
    sp.add_argument("--checkpoint", metavar="DIR", default=None,
                    help="SAM checkpoint directory (SAM.save); default: the embedded tiny UNTRAINED model")
    sp.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    sp.add_argument("--batch-size", type=int, default=8, help="files per forward (default 8)")
    sp.add_argument("--json", action="store_true", help="machine-readable output (a JSON list, one object per file; "
                                                         "{file, error} for an unreadable one)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    if generation:
        sp.add_argument("--max-new-tokens", type=int, default=None, help="generation budget (default: the model config's)")
        sp.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
        sp.add_argument("--temperature", type=float, default=1.0)
        sp.add_argument("--top-k", type=int, default=0, help="0 = off")
        sp.add_argument("--top-p", type=float, default=1.0, help="1 = off")
        sp.add_argument("--repetition-penalty", type=float, default=1.0, help="1 = off")
        sp.add_argument("--seed", type=int, default=0, help="sampling seed")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="samkern", description="Fused kernels and the SAM audio-language model.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    env = sub.add_parser("env", help="print versions, GPU, extension status and the backend each op uses")
    env.add_argument("--json", action="store_true", help="machine-readable output")
    env.set_defaults(func=_cmd_env)

    cap = sub.add_parser("caption", help="caption audio files with SAM")
    _add_model_args(cap, generation=True)
    cap.set_defaults(func=_cmd_caption)

    ask = sub.add_parser("ask", help="ask SAM a question about audio files")
    ask.add_argument("file", metavar="FILE", help="audio file")
    ask.add_argument("question", help="the question (quote it)")
    ask.add_argument("more_files", nargs="*", metavar="FILE", help="further audio files (same question)")
    _add_model_args(ask, generation=True, files=False)
    ask.set_defaults(func=_cmd_ask)

    ana = sub.add_parser("analyze", help="tau-effective rank and token cosine similarity of SAM's audio tokens")
    _add_model_args(ana, generation=False)
    ana.add_argument("--tau", type=float, default=0.95, help="energy fraction of the effective rank (default 0.95)")
    ana.add_argument("--energy", choices=("sigma2", "sigma"), default="sigma2",
                     help="sum squared singular values (default) or singular values")
    ana.set_defaults(func=_cmd_analyze)

    # demo / train / eval live in samkern.train.cli (imports nothing heavy at parse time)
    from samkern.train.cli import add_training_commands

    add_training_commands(sub)
    return p


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--deterministic" in argv:
        # before the parser is built: building it imports torch, whose set-up calls MKL, and MKL
        # reads MKL_CBWR once, at its first call (samkern.reproducible); argparse then checks
        # that the flag belongs to the command
        from samkern.reproducible import reproducible_cpu_math

        reproducible_cpu_math()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
