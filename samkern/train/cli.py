# SPDX-License-Identifier: Apache-2.0
"""The ``demo``, ``train`` and ``eval`` subcommands of ``samkern`` (registered by
:func:`add_training_commands`; heavy imports happen inside the commands)."""
from __future__ import annotations

import argparse
import json
import os
import sys

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
                                  caption_metrics=not args.no_caption_metrics)
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


def _cmd_train(args: argparse.Namespace) -> int:
    from samkern.train import distributed as dist_utils
    from samkern.train.config import CurriculumConfig, preset

    try:
        cur = CurriculumConfig.from_json(args.config) if args.config else preset(args.preset, seed=args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.batch_size is not None:
        for st in cur.stages:
            st.batch_size = args.batch_size
    dist_utils.set_wrap_strategy(args.strategy)
    rank, world, dev = dist_utils.init_distributed(device=None if args.device == "auto" else args.device)
    try:
        # in a function: the model (FSDP2-sharded parameters) and the Trainers are freed when it
        # returns, before the process group is destroyed (see dist_utils.cleanup)
        _train_and_save(args, cur, rank, dev)
    finally:
        dist_utils.cleanup()
    return 0


def _train_and_save(args: argparse.Namespace, cur, rank: int, dev) -> None:
    from samkern.data.synth import SynthAudioDataset
    from samkern.demo import DemoConfig, build_demo_model
    from samkern.train.sam import synth_examples, synth_features, train_curriculum

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
    os.makedirs(args.out, exist_ok=True)
    if rank == 0:
        cur.to_json(os.path.join(args.out, "curriculum.json"))
    hist = train_curriculum(model, cur, ds, feats, args.out, max_steps=args.max_steps,
                            progress="auto" if rank == 0 else "none", resume=args.resume,
                            log=print if rank == 0 else (lambda m: None))
    if rank == 0:
        from samkern.demo import DEMO_FILE
        from dataclasses import asdict

        final = os.path.join(args.out, "final")
        model.save(final)
        with open(os.path.join(final, DEMO_FILE), "w", encoding="utf-8") as f:
            json.dump(asdict(dcfg), f, indent=1)
        last = f", last loss {hist[-1]['loss']:.4f}" if hist else ""
        print(f"[train] {len(hist)} steps{last}; model saved to {final}")


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
    demo.set_defaults(func=_cmd_demo)

    tr = sub.add_parser("train", help="run a training curriculum (LTU presets) on the embedded dataset; torchrun for multi-GPU")
    tr.add_argument("--preset", default="ltu", help="ltu | frozen_encoder | connector_a|b|c | lora_r8 | lora_r256")
    tr.add_argument("--config", default=None, help="a CurriculumConfig JSON file (overrides --preset)")
    tr.add_argument("--out", default="./samkern-train", help="output directory")
    tr.add_argument("--train-clips", type=int, default=1000)
    tr.add_argument("--batch-size", type=int, default=None, help="global batch of every stage")
    tr.add_argument("--max-steps", type=int, default=None, help="cap every stage at this many steps")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="auto")
    tr.add_argument("--strategy", choices=("ddp", "fsdp"), default="ddp", help="multi-process wrapping (torchrun)")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoints in --out")
    tr.set_defaults(func=_cmd_train)

    ev = sub.add_parser("eval", help="evaluate a SAM checkpoint on held-out synthetic clips; prints a table, writes JSON")
    ev.add_argument("--checkpoint", required=True, metavar="DIR")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--test-clips", type=int, default=None)
    ev.add_argument("--json", default=None, help="output JSON path (default DIR/eval.json; its directory is created)")
    ev.add_argument("--no-caption-metrics", action="store_true")
    ev.set_defaults(func=_cmd_eval)
