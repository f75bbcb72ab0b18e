# SPDX-License-Identifier: Apache-2.0
"""Training configuration: one :class:`StageConfig` per curriculum stage, a
:class:`CurriculumConfig` holding the stages and the model-side choices, and the presets of the
SAM paper (LTU's 4-stage curriculum and its ablations).

The LTU curriculum (Gong et al., "Listen, Think, and Understand", used by SAM):

=====  ==========================  ====================================  =====  ======
stage  trained parts               task mix                              lr     epochs
=====  ==========================  ====================================  =====  ======
1      connector                   classification + caption              1e-3   2
2      encoder + connector + LoRA  classification + caption              1e-4   2
3      encoder + connector + LoRA  + closed-ended questions              1e-4   1
4      encoder + connector + LoRA  + open-ended questions (all tasks)    1e-4   1
=====  ==========================  ====================================  =====  ======

Ablation presets (:data:`PRESETS`): ``frozen_encoder`` (stages 2-4 train connector + LoRA
only), ``connector_a`` / ``connector_b`` / ``connector_c`` (concat / time / freq connector),
``lora_r8`` / ``lora_r256``.

Everything is a plain dataclass that round-trips through JSON-able dicts (``to_dict`` /
``from_dict``; no YAML needed).
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

__all__ = [
    "TASKS",
    "TRAINABLE",
    "SCHEDULES",
    "StageConfig",
    "CurriculumConfig",
    "ltu_curriculum",
    "PRESETS",
    "preset",
]

# Task groups a stage can draw from. "classification": name the sound ("What is the sound?");
# "caption": describe it; "closed": closed-ended questions with fixed options; "open":
# open-ended questions (free-form answers).
TASKS: Tuple[str, ...] = ("classification", "caption", "closed", "open")
# samkern.models.sam.config.TRAINABLE_CHOICES plus "connector+lora" (the frozen-encoder
# ablation), which the trainer applies itself (see samkern.train.trainer.apply_trainable).
TRAINABLE: Tuple[str, ...] = ("connector", "connector+lora", "connector+encoder", "connector+encoder+lora", "all")
SCHEDULES: Tuple[str, ...] = ("cosine", "linear", "constant")


def _num(name: str, v: Any) -> float:
    """``float(v)`` for a real number (not a bool, a string or None: JSON configs hold anything)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        raise ValueError(f"{name} must be a number, got {v!r}")
    return float(v)


def _str_seq(name: str, v: Any) -> Tuple[str, ...]:
    """A list / tuple of strings as a tuple (a bare string would otherwise split into characters)."""
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, str) for x in v):
        raise ValueError(f"{name} must be a list of strings, got {v!r}")
    return tuple(v)


def _pos_int(name: str, v: Any, allow_none: bool = False) -> None:
    if v is None and allow_none:
        return
    if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
        raise ValueError(f"{name} must be a positive int{' or None' if allow_none else ''}, got {v!r}")


@dataclass
class StageConfig:
    """One training stage (one optimizer / schedule; the trainable set is fixed within it).

    Attributes:
        name: label used for logs and the stage's checkpoint directory.
        trainable: which parameters train (``SAM.set_trainable`` spec, see :data:`TRAINABLE`).
        tasks: task groups of the data mix (subset of :data:`TASKS`).
        lr: peak learning rate (AdamW).
        epochs: passes over the stage's examples (fractions allowed); ignored when
            ``max_steps`` is set.
        max_steps: optimizer steps (overrides ``epochs``).
        batch_size: global batch (examples per optimizer step, summed over processes and
            accumulation micro-steps).
        grad_accum: micro-batches per optimizer step (per process).
        warmup_steps / warmup_ratio: linear warm-up length (``warmup_steps`` wins when > 0).
        schedule: decay after warm-up: ``"cosine"`` | ``"linear"`` (to ``min_lr_ratio * lr``)
            | ``"constant"``.
        weight_decay, betas, eps: AdamW.
        max_grad_norm: gradient clipping (0 = off).
        question_types: restrict closed-ended questions to these types (None = all).
    """

    name: str = "stage"
    trainable: str = "connector+encoder+lora"
    tasks: Tuple[str, ...] = ("classification", "caption", "closed", "open")
    lr: float = 1e-4
    epochs: float = 1.0
    max_steps: Optional[int] = None
    batch_size: int = 8
    grad_accum: int = 1
    warmup_steps: int = 0
    warmup_ratio: float = 0.05
    schedule: str = "cosine"
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = 1.0
    question_types: Optional[Tuple[str, ...]] = None

    def __post_init__(self) -> None:
        # types first: a JSON config can hold anything, and a TypeError deep in here would not
        # name the field
        self.tasks = _str_seq("tasks", self.tasks)
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas!r}")
        self.betas = tuple(_num("betas", b) for b in self.betas)  # type: ignore[assignment]
        if self.question_types is not None:
            self.question_types = _str_seq("question_types", self.question_types)
        for k in ("lr", "epochs", "warmup_ratio", "min_lr_ratio", "weight_decay", "eps", "max_grad_norm"):
            _num(k, getattr(self, k))
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"stage name must be a non-empty string, got {self.name!r}")
        # the name is a directory under the run's --out (which --overwrite clears): one plain component
        if self.name in (".", "..") or "/" in self.name or os.sep in self.name or (os.altsep and os.altsep in self.name):
            raise ValueError(f"stage name must be usable as a directory name (no path separators), got {self.name!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}")
        if not self.tasks or any(t not in TASKS for t in self.tasks):
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks!r}")
        if not float(self.lr) > 0.0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not float(self.epochs) > 0.0:
            raise ValueError(f"epochs must be > 0, got {self.epochs!r}")
        _pos_int("max_steps", self.max_steps, allow_none=True)
        _pos_int("batch_size", self.batch_size)
        _pos_int("grad_accum", self.grad_accum)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be a non-negative int, got {self.warmup_steps!r}")
        if not 0.0 <= float(self.warmup_ratio) < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= float(self.min_lr_ratio) <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        if float(self.weight_decay) < 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two floats in [0, 1), got {self.betas!r}")
        if float(self.max_grad_norm) < 0.0:
            raise ValueError(f"max_grad_norm must be >= 0 (0 = off), got {self.max_grad_norm!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(f"batch_size ({self.batch_size}) must be divisible by grad_accum ({self.grad_accum})")

    def num_steps(self, num_examples: int) -> int:
        """Optimizer steps of this stage for ``num_examples`` training examples."""
        if self.max_steps is not None:
            return self.max_steps
        if num_examples <= 0:
            raise ValueError(f"stage {self.name!r} has no training examples")
        return max(1, int(round(self.epochs * num_examples / self.batch_size)))

    def num_warmup(self, total_steps: int) -> int:
        """Warm-up steps for a stage of ``total_steps`` steps."""
        if self.warmup_steps > 0:
            return min(self.warmup_steps, total_steps)
        return int(self.warmup_ratio * total_steps)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["tasks"] = list(self.tasks)
        d["betas"] = list(self.betas)
        d["question_types"] = None if self.question_types is None else list(self.question_types)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "StageConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a stage config must be a JSON object, got {d!r}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown keys in stage config: {unknown}")
        return cls(**d)


@dataclass
class CurriculumConfig:
    """A full training run: the stages and the model-side ablation knobs.

    Attributes:
        stages: the :class:`StageConfig` list, run in order.
        connector: ``"concat"`` (a) | ``"time"`` (b) | ``"freq"`` (c).
        lora_r / lora_alpha: LoRA rank and scale of the LM adapters.
        seed: seeds every RNG (model init, data order, dropout).
        precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on CPU) | ``"fp32"`` | ``"bf16"``.
        name: preset name (informational).
    """

    stages: List[StageConfig] = field(default_factory=list)
    connector: str = "concat"
    lora_r: int = 8
    lora_alpha: Optional[float] = 16.0
    seed: int = 0
    precision: str = "auto"
    name: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.stages, (list, tuple)):
            raise ValueError(f"stages must be a list of stage configs, got {self.stages!r}")
        self.stages = [s if isinstance(s, StageConfig) else StageConfig.from_dict(s) for s in self.stages]
        if not self.stages:
            raise ValueError("a curriculum needs at least one stage")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        if self.connector not in ("concat", "time", "freq"):
            raise ValueError(f"connector must be 'concat', 'time' or 'freq', got {self.connector!r}")
        if not isinstance(self.lora_r, int) or isinstance(self.lora_r, bool) or self.lora_r < 0:
            raise ValueError(f"lora_r must be a non-negative int, got {self.lora_r!r}")
        if self.lora_r == 0 and any("lora" in s.trainable for s in self.stages):
            raise ValueError("a stage trains LoRA but lora_r is 0")
        if self.lora_alpha is not None:
            _num("lora_alpha", self.lora_alpha)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {self.seed!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")

    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["stages"] = [s.to_dict() for s in self.stages]
        return d

    def to_json(self, path: Optional[str] = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "CurriculumConfig":
        if not isinstance(d, dict):
            raise ValueError(f"a curriculum config must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown keys in curriculum config: {unknown}")
        return cls(**copy.deepcopy(d))

    @classmethod
    def from_json(cls, src: Union[str, Dict[str, Any]]) -> "CurriculumConfig":
        """From a dict, a JSON string or a JSON file. Errors are ``ValueError``; for a file they
        name it."""
        if isinstance(src, dict):
            return cls.from_dict(src)
        if src.lstrip().startswith("{"):
            try:
                d = json.loads(src)
            except json.JSONDecodeError as e:
                raise ValueError(f"the curriculum config is not valid JSON: {e}") from None
            return cls.from_dict(d)
        if not os.path.isfile(src):
            raise ValueError(f"no curriculum config file at {src!r}")
        try:
            with open(src, "r", encoding="utf-8") as f:
                d = json.load(f)
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read the curriculum config {src!r}: {e}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"the curriculum config {src!r} is not valid JSON: {e}") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{src}: {e}") from None


def ltu_curriculum(
    trainable_later: str = "connector+encoder+lora",
    batch_size: int = 8,
    epochs: Sequence[float] = (2.0, 2.0, 1.0, 1.0),
) -> List[StageConfig]:
    """LTU's 4 stages (see the module docstring); ``trainable_later`` is what stages 2-4 train."""
    if len(epochs) != 4:
        raise ValueError(f"epochs needs 4 values (one per stage), got {list(epochs)}")
    cls_cap = ("classification", "caption")
    return [
        StageConfig("stage1", "connector", cls_cap, lr=1e-3, epochs=epochs[0], batch_size=batch_size),
        StageConfig("stage2", trainable_later, cls_cap, lr=1e-4, epochs=epochs[1], batch_size=batch_size),
        StageConfig("stage3", trainable_later, cls_cap + ("closed",), lr=1e-4, epochs=epochs[2], batch_size=batch_size),
        StageConfig("stage4", trainable_later, TASKS, lr=1e-4, epochs=epochs[3], batch_size=batch_size),
    ]


def _ltu(**kw: Any) -> CurriculumConfig:
    trainable_later = kw.pop("trainable_later", "connector+encoder+lora")
    return CurriculumConfig(stages=ltu_curriculum(trainable_later), **kw)


# The paper's configurations. "ltu": the default (concat connector, LoRA r 8, encoder trained).
PRESETS: Dict[str, Dict[str, Any]] = {
    "ltu": dict(name="ltu"),
    "frozen_encoder": dict(name="frozen_encoder", trainable_later="connector+lora"),
    "connector_a": dict(name="connector_a", connector="concat"),
    "connector_b": dict(name="connector_b", connector="time"),
    "connector_c": dict(name="connector_c", connector="freq"),
    "lora_r8": dict(name="lora_r8", lora_r=8, lora_alpha=16.0),
    "lora_r256": dict(name="lora_r256", lora_r=256, lora_alpha=512.0),
}


def preset(name: str, **overrides: Any) -> CurriculumConfig:
    """A :data:`PRESETS` curriculum; ``overrides`` replace :class:`CurriculumConfig` fields."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    kw = dict(PRESETS[name])
    kw.update(overrides)
    return _ltu(**kw)
