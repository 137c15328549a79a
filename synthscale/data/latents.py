"""The latent cache: a dataset split encoded once by an autoencoder, read fast by generator training.

`LatentSpec` and `TextSpec` describe what a generator consumes; objectives build their input embedding and
output head from them, so nothing above the cache needs to know which autoencoder made it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class LatentSpec:
    """The shape of one cached example. Continuous: float latents [channels, height, width] (already
    shifted/scaled to unit variance). Discrete: int64 token grid [height, width] with `vocab_size` codes."""

    kind: Literal["continuous", "discrete"]
    channels: int  # continuous: latent channels; discrete: bits/levels per code (informational)
    height: int
    width: int
    vocab_size: int | None = None  # discrete only

    @property
    def tokens(self) -> int:
        """Image positions (before any patchify)."""
        return self.height * self.width


@dataclass(frozen=True)
class TextSpec:
    """Caption token ids as the tokenizer writes them: int64 [B, max_length], right-padded with pad_id."""

    vocab_size: int
    max_length: int
    pad_id: int = 0
