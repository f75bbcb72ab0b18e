# SPDX-License-Identifier: Apache-2.0
"""``SAMConfig``: everything needed to rebuild a :class:`samkern.models.sam.model.SAM` (JSON).

Fields (defaults follow the paper / LTU where it fixes them):

* ``encoder``: an :class:`~samkern.models.sam.eat.EATConfig` (EAT-base by default).
* ``lm``: a :class:`~samkern.models.sam.lm.MambaLMConfig` (mamba2-130m by default).
* ``connector``: ``"concat"`` (64 tokens) | ``"time"`` (576) | ``"freq"`` (520);
  ``connector_hidden``: MLP hidden width (None = the LM width).
* ``lora_r`` / ``lora_alpha`` / ``lora_dropout``: LoRA on every Mamba-2 block's in/out
  projections (``lora_r = 0``: none); ``lora_merged``: True when the saved LM weights already
  contain the adapter (then ``lora_r`` is 0 in the saved config and no adapter file exists).
* ``trainable``: ``"connector"`` | ``"connector+encoder"`` | ``"connector+encoder+lora"`` |
  ``"all"`` (applied at construction, see ``SAM.set_trainable``).
* ``separator``: the string whose LM embedding separates rows in the time/freq layouts (``"&&"``).
* ``prompt_template``: LTU's ``"### Instruction:\\n{instruction}\\n\\n### Response:\\n"``.
* ``caption_instruction``: the instruction used by ``SAM.caption``.
* ``loss_on_prompt``: also train on the prompt tokens (LTU's ``train_on_inputs``); the audio
  positions never carry a loss.
* ``eos_token_id`` / ``pad_token_id``: None = take them from the tokenizer (pad falls back to EOS).
* ``max_new_tokens``: default generation budget.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, Optional, Union

from samkern.models.sam.eat import EATConfig
from samkern.models.sam.lm import MambaLMConfig

__all__ = ["SAMConfig", "TRAINABLE_CHOICES", "LTU_PROMPT_TEMPLATE", "CAPTION_INSTRUCTION", "CONFIG_FILE"]

TRAINABLE_CHOICES = ("connector", "connector+encoder", "connector+encoder+lora", "all")
LTU_PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
CAPTION_INSTRUCTION = "Write an audio caption describing the sound."
CONFIG_FILE = "sam_config.json"


def _default_lm() -> MambaLMConfig:
    return MambaLMConfig.preset("130m")


@dataclass
class SAMConfig:
    """Configuration of a SAM model (see the module docstring for every field)."""

    encoder: EATConfig = field(default_factory=EATConfig.base)
    lm: MambaLMConfig = field(default_factory=_default_lm)
    connector: str = "concat"
    connector_hidden: Optional[int] = None
    lora_r: int = 8
    lora_alpha: Optional[float] = 16.0
    lora_dropout: float = 0.05
    lora_merged: bool = False
    trainable: str = "connector+encoder+lora"
    separator: str = "&&"
    prompt_template: str = LTU_PROMPT_TEMPLATE
    caption_instruction: str = CAPTION_INSTRUCTION
    loss_on_prompt: bool = False
    eos_token_id: Optional[int] = None
    pad_token_id: Optional[int] = None
    max_new_tokens: int = 64

    def __post_init__(self) -> None:
        if isinstance(self.encoder, dict):
            self.encoder = EATConfig(**self.encoder)
        if isinstance(self.lm, dict):
            self.lm = MambaLMConfig.from_json(dict(self.lm))
        if not isinstance(self.encoder, EATConfig):
            raise ValueError(f"encoder must be an EATConfig, got {type(self.encoder).__name__}")
        if not isinstance(self.lm, MambaLMConfig):
            raise ValueError(f"lm must be a MambaLMConfig, got {type(self.lm).__name__}")
        if self.connector not in ("concat", "time", "freq"):
            raise ValueError(f"connector must be 'concat', 'time' or 'freq', got {self.connector!r}")
        if self.trainable not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {self.trainable!r}")
        if not isinstance(self.lora_r, int) or isinstance(self.lora_r, bool) or self.lora_r < 0:
            raise ValueError(f"lora_r must be a non-negative int, got {self.lora_r!r}")
        if not 0.0 <= float(self.lora_dropout) < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout!r}")
        if "lora" in self.trainable and self.lora_r == 0:
            raise ValueError(f"trainable={self.trainable!r} needs LoRA adapters, but lora_r is 0")
        if not isinstance(self.separator, str) or not self.separator:
            raise ValueError(f"separator must be a non-empty string, got {self.separator!r}")
        if "{instruction}" not in self.prompt_template:
            raise ValueError("prompt_template must contain the '{instruction}' placeholder")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens must be a positive int, got {self.max_new_tokens!r}")
        if self.connector_hidden is not None and (not isinstance(self.connector_hidden, int) or self.connector_hidden <= 0):
            raise ValueError(f"connector_hidden must be a positive int or None, got {self.connector_hidden!r}")

    # -- derived ------------------------------------------------------------------------------
    @property
    def n_time(self) -> int:
        """T: time patches of the encoder grid (64 for EAT-base)."""
        return self.encoder.n_time_patches

    @property
    def n_freq(self) -> int:
        """F: frequency patches of the encoder grid (8 for EAT-base)."""
        return self.encoder.n_freq_patches

    def format_prompt(self, instruction: str) -> str:
        """The prompt text for one instruction (LTU template by default)."""
        if not isinstance(instruction, str):
            raise ValueError(f"instruction must be a str, got {type(instruction).__name__}")
        return self.prompt_template.replace("{instruction}", instruction)

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> Dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["encoder"] = asdict(self.encoder)
        d["lm"] = self.lm.to_dict()
        return d

    def to_json(self, path: Optional[str] = None) -> str:
        """JSON text; also written to ``path`` (a file, or a directory -> ``path/sam_config.json``)."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            if os.path.isdir(path):
                path = os.path.join(path, CONFIG_FILE)
            with open(path, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SAMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown keys in SAM config: {unknown}")
        return cls(**d)

    @classmethod
    def from_json(cls, src: Union[str, Dict[str, Any]]) -> "SAMConfig":
        """From a dict, a JSON string, a file, or a directory holding ``sam_config.json``."""
        if isinstance(src, dict):
            return cls.from_dict(dict(src))
        if not isinstance(src, str):
            raise ValueError(f"from_json takes a path, a JSON string or a dict, got {type(src).__name__}")
        if src.lstrip().startswith("{"):
            return cls.from_dict(json.loads(src))
        path = os.path.join(src, CONFIG_FILE) if os.path.isdir(src) else src
        if not os.path.isfile(path):
            raise ValueError(f"no SAM config at {src!r} (expected {CONFIG_FILE})")
        from samkern.files import read_json

        d = read_json(path)
        if not isinstance(d, dict):
            raise ValueError(f"{path!r} must hold a JSON object, got {type(d).__name__}")
        return cls.from_dict(d)
