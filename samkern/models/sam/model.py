# SPDX-License-Identifier: Apache-2.0
"""``SAM``: EAT audio encoder -> connector -> Mamba-2 LM (arXiv 2509.15680).

Data flow for a batch of B clips::

    audio files / waveforms ─ load_audio, eat_features ─> feats (B, 1024, 128)
    feats ─ EATEncoder.audio_tokens ─> (B, T·F, E) = (B, 512, 768)   time-major tokens
          ─ AudioConnector(sep = LM embedding of "&&") ─> audio embeddings (B, N_a, D)
            N_a = 64 (concat) | 576 (time) | 520 (freq)
    per sample i: [audio (N_a) | prompt (P_i) | answer (A_i) + EOS]  ─ MambaLM ─> logits

The prompt is LTU's ``"### Instruction:\\n{instruction}\\n\\n### Response:\\n"``.

Training (:meth:`SAM.forward`): next-token cross-entropy on the answer tokens and the final EOS
(and on the prompt tokens too with ``loss_on_prompt``, as LTU's ``train_on_inputs``); audio
positions never carry a loss. The loss is the mean over all labelled tokens of the batch.
Samples are right-padded to the longest one — Mamba is causal, so the padding cannot change
any earlier position, and padded positions carry no label — or, with ``packed=True``, packed
into one row with ``cu_seqlens`` so no compute is spent on padding (same loss).

Generation (:meth:`SAM.generate`, :mod:`samkern.models.sam.generation`): prefill
[audio, prompt] once, then step the constant-size recurrent state one token at a time.

Checkpoints (:meth:`SAM.save` / :meth:`SAM.load`), a directory with::

    sam_config.json            SAMConfig
    model.safetensors          encoder.*, connector.*, lm.* (no LoRA; tied lm_head omitted)
    adapter_model.safetensors  the LoRA factors lm.*.lora_A / lora_B (absent when merged)
    tokenizer.json (+ tokenizer_config.json naming the EOS token)

Glossary: B batch, T/F time/frequency patches, E encoder width, D LM width, N_a audio tokens
after the connector, P_i / A_i prompt / answer lengths, L padded sequence length, V_pad
padded vocabulary.
"""
from __future__ import annotations

import collections.abc
import copy
import dataclasses
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from samkern.files import read_safetensors
from samkern.layers.connector import AudioConnector
from samkern.models.sam.config import CONFIG_FILE, TRAINABLE_CHOICES, SAMConfig
from samkern.models.sam.eat import EATConfig, EATEncoder
from samkern.models.sam.generation import GenerationOutput, generate_from_embeds
from samkern.models.sam.lm import MambaLM, MambaLMConfig
from samkern.models.sam.tokenizer import TextTokenizer

__all__ = ["SAM", "SAMOutput", "build_tiny_tokenizer", "IGNORE_INDEX"]

IGNORE_INDEX = -100
WEIGHTS_FILE = "model.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
_LORA_MARK = "lora_"

AudioInput = Union[str, os.PathLike, torch.Tensor, Sequence[Union[str, os.PathLike, torch.Tensor]]]

# A small corpus for the embedded tiny tokenizer: the prompt template and common caption words,
# so prompts and captions encode to few tokens; any other text still encodes (byte fallback).
_TINY_CORPUS = (
    "### Instruction:\nWrite an audio caption describing the sound.\n\n### Response:\n",
    "What is the sound? Describe the sound. How many beeps are there? Which sound comes first?",
    "a dog barks while a car passes by and people talk in the background",
    "a man speaks and a woman laughs as music plays with birds chirping outside",
    "a high-pitched tone getting louder, then a low-pitched tone getting quieter",
    "white noise, pink noise, brown noise and blue noise; fast clicks and slow clicks",
    "a rising chirp followed by a falling chirp; one, two, three, four or five beeps",
    "water runs, wind blows, an engine idles, a siren wails, rain falls on a roof",
    "very short, short, medium and long sounds at the same time; silence; tremolo",
    "yes no the first the last sound event is a of and with in on at",
)
TINY_SPECIAL = ("<|endoftext|>", "<pad>")


def build_tiny_tokenizer(vocab_size: int = 400) -> TextTokenizer:
    """A small byte-level BPE tokenizer built on the fly (deterministic, no download).

    Ids: ``<|endoftext|>`` = 0 (EOS, as GPT-NeoX), ``<pad>`` = 1, then the 256 byte symbols and
    the merges learnt on a fixed caption corpus, and ``"&&"`` as one (non-special) added token.
    Any text encodes (bytes are the fallback).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=list(TINY_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_TINY_CORPUS), trainer)
    tok.add_tokens([AddedToken("&&", special=False, normalized=False)])
    return TextTokenizer(tok, eos_token="<|endoftext|>")


@dataclass
class SAMOutput:
    """Result of :meth:`SAM.forward`.

    Attributes:
        loss: scalar fp32 mean cross-entropy over labelled tokens.
        logits: (B, L, V_pad) (padded) or (1, ΣL_i, V_pad) (packed).
        labels: same leading shape as ``logits``, int64 targets, ``IGNORE_INDEX`` where none.
        lengths: (B,) int64 valid length of each sample.
        num_tokens: number of labelled tokens.
    """

    loss: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor
    lengths: torch.Tensor
    num_tokens: int


def _is_pathlike(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _check_waveform(a: torch.Tensor, i: int) -> torch.Tensor:
    """A (S,) waveform tensor as float32 on the CPU; refuses what ``load_audio`` refuses for files
    (a silent ``.float()`` would use int16 PCM unscaled, NaN would give NaN features)."""
    if not a.is_floating_point():
        raise TypeError(
            f"waveform (audio item {i}) has dtype {a.dtype}: pass a floating-point waveform in [-1, 1] "
            "(scale integer PCM, e.g. int16 / 32768)"
        )
    w = a.detach().float().cpu()
    if not bool(torch.isfinite(w).all()):  # one pass over S samples: negligible beside the fbank
        raise ValueError(f"waveform (audio item {i}) contains NaN or inf samples")
    return w


def _check_texts(name: str, texts: Any) -> Union[str, List[str]]:
    """``texts`` as a str or a list of str (TypeError naming ``name`` otherwise)."""
    if isinstance(texts, str):
        return texts
    if not isinstance(texts, collections.abc.Sequence) or isinstance(texts, (bytes, bytearray)):
        raise TypeError(f"{name} must be a str or a list of str (one per clip), got {type(texts).__name__}")
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"{name} must be a str or a list of str (one per clip), got a list holding {bad[0]}")
    return list(texts)


class SAM(nn.Module):
    """The SAM audio-language model (see the module docstring).

    Args:
        config: :class:`SAMConfig`.
        tokenizer: a :class:`~samkern.models.sam.tokenizer.TextTokenizer` (its vocabulary must
            fit the LM's ``vocab_size``).
        encoder: an ``EATEncoder`` to use instead of a fresh one (e.g. loaded weights).
        lm: a ``MambaLM`` to use instead of a fresh one (its LoRA must match the config).

    Submodules: ``encoder`` (EATEncoder), ``connector`` (AudioConnector), ``lm`` (MambaLM).
    """

    def __init__(
        self,
        config: SAMConfig,
        tokenizer: TextTokenizer,
        encoder: Optional[EATEncoder] = None,
        lm: Optional[MambaLM] = None,
    ) -> None:
        super().__init__()
        if not isinstance(config, SAMConfig):
            raise ValueError(f"config must be a SAMConfig, got {type(config).__name__}")
        if not isinstance(tokenizer, TextTokenizer):
            raise ValueError(f"tokenizer must be a TextTokenizer, got {type(tokenizer).__name__}")
        self.config = config
        self.tokenizer = tokenizer
        self.encoder = encoder if encoder is not None else EATEncoder(config.encoder)
        if lm is None:
            lm = MambaLM(
                config.lm, lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout
            )
        self.lm = lm
        if self.encoder.config != config.encoder:
            raise ValueError("the encoder's config differs from config.encoder")
        if self.lm.config.to_dict() != config.lm.to_dict():
            raise ValueError("the LM's config differs from config.lm")
        lm_lora = max([getattr(m, "lora_r", 0) for m in self.lm.modules()] + [0])
        if lm_lora != config.lora_r:
            raise ValueError(f"the LM carries LoRA rank {lm_lora}, config.lora_r is {config.lora_r}")
        if tokenizer.vocab_size > config.lm.vocab_size:
            raise ValueError(
                f"tokenizer vocabulary ({tokenizer.vocab_size}) exceeds the LM vocab_size ({config.lm.vocab_size})"
            )
        w = self.lm.backbone.embedding.weight
        self.connector = AudioConnector(
            config.connector, config.encoder.dim, config.lm.d_model, config.n_time, config.n_freq,
            hidden=config.connector_hidden, device=w.device, dtype=w.dtype,
        )
        eos = config.eos_token_id if config.eos_token_id is not None else tokenizer.eos_token_id
        if eos is None:
            raise ValueError("no EOS token: the tokenizer has none and config.eos_token_id is None")
        pad = config.pad_token_id
        if pad is None:
            pad = tokenizer.tokenizer.token_to_id("<pad>")
        self.eos_token_id: int = int(eos)
        self.pad_token_id: int = int(eos if pad is None else pad)
        self.separator_ids: List[int] = tokenizer.encode(config.separator)
        if not self.separator_ids:
            raise ValueError(f"the separator {config.separator!r} encodes to no tokens")
        self.set_trainable(config.trainable)

    # ------------------------------------------------------------------------------------------
    # construction helpers
    # ------------------------------------------------------------------------------------------
    @classmethod
    def tiny(
        cls,
        tokenizer: Optional[TextTokenizer] = None,
        connector: str = "concat",
        lora_r: int = 4,
        seed: int = 0,
        **config_overrides: Any,
    ) -> "SAM":
        """A small random SAM for CPU tests and demos (untrained; outputs are gibberish).

        EAT: width 32, 1 block of 2 heads, on the real 16x16-patch (64, 8) grid of a
        (1024, 128) fbank. LM: the ``"tiny"`` Mamba-2 preset (width 64, 2 layers) with the
        tokenizer's vocabulary. Tokenizer: :func:`build_tiny_tokenizer` unless given. The
        weights are drawn from a private generator seeded with ``seed`` (the global RNG is
        left untouched).
        """
        tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
        enc = EATConfig(dim=32, depth=1, heads=2, mlp_ratio=2.0)
        lm = MambaLMConfig.preset("tiny", vocab_size=tokenizer.vocab_size)
        kw: Dict[str, Any] = dict(
            encoder=enc, lm=lm, connector=connector, lora_r=lora_r, lora_alpha=2.0 * lora_r, lora_dropout=0.0,
            trainable="connector+encoder+lora" if lora_r > 0 else "connector+encoder", max_new_tokens=16,
        )
        kw.update(config_overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = cls(SAMConfig(**kw), tokenizer)
            # LoRA B starts at zero (peft init): give it a small value so the adapter matters
            # in tests of LoRA save / merge
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if name.endswith("lora_B"):
                        p.normal_(0.0, 0.02)
        return model.eval()

    @classmethod
    def from_pretrained_parts(
        cls,
        eat_checkpoint: Optional[str] = None,
        lm_path: Optional[str] = None,
        tokenizer_path: Optional[str] = None,
        connector: str = "concat",
        lm_preset: str = "130m",
        eat_kwargs: Optional[Dict[str, Any]] = None,
        device=None,
        dtype: Optional[torch.dtype] = None,
        **config_overrides: Any,
    ) -> "SAM":
        """Assemble SAM from released parts (the connector starts random).

        Args:
            eat_checkpoint: EAT weights (HF layout; file or directory), or None for a random
                EAT-base (a warning is issued).
            lm_path: a mamba-ssm or HF Mamba-2 checkpoint directory, or None for a random LM
                of preset ``lm_preset`` (a warning is issued).
            tokenizer_path: directory or ``tokenizer.json`` (default: ``lm_path``).
            eat_kwargs: extra arguments of ``load_eat_checkpoint`` (e.g. ``heads=...`` for a
                non-base encoder: the head count cannot be read from the weights).
            connector: ``"concat"`` | ``"time"`` | ``"freq"``.
            config_overrides: other :class:`SAMConfig` fields (``lora_r``, ``trainable``, ...).
        """
        from samkern.models.sam.eat import load_eat_checkpoint
        from samkern.models.sam.tokenizer import load_tokenizer

        defaults = {f.name: f.default for f in dataclasses.fields(SAMConfig) if f.name.startswith("lora_")}
        lora = {k: config_overrides.get(k, defaults[k]) for k in ("lora_r", "lora_alpha", "lora_dropout")}
        if eat_checkpoint is not None:
            encoder = load_eat_checkpoint(eat_checkpoint, **{"dtype": torch.float32, **(eat_kwargs or {})})
        else:
            warnings.warn("SAM.from_pretrained_parts: no EAT checkpoint, the encoder is random", stacklevel=2)
            encoder = EATEncoder(EATConfig.base())
        if lm_path is not None:
            lm = MambaLM.from_pretrained(lm_path, dtype=torch.float32, **lora)
        else:
            warnings.warn("SAM.from_pretrained_parts: no LM checkpoint, the LM is random", stacklevel=2)
            lm = MambaLM(MambaLMConfig.preset(lm_preset), **lora)
        tok_src = tokenizer_path if tokenizer_path is not None else lm_path
        if tok_src is None:
            raise ValueError("from_pretrained_parts needs tokenizer_path (or lm_path holding tokenizer.json)")
        tokenizer = load_tokenizer(tok_src)
        config = SAMConfig(encoder=encoder.config, lm=lm.config, connector=connector, **config_overrides)
        model = cls(config, tokenizer, encoder=encoder, lm=lm)
        return model.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------------------------------
    # trainable parts
    # ------------------------------------------------------------------------------------------
    def set_trainable(self, spec: str) -> None:
        """Select the trained parameters (everything else gets ``requires_grad=False``).

        ``"connector"``: the connector MLP only. ``"connector+encoder"``: + all of EAT.
        ``"connector+encoder+lora"``: + the LoRA factors of the LM (needs ``lora_r > 0``).
        ``"all"``: every parameter, the LM's base weights and embedding included (the
        separator embedding is then trained through the connector).
        """
        if spec not in TRAINABLE_CHOICES:
            raise ValueError(f"trainable must be one of {TRAINABLE_CHOICES}, got {spec!r}")
        if "lora" in spec and not any(_LORA_MARK in n for n, _ in self.named_parameters()):
            raise ValueError(f"trainable={spec!r} needs LoRA adapters, but the LM has none (lora_r=0)")
        for name, p in self.named_parameters():
            if spec == "all":
                on = True
            elif name.startswith("connector."):
                on = True
            elif name.startswith("encoder."):
                on = "encoder" in spec
            else:
                on = "lora" in spec and _LORA_MARK in name
            p.requires_grad_(on)
        self.trainable = spec

    def set_kernel_backends(self, scan: Optional[str] = None, connector: Optional[str] = None, lora: Optional[str] = None) -> None:
        """Force the backend of the fused ops (None = automatic choice per call): ``scan`` for
        every Mamba-2 block's SSD scan, ``connector`` for the connector reorder, ``lora`` for
        every LoRA projection. ``"ref"`` selects the PyTorch references (debugging, CPU tests)."""
        for m in self.lm.modules():
            if hasattr(m, "scan_backend"):
                m.scan_backend = scan
            if hasattr(m, "lora_A") and hasattr(m, "backend"):
                m.backend = lora
        self.connector.backend = connector

    # ------------------------------------------------------------------------------------------
    # inputs
    # ------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.lm.backbone.embedding.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.backbone.embedding.weight.dtype

    @property
    def num_audio_tokens(self) -> int:
        """N_a: audio embeddings handed to the LM per clip."""
        return self.connector.num_output_tokens

    def features(self, audio: AudioInput) -> torch.Tensor:
        """EAT input features of a batch: ``(B, 1024, 128)`` float32 on the model's device.

        ``audio``: a path, a list of paths, a waveform (S,) / (B, S) tensor or a list of (S_i,)
        waveforms (16 kHz, mean removed, as :func:`~samkern.models.sam.audio.load_audio`
        returns).
        """
        from samkern.models.sam.audio import eat_features, load_audio

        items = [audio] if (_is_pathlike(audio) or (isinstance(audio, torch.Tensor) and audio.dim() == 1)) else audio
        if isinstance(items, torch.Tensor):
            if items.dim() != 2:
                raise ValueError(f"waveforms must be (S,) or (B, S), got shape {tuple(items.shape)}")
            items = list(items.unbind(0))
        if not isinstance(items, collections.abc.Sequence) or isinstance(items, (bytes, bytearray)):
            raise TypeError(
                "audio must be a path, a waveform tensor (S,) / (B, S), or a list of paths / (S,) waveforms, "
                f"got {type(audio).__name__}"
            )
        items = list(items)
        if not items:
            raise ValueError("empty batch: no audio given")
        waves = []
        for i, a in enumerate(items):
            if _is_pathlike(a):
                waves.append(load_audio(a))
            elif isinstance(a, torch.Tensor) and a.dim() == 1 and a.numel() > 0:
                waves.append(_check_waveform(a, i))
            elif isinstance(a, torch.Tensor):
                raise ValueError(f"audio item {i} must be a path or a non-empty (S,) waveform, got shape {tuple(a.shape)}")
            else:
                raise TypeError(f"audio item {i} must be a path or a (S,) waveform tensor, got {type(a).__name__}")
        lengths = torch.tensor([w.shape[0] for w in waves])
        batch = torch.zeros(len(waves), int(lengths.max()))
        for i, w in enumerate(waves):
            batch[i, : w.shape[0]] = w
        feats = eat_features(batch, lengths, target_frames=self.config.encoder.n_frames)
        return feats.to(self.device)

    def _check_features(self, feats: torch.Tensor) -> torch.Tensor:
        if not isinstance(feats, torch.Tensor):
            raise ValueError(f"features must be a tensor, got {type(feats).__name__}")
        if feats.dim() == 2:
            feats = feats[None]
        c = self.config.encoder
        if feats.dim() != 3 or feats.shape[1:] != (c.n_frames, c.n_mels):
            raise ValueError(
                f"features must be (B, {c.n_frames}, {c.n_mels}) (eat_features output), got shape {tuple(feats.shape)}"
            )
        if feats.shape[0] == 0:
            raise ValueError("features: empty batch (B == 0)")
        if feats.device != self.device:
            raise ValueError(f"features are on {feats.device}, the model on {self.device}")
        return feats

    def _resolve_features(self, audio: Optional[AudioInput], features: Optional[torch.Tensor]) -> torch.Tensor:
        if (audio is None) == (features is None):
            raise ValueError("pass exactly one of audio and features")
        return self._check_features(features if features is not None else self.features(audio))

    def separator_embedding(self) -> torch.Tensor:
        """(D,) the LM's embedding of the separator string (mean over its tokens when it
        splits into several; differentiable w.r.t. the embedding table)."""
        ids = torch.tensor(self.separator_ids, dtype=torch.long, device=self.device)
        return self.lm.backbone.embedding(ids).mean(0)

    def encoder_tokens(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, 1024, 128) features -> (B, T·F, E) EAT audio tokens (no CLS)."""
        feats = self._check_features(feats)
        return self.encoder.audio_tokens(feats.to(self.encoder.patch_embed.weight.dtype))

    def audio_embeddings(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, 1024, 128) features -> (B, N_a, D) audio embeddings in the LM dtype."""
        tok = self.encoder_tokens(feats)
        sep = self.separator_embedding() if self.connector.needs_separator else None
        emb = self.connector(tok.to(self.connector.mlp[0].weight.dtype), sep)
        return emb.to(self.dtype)

    def prompt_ids(self, instruction: str) -> List[int]:
        """Token ids of the templated prompt for one instruction."""
        return self.tokenizer.encode(self.config.format_prompt(instruction))

    def _ids_list(self, name: str, texts: Optional[Sequence[str]], ids: Optional[Sequence[Sequence[int]]], B: int, fn):
        if (texts is None) == (ids is None):
            raise ValueError(f"pass exactly one of {name} texts and {name}_ids")
        if texts is not None:
            texts = _check_texts(f"{name}s", texts)
            if isinstance(texts, str):
                texts = [texts] * B
            out = [fn(t) for t in texts]
        else:
            out = [list(x.tolist() if isinstance(x, torch.Tensor) else x) for x in ids]
        if len(out) != B:
            raise ValueError(f"got {len(out)} {name}(s) for a batch of {B} clips")
        V = self.config.lm.vocab_size
        for i, seq in enumerate(out):
            if any((not isinstance(t, int)) or t < 0 or t >= V for t in seq):
                raise ValueError(f"{name} {i} holds ids outside [0, {V})")
        return out

    # ------------------------------------------------------------------------------------------
    # training forward
    # ------------------------------------------------------------------------------------------
    def build_inputs(
        self,
        audio_emb: torch.Tensor,
        prompt_ids: Sequence[Sequence[int]],
        answer_ids: Sequence[Sequence[int]],
        loss_on_prompt: Optional[bool] = None,
    ):
        """Concatenate [audio, prompt, answer + EOS] per sample, right-padded.

        Args:
            audio_emb: (B, N_a, D). prompt_ids / answer_ids: B lists of ids (answers without EOS).
        Returns:
            (embeds (B, L, D), labels (B, L) int64 with ``labels[t]`` = the token at t + 1 or
            ``IGNORE_INDEX``, lengths (B,) int64).
        """
        loss_on_prompt = self.config.loss_on_prompt if loss_on_prompt is None else loss_on_prompt
        B, Na, _ = audio_emb.shape
        texts = [list(p) + list(a) + [self.eos_token_id] for p, a in zip(prompt_ids, answer_ids)]
        Lt = max(len(t) for t in texts)
        ids = torch.full((B, Lt), self.pad_token_id, dtype=torch.long)
        labels = torch.full((B, Na + Lt), IGNORE_INDEX, dtype=torch.long)
        for i, (t, p) in enumerate(zip(texts, prompt_ids)):
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            first = 0 if loss_on_prompt else len(p)  # first labelled text position
            # text position j sits at Na + j and is predicted from position Na + j - 1
            labels[i, Na + first - 1 : Na + len(t) - 1] = torch.tensor(t[first:], dtype=torch.long)
        ids, labels = ids.to(self.device), labels.to(self.device)
        emb = torch.cat([audio_emb, self.lm.backbone.embedding(ids)], dim=1)
        lengths = torch.tensor([Na + len(t) for t in texts], dtype=torch.long, device=self.device)
        return emb, labels, lengths

    def forward(
        self,
        features: Optional[torch.Tensor] = None,
        instructions: Optional[Union[str, Sequence[str]]] = None,
        answers: Optional[Sequence[str]] = None,
        *,
        audio: Optional[AudioInput] = None,
        prompt_ids: Optional[Sequence[Sequence[int]]] = None,
        answer_ids: Optional[Sequence[Sequence[int]]] = None,
        loss_on_prompt: Optional[bool] = None,
        packed: bool = False,
    ) -> SAMOutput:
        """Teacher-forced loss of a batch.

        Args:
            features: (B, 1024, 128) EAT features, or ``audio=`` (see :meth:`features`).
            instructions: B instruction strings (or one, broadcast), templated into prompts; or
                ``prompt_ids``: B lists of already-templated prompt ids.
            answers: B answer strings; or ``answer_ids``: B lists of ids (EOS is appended).
            loss_on_prompt: override ``config.loss_on_prompt``.
            packed: pack the samples into one row with ``cu_seqlens`` instead of padding.
        Returns:
            :class:`SAMOutput`.
        """
        feats = self._resolve_features(audio, features)
        B = feats.shape[0]
        p_ids = self._ids_list("instruction", instructions, prompt_ids, B, self.prompt_ids)
        a_ids = self._ids_list("answer", answers, answer_ids, B, self.tokenizer.encode)
        audio_emb = self.audio_embeddings(feats)
        emb, labels, lengths = self.build_inputs(audio_emb, p_ids, a_ids, loss_on_prompt)
        if packed:
            lens = lengths.tolist()
            emb = torch.cat([emb[i, :n] for i, n in enumerate(lens)], 0)[None]
            labels = torch.cat([labels[i, :n] for i, n in enumerate(lens)], 0)[None]
            cu = torch.zeros(B + 1, dtype=torch.int32, device=self.device)
            cu[1:] = torch.cumsum(lengths.to(torch.int32), 0)
            seq_idx = torch.repeat_interleave(
                torch.arange(B, dtype=torch.int32, device=self.device), lengths
            )[None]
            logits = self.lm(inputs_embeds=emb, seq_idx=seq_idx, cu_seqlens=cu)
        else:
            logits = self.lm(inputs_embeds=emb)
        n = int((labels != IGNORE_INDEX).sum())
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
        ) / max(n, 1)
        return SAMOutput(loss=loss, logits=logits, labels=labels, lengths=lengths, num_tokens=n)

    # ------------------------------------------------------------------------------------------
    # generation
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        audio: Optional[AudioInput] = None,
        instructions: Union[str, Sequence[str], None] = None,
        *,
        features: Optional[torch.Tensor] = None,
        max_new_tokens: Optional[int] = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        generator: Optional[torch.Generator] = None,
    ) -> GenerationOutput:
        """Answer ``instructions`` about a batch of clips (one instruction broadcasts).

        Decoding: see :func:`samkern.models.sam.generation.generate_from_embeds`. Returns a
        :class:`~samkern.models.sam.generation.GenerationOutput` with ``texts`` filled.
        """
        feats = self._resolve_features(audio, features)
        B = feats.shape[0]
        if instructions is None:
            raise ValueError("generate needs instructions (a string or one per clip)")
        p_ids = self._ids_list("instruction", instructions, None, B, self.prompt_ids)
        audio_emb = self.audio_embeddings(feats)  # (B, N_a, D)
        prefixes = []
        for i, p in enumerate(p_ids):
            pe = self.lm.backbone.embedding(torch.tensor(p, dtype=torch.long, device=self.device))
            prefixes.append(torch.cat([audio_emb[i], pe], 0))
        out = generate_from_embeds(
            self.lm, prefixes, eos_token_id=self.eos_token_id, pad_token_id=self.pad_token_id,
            # `is None`, not `or`: 0 must be rejected (generate_from_embeds), not mean the default
            max_new_tokens=self.config.max_new_tokens if max_new_tokens is None else max_new_tokens,
            do_sample=do_sample,
            temperature=temperature, top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
            generator=generator, vocab_size=self.config.lm.vocab_size,
        )
        out.texts = [self.tokenizer.decode(out.tokens[i, : int(out.lengths[i])]) for i in range(B)]
        return out

    def caption(self, audio: Optional[AudioInput] = None, *, features: Optional[torch.Tensor] = None, **kw: Any) -> List[str]:
        """Captions of a batch of clips (``config.caption_instruction``)."""
        return self.generate(audio, self.config.caption_instruction, features=features, **kw).texts

    def ask(
        self, audio: Optional[AudioInput], question: Union[str, Sequence[str]], *, features: Optional[torch.Tensor] = None, **kw: Any
    ) -> List[str]:
        """Answers to ``question`` (one string for all clips, or one per clip; none may be empty)."""
        question = _check_texts("question", question)
        if any(not q.strip() for q in ([question] if isinstance(question, str) else question)):
            raise ValueError("question must not be empty (or whitespace only)")
        return self.generate(audio, question, features=features, **kw).texts

    # ------------------------------------------------------------------------------------------
    # analysis
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def audio_token_stats(
        self,
        audio: Optional[AudioInput] = None,
        *,
        features: Optional[torch.Tensor] = None,
        tau: float = 0.95,
        energy: str = "sigma2",
        include_separators: bool = False,
    ) -> Dict[str, Dict[str, Any]]:
        """τ-effective rank and mean token cosine of each clip's audio tokens, after the encoder
        (N = T·F tokens of width E) and after the connector (N_a tokens of width D; the
        separator rows are left out unless ``include_separators``).

        Returns ``{"encoder": {...}, "connector": {...}}``, each with ``effective_rank`` (B,)
        int64, ``mean_cosine`` (B,) float64 and ``num_tokens``.
        """
        from samkern.models.sam.analysis import token_stats

        feats = self._resolve_features(audio, features)
        enc = self.encoder_tokens(feats)
        sep = self.separator_embedding() if self.connector.needs_separator else None
        con = self.connector(enc.to(self.connector.mlp[0].weight.dtype), sep)
        if self.connector.needs_separator and not include_separators:
            con = con[:, ~self.connector.separator_mask(con.device)]
        return {"encoder": token_stats(enc, tau, energy), "connector": token_stats(con, tau, energy)}

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def _lora_modules(self) -> Dict[str, nn.Module]:
        return {n: m for n, m in self.named_modules() if getattr(m, "r", 0) and hasattr(m, "lora_A")}

    def save(self, path: str, merge_lora: bool = False) -> None:
        """Write the checkpoint directory (see the module docstring).

        ``merge_lora=False``: base weights + a separate adapter file. ``merge_lora=True``: the
        LoRA update is folded into the base weights (W + s·B A, computed in fp32) and the saved
        config has ``lora_r = 0``, ``lora_merged = True``. The model itself is not modified.
        """
        from safetensors.torch import save_file

        os.makedirs(path, exist_ok=True)
        sd = {k: v.detach() for k, v in self.state_dict().items()}
        if self.config.lm.tie_embeddings:
            sd.pop("lm.lm_head.weight", None)  # shares storage with the embedding
        lora_mods = self._lora_modules()
        adapter = {k: sd.pop(k) for k in list(sd) if _LORA_MARK in k}
        for name, m in lora_mods.items():
            if merge_lora:  # (the state dict holds W, merged or not: LoRALinear._save_to_state_dict)
                key = f"{name}.weight"
                delta, w = m._delta_weight(), sd[key]
                sd[key] = (w.to(delta.dtype) + delta).to(w.dtype)
        cfg = copy.deepcopy(self.config)
        cfg.eos_token_id, cfg.pad_token_id = self.eos_token_id, self.pad_token_id
        cfg.trainable = self.trainable
        if merge_lora and lora_mods:
            cfg.lora_r, cfg.lora_merged = 0, True
            if "lora" in cfg.trainable:
                cfg.trainable = "connector+encoder"
        cfg.to_json(os.path.join(path, CONFIG_FILE))
        save_file({k: v.cpu().contiguous() for k, v in sd.items()}, os.path.join(path, WEIGHTS_FILE), metadata={"format": "pt"})
        adapter_path = os.path.join(path, ADAPTER_FILE)
        if adapter and not merge_lora:
            save_file({k: v.cpu().contiguous() for k, v in adapter.items()}, adapter_path, metadata={"format": "pt"})
        elif os.path.exists(adapter_path):
            os.remove(adapter_path)  # a stale adapter would be applied on top of merged weights
        self.tokenizer.tokenizer.save(os.path.join(path, "tokenizer.json"))
        with open(os.path.join(path, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump({"eos_token": self.tokenizer.eos_token}, f)

    @classmethod
    def load(cls, path: str, device=None, dtype: Optional[torch.dtype] = None, strict: bool = True) -> "SAM":
        """Load a directory written by :meth:`save` (raises ``ValueError`` on missing, corrupt or
        truncated files, or keys that do not match)."""
        from samkern.models.sam.tokenizer import load_tokenizer

        if not os.path.isdir(path):
            raise ValueError(f"SAM checkpoint {path!r} is not a directory")
        wfile = os.path.join(path, WEIGHTS_FILE)
        if not os.path.isfile(wfile):
            raise ValueError(f"SAM checkpoint {path!r} has no {WEIGHTS_FILE}")
        config = SAMConfig.from_json(path)
        tokenizer = load_tokenizer(path)
        model = cls(config, tokenizer)
        sd = read_safetensors(wfile)
        afile = os.path.join(path, ADAPTER_FILE)
        if os.path.isfile(afile):
            sd.update(read_safetensors(afile))
        own = model.state_dict()
        optional = {"lm.lm_head.weight"} if config.lm.tie_embeddings else set()
        missing = sorted(set(own) - set(sd) - optional)
        unexpected = sorted(set(sd) - set(own))
        if strict and (missing or unexpected):
            raise ValueError(f"SAM checkpoint {path!r} does not match its config: missing {missing[:10]}, unexpected {unexpected[:10]}")
        bad = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
        if bad:
            raise ValueError("SAM checkpoint shapes do not match: " + "; ".join(bad[:10]))
        model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
        model.lm.tie_weights()
        return model.to(device=device, dtype=dtype).eval()
