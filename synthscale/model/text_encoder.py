"""The caption encoder every objective shares: a small bidirectional Transformer over caption tokens.

Pad positions are masked out as keys, so a caption's encoding does not depend on how much padding follows it.
"""

from __future__ import annotations

import torch
from torch import nn

from synthscale.model.transformer import Transformer


def key_valid(tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """bool [B, L]: which caption positions are real tokens. Position 0 always counts, so an empty caption
    still has one key to attend to (an all-masked softmax row would be NaN)."""
    valid = tokens != pad_id
    valid[:, 0] = True
    return valid


class TextEncoder(nn.Module):
    def __init__(self, vocab_size: int, max_length: int, width: int, depth: int, heads: int, pad_id: int = 0):
        super().__init__()
        self.max_length, self.pad_id = max_length, pad_id
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(max_length, width)
        self.transformer = Transformer(width, depth, heads)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens int64 [B, L ≤ max_length] → (features [B, L, D], key_valid bool [B, L])."""
        B, L = tokens.shape
        if L > self.max_length:
            raise ValueError(f"caption tokens have length {L}, the text encoder was built for {self.max_length}")
        valid = key_valid(tokens, self.pad_id)
        x = self.tok(tokens) + self.pos.weight[:L]  # [B, L, D]; a shorter caption reads as if right-padded
        mask = valid[:, None, None, :]  # [B, 1, 1, L]: every query sees the real tokens
        return self.transformer(x, mask), valid
