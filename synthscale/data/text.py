"""Caption tokenizers. The embedded default is a word-level vocabulary built from the shapes templates;
a pretrained tokenizer can stand in by implementing `CaptionTokenizer`."""
from __future__ import annotations

import re
from typing import Protocol, Sequence

import torch

from synthscale.config import ConfigError

PAD, UNK, NULL = "<pad>", "<unk>", "<null>"
SPECIALS = (PAD, UNK, NULL)


class CaptionTooLong(ConfigError):
    """A caption with more tokens than the tokenizer's fixed length."""


class CaptionTokenizer(Protocol):
    vocab_size: int
    max_length: int
    pad_id: int

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        """Token ids, int64 [B, max_length], right-padded with `pad_id`."""
        ...


class WordTokenizer:
    """Lower-cased words → ids; `<pad>`=0, `<unk>`=1, `<null>`=2 (the dropped caption of classifier-free guidance)."""

    def __init__(self, words: Sequence[str], max_length: int):
        if max_length < 1:
            raise ConfigError(f"max_length must be ≥ 1, got {max_length}")
        self.itos = list(SPECIALS) + sorted(set(words) - set(SPECIALS))
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_length = max_length
        self.vocab_size = len(self.itos)
        self.pad_id, self.unk_id, self.null_id = (self.stoi[s] for s in SPECIALS)

    @classmethod
    def for_shapes(cls, max_length: int = 24) -> "WordTokenizer":
        from synthscale.data.shapes import vocabulary

        return cls(vocabulary(), max_length)

    @staticmethod
    def words(caption: str) -> list[str]:
        return re.findall(r"[a-z0-9]+", caption.lower())

    def encode_one(self, caption: str) -> list[int]:
        words = self.words(caption)
        if len(words) > self.max_length:
            raise CaptionTooLong(
                f"caption has {len(words)} words but the tokenizer holds {self.max_length}: {caption!r}. "
                "Raise data.max_caption_tokens or shorten the caption."
            )
        ids = [self.stoi.get(w, self.unk_id) for w in words]
        return ids + [self.pad_id] * (self.max_length - len(ids))

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions; wrap a single caption in a list")
        return torch.tensor([self.encode_one(c) for c in captions], dtype=torch.long).reshape(-1, self.max_length)

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.itos[i] for i in ids if i != self.pad_id)


def tokenizer_for(data_cfg) -> WordTokenizer:
    """The caption tokenizer a dataset config implies."""
    if data_cfg.dataset == "shapes":
        return WordTokenizer.for_shapes(data_cfg.max_caption_tokens)
    raise ConfigError(f"no tokenizer for data.dataset {data_cfg.dataset!r} yet")
