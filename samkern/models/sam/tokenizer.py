# SPDX-License-Identifier: Apache-2.0
"""Tokenizer loading for the Mamba-2 LM: a local ``tokenizer.json`` through HF ``tokenizers``.

The state-spaces/mamba2-* checkpoints use the GPT-NeoX tokenizer (vocabulary 50277, padded to
50288 in the model), whose end-of-text token ``<|endoftext|>`` has id 0. Nothing is fetched
from the network: pass a directory holding ``tokenizer.json`` or the file itself.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Union

__all__ = ["TextTokenizer", "load_tokenizer", "EOS_CANDIDATES"]

# end-of-sequence spellings, most specific first (<|endoftext|> is GPT-NeoX's, id 0)
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|eos|>")
TOKENIZER_FILE = "tokenizer.json"


class TextTokenizer:
    """Thin wrapper over a ``tokenizers.Tokenizer`` with the EOS id the LM decodes against.

    Attributes:
        tokenizer: the underlying ``tokenizers.Tokenizer``.
        eos_token_id: id of the end-of-sequence token (``None`` if none was found).
        vocab_size: size of the tokenizer vocabulary including added tokens (≤ the model's
            padded vocabulary).
    """

    def __init__(self, tokenizer, eos_token: Optional[str] = None) -> None:
        self.tokenizer = tokenizer
        self.eos_token: Optional[str] = None
        self.eos_token_id: Optional[int] = None
        candidates = (eos_token,) if eos_token is not None else EOS_CANDIDATES
        for tok in candidates:
            tid = tokenizer.token_to_id(tok)
            if tid is not None:
                self.eos_token, self.eos_token_id = tok, tid
                break
        if eos_token is not None and self.eos_token_id is None:
            raise ValueError(f"eos_token {eos_token!r} is not in the tokenizer vocabulary")

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_eos: bool = False) -> List[int]:
        """Token ids of ``text`` (no special tokens added, as mamba-ssm's prompts); optionally
        followed by the EOS id."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if add_eos:
            if self.eos_token_id is None:
                raise ValueError("add_eos=True but the tokenizer has no EOS token")
            ids = ids + [self.eos_token_id]
        return ids

    def encode_batch(self, texts: Sequence[str], add_eos: bool = False) -> List[List[int]]:
        return [self.encode(t, add_eos=add_eos) for t in texts]

    def decode(self, ids: Union[Sequence[int], "object"], skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list or a 1-D tensor); decoding stops at the first EOS."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if self.eos_token_id is not None and self.eos_token_id in ids:
            ids = ids[: ids.index(self.eos_token_id)]
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def __len__(self) -> int:
        return self.vocab_size


def load_tokenizer(path: str, eos_token: Optional[str] = None) -> TextTokenizer:
    """Load ``tokenizer.json`` from ``path`` (a directory or the file).

    The EOS token is ``eos_token`` if given, else the one named in a ``tokenizer_config.json``
    / ``special_tokens_map.json`` beside the file, else the first of :data:`EOS_CANDIDATES`
    the vocabulary contains (GPT-NeoX: ``<|endoftext|>`` → id 0).
    """
    try:
        from tokenizers import Tokenizer
    except ImportError as e:  # pragma: no cover - environment problem
        raise ImportError("load_tokenizer needs the `tokenizers` package (pip install tokenizers)") from e
    fname = os.path.join(path, TOKENIZER_FILE) if os.path.isdir(path) else path
    if not os.path.isfile(fname):
        raise ValueError(f"no {TOKENIZER_FILE} at {path!r}")
    try:
        tok = Tokenizer.from_file(fname)
    except Exception as e:  # `tokenizers` raises a bare Exception on a malformed file
        raise ValueError(f"cannot read {fname!r} (not a valid tokenizers JSON file?): {e}") from e
    if eos_token is None:
        eos_token = _eos_from_side_files(os.path.dirname(os.path.abspath(fname)))
        if eos_token is not None and tok.token_to_id(eos_token) is None:
            eos_token = None  # a side file naming a token the vocabulary lacks: fall back to the candidates
    return TextTokenizer(tok, eos_token=eos_token)


def _eos_from_side_files(directory: str) -> Optional[str]:
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        p = os.path.join(directory, name)
        if not os.path.isfile(p):
            continue
        try:
            with open(p, "r", encoding="utf-8") as f:
                eos = json.load(f).get("eos_token")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(eos, dict):  # {"content": "<|endoftext|>", ...}
            eos = eos.get("content")
        if isinstance(eos, str):
            return eos
    return None
