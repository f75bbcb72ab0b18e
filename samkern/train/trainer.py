# SPDX-License-Identifier: Apache-2.0
"""A small, model-agnostic trainer with exact resume.

* AdamW on the parameters with ``requires_grad``; linear warm-up then cosine / linear decay
  (or constant) — :func:`lr_lambda`.
* bf16 autocast on CUDA, fp32 on CPU (``precision="auto"``); gradient clipping; gradient
  accumulation (``grad_accum`` micro-batches per optimizer step).
* Seedable: python / numpy / torch (CPU and CUDA) RNGs and the data order
  (:class:`ResumableSampler`, a per-epoch permutation from ``seed + epoch``).
* Checkpoints ``<out_dir>/checkpoint-<step>/``: ``model.safetensors`` (every model tensor,
  shared ones once) and ``trainer_state.pt`` (optimizer, scheduler, all RNG states, the
  sampler position, the step and the loss history). :meth:`Trainer.train` with
  ``resume_from=`` continues bit-identically on the CPU (same losses as an uninterrupted run).
  A checkpoint is written into a temporary sibling directory and renamed into place when both
  files are complete (:func:`is_complete_checkpoint`); ``trainer_state.pt`` holds tensors and
  plain Python types only and is read with ``torch.load(weights_only=True)``.
  Under FSDP2 the shards are gathered, so the files are the same full ones a single-process run
  writes, and a checkpoint resumes under any process count / wrapping.
* Multi-process: under ``torchrun`` (see :mod:`samkern.train.distributed`) the model is wrapped
  in DDP (or FSDP2) and each process takes its slice of every global batch; gradients are
  averaged over processes, so N processes x (B / N) equal one process x B.
* ``backward_on_calling_thread=True`` runs single-process CUDA backward on the calling thread
  (``torch.autograd.set_multithreading_enabled(False)``, :func:`single_thread_backward`) instead
  of the engine's per-device worker thread, whose hand-off is host time. Measured on the H100
  box: at 64 tokens an identity autograd.Function fwd+bwd 94 -> 54 us, the LoRA linear 875 ->
  577 us, peft-style LoRA 646 -> 438 us (``benchmarks/results/dev-runs/s10-call7-lora-host.log``);
  but a whole demo training step only moved 38.3 -> 34.1 ms at batch 128 and 20.9 -> 22.2 ms at
  batch 32 (``s10-call9``), so it is off by default. CPU and multi-process runs ignore it (DDP /
  FSDP reduce gradients from autograd hooks).
* A progress bar (tqdm when installed, else a line every ``log_every`` steps) with the loss and
  tokens/s, TensorBoard scalars when ``torch.utils.tensorboard`` imports, and ``loss.png``
  (matplotlib, else a built-in PNG writer) + ``losses.json`` at the end.

The loss of one optimizer step is the mean of the micro-batch losses (each micro-batch loss is
whatever ``loss_fn`` returns, usually a mean over its tokens); with equal-sized micro-batches
this is the loss of the whole global batch.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from samkern.train import distributed as dist_utils
from samkern.train.config import SCHEDULES, TRAINABLE, StageConfig

__all__ = [
    "TrainerConfig",
    "Trainer",
    "ResumableSampler",
    "lr_lambda",
    "apply_trainable",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
    "save_model_weights",
    "load_model_weights",
    "write_loss_png",
    "is_complete_checkpoint",
    "complete_checkpoints",
    "load_trainer_state",
    "STATE_FILE",
    "WEIGHTS_FILE",
]

STATE_FILE = "trainer_state.pt"
WEIGHTS_FILE = "model.safetensors"

LossFn = Callable[[nn.Module, Any], Union[torch.Tensor, Tuple[torch.Tensor, int]]]


def is_complete_checkpoint(path: str) -> bool:
    """Whether ``path`` is a finished ``checkpoint-<step>`` directory (both files present).

    :meth:`Trainer.save_checkpoint` renames a fully written temporary directory into place, so a
    save cut off midway leaves no ``checkpoint-<step>`` at all; the file check also rejects
    directories written by older versions that saved in place."""
    return os.path.isfile(os.path.join(path, WEIGHTS_FILE)) and os.path.isfile(os.path.join(path, STATE_FILE))


def complete_checkpoints(out_dir: str, max_step: Optional[int] = None) -> List[Tuple[int, str]]:
    """``(step, path)`` of the complete ``checkpoint-<step>`` directories in ``out_dir`` with
    ``step <= max_step`` (when given), by step; names that are not ``checkpoint-<int>`` and
    incomplete directories are skipped."""
    out: List[Tuple[int, str]] = []
    if not os.path.isdir(out_dir):
        return out
    for d in os.listdir(out_dir):
        head, _, tail = d.partition("-")
        if head != "checkpoint" or not tail.isdigit():
            continue
        step, path = int(tail), os.path.join(out_dir, d)
        if (max_step is None or step <= max_step) and is_complete_checkpoint(path):
            out.append((step, path))
    return sorted(out)


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
@dataclass
class TrainerConfig:
    """Optimisation and bookkeeping settings of one :class:`Trainer` run (one stage).

    ``batch_size`` is the global batch (all processes, all accumulation micro-steps).
    ``max_steps`` optimizer steps are run. ``checkpoint_every`` = 0 saves only at the end
    (``save_final``). ``precision``: "auto" (bf16 autocast on CUDA, fp32 elsewhere), "fp32",
    "bf16" (autocast on any device). ``progress``: "auto" (tqdm if installed and stderr is a
    terminal, else log lines), "tqdm", "log", "none". ``backward_on_calling_thread``: run each
    backward on the calling thread instead of the autograd engine's device thread (single-process
    CUDA runs only; module docstring for what it measured).
    """

    max_steps: int = 100
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    precision: str = "auto"
    out_dir: Optional[str] = None
    checkpoint_every: int = 0
    save_final: bool = True
    log_every: int = 10
    progress: str = "auto"
    tensorboard: bool = True
    plot: bool = True
    drop_last: bool = True
    num_workers: int = 0
    name: str = "train"
    backward_on_calling_thread: bool = False

    def __post_init__(self) -> None:
        self.betas = tuple(float(b) for b in self.betas)  # type: ignore[assignment]
        for k in ("max_steps", "batch_size", "grad_accum", "log_every"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ValueError(f"{k} must be a positive int, got {v!r}")
        for k in ("warmup_steps", "checkpoint_every", "num_workers", "seed"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{k} must be a non-negative int, got {v!r}")
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if self.progress not in ("auto", "tqdm", "log", "none"):
            raise ValueError(f"progress must be 'auto', 'tqdm', 'log' or 'none', got {self.progress!r}")
        if float(self.max_grad_norm) < 0:
            raise ValueError(f"max_grad_norm must be >= 0, got {self.max_grad_norm!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")

    @classmethod
    def from_stage(cls, stage: StageConfig, num_examples: int, **kw: Any) -> "TrainerConfig":
        """Settings of a curriculum stage with ``num_examples`` training examples."""
        steps = stage.num_steps(num_examples)
        return cls(
            max_steps=steps, batch_size=stage.batch_size, grad_accum=stage.grad_accum, lr=stage.lr,
            weight_decay=stage.weight_decay, betas=stage.betas, eps=stage.eps,
            warmup_steps=stage.num_warmup(steps), schedule=stage.schedule, min_lr_ratio=stage.min_lr_ratio,
            max_grad_norm=stage.max_grad_norm, name=stage.name, **kw,
        )


def lr_lambda(step: int, total: int, warmup: int, schedule: str, min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based) of ``total``.

    Linear warm-up from ``1 / (warmup + 1)`` to 1 over ``warmup`` steps, then ``cosine`` or
    ``linear`` decay to ``min_ratio`` at the last step, or ``constant``.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    span = max(total - warmup - 1, 1)
    frac = min(max((step - warmup) / span, 0.0), 1.0)
    if schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * frac))
    elif schedule == "linear":
        decay = 1.0 - frac
    else:
        raise ValueError(f"unknown schedule {schedule!r}")
    return min_ratio + (1.0 - min_ratio) * decay


# ---------------------------------------------------------------------------------------------
# trainable parts
# ---------------------------------------------------------------------------------------------
def apply_trainable(model: nn.Module, spec: str) -> None:
    """Select the trained parameters of a SAM-like model.

    Uses ``model.set_trainable`` for the specs it knows; ``"connector+lora"`` (the frozen-encoder
    ablation) is ``"connector+encoder+lora"`` with every ``encoder.*`` parameter frozen again.
    """
    if spec not in TRAINABLE:
        raise ValueError(f"trainable must be one of {TRAINABLE}, got {spec!r}")
    if not hasattr(model, "set_trainable"):
        raise ValueError(f"{type(model).__name__} has no set_trainable(); cannot apply {spec!r}")
    if spec == "connector+lora":
        model.set_trainable("connector+encoder+lora")
        for name, p in model.named_parameters():
            if name.startswith("encoder."):
                p.requires_grad_(False)
        model.trainable = spec
    else:
        model.set_trainable(spec)


# ---------------------------------------------------------------------------------------------
# RNG
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def get_rng_state() -> Dict[str, Any]:
    """Every global RNG state (python, numpy, torch CPU, torch CUDA when present), as tensors and
    plain Python types only, so a checkpoint holding it loads with ``torch.load(weights_only=True)``
    (numpy's own state holds an ndarray, which that refuses)."""
    np_state = np.random.get_state(legacy=False)
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": str(np_state["bit_generator"]),
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"]).astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    random.setstate(state["python"])
    ns = state["numpy"]
    if isinstance(ns, dict) and "key" in ns:  # get_rng_state's plain layout
        np.random.set_state({"bit_generator": ns["bit_generator"],
                             "state": {"key": ns["key"].numpy().astype(np.uint32), "pos": ns["pos"]},
                             "has_gauss": ns["has_gauss"], "gauss": ns["gauss"]})
    else:  # np.random.get_state()'s tuple (checkpoints written before the plain layout)
        np.random.set_state(ns)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------
# data order
# ---------------------------------------------------------------------------------------------
class ResumableSampler(torch.utils.data.Sampler):
    """Deterministic shuffled order that can restart mid-epoch.

    Epoch ``e`` is ``randperm(n)`` drawn from a generator seeded with ``seed + e``; it is cut
    into global batches of ``batch_size`` (the last partial batch dropped with ``drop_last``) and
    process ``rank`` of ``world_size`` takes the ``rank``-th contiguous slice of each global
    batch. Iteration starts at global batch ``position`` of epoch ``epoch`` and runs forever
    (epochs roll over); :meth:`state_dict` / :meth:`load_state_dict` save where it is.

    Yields per-process example indices, ``batch_size / world_size`` per global batch.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True) -> None:
        if num_examples <= 0:
            raise ValueError(f"the dataset is empty (num_examples={num_examples})")
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by the {world_size} processes")
        if drop_last and num_examples < batch_size:
            raise ValueError(f"dataset of {num_examples} examples is smaller than one global batch of {batch_size}")
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.position = 0, 0  # position: global batches consumed in this epoch

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def _perm(self, epoch: int) -> torch.Tensor:
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        return torch.randperm(self.n, generator=g)

    def next_batch(self) -> List[int]:
        """This process's indices of the next global batch (advances the position)."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
        perm = self._perm(self.epoch)
        lo = self.position * self.batch_size
        batch = perm[lo : lo + self.batch_size]
        self.position += 1
        per = self.batch_size // self.world_size
        if batch.numel() < self.batch_size:  # last partial batch (drop_last=False): split evenly
            return batch[self.rank :: self.world_size].tolist()
        return batch[self.rank * per : (self.rank + 1) * per].tolist()

    def __iter__(self) -> Iterator[int]:
        while True:
            yield from self.next_batch()

    def __len__(self) -> int:
        return self.n

    def state_dict(self) -> Dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed, "n": self.n,
                "batch_size": self.batch_size}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        for k in ("seed", "n", "batch_size"):
            if state[k] != getattr(self, k):
                raise ValueError(f"cannot resume: the checkpoint's data order has {k}={state[k]}, this run {getattr(self, k)}")
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


# ---------------------------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------------------------
def _is_dtensor(t: Any) -> bool:
    """True for a DTensor (an FSDP2-sharded parameter); False where torch has no DTensor."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - old torch
        return False
    return isinstance(t, DTensor)


def _is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` holds FSDP2-sharded (DTensor) tensors."""
    return any(_is_dtensor(v) for v in model.state_dict(keep_vars=True).values())


def _unique_names(model: nn.Module) -> List[str]:
    """Names of ``model.state_dict()`` with tensors that share storage (tied weights) kept once
    (the first name).

    ``keep_vars=True`` gives the parameter objects themselves: a DTensor (FSDP2) has no plain
    storage to compare (``untyped_storage()`` raises), so a tied DTensor is recognised by its
    identity instead. That is the same on every process, which matters because the names
    decide which tensors are gathered (collectives every process must join in the same order).
    """
    seen = set()
    out: List[str] = []
    for k, v in model.state_dict(keep_vars=True).items():
        if _is_dtensor(v):
            key: Tuple[Any, ...] = ("dtensor", id(v))
        else:
            key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key not in seen:
            seen.add(key)
            out.append(k)
    return out


def _unique_state(model: nn.Module) -> Dict[str, torch.Tensor]:
    """The full (unsharded) state dict on the CPU, tied tensors once (:func:`_unique_names`).

    FSDP2: a collective (``get_model_state_dict`` with ``full_state_dict=True,
    cpu_offload=True`` gathers the DTensor shards); every process must call it and only
    process 0 gets the tensors, the others an empty dict.
    """
    names = _unique_names(model)
    if _is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        full = model.state_dict()
    return {k: full[k].detach().cpu().contiguous() for k in names if k in full}


def save_model_weights(model: nn.Module, path: str) -> None:
    """Every tensor of ``model.state_dict()`` (tied ones once, full and unsharded) to a
    safetensors file.

    In a multi-process run only process 0 writes. An FSDP2 (DTensor-sharded) model is
    gathered first, so every process must call this (the file is the same as a single-process
    run's; :func:`load_model_weights` loads it into a sharded or a plain model).
    """
    from safetensors.torch import save_file

    if not _is_sharded(model) and dist_utils.rank() != 0:
        return  # DDP / replicated: process 0's copy is everyone's, no gather needed
    state = _unique_state(model)
    if dist_utils.rank() == 0:
        save_file(state, path, metadata={"format": "pt"})


def load_model_weights(model: nn.Module, path: str) -> None:
    """Load :func:`save_model_weights` output; tied tensors absent from the file must exist under
    another name (they are restored through the tie). Raises ``ValueError`` on a mismatch.

    Into an FSDP2 model every process reads the whole file and keeps its own shard (no
    communication).
    """
    from samkern.files import read_safetensors

    sd = read_safetensors(path)
    own = model.state_dict()
    unexpected = sorted(set(sd) - set(own))
    if unexpected:
        raise ValueError(f"{path}: unexpected keys {unexpected[:10]}")
    missing = sorted(set(_unique_names(model)) - set(sd))
    if missing:
        raise ValueError(f"{path}: missing keys {missing[:10]}")
    with torch.no_grad():
        for k, v in sd.items():
            if own[k].shape != v.shape:  # a DTensor's shape is the full (global) one
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, the model {tuple(own[k].shape)}")
            if _is_dtensor(own[k]):
                from torch.distributed.tensor import distribute_tensor

                # src_data_rank=None: each process slices the full tensor it read itself
                v = distribute_tensor(v.to(own[k].device), own[k].device_mesh, own[k].placements, src_data_rank=None)
            own[k].copy_(v)


def _optim_state_by_name(state: Dict[str, Any], names: List[str]) -> Dict[str, Any]:
    """``optimizer.state_dict()`` (keyed by parameter index) keyed by parameter name instead,
    the layout ``get_optimizer_state_dict(full_state_dict=True)`` uses under FSDP2."""
    bad = sorted({i for g in state["param_groups"] for i in g["params"]} - set(range(len(names))))
    if bad:
        raise ValueError(f"the checkpoint's optimizer has parameters {bad[:10]}, this run trains {len(names)}")
    return {"state": {names[i]: v for i, v in state["state"].items()},
            "param_groups": [dict(g, params=[names[i] for i in g["params"]]) for g in state["param_groups"]]}


def _optim_state_by_index(state: Dict[str, Any], names: List[str]) -> Dict[str, Any]:
    """The inverse of :func:`_optim_state_by_name` (for ``optimizer.load_state_dict``)."""
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted({n for g in state["param_groups"] for n in g["params"]} - set(index))
    if unknown:
        raise ValueError(f"optimizer state for parameters this run does not train: {unknown[:10]}")
    return {"state": {index[n]: v for n, v in state["state"].items()},
            "param_groups": [dict(g, params=[index[n] for n in g["params"]]) for g in state["param_groups"]]}


_STATE_KEYS = ("step", "optimizer", "scheduler", "sampler", "rng", "history")


def load_trainer_state(path: str) -> Dict[str, Any]:
    """Read a ``trainer_state.pt`` with ``torch.load(weights_only=True)``: a checkpoint is data,
    never code to run. Raises ``ValueError`` naming the file when it is corrupt or incomplete.

    Checkpoints written before :func:`get_rng_state` stored plain types hold numpy's RNG state
    as an ndarray; those load with numpy's array reconstruction allow-listed (still no code)."""
    import pickle

    def _load() -> Any:
        return torch.load(path, map_location="cpu", weights_only=True)

    try:
        try:
            state = _load()
        except pickle.UnpicklingError:
            with torch.serialization.safe_globals(_numpy_array_globals()):
                state = _load()
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as e:
        # torch's weights_only message is a page suggesting weights_only=False: keep its cause only
        msg = str(e)
        if "WeightsUnpickler error:" in msg:
            msg = msg.split("WeightsUnpickler error:", 1)[1].strip().split("\n")[0]
        raise ValueError(f"cannot read the trainer state {path!r} (corrupt or truncated, or not written by "
                         f"samkern's Trainer): {msg}") from e
    missing = [k for k in _STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{path!r} is not a trainer state: missing {missing}")
    return state


def _numpy_array_globals() -> List[Any]:
    """What unpickling a plain numpy array needs (torch's documented allow-list for ndarrays)."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return [_reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


# ---------------------------------------------------------------------------------------------
# loss plot
# ---------------------------------------------------------------------------------------------
def write_loss_png(steps: Sequence[float], losses: Sequence[float], path: str, title: str = "training loss",
                   marks: Optional[Sequence[Tuple[float, str]]] = None) -> str:
    """Plot loss vs step to a PNG (matplotlib if installed, else a plain built-in line plot).

    ``marks``: (step, label) vertical lines (stage boundaries). Returns the backend used.
    """
    if len(steps) != len(losses) or not len(steps):
        raise ValueError("write_loss_png needs equally long, non-empty steps and losses")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _write_png_plain(list(map(float, steps)), list(map(float, losses)), path, [m[0] for m in marks or ()])
        return "builtin"
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, lw=1.2)
    for s, lab in marks or ():
        ax.axvline(s, color="gray", ls="--", lw=0.8)
        ax.text(s, ax.get_ylim()[1], f" {lab}", va="top", fontsize=7, color="gray")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return "matplotlib"


def _write_png_plain(xs: List[float], ys: List[float], path: str, vlines: Sequence[float] = (),
                     width: int = 640, height: int = 360) -> None:
    """Minimal RGB PNG line plot (axes box, light grid, the curve in blue, dashed stage marks)
    so a loss plot exists without matplotlib."""
    import struct
    import zlib

    img = np.full((height, width, 3), 255, dtype=np.uint8)
    left, right, top, bottom = 40, width - 10, 10, height - 30
    finite = [y for y in ys if math.isfinite(y)] or [0.0]
    y0, y1 = min(finite), max(finite)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5, y1 + 0.5
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def px(x: float, y: float) -> Tuple[int, int]:
        c = left + (x - x0) / (x1 - x0) * (right - left)
        r = bottom - (y - y0) / (y1 - y0) * (bottom - top)
        return int(round(r)), int(round(c))

    for k in range(1, 5):  # grid
        img[top + k * (bottom - top) // 5, left:right] = 225
        img[top:bottom, left + k * (right - left) // 5] = 225
    for v in vlines:
        c = px(v, y0)[1]
        img[top:bottom:4, min(max(c, left), right - 1)] = (150, 150, 150)
    img[top, left:right] = img[bottom, left:right] = 0
    img[top:bottom + 1, left] = img[top:bottom + 1, right] = 0
    pts = [px(x, y) for x, y in zip(xs, ys) if math.isfinite(y)]
    for (r0, c0), (r1, c1) in zip(pts, pts[1:] or pts):
        n = max(abs(r1 - r0), abs(c1 - c0), 1)
        for t in range(n + 1):
            r, c = r0 + (r1 - r0) * t // n, c0 + (c1 - c0) * t // n
            img[max(r - 1, 0):r + 1, max(c, 0):c + 1] = (31, 119, 180)
    raw = b"".join(b"\x00" + img[r].tobytes() for r in range(height))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


# ---------------------------------------------------------------------------------------------
# progress
# ---------------------------------------------------------------------------------------------
class _Progress:
    """tqdm bar, or a log line every ``log_every`` steps."""

    def __init__(self, mode: str, total: int, initial: int, desc: str, log_every: int, enabled: bool) -> None:
        self.bar = None
        self.mode = "none" if not enabled else mode
        if self.mode in ("auto", "tqdm"):
            try:
                from tqdm.auto import tqdm

                if self.mode == "tqdm" or sys.stderr.isatty():
                    self.bar = tqdm(total=total, initial=initial, desc=desc, file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass
            self.mode = "tqdm" if self.bar is not None else "log"
        self.total, self.desc, self.log_every = total, desc, log_every

    def update(self, step: int, loss: float, lr: float, tok_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", tok_s=f"{tok_s:.0f}", refresh=False)
        elif self.mode == "log" and (step % self.log_every == 0 or step == self.total):
            print(f"[{self.desc}] step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {tok_s:.0f} tok/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_TB_WARNED = False


def _summary_writer(log_dir: str):
    global _TB_WARNED
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch.utils.tensorboard needs the tensorboard package
        if not _TB_WARNED:
            _TB_WARNED = True
            print("note: TensorBoard logging skipped (pip install tensorboard to enable it)", file=sys.stderr)
        return None
    return SummaryWriter(log_dir=log_dir)


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Train ``model`` on ``dataset`` with ``loss_fn`` (see the module docstring).

    Args:
        model: any ``nn.Module``; only parameters with ``requires_grad`` are optimised (set
            them before building the trainer, e.g. :func:`apply_trainable`).
        dataset: a map-style dataset (``len`` and ``[i]``).
        loss_fn: ``loss_fn(model, batch) -> loss`` or ``(loss, num_tokens)``; ``batch`` is
            ``collate_fn([dataset[i] for i in indices])`` and ``model`` is the wrapped (DDP)
            module in multi-process runs. It moves the batch to the model's device itself.
        config: :class:`TrainerConfig`.
        collate_fn: default: a list of items.
        device: where the model lives (default: its parameters' device).
    """

    def __init__(self, model: nn.Module, dataset: Any, loss_fn: LossFn, config: TrainerConfig,
                 collate_fn: Optional[Callable[[List[Any]], Any]] = None, device: Optional[torch.device] = None) -> None:
        if not isinstance(config, TrainerConfig):
            raise ValueError(f"config must be a TrainerConfig, got {type(config).__name__}")
        self.config = config
        self.model = model
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.collate_fn = collate_fn or (lambda items: items)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.rank, self.world_size = dist_utils.rank(), dist_utils.world_size()
        self._single_thread_backward = config.backward_on_calling_thread and single_thread_backward(
            self.device, self.world_size)
        if config.batch_size % (self.world_size * config.grad_accum):
            raise ValueError(f"batch_size {config.batch_size} must be divisible by world_size x grad_accum = "
                             f"{self.world_size} x {config.grad_accum}")
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the model has no trainable parameters (requires_grad=False everywhere)")
        self.wrapped = dist_utils.wrap_model(model, self.device) if self.world_size > 1 else model
        # FSDP2 replaces the parameters by sharded DTensors in place: the optimizer and the
        # clipping must see the new objects (DDP keeps them, so this is a no-op there)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # FSDP2: the optimizer state is sharded like the parameters; checkpoints gather it (and
        # store it keyed by parameter name, see state_dict)
        self.sharded = _is_sharded(model)
        fqn = {id(p): n for n, p in model.named_parameters()}
        self.param_names = [fqn[id(p)] for p in self.params]
        # fused AdamW on the GPU (one kernel for all parameters instead of a foreach chain; less
        # host time per step); the default implementation elsewhere (CPU, sharded DTensors)
        fused = self.device.type == "cuda" and not self.sharded
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, betas=config.betas, eps=config.eps,
                                           weight_decay=config.weight_decay, **({"fused": True} if fused else {}))
        total, warm, sched, mr = config.max_steps, config.warmup_steps, config.schedule, config.min_lr_ratio
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, total, warm, sched, mr))
        self.sampler = ResumableSampler(len(dataset), config.batch_size, seed=config.seed, rank=self.rank,
                                        world_size=self.world_size, drop_last=config.drop_last)
        self.step = 0
        self.history: List[Dict[str, float]] = []  # {"step", "loss", "lr", "tokens", "time"}
        self.autocast_dtype = self._autocast_dtype()

    # -- helpers ------------------------------------------------------------------------------
    def _autocast_dtype(self) -> Optional[torch.dtype]:
        p = self.config.precision
        if p == "bf16" or (p == "auto" and self.device.type == "cuda"):
            return torch.bfloat16
        return None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _micro_batches(self) -> List[Any]:
        idx = self.sampler.next_batch()
        k = self.config.grad_accum
        per = len(idx) // k
        chunks = [idx[i * per : (i + 1) * per] for i in range(k)] if per else [idx]
        return [self.collate_fn([self.dataset[i] for i in c]) for c in chunks if c]

    def _forward(self, batch: Any) -> Tuple[torch.Tensor, int]:
        if self.autocast_dtype is not None:
            with torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype):
                out = self.loss_fn(self.wrapped, batch)
        else:
            out = self.loss_fn(self.wrapped, batch)
        loss, ntok = out if isinstance(out, tuple) else (out, 0)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError("loss_fn must return a scalar tensor (or (scalar, num_tokens))")
        return loss, int(ntok)

    def train_step(self) -> Dict[str, float]:
        """One optimizer step (``grad_accum`` micro-batches); returns its log record."""
        t0 = time.perf_counter()
        self.wrapped.train()
        micro = self._micro_batches()
        self.optimizer.zero_grad(set_to_none=True)
        # the loss stays on the device until every micro-batch's backward is queued: one host sync
        # per step (not one per forward), so the host launches the backward while the GPU still
        # runs the forward (the demo's GPU step is host-bound)
        total_loss: Any = 0.0
        tokens = 0
        for j, batch in enumerate(micro):
            # DDP: reduce gradients only on the last micro-batch
            sync = j == len(micro) - 1
            ctx = self.wrapped.no_sync() if (self.world_size > 1 and not sync and hasattr(self.wrapped, "no_sync")) else _null()
            with ctx:
                loss, ntok = self._forward(batch)
                # only when asked: otherwise the caller's own autograd threading setting stands
                with torch.autograd.set_multithreading_enabled(False) if self._single_thread_backward else _null():
                    (loss / len(micro)).backward()
            total_loss = total_loss + loss.detach().double() / len(micro)
            tokens += ntok
        local_loss = float(total_loss)  # the step's one sync
        if not math.isfinite(local_loss):
            # before the optimizer step: the weights keep their last finite values
            raise FloatingPointError(f"non-finite loss {local_loss} at step {self.step + 1}")
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        loss_val = local_loss
        if self.world_size > 1:
            loss_val = float(dist_utils.all_reduce_mean(torch.tensor(local_loss, device=self.device)).item())
            tokens = int(dist_utils.all_reduce_sum(torch.tensor(float(tokens), device=self.device)).item())
        rec = {"step": self.step, "loss": loss_val, "lr": lr, "tokens": tokens, "time": time.perf_counter() - t0}
        self.history.append(rec)
        return rec

    # -- checkpoints ----------------------------------------------------------------------------
    def _optimizer_state(self) -> Dict[str, Any]:
        """The full optimizer state, keyed by parameter name. FSDP2: gathered from the shards
        (a collective; the tensors land on process 0's CPU, the other processes get ``{}``)."""
        if not self.sharded:
            return _optim_state_by_name(self.optimizer.state_dict(), self.param_names)
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.model, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _load_optimizer_state(self, state: Dict[str, Any]) -> None:
        """Load :meth:`_optimizer_state` output (full, by name) into this run's optimizer; under
        FSDP2 every process keeps its shard of each tensor."""
        if not self.sharded:
            self.optimizer.load_state_dict(_optim_state_by_index(state, self.param_names))
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.model, self.optimizer, state, options=StateDictOptions(full_state_dict=True))

    def state_dict(self) -> Dict[str, Any]:
        """Everything but the model weights that an exact resume needs.

        In a multi-process run every process must call it (it gathers every process's RNG
        states and, under FSDP2, the sharded optimizer state); it is complete on process 0.
        The optimizer state is the full (unsharded) one keyed by parameter name, whatever the
        number of processes or the wrapping, so any run can resume any checkpoint.
        """
        rng = get_rng_state()
        return {
            "step": self.step,
            "optimizer": self._optimizer_state(),
            "optimizer_keys": "name",
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "rng": rng,  # this process's (process 0's in a checkpoint)
            # each process draws its own stream (seeded seed + rank: e.g. its dropout masks), so
            # an exact multi-process resume needs all of them, not only process 0's
            "rng_per_rank": dist_utils.all_gather_object(rng),
            "history": list(self.history),
            "config": asdict(self.config),
            "world_size": self.world_size,
        }

    def save_checkpoint(self, path: Optional[str] = None) -> str:
        """Write ``checkpoint-<step>`` (model weights + trainer state); returns its directory.

        Every process must call it; only process 0 writes (the others wait at a barrier). Under
        FSDP2 the weights and the optimizer state are gathered first, so the files are the same
        full, unsharded ones a single-process run writes."""
        if path is None:
            if self.config.out_dir is None:
                raise ValueError("save_checkpoint needs a path or config.out_dir")
            path = os.path.join(self.config.out_dir, f"checkpoint-{self.step}")
        path = os.path.normpath(path)
        # written into a temporary sibling and renamed into place when complete: a save cut off
        # (Ctrl-C, a full disk) leaves no half-written checkpoint-<step> for a resume to trip on
        parent, base = os.path.split(path)
        tmp, old = os.path.join(parent, f".{base}.tmp"), os.path.join(parent, f".{base}.old")
        if self.is_main:
            for d in (tmp, old):  # leftovers of an interrupted save
                shutil.rmtree(d, ignore_errors=True)
            os.makedirs(tmp)
        save_model_weights(self.model, os.path.join(tmp, WEIGHTS_FILE))  # collective under FSDP2
        state = self.state_dict()  # collective in multi-process runs
        if self.is_main:
            torch.save(state, os.path.join(tmp, STATE_FILE))
            if os.path.lexists(path):  # re-saving a step: a directory cannot be replaced by rename
                os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        dist_utils.barrier()
        return path

    def load_checkpoint(self, path: str) -> None:
        """Restore weights, optimizer, scheduler, data position, RNGs and history from ``path``.

        Every process calls it and reads the files. The checkpoint may come from a run with
        another number of processes or wrapping (single process, DDP, FSDP2): the data order and
        the optimizer state carry over exactly; each process restores its own RNG state when the
        checkpoint has one for its rank, else it is seeded as at the start of a run
        (``seed + rank``), so random ops (dropout) then differ from an uninterrupted run with the
        checkpoint's process count (a deterministic model resumes exactly).
        """
        wfile, sfile = os.path.join(path, WEIGHTS_FILE), os.path.join(path, STATE_FILE)
        if not (os.path.isfile(wfile) and os.path.isfile(sfile)):
            raise ValueError(f"{path!r} is not a trainer checkpoint (needs {WEIGHTS_FILE} and {STATE_FILE})")
        # the state first: a corrupt file then fails before the model's weights are touched
        state = load_trainer_state(sfile)
        load_model_weights(self.model, wfile)
        optim = state["optimizer"]
        if state.get("optimizer_keys", "index") == "index":  # written before checkpoints keyed by name
            optim = _optim_state_by_name(optim, self.param_names)
        self._load_optimizer_state(optim)
        self.scheduler.load_state_dict(state["scheduler"])
        # the saved param-group lr follows the schedule of the run that wrote the checkpoint;
        # continue on *this* run's schedule (same thing when max_steps is unchanged)
        self.scheduler.base_lrs = [self.config.lr] * len(self.optimizer.param_groups)
        for g in self.optimizer.param_groups:
            g["lr"] = self.config.lr * lr_lambda(int(state["step"]), self.config.max_steps, self.config.warmup_steps,
                                                 self.config.schedule, self.config.min_lr_ratio)
        self.sampler.load_state_dict(state["sampler"])
        rngs = state.get("rng_per_rank") or [state["rng"]]
        if self.rank < len(rngs):
            set_rng_state(rngs[self.rank])
        else:
            seed_everything(self.config.seed + self.rank)
        self.step = int(state["step"])
        self.history = list(state["history"])

    # -- main loop ------------------------------------------------------------------------------
    def train(self, resume_from: Optional[str] = None) -> List[Dict[str, float]]:
        """Run to ``config.max_steps`` (from a checkpoint directory when ``resume_from``).

        Returns the history (one record per optimizer step, earlier ones included on resume).
        """
        cfg = self.config
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        else:
            seed_everything(cfg.seed + self.rank)
        writer = None
        if cfg.tensorboard and cfg.out_dir is not None and self.is_main:
            writer = _summary_writer(os.path.join(cfg.out_dir, "tensorboard"))
        bar = _Progress(cfg.progress, cfg.max_steps, self.step, cfg.name, cfg.log_every, self.is_main)
        tok_rate = 0.0
        try:
            while self.step < cfg.max_steps:
                rec = self.train_step()
                tok_rate = rec["tokens"] / max(rec["time"], 1e-9)
                bar.update(self.step, rec["loss"], rec["lr"], tok_rate)
                if writer is not None:
                    writer.add_scalar(f"{cfg.name}/loss", rec["loss"], self.step)
                    writer.add_scalar(f"{cfg.name}/lr", rec["lr"], self.step)
                    writer.add_scalar(f"{cfg.name}/tokens_per_s", tok_rate, self.step)
                if cfg.checkpoint_every and cfg.out_dir and self.step % cfg.checkpoint_every == 0 and self.step < cfg.max_steps:
                    self.save_checkpoint()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if cfg.out_dir is not None and self.is_main:
            os.makedirs(cfg.out_dir, exist_ok=True)
            with open(os.path.join(cfg.out_dir, "losses.json"), "w", encoding="utf-8") as f:
                json.dump(self.history, f)
            if cfg.plot:
                write_loss_png([r["step"] for r in self.history], [r["loss"] for r in self.history],
                               os.path.join(cfg.out_dir, "loss.png"), title=f"{cfg.name} loss")
        if cfg.save_final and cfg.out_dir is not None:
            self.save_checkpoint()
        return self.history


def single_thread_backward(device: torch.device, world_size: int) -> bool:
    """Whether ``backward_on_calling_thread`` applies: single-process CUDA training (module
    docstring). On the CPU the engine already runs backward there; multi-process runs keep the
    default."""
    return device.type == "cuda" and world_size == 1


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
