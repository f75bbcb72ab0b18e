# SPDX-License-Identifier: Apache-2.0
"""The ``demo``, ``train`` and ``eval`` subcommands of ``samkern`` (registered by
:func:`add_training_commands`; heavy imports happen inside the commands)."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, Iterable, List, Sequence

from samkern.files import read_json

__all__ = ["add_training_commands"]


def _cmd_demo(args: argparse.Namespace) -> int:
    from samkern.demo import DemoConfig, run_demo

    kw = {}
    for k in ("train_clips", "test_clips", "joint_steps", "warmup_steps", "batch_size", "seed", "lr"):
        v = getattr(args, k)
        if v is not None:
            kw[k] = v
    if args.no_caption_metrics:
        kw["caption_metrics"] = False
    if args.types:
        kw["question_types"] = tuple(t.strip() for t in args.types.split(",") if t.strip())
    try:
        cfg = DemoConfig(**kw)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        run_demo(out=args.out, device=args.device, cfg=cfg, quiet=args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from samkern.demo import evaluate_checkpoint, format_table

    if not os.path.isdir(args.checkpoint):
        print(f"error: checkpoint directory not found: {args.checkpoint}", file=sys.stderr)
        return 2
    if args.test_clips is not None and args.test_clips <= 0:
        print(f"error: --test-clips must be a positive int, got {args.test_clips}", file=sys.stderr)
        return 2
    path = args.json or os.path.join(args.checkpoint, "eval.json")
    # before the (long) evaluation, not after it: a missing parent directory is created, as
    # demo / train create --out; a path that cannot be written is an error now
    if os.path.isdir(path):
        print(f"error: --json {path} is a directory, not a file", file=sys.stderr)
        return 2
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    except OSError as e:
        print(f"error: cannot create the directory of --json {path}: {e}", file=sys.stderr)
        return 2
    try:
        res = evaluate_checkpoint(args.checkpoint, device=args.device, test_clips=args.test_clips,
                                  caption_metrics=not args.no_caption_metrics, quiet=args.quiet)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(res))
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    except OSError as e:
        print(f"error: cannot write {path}: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


# files a `samkern train` run writes at the top of --out (next to one directory per stage)
CURRICULUM_FILE = "curriculum.json"
TRAIN_ARGS_FILE = "train_args.json"  # the flags that shape the run but are not in the curriculum
FINAL_DIR = "final"


def _train_curriculum_from_args(args: argparse.Namespace) -> Any:
    """The curriculum of ``--preset`` / ``--config`` with ``--seed`` and ``--batch-size`` applied
    as overrides (of a config file's values too), validated again after the overrides. Raises
    ``ValueError`` naming the file or flag."""
    from samkern.train.config import CurriculumConfig, preset

    base = CurriculumConfig.from_json(args.config) if args.config else preset(args.preset)  # errors name the file
    d = base.to_dict()
    flags = []
    if args.seed is not None:
        d["seed"] = args.seed
        flags.append("--seed")
    if args.batch_size is not None:
        for st in d["stages"]:
            st["batch_size"] = args.batch_size
        flags.append("--batch-size")
    try:
        # from_dict: StageConfig / CurriculumConfig validation runs on the overridden values
        # (setting st.batch_size on the objects would skip it: --batch-size 0 divided by zero later)
        return CurriculumConfig.from_dict(d)
    except ValueError as e:
        raise ValueError(f"{' / '.join(flags)}: {e}") from None


def _check_train_flags(args: argparse.Namespace) -> None:
    for flag, v, minimum in (("--train-clips", args.train_clips, 1), ("--max-steps", args.max_steps, 1),
                             ("--checkpoint-every", args.checkpoint_every, 0)):
        if v is not None and v < minimum:
            kind = "positive" if minimum else "non-negative"
            raise ValueError(f"{flag} must be a {kind} int, got {v}")
    if args.resume and args.overwrite:
        raise ValueError("--resume and --overwrite exclude each other (continue the run in --out, or delete it)")
    if args.device != "auto":
        from samkern.demo import pick_device

        pick_device(args.device)  # ValueError for an unknown device or cuda without CUDA


def _train_args(args: argparse.Namespace) -> Dict[str, Any]:
    return {"train_clips": args.train_clips, "max_steps": args.max_steps}


def _previous_run(out: str, stage_names: Iterable[str]) -> List[str]:
    """The files and directories of an earlier ``samkern train`` run in ``out``: the top-level
    files, ``final/`` and the stage directories (those of ``stage_names`` that hold checkpoints
    or training logs). Only these are removed by ``--overwrite``; other files in ``out`` stay."""
    if not os.path.isdir(out):
        return []
    found = [os.path.join(out, f) for f in (CURRICULUM_FILE, TRAIN_ARGS_FILE, FINAL_DIR)
             if os.path.lexists(os.path.join(out, f))]
    marks = ("losses.json", "loss.png", "tensorboard")  # what a stage's Trainer writes besides checkpoints
    for name in sorted(set(stage_names)):
        d = os.path.join(out, name)
        if os.path.isdir(d) and any(e.startswith(("checkpoint-", ".checkpoint-")) or e in marks for e in os.listdir(d)):
            found.append(d)
    return found


def _config_diff(stored: Dict[str, Any], requested: Dict[str, Any]) -> List[str]:
    """``"field: stored X, requested Y"`` for each differing curriculum field (stages by name)."""
    out: List[str] = []
    for k in sorted(set(stored) | set(requested)):
        a, b = stored.get(k), requested.get(k)
        if k == "stages":
            na, nb = [s["name"] for s in a], [s["name"] for s in b]
            if na != nb:
                out.append(f"stages: stored {na}, requested {nb}")
                continue
            for sa, sb in zip(a, b):
                out += [f"{sa['name']}.{f}: stored {sa.get(f)!r}, requested {sb.get(f)!r}"
                        for f in sorted(set(sa) | set(sb)) if sa.get(f) != sb.get(f)]
        elif a != b:
            out.append(f"{k}: stored {a!r}, requested {b!r}")
    return out


def _check_out_dir(args: argparse.Namespace, cur: Any) -> List[str]:
    """Check ``--out`` against ``--resume`` / ``--overwrite`` before anything is written; returns
    the previous run's paths to delete (``--overwrite``; else ``[]``). Raises ``ValueError``."""
    from samkern.train.config import CurriculumConfig

    out = args.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"--out {out} exists and is not a directory")
    cfile = os.path.join(out, CURRICULUM_FILE)
    stored_names: List[str] = []
    if os.path.isfile(cfile):
        try:
            stored_names = [s["name"] for s in read_json(cfile)["stages"]]
        except (ValueError, KeyError, TypeError):  # unreadable: only --resume needs it (checked below)
            pass
    found = _previous_run(out, stored_names + [s.name for s in cur.stages])
    if args.resume:
        if not os.path.isdir(out):
            raise ValueError(f"--resume: --out {out} does not exist (nothing to resume; drop --resume to start a run)")
        if not os.path.isfile(cfile):
            hint = (f" but holds run files ({', '.join(os.path.basename(p) for p in found)}); pass --overwrite to start over"
                    if found else "")
            raise ValueError(f"--resume: {out} holds no run to resume (no {CURRICULUM_FILE}){hint}")
        try:
            stored = CurriculumConfig.from_dict(read_json(cfile))
        except ValueError as e:
            raise ValueError(f"--resume: {cfile}: {e}") from None
        diffs = _config_diff(stored.to_dict(), cur.to_dict())
        afile = os.path.join(out, TRAIN_ARGS_FILE)
        if os.path.isfile(afile):
            stored_args = read_json(afile)
            if not isinstance(stored_args, dict):
                raise ValueError(f"--resume: {afile} does not hold a JSON object")
            diffs += [f"{k} (--{k.replace('_', '-')}): stored {stored_args.get(k)!r}, requested {v!r}"
                      for k, v in _train_args(args).items() if stored_args.get(k) != v]
        else:
            print(f"warning: {out} has no {TRAIN_ARGS_FILE} (written by an older samkern): --train-clips and "
                  "--max-steps cannot be checked against the stored run", file=sys.stderr)
        if diffs:
            raise ValueError(f"--resume: the run in {out} was started with other settings: {'; '.join(diffs)} "
                             "(pass the flags / config it was started with, or --overwrite to start over)")
        return []
    if found and not args.overwrite:
        raise ValueError(f"--out {out} holds a previous run ({', '.join(os.path.basename(p) for p in found)}): "
                         "pass --resume to continue it, or --overwrite to delete it and start over")
    return found


def _cmd_train(args: argparse.Namespace) -> int:
    from samkern.train import distributed as dist_utils

    try:
        # everything that can be checked without training, before anything is written
        cur = _train_curriculum_from_args(args)
        _check_train_flags(args)
        stale = _check_out_dir(args, cur)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.seed is not None and args.config:
        print(f"[train] --seed {args.seed} overrides the seed of {args.config}", file=sys.stderr)
    dist_utils.set_wrap_strategy(args.strategy)
    rank, world, dev = dist_utils.init_distributed(device=None if args.device == "auto" else args.device)
    try:
        # in a function: the model (FSDP2-sharded parameters) and the Trainers are freed when it
        # returns, before the process group is destroyed (see dist_utils.cleanup)
        _train_and_save(args, cur, rank, dev, stale)
    except (ValueError, OSError) as e:
        # bad input found later (a stage with fewer examples than its batch, a corrupt or
        # mismatched checkpoint) and file-system errors; anything else is a bug: a traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist_utils.cleanup()
    return 0


def _train_and_save(args: argparse.Namespace, cur: Any, rank: int, dev: Any, stale: Sequence[str] = ()) -> None:
    import shutil

    from samkern.data.synth import SynthAudioDataset
    from samkern.demo import DemoConfig, build_demo_model
    from samkern.train import distributed as dist_utils
    from samkern.train.sam import plan_curriculum, synth_examples, synth_features, train_curriculum

    dcfg = DemoConfig(train_clips=args.train_clips, lora_r=cur.lora_r, seed=cur.seed)
    ds = SynthAudioDataset("train", size=args.train_clips, seed=cur.seed)
    texts = [e["instruction"] for e in synth_examples(ds, ("classification", "caption", "closed", "open"))]
    texts += [e["answer"] for e in synth_examples(ds, ("classification", "caption", "closed", "open"))]
    model = build_demo_model(dcfg, texts)
    if cur.connector != "concat":
        from samkern.models.sam.model import SAM

        model = SAM(type(model.config)(**{**model.config.__dict__, "connector": cur.connector}), model.tokenizer,
                    encoder=model.encoder, lm=model.lm)
    model = model.to(dev)
    feats = synth_features(ds, dcfg.n_frames, progress=rank == 0)
    # every stage's batch against its examples, before the first file is written
    plan_curriculum(model, cur, ds, feats, args.out, max_steps=args.max_steps, checkpoint_every=args.checkpoint_every)
    if rank == 0:
        for p in stale:  # --overwrite: the previous run's files only (see _previous_run)
            print(f"[train] --overwrite: removing {p}")
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p)
            else:
                os.remove(p)
        os.makedirs(args.out, exist_ok=True)
        if not args.resume:  # on --resume the stored ones matched (_check_out_dir)
            cur.to_json(os.path.join(args.out, CURRICULUM_FILE))
        if not os.path.isfile(os.path.join(args.out, TRAIN_ARGS_FILE)):
            with open(os.path.join(args.out, TRAIN_ARGS_FILE), "w", encoding="utf-8") as f:
                json.dump(_train_args(args), f, indent=1)
    dist_utils.barrier()
    hist = train_curriculum(model, cur, ds, feats, args.out, max_steps=args.max_steps,
                            progress="auto" if rank == 0 else "none", resume=args.resume,
                            checkpoint_every=args.checkpoint_every, log=print if rank == 0 else (lambda m: None))
    if rank == 0:
        from samkern.demo import DEMO_FILE
        from dataclasses import asdict

        final = os.path.join(args.out, FINAL_DIR)
        model.save(final)
        with open(os.path.join(final, DEMO_FILE), "w", encoding="utf-8") as f:
            json.dump(asdict(dcfg), f, indent=1)
        last = f", last loss {hist[-1]['loss']:.4f}" if hist else ""
        print(f"[train] {len(hist)} steps{last}; model saved to {final}")


_DETERMINISTIC_HELP = ("bit-reproducible CPU math for the seed (MKL_CBWR=AVX2,STRICT unless set; the CPU demo "
                       "trains ~20 %% slower): samkern/reproducible.py")


def add_training_commands(sub) -> None:
    """Register ``demo``, ``train`` and ``eval`` on an argparse subparsers object."""
    demo = sub.add_parser("demo", help="train a small SAM on the embedded dataset, evaluate it, save it (minutes on a CPU)")
    demo.add_argument("--out", default="./samkern-demo", help="output directory (default ./samkern-demo)")
    demo.add_argument("--device", default="auto", help="auto (cuda if available) | cpu | cuda | cuda:N")
    demo.add_argument("--train-clips", type=int, default=None, help="training clips (default 1200)")
    demo.add_argument("--test-clips", type=int, default=None, help="held-out clips (default 150)")
    demo.add_argument("--joint-steps", type=int, default=None, help="steps of the joint stage (default 1100)")
    demo.add_argument("--warmup-steps", type=int, default=None, help="steps of the connector warm-up (default 40)")
    demo.add_argument("--batch-size", type=int, default=None)
    demo.add_argument("--lr", type=float, default=None)
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--types", default=None,
                      help="comma-separated closed-ended question types to train and score (default: the demo's set)")
    demo.add_argument("--no-caption-metrics", action="store_true", help="skip BLEU/METEOR/CIDEr (no Java needed)")
    demo.add_argument("--quiet", action="store_true")
    demo.add_argument("--deterministic", action="store_true",
                      help=_DETERMINISTIC_HELP)
    demo.set_defaults(func=_cmd_demo)

    tr = sub.add_parser("train", help="run a training curriculum (LTU presets) on the embedded dataset; torchrun for multi-GPU")
    tr.add_argument("--preset", default="ltu", help="ltu | frozen_encoder | connector_a|b|c | lora_r8 | lora_r256")
    tr.add_argument("--config", default=None, help="a CurriculumConfig JSON file (replaces --preset; --seed and "
                                                  "--batch-size still override its values)")
    tr.add_argument("--out", default="./samkern-train",
                    help="output directory; one that holds a previous run is refused unless --resume or --overwrite")
    tr.add_argument("--train-clips", type=int, default=1000)
    tr.add_argument("--batch-size", type=int, default=None, help="global batch of every stage (overrides the config's)")
    tr.add_argument("--max-steps", type=int, default=None, help="cap every stage at this many steps")
    tr.add_argument("--seed", type=int, default=None,
                    help="seed of the run (default: the preset's, 0; with --config it overrides the file's seed)")
    tr.add_argument("--device", default="auto")
    tr.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="multi-process wrapping (torchrun)")
    tr.add_argument("--checkpoint-every", type=int, default=0, metavar="N",
                    help="also checkpoint every N steps inside each stage, so --resume continues an interrupted "
                         "stage from there (default 0: only at the end of each stage, as before; an interrupted "
                         "stage then restarts from its beginning)")
    tr.add_argument("--resume", action="store_true",
                    help="continue the run in --out: finished stages are skipped, an interrupted one continues from "
                         "its last complete checkpoint; refused when --out holds no run or the stored curriculum.json "
                         "/ train_args.json (preset or config, seed, batch sizes, --train-clips, --max-steps) differ "
                         "from this command's")
    tr.add_argument("--overwrite", action="store_true",
                    help="delete the previous run in --out first (its curriculum.json, train_args.json, final/ and "
                         "stage directories; other files are kept), then start a new run")
    tr.add_argument("--deterministic", action="store_true",
                    help=_DETERMINISTIC_HELP)
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="evaluate a SAM checkpoint on held-out synthetic clips; prints a table, writes JSON")
    ev.add_argument("--checkpoint", required=True, metavar="DIR")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--test-clips", type=int, default=None)
    ev.add_argument("--json", default=None, help="output JSON path (default DIR/eval.json; its directory is created)")
    ev.add_argument("--no-caption-metrics", action="store_true")
    ev.add_argument("--quiet", action="store_true", help="no progress output on stderr")
    ev.set_defaults(func=_cmd_eval)
