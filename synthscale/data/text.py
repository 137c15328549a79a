"""Caption tokenizers. The embedded default is a word-level vocabulary built from the shapes templates;
a pretrained tokenizer can stand in by implementing `CaptionTokenizer`."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

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
    """Lower-cased words → ids; `<pad>`=0, `<unk>`=1, `<null>`=2 (the dropped caption of classifier-free guidance).

    A caption longer than `max_length` words raises `CaptionTooLong`, or with `truncate=True` is cut to its
    first `max_length` words and counted in `truncations` (user data's `long_caption: truncate`)."""

    def __init__(self, words: Sequence[str], max_length: int, truncate: bool = False):
        if max_length < 1:
            raise ConfigError(f"max_length must be ≥ 1, got {max_length}")
        self.itos = list(SPECIALS) + sorted(set(words) - set(SPECIALS))
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.max_length = max_length
        self.vocab_size = len(self.itos)
        self.pad_id, self.unk_id, self.null_id = (self.stoi[s] for s in SPECIALS)
        self.truncate, self.truncations = truncate, 0

    @classmethod
    def for_shapes(cls, max_length: int = 24) -> WordTokenizer:
        from synthscale.data.shapes import vocabulary

        return cls(vocabulary(), max_length)

    @classmethod
    def from_captions(
        cls, captions: Sequence[str], max_length: int, vocab_size: int = 8192, truncate: bool = True
    ) -> WordTokenizer:
        """A vocabulary of the `vocab_size - 3` most frequent words of `captions` (ties alphabetical); rarer
        words map to `<unk>`. Deterministic: the same captions give the same ids."""
        if vocab_size <= len(SPECIALS):
            raise ConfigError(f"data.caption_vocab must exceed {len(SPECIALS)} (the special tokens), got {vocab_size}")
        counts = Counter(w for c in captions for w in cls.words(c))
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: vocab_size - len(SPECIALS)]
        return cls([w for w, _ in ranked], max_length, truncate)

    def save(self, path: str | Path) -> None:
        """Store the vocabulary as JSON (atomically), e.g. beside a latent cache."""
        from synthscale import atomic

        atomic.write_json(
            path, {"kind": "word", "max_length": self.max_length, "truncate": self.truncate, "itos": self.itos}
        )

    @classmethod
    def load(cls, path: str | Path) -> WordTokenizer:
        data = json.loads(Path(path).read_text())
        if data.get("kind") != "word" or data.get("itos", [])[: len(SPECIALS)] != list(SPECIALS):
            raise ConfigError(f"{path} is not a word-tokenizer vocabulary written by WordTokenizer.save")
        tok = cls(data["itos"], data["max_length"], data["truncate"])
        if tok.itos != data["itos"]:
            raise ConfigError(f"{path}: vocabulary is not in canonical order; it was not written by WordTokenizer.save")
        return tok

    @staticmethod
    def words(caption: str) -> list[str]:
        # letters and digits of any script (for ASCII exactly [a-z0-9]+ after lower-casing)
        return re.findall(r"[^\W_]+", caption.lower())

    def length(self, caption: str) -> int:
        """Tokens the caption needs before padding or truncation."""
        return len(self.words(caption))

    def encode_one(self, caption: str) -> list[int]:
        words = self.words(caption)
        if len(words) > self.max_length and self.truncate:
            words = words[: self.max_length]
            self.truncations += 1
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


class PretrainedTokenizer:
    """The tokenizer of a local transformers / sentence-transformers model folder (`data.text_encoder`), as a
    `CaptionTokenizer`: int64 [B, max_length] ids with the model's specials, right-padded with its pad id.
    Longer captions are cut at `max_length` (counted in `truncations`) or, with truncate=False, refused."""

    def __init__(self, path: str | Path, max_length: int, truncate: bool = True):
        from synthscale.pretrained import require, transformer_dir

        what = "pretrained tokenizer (data.text_encoder)"
        self.path = transformer_dir(path, what, "data.text_encoder")
        transformers = require("transformers", what)
        try:
            self.hf = transformers.AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ConfigError(f"{what}: cannot load a tokenizer from {self.path}: {e}") from e
        if self.hf.pad_token_id is None:
            raise ConfigError(f"{what}: the tokenizer in {self.path} has no pad token; set one and save it again")
        if max_length < 2:
            raise ConfigError(f"max_length must be ≥ 2 for a pretrained tokenizer (its specials), got {max_length}")
        self.max_length, self.truncate, self.truncations = max_length, truncate, 0
        self.vocab_size = len(self.hf)
        self.pad_id = self.hf.pad_token_id

    def length(self, caption: str) -> int:
        return len(self.hf(caption, add_special_tokens=True)["input_ids"])

    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        if isinstance(captions, str):
            raise TypeError("encode takes a list of captions; wrap a single caption in a list")
        lengths = [self.length(c) for c in captions]
        too_long = sum(n > self.max_length for n in lengths)
        if too_long and not self.truncate:
            i = next(i for i, n in enumerate(lengths) if n > self.max_length)
            raise CaptionTooLong(
                f"caption has {lengths[i]} tokens but the tokenizer holds {self.max_length}: {captions[i]!r}. "
                "Raise data.max_caption_tokens or set data.long_caption=truncate."
            )
        self.truncations += too_long
        out = self.hf(
            list(captions), padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return out["input_ids"].to(torch.long).reshape(-1, self.max_length)


def caption_length_fn(data_cfg) -> Callable[[str], int]:
    """How the config's tokenizer counts a caption's tokens (the too-long rule of user datasets). Needs no
    vocabulary, so a dataset can apply it before the vocabulary is built from it."""
    if data_cfg.text_encoder:
        return PretrainedTokenizer(data_cfg.text_encoder, data_cfg.max_caption_tokens).length
    return lambda caption: len(WordTokenizer.words(caption))


def tokenizer_for(data_cfg) -> WordTokenizer | PretrainedTokenizer:
    """The caption tokenizer a dataset config implies: a pretrained model's (`data.text_encoder`), the fixed
    shapes vocabulary, or for user data a word vocabulary built from the train split's captions (all of its
    pool, so every data size shares one tokenizer; store it with `save` beside what it encoded)."""
    truncate = data_cfg.long_caption == "truncate"
    if data_cfg.text_encoder:
        return PretrainedTokenizer(data_cfg.text_encoder, data_cfg.max_caption_tokens, truncate)
    if data_cfg.dataset == "shapes":
        return WordTokenizer.for_shapes(data_cfg.max_caption_tokens)
    if data_cfg.dataset in ("folder", "shards"):
        from synthscale.data import get_dataset

        captions = get_dataset(data_cfg, "train").pool_captions()
        return WordTokenizer.from_captions(captions, data_cfg.max_caption_tokens, data_cfg.caption_vocab, truncate)
    raise ConfigError(f"no tokenizer for data.dataset {data_cfg.dataset!r}")
