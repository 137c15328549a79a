"""Masked-token prediction (MaskGIT / Muse style) on discrete latents.

Training masks a cosine-scheduled fraction of the tokens (id `vocab_size` is [MASK]) and scores the masked
positions. Sampling starts fully masked and, over K steps, keeps the most confident predictions (the unscaled
log-prob of the drawn token + annealed Gumbel noise; temperature and top-k shape only the draw, as in MaskGIT)
and re-masks the rest along the cosine schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from synthscale.compute import flops as C
from synthscale.config import ObjectiveConfig
from synthscale.model.network import Network, attention_mask
from synthscale.model.sizes import get_size
from synthscale.objectives.base import Objective, cfg_copies, guide, gumbel, rand, text_encoder_flops
from synthscale.objectives.codes import TokenCodes, logits_width


@dataclass
class MaskedConfig(ObjectiveConfig):
    name: str = "masked"
    temperature: float = 1.0  # softmax temperature of the drawn tokens
    top_k: int = 0  # 0 = no top-k filter
    mask_temperature: float = 4.5  # initial Gumbel noise scale of the confidence, annealed to 0
    factorised: bool = False  # per-channel level embedding and softmax heads (objectives/codes.py)

    added_fields: ClassVar[dict[str, Any]] = {"factorised": False}  # off: the full softmax, as before


class MaskedNet(Network):
    def __init__(self, model_cfg, latent, text, text_encoder=None, factorised: bool = False):
        super().__init__(model_cfg, text, latent.tokens, text_encoder=text_encoder)
        self.vocab_size, self.grid = latent.vocab_size, (latent.height, latent.width)
        self.mask_id = latent.vocab_size  # one extra input id
        self.codes = TokenCodes(latent, factorised)
        self.embed = self.codes.embedding(self.size.width)
        self.head = nn.Linear(self.size.width, self.codes.width)
        self.codes.init_embedding(self.embed)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, ids, prefix, text_valid):
        """ids int64 [B, N] (mask_id where hidden), prefix [B, L, D], key_valid [B, L] → logits [B, N, K]
        (K = V, or Σ L_i factorised)."""
        L = prefix.shape[1]
        h = self.embed(ids) + self.pos.weight  # [B, N, D]
        seq = torch.cat([prefix.to(h.dtype), h], dim=1)
        out = self.backbone(seq, attention_mask(text_valid, seq.shape[1], causal=False))[:, L:]
        return self.head(out)


def mask_ratio(u: torch.Tensor) -> torch.Tensor:
    """Cosine schedule: fraction of tokens masked at progress u ∈ [0, 1] (1 → 0)."""
    return torch.cos(0.5 * math.pi * u)


class MaskedObjective(Objective):
    name = "masked"
    latent = "discrete"
    paradigm = "masked-token"
    config = MaskedConfig
    network = MaskedNet

    def loss(self, model, latents, text, generator, drop_captions=True):
        B, dev = latents.shape[0], latents.device
        tokens = latents.reshape(B, -1)  # [B, N], raster order
        N = tokens.shape[1]
        n_masked = torch.ceil(mask_ratio(rand(B, generator, dev)) * N).clamp(1, N)  # [B]
        rank = rand((B, N), generator, dev).argsort(1).argsort(1)  # a random order of positions per row
        masked = rank < n_masked[:, None]  # [B, N]
        drop = self.caption_drop(B, generator, drop_captions, dev)
        prefix, valid = model.encode_text(text, drop)
        logits = model(tokens.masked_fill(masked, model.mask_id), prefix, valid)
        # the mean over masked tokens, scored in place: gathering logits[masked] costs a gather and a zero-filled
        # scatter of the whole logits' gradient in backward
        return model.codes.nll(logits.flatten(0, 1), tokens.flatten(), masked.flatten())

    @torch.no_grad()
    def sample(self, model, text, steps, cfg_scale, generator):
        N = model.image_tokens
        self.check_steps(steps, N)
        dev, B = model.device, text.shape[0]
        guided = cfg_scale != 1
        prefix, valid = model.guided_prefix(text.to(dev), guided)
        ids = torch.full((B, N), model.mask_id, dtype=torch.long, device=dev)
        for k in range(steps):
            logits = model(torch.cat([ids, ids]) if guided else ids, prefix, valid).float()
            logits = guide(logits, cfg_scale) if guided else logits  # [B, N, K]
            # temperature shapes the draw only; confidence is the unscaled model's log-prob (MaskGIT)
            drawn = model.codes.draw(logits, generator, self.cfg.temperature, self.cfg.top_k)  # [B, N]
            logp = model.codes.log_prob(logits, drawn)
            hidden = ids == model.mask_id
            drawn = torch.where(hidden, drawn, ids)  # revealed tokens stay fixed
            # how many stay masked after this step: cosine schedule, at least one revealed, none at the end
            n_hidden = int(hidden[0].sum())
            keep_hidden = min(math.floor(N * float(mask_ratio(torch.tensor((k + 1) / steps)))), n_hidden - 1)
            keep_hidden = max(keep_hidden, 0) if k < steps - 1 else 0
            noise = self.cfg.mask_temperature * (1 - (k + 1) / steps)  # annealed Gumbel temperature
            conf = logp + noise * gumbel((B, N), generator, dev)
            conf = conf.masked_fill(~hidden, float("inf"))
            remask = conf.argsort(1).argsort(1) < keep_hidden  # the least confident stay masked
            ids = drawn.masked_fill(remask, model.mask_id)
        return ids.reshape(B, *model.grid)

    def network_options(self):
        return {"factorised": self.cfg.factorised}

    # one default everywhere (the study's evaluation, `sample`, `serve`, `evaluate`): 8, what the default study
    # evaluates (16 scored no better there, at twice the cost)
    def default_steps(self, latent):
        return min(8, latent.tokens)

    def steps_grid(self, latent):
        return [k for k in (4, 8) if k <= latent.tokens] or [latent.tokens]

    def steps_range(self, tokens):
        return 1, tokens  # each step reveals at least one token

    def _generator_forward(self, model_cfg, latent, text) -> int:
        size = get_size(model_cfg.size)
        N, T = latent.tokens, text.max_length + latent.tokens
        head = logits_width(latent, self.cfg.factorised)
        return C.transformer(T, T, size.width, size.depth) + C.linear(N, size.width, head)

    def forward_flops(self, model_cfg, latent, text):
        self.check_latent(latent)
        return C.Flops(self._generator_forward(model_cfg, latent, text), text_encoder_flops(model_cfg, text))

    def sample_flops_split(self, model_cfg, latent, text, steps, cfg_scale):
        self.check_steps(steps, latent.tokens)
        per_step = self._generator_forward(model_cfg, latent, text) * cfg_copies(cfg_scale)
        return C.Flops(steps * per_step, text_encoder_flops(model_cfg, text))
