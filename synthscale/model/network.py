"""What every objective's network shares around the backbone: the caption prefix (text encoder, and the
learned null caption of classifier-free guidance), image position embeddings and the attention masks.

Objectives subclass `Network` to add their input embedding and output head; the network itself never knows
which objective it serves.
"""

from __future__ import annotations

import torch
from torch import nn

from synthscale.config import ModelConfig
from synthscale.data.latents import TextSpec
from synthscale.model.sizes import get_size
from synthscale.model.text_encoder import TextEncoder
from synthscale.model.transformer import Transformer


class Network(nn.Module):
    def __init__(
        self,
        model_cfg: ModelConfig,
        text: TextSpec,
        image_tokens: int,
        adaln: bool = False,
        text_encoder: nn.Module | None = None,
    ):
        super().__init__()
        size = get_size(model_cfg.size)
        self.size, self.text_spec, self.image_tokens = size, text, image_tokens
        D = size.width
        # a caller may bring its own caption encoder (e.g. a frozen pretrained one projected to width D)
        self.text_encoder = text_encoder or TextEncoder(
            text.vocab_size, text.max_length, D, model_cfg.text_layers, size.heads, text.pad_id
        )
        self.null = nn.Embedding(text.max_length, D)  # the dropped caption: one learned vector a position
        self.pos = nn.Embedding(image_tokens, D)  # image positions (learned, like nanoGPT)
        self.backbone = Transformer(D, size.depth, size.heads, adaln)
        nn.init.normal_(self.null.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)

    @property
    def device(self) -> torch.device:
        return self.pos.weight.device

    def encode_text(self, tokens: torch.Tensor, drop: torch.Tensor | None = None):
        """Caption prefix. tokens int64 [B, L]; drop bool [B] puts the null caption in those rows.
        → (prefix [B, L, D], key_valid bool [B, L])."""
        h, valid = self.text_encoder(tokens)
        if drop is not None:
            null_h, null_valid = self.null_text(tokens.shape[0])
            h = torch.where(drop[:, None, None], null_h, h)
            valid = torch.where(drop[:, None], null_valid, valid)
        return h, valid

    def null_text(self, batch: int):
        """The unconditional prefix for `batch` rows (the text encoder does not run)."""
        L, D = self.null.weight.shape
        h = self.null.weight.unsqueeze(0).expand(batch, L, D)
        return h, torch.ones(batch, L, dtype=torch.bool, device=h.device)

    def guided_prefix(self, tokens: torch.Tensor, guided: bool):
        """Prefix for sampling: the captions, followed by as many null captions when `guided` (batched CFG)."""
        h, valid = self.encode_text(tokens)
        if guided:
            null_h, null_valid = self.null_text(tokens.shape[0])
            h, valid = torch.cat([h, null_h]), torch.cat([valid, null_valid])
        return h, valid


def attention_mask(text_valid: torch.Tensor, total: int, causal: bool, q_start: int = 0) -> torch.Tensor:
    """bool [B, 1, Q, K] (True = may attend) for a sequence [caption (L) | image (total - L)].

    Bidirectional: every query sees every real key (pad caption keys hidden). Causal (prefix-LM): caption
    queries see the caption; image query i sees the caption and image keys ≤ i. `q_start` skips the first query
    rows (KV-cache decoding: the queries are positions [q_start, total), the keys [0, total))."""
    B, L = text_valid.shape
    q_len, K = total - q_start, total
    keys = torch.ones(B, K, dtype=torch.bool, device=text_valid.device)
    keys[:, :L] = text_valid[:, :K]
    mask = keys[:, None, None, :].expand(B, 1, q_len, K)
    if causal:
        q = torch.arange(q_start, K, device=text_valid.device)[:, None]
        k = torch.arange(K, device=text_valid.device)[None, :]
        mask = mask & ((k < L) | (k <= q))
    return mask
