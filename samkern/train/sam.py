# SPDX-License-Identifier: Apache-2.0
"""SAM-specific training glue: instruction examples from the embedded synthetic dataset,
precomputed EAT features, the batch collate / loss function for :class:`~samkern.train.trainer.Trainer`,
and the evaluation used by ``samkern demo`` / ``samkern eval``.

An *example* is one (clip, instruction, answer) triple::

    {"clip": int, "instruction": str, "answer": str, "task": str, "type": str, "options": list | None}

``task`` is one of :data:`samkern.train.config.TASKS`: ``classification`` (name the first sound
event: answer = its primary label), ``caption`` (``SAM.config.caption_instruction`` ->
caption), ``closed`` (the dataset's closed-ended questions, with options), ``open`` (its
open-ended questions -> caption).

Glossary: N clips, F_r fbank frames kept (``n_time_patches * 16``), 128 mel bins, B batch.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from samkern.train.config import TASKS

__all__ = [
    "CLASSIFY_INSTRUCTION",
    "synth_examples",
    "synth_features",
    "ExampleDataset",
    "collate_examples",
    "sam_loss",
    "unwrap",
    "long_memory_init",
    "generate_answers",
    "evaluate_sam",
    "plan_curriculum",
    "train_curriculum",
    "build_text_tokenizer",
]

CLASSIFY_INSTRUCTION = "Classify the first sound event."


def synth_examples(dataset: Any, tasks: Sequence[str], question_types: Optional[Sequence[str]] = None,
                   caption_instruction: str = "Write an audio caption describing the sound.",
                   indices: Optional[Sequence[int]] = None) -> List[Dict[str, Any]]:
    """Instruction examples of a :class:`~samkern.data.synth.SynthAudioDataset` (no audio is
    rendered: only clip descriptions are read).

    Args:
        tasks: task groups (subset of :data:`~samkern.train.config.TASKS`).
        question_types: keep only these closed-ended question types (None = all).
        indices: clips to use (default all); ``clip`` in each example indexes this list.
    """
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
    idx = list(range(len(dataset))) if indices is None else list(indices)
    out: List[Dict[str, Any]] = []
    for k, i in enumerate(idx):
        spec = dataset.describe(i)
        if "classification" in tasks:
            out.append(dict(clip=k, instruction=CLASSIFY_INSTRUCTION, answer=spec.main_label, task="classification",
                            type="classification", options=None))
        if "caption" in tasks:
            out.append(dict(clip=k, instruction=caption_instruction, answer=spec.caption, task="caption",
                            type="caption", options=None))
        for q in spec.qa:
            if q["type"] == "caption":
                if "open" in tasks:
                    out.append(dict(clip=k, instruction=q["question"], answer=q["answer"], task="open", type="open",
                                    options=None))
            elif "closed" in tasks and (question_types is None or q["type"] in question_types):
                out.append(dict(clip=k, instruction=q["question"], answer=q["answer"], task="closed", type=q["type"],
                                options=list(q["options"])))
    return out


def synth_features(dataset: Any, n_frames: int, indices: Optional[Sequence[int]] = None, batch: int = 64,
                   progress: bool = False) -> torch.Tensor:
    """EAT features of the clips: ``(N, n_frames, 128)`` float32 (rendered in batches of
    ``batch`` clips, zero-padded / cut to ``n_frames`` as :func:`eat_features` does)."""
    from samkern.models.sam.audio import eat_features

    idx = list(range(len(dataset))) if indices is None else list(indices)
    if not idx:
        raise ValueError("no clips to featurise")
    out = []
    for lo in range(0, len(idx), batch):
        items = [dataset[i]["audio"] for i in idx[lo : lo + batch]]
        lengths = torch.tensor([a.shape[0] for a in items])
        wav = torch.zeros(len(items), int(lengths.max()))
        for j, a in enumerate(items):
            wav[j, : a.shape[0]] = a
        out.append(eat_features(wav, lengths, target_frames=n_frames))
        if progress:
            print(f"\rfeatures: {min(lo + batch, len(idx))}/{len(idx)} clips", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return torch.cat(out)


class ExampleDataset(torch.utils.data.Dataset):
    """Examples joined with their clip's features: item = example dict + ``features`` (F_r, 128).

    ``device``: where the features live (moved once, here). Pass the model's GPU: a batch is then
    one on-device stack instead of a host stack and a pageable host-to-device copy per step
    (measured in the demo on an H100: ~18 ms of a ~30 ms step at batch 32,
    ``benchmarks/results/dev-runs/s5-call2-demo-profile-*``).
    """

    def __init__(self, examples: List[Dict[str, Any]], features: torch.Tensor,
                 device: Optional[torch.device] = None) -> None:
        if not examples:
            raise ValueError("no examples")
        if features.dim() != 3:
            raise ValueError(f"features must be (N, frames, mels), got shape {tuple(features.shape)}")
        n = features.shape[0]
        if any(not 0 <= e["clip"] < n for e in examples):
            raise ValueError(f"an example refers to a clip outside the {n} featurised clips")
        self.examples = examples
        self.features = features if device is None else features.to(device)

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        e = self.examples[i]
        return dict(e, features=self.features[e["clip"]])


def collate_examples(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """-> {"features": (B, F_r, 128), "instructions": [B], "answers": [B], "tasks": [B]}."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    return {
        "features": torch.stack([it["features"] for it in items]),
        "instructions": [it["instruction"] for it in items],
        "answers": [it["answer"] for it in items],
        "tasks": [it["task"] for it in items],
    }


def unwrap(model: nn.Module) -> nn.Module:
    """The SAM inside a DDP wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def sam_loss(model: nn.Module, batch: Dict[str, Any]):
    """Trainer ``loss_fn``: teacher-forced SAM loss on the answer tokens -> (loss, answer tokens)."""
    sam = unwrap(model)
    out = model(features=batch["features"].to(sam.device), instructions=batch["instructions"], answers=batch["answers"])
    return out.loss, int(out.num_tokens)


@torch.no_grad()
def long_memory_init(model: nn.Module, a_range=(0.001, 0.01), dt_range=(0.5, 2.0), zero_d: bool = True) -> None:
    """Re-initialise every Mamba-2 mixer of a *randomly initialised* LM for long memory.

    Why: with mamba-ssm's init (A in [1, 16], dt in [1e-3, 0.1], D = 1) the SSM's read-out of
    tokens more than a few positions back is ~1 % of a block's output, so a random LM cannot
    see the audio tokens from the end of a 30-40 token prompt and a short training run never
    learns to use them. Slow decay (A small), large dt and no skip (D = 0) make the state
    carry the audio to the answer from the first step. Log-spaced over the heads. Only for
    training from scratch: a pretrained LM already has learnt values.
    """
    for mod in model.modules():
        if hasattr(mod, "A_log") and hasattr(mod, "dt_bias"):
            H = mod.A_log.numel()
            a = torch.logspace(math.log10(a_range[0]), math.log10(a_range[1]), H)
            dt = torch.logspace(math.log10(dt_range[0]), math.log10(dt_range[1]), H)
            mod.A_log.copy_(torch.log(a).reshape(mod.A_log.shape))
            # inverse softplus: softplus(dt_bias) == dt
            mod.dt_bias.copy_((dt + torch.log(-torch.expm1(-dt))).reshape(mod.dt_bias.shape))
            if zero_d and hasattr(mod, "D"):
                mod.D.zero_()


def build_text_tokenizer(texts: Sequence[str], vocab_size: int = 1000, template: Optional[str] = None):
    """A byte-level BPE tokenizer learnt on ``texts`` (deterministic): the demo's questions,
    answers and captions then encode to about one token per word. Same special tokens as
    :func:`samkern.models.sam.model.build_tiny_tokenizer` (EOS ``<|endoftext|>`` = 0,
    ``<pad>`` = 1) and ``"&&"`` as one token."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    from samkern.models.sam.model import TINY_SPECIAL
    from samkern.models.sam.tokenizer import TextTokenizer

    corpus = list(texts) + ([template] if template else [])
    if not corpus:
        raise ValueError("no texts to learn the tokenizer from")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(TINY_SPECIAL),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    tok.add_tokens([AddedToken("&&", special=False, normalized=False)])
    return TextTokenizer(tok, eos_token="<|endoftext|>")


@torch.no_grad()
def generate_answers(model: nn.Module, features: torch.Tensor, examples: Sequence[Dict[str, Any]],
                     max_new_tokens: int = 8, batch: int = 64,
                     progress: Optional[Callable[[int, int], None]] = None) -> List[str]:
    """Greedy answers of ``model`` to each example's instruction about its clip.
    ``progress(done, total)`` is called after each batch."""
    model.eval()
    out: List[str] = []
    for lo in range(0, len(examples), batch):
        ex = examples[lo : lo + batch]
        f = features[torch.tensor([e["clip"] for e in ex])].to(model.device)
        out.extend(model.ask(None, [e["instruction"] for e in ex], features=f, max_new_tokens=max_new_tokens))
        if progress is not None:
            progress(len(out), len(examples))
    return out


class _EvalProgress:
    """Progress lines of :func:`evaluate_sam` (each phase, and each generation batch of it) with
    the elapsed time: a long evaluation is otherwise silent until its table."""

    def __init__(self, log: Optional[Callable[[str], None]]) -> None:
        self.log, self.t0 = log, time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.log is not None:
            self.log(f"[eval] {msg} ({time.perf_counter() - self.t0:.0f}s)")

    def batches(self, what: str) -> Callable[[int, int], None]:
        return lambda done, total: self(f"{what}: {done}/{total}")


@torch.no_grad()
def _mean_loss(model: nn.Module, features: torch.Tensor, examples: Sequence[Dict[str, Any]], batch: int = 64) -> float:
    model.eval()
    tot, n = 0.0, 0
    for lo in range(0, len(examples), batch):
        ex = examples[lo : lo + batch]
        f = features[torch.tensor([e["clip"] for e in ex])].to(model.device)
        o = model(features=f, instructions=[e["instruction"] for e in ex], answers=[e["answer"] for e in ex])
        tot += float(o.loss) * o.num_tokens
        n += o.num_tokens
    return tot / max(n, 1)


def evaluate_sam(model: nn.Module, features: torch.Tensor, examples: Sequence[Dict[str, Any]],
                 label_names: Optional[Sequence[str]] = None, caption_metrics: bool = True,
                 text_encoder: Any = "auto", max_new_tokens: int = 8, caption_tokens: int = 40,
                 log: Optional[Callable[[str], None]] = None) -> Dict[str, Any]:
    """Held-out evaluation: loss, closed-QA accuracy (+ chance), classification accuracy,
    caption metrics. Missing optional pieces are skipped with a note in ``"notes"``.

    Args:
        examples: held-out examples (any tasks; each metric uses its own task's examples).
        label_names: classification label set (default: the synthetic dataset's labels).
        text_encoder: classification matching: "auto" (the bundled sentence encoder if it
            loads, else exact label match), "exact", or anything
            :func:`samkern.eval.classification.load_text_encoder` accepts.
        log: called with a progress line per phase and generation batch (None: silent).
    """
    from samkern.eval.closed_qa import closed_qa_accuracy

    say = _EvalProgress(log)
    res: Dict[str, Any] = {"notes": []}
    say(f"loss on {len(examples)} examples")
    res["loss"] = _mean_loss(model, features, examples)
    closed = [e for e in examples if e["task"] == "closed"]
    if closed:
        preds = generate_answers(model, features, closed, max_new_tokens, progress=say.batches("closed-ended questions"))
        r = closed_qa_accuracy(preds, closed)
        res["closed_qa"] = {k: r[k] for k in ("accuracy", "exact_match", "n", "chance", "unmatched", "by_type")}
        res["closed_qa"]["samples"] = [
            {"question": e["instruction"], "answer": e["answer"], "prediction": p} for e, p in zip(closed[:8], preds)]
    cls = [e for e in examples if e["task"] == "classification"]
    if cls:
        if label_names is None:
            from samkern.data.synth import LABELS as label_names  # noqa: N811
        preds = generate_answers(model, features, cls, max_new_tokens, progress=say.batches("classification"))
        exact = sum(p.strip().lower() == e["answer"].lower() for p, e in zip(preds, cls)) / len(cls)
        res["classification"] = {"exact_match": exact, "n": len(cls), "chance": 1.0 / len(label_names)}
        if text_encoder != "exact":
            try:
                from samkern.eval.classification import classification_accuracy

                enc = None if text_encoder == "auto" else text_encoder
                say("classification by text similarity")
                r = classification_accuracy(preds, [e["answer"] for e in cls], list(label_names), encoder=enc)
                res["classification"]["accuracy"] = r["accuracy"]
                res["classification"]["matching"] = "sentence-embedding similarity"
            except Exception as e:  # noqa: BLE001 - optional dependency: report, fall back
                res["notes"].append(f"classification by text similarity skipped ({type(e).__name__}: {e}); exact match used")
        if "accuracy" not in res["classification"]:
            res["classification"]["accuracy"] = exact
            res["classification"]["matching"] = "exact match"
    caps = [e for e in examples if e["task"] == "caption"]
    if caps:
        preds = generate_answers(model, features, caps, caption_tokens, progress=say.batches("captions"))
        res["captions"] = {"n": len(caps), "samples": [
            {"reference": e["answer"], "prediction": p} for e, p in zip(caps[:5], preds)]}
        if caption_metrics:
            try:
                from samkern.eval.captioning import caption_metrics as cm

                say("caption metrics")
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    m = cm(preds, [[e["answer"]] for e in caps], spice=False)
                res["captions"]["metrics"] = {k: v for k, v in m.items() if isinstance(v, float)}
            except Exception as e:  # noqa: BLE001 - java / pycocoevalcap missing
                res["notes"].append(f"caption metrics skipped ({type(e).__name__}: {e})")
    return res


def plan_curriculum(model: nn.Module, curriculum: Any, dataset: Any, features: torch.Tensor, out_dir: Optional[str],
                    max_steps: Optional[int] = None, progress: str = "auto",
                    checkpoint_every: int = 0) -> List[Tuple[Any, "ExampleDataset", Optional[str], Any]]:
    """Every stage's ``(StageConfig, ExampleDataset, stage directory, TrainerConfig)`` for
    :func:`train_curriculum`, checked (step count, batch vs examples) before anything trains or
    is written: raises ``ValueError`` naming the stage. Cheap (no training, no files)."""
    import dataclasses
    import os

    from samkern.train.trainer import TrainerConfig

    if max_steps is not None and (not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps <= 0):
        raise ValueError(f"max_steps must be a positive int or None, got {max_steps!r}")
    features = features.to(unwrap(model).device)  # once for every stage (see ExampleDataset)
    plan = []
    for st in curriculum.stages:
        ex = synth_examples(dataset, st.tasks, st.question_types, caption_instruction=unwrap(model).config.caption_instruction)
        data = ExampleDataset(ex, features)
        stage_dir = None if out_dir is None else os.path.join(out_dir, st.name)
        tcfg = TrainerConfig.from_stage(st, len(data), seed=curriculum.seed, precision=curriculum.precision,
                                        out_dir=stage_dir, progress=progress, checkpoint_every=checkpoint_every)
        if max_steps is not None:
            steps = min(tcfg.max_steps, max_steps)
            # replace(): TrainerConfig's checks run again on the capped values
            tcfg = dataclasses.replace(tcfg, max_steps=steps, warmup_steps=min(tcfg.warmup_steps, steps))
        if tcfg.batch_size > len(data):
            raise ValueError(f"stage {st.name!r}: batch {tcfg.batch_size} exceeds its {len(data)} examples")
        plan.append((st, data, stage_dir, tcfg))
    return plan


def train_curriculum(model: nn.Module, curriculum: Any, dataset: Any, features: torch.Tensor, out_dir: Optional[str],
                     max_steps: Optional[int] = None, progress: str = "auto", resume: bool = False,
                     checkpoint_every: int = 0, log=print) -> List[Dict[str, Any]]:
    """Run every stage of a :class:`~samkern.train.config.CurriculumConfig` on a synthetic dataset.

    Each stage selects its trainable parameters (:func:`~samkern.train.trainer.apply_trainable`),
    draws its task mix from ``dataset`` (:func:`synth_examples`) and trains with its own
    :class:`~samkern.train.trainer.Trainer` (checkpoints under ``<out_dir>/<stage name>/``).
    ``max_steps`` caps every stage (smoke runs). ``checkpoint_every``: also save every that many
    steps inside a stage (0: only at its end). ``resume``: a stage whose directory holds a
    complete final checkpoint is skipped (its weights are loaded), an interrupted one continues
    from its last complete checkpoint at or below its step count (from step 0 if none). Every
    stage is checked (:func:`plan_curriculum`) before the first one trains. Returns the
    concatenated history (records gain ``stage``).
    """
    import os

    from samkern.train.trainer import Trainer, apply_trainable, complete_checkpoints, is_complete_checkpoint, load_model_weights

    plan = plan_curriculum(model, curriculum, dataset, features, out_dir, max_steps=max_steps, progress=progress,
                           checkpoint_every=checkpoint_every)
    history: List[Dict[str, Any]] = []
    for st, data, stage_dir, tcfg in plan:
        apply_trainable(model, st.trainable)
        trainer = Trainer(model, data, sam_loss, tcfg, collate_fn=collate_examples)
        final = None if stage_dir is None else os.path.join(stage_dir, f"checkpoint-{tcfg.max_steps}")
        # complete checkpoints only: a directory left by a save cut off midway is not "done"
        if resume and final is not None and is_complete_checkpoint(final):
            load_model_weights(model, os.path.join(final, "model.safetensors"))
            log(f"[train] stage {st.name}: done already ({final})")
            continue
        last = None
        if resume and stage_dir is not None:
            # never a checkpoint past this stage's step count (a longer earlier run's)
            ck = complete_checkpoints(stage_dir, max_step=tcfg.max_steps)
            last = ck[-1][1] if ck else None
        log(f"[train] stage {st.name}: {st.trainable}, tasks {list(st.tasks)}, {len(data)} examples, "
            f"{tcfg.max_steps} steps, lr {st.lr:g}" + (f"; resuming from {last}" if last else ""))
        for r in trainer.train(resume_from=last):
            history.append(dict(r, stage=st.name))
    return history
