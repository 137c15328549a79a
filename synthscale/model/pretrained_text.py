"""A frozen pretrained text encoder from a local folder (`data.text_encoder`), in place of the learned one.

Any transformers encoder saved with `save_pretrained` works (BERT, MiniLM, a T5 encoder, …), as does a
sentence-transformers folder (its transformer may sit in a sub-folder that `modules.json` names). Loading is
offline and safetensors-only (`synthscale.pretrained`).

Frozen means: no gradients, always in eval mode (dropout off, so the same caption always gives the same
features, also while the generator trains), and the weights are *not* registered as parameters — they stay out
of `parameters()`, the optimizer and every checkpoint (`weights_hash` records which encoder was used), while
`.to(device/dtype)` still moves them. Only the optional projection to the backbone width (`width=`) trains.

    enc = FrozenTextEncoder("/models/all-MiniLM-L6-v2", max_length=32, width=384)
    ids = enc.tokenizer.encode(["a red car"])       # int64 [1, 32], right-padded with enc.pad_id
    h = enc(ids, ids == enc.pad_id)                 # [1, 32, 384], zero at pad positions
    network.text_encoder = enc.prefix_encoder()     # drop-in for model.text_encoder.TextEncoder
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from synthscale.data.text import PretrainedTokenizer
from synthscale.pretrained import require, transformer_dir, weights_hash

WHAT = "frozen text encoder (data.text_encoder)"


class FrozenTextEncoder(nn.Module):
    def __init__(self, path: str | Path, max_length: int, width: int | None = None, truncate: bool = True):
        super().__init__()
        self.path = transformer_dir(path, WHAT, "data.text_encoder")
        transformers = require("transformers", WHAT)
        self.tokenizer = PretrainedTokenizer(path, max_length, truncate)
        model = transformers.AutoModel.from_pretrained(str(self.path), local_files_only=True, use_safetensors=True)
        if getattr(model.config, "is_encoder_decoder", False):  # e.g. T5: captions only need the encoder
            model = model.get_encoder()
        model.requires_grad_(False).eval()
        self.__dict__["frozen"] = model  # not a registered submodule: out of parameters() and state_dict()
        self.hidden = getattr(model.config, "hidden_size", None) or model.config.d_model
        self.max_length, self.pad_id = max_length, self.tokenizer.pad_id
        self.vocab_size = self.tokenizer.vocab_size
        self.weights_hash = weights_hash(self.path)
        self.name = f"frozen:{self.path.name}"
        self.proj = nn.Linear(self.hidden, width) if width and width != self.hidden else nn.Identity()
        self.width = width or self.hidden

    def _apply(self, fn, recurse=True):  # .to() / .cuda() / .half() reach the unregistered frozen model too
        self.frozen._apply(fn)
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> FrozenTextEncoder:
        super().train(mode)
        self.frozen.eval()  # frozen parts never train: no dropout noise in the features
        return self

    def forward(self, token_ids: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """token_ids int64 [B, L]; pad_mask bool [B, L], True at padding (default: token_ids == pad_id)
        → features [B, L, width], exactly zero at padding positions."""
        if pad_mask is None:
            pad_mask = token_ids == self.pad_id
        with torch.no_grad():
            h = self.frozen(input_ids=token_ids, attention_mask=(~pad_mask).long()).last_hidden_state  # [B, L, H]
            h = h.masked_fill(pad_mask[..., None], 0.0)
        return self.proj(h)  # [B, L, width]

    def prefix_encoder(self) -> FrozenPrefix:
        """This encoder behind `TextEncoder`'s interface: tokens → (features, key_valid)."""
        return FrozenPrefix(self)

    @torch.no_grad()
    def forward_flops(self, batch: int = 1) -> int:
        """FLOPs of one forward over `batch` full-length captions, counted by torch's FlopCounterMode with the
        MATH attention backend (the fused CPU kernels count as 0). Reported in a separate, labelled column."""
        from torch.nn.attention import SDPBackend, sdpa_kernel
        from torch.utils.flop_counter import FlopCounterMode

        device = next(iter(self.frozen.parameters())).device
        ids = torch.full((batch, self.max_length), self.pad_id + 1, dtype=torch.long, device=device)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            self(ids, torch.zeros_like(ids, dtype=torch.bool))
        return int(counter.get_total_flops())


class FrozenPrefix(nn.Module):
    """Adapter with `model.text_encoder.TextEncoder`'s call: tokens int64 [B, L] → (features [B, L, width],
    key_valid bool [B, L]). Position 0 always counts as valid (an all-masked attention row would be NaN)."""

    def __init__(self, encoder: FrozenTextEncoder):
        super().__init__()
        self.encoder = encoder
        self.max_length, self.pad_id = encoder.max_length, encoder.pad_id

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        valid = tokens != self.pad_id
        valid[:, 0] = True
        return self.encoder(tokens, ~valid), valid
