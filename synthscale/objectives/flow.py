"""Flow-matching diffusion (rectified flow, SiT/SD3 style) on continuous latents.

t = 0 is data, t = 1 is noise: x_t = (1 − t)·x + t·ε, the network predicts v = ε − x, t ~ logit-normal.
Sampling integrates dx/dt = v from t = 1 to 0 with Euler or Heun steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from synthscale.compute import flops as C
from synthscale.config import ConfigError, ModelConfig, ObjectiveConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.model.network import Network, attention_mask
from synthscale.model.sizes import get_size
from synthscale.objectives.base import Objective, cfg_copies, guide, randn, text_encoder_flops

FREQ_DIM = 256  # sinusoidal features of t before the timestep MLP (DiT)


@dataclass
class FlowConfig(ObjectiveConfig):
    name: str = "flow"
    t_mean: float = 0.0  # logit-normal t: sigmoid(N(mean, std))
    t_std: float = 1.0
    sampler: Literal["euler", "heun"] = "euler"


class TimestepEmbedder(nn.Module):
    """t [B] in [0, 1] → [B, D]: sinusoidal features, then a two-layer MLP (DiT)."""

    def __init__(self, width: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))
        for m in (self.mlp[0], self.mlp[2]):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = FREQ_DIM // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = 1000.0 * t.float()[:, None] * freqs[None]  # [B, half]; ×1000 spreads [0, 1] over the frequencies
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(self.mlp[0].weight.dtype))


def patch_grid(model_cfg: ModelConfig, latent: LatentSpec) -> tuple[int, int]:
    p = model_cfg.patch_size
    if p < 1 or latent.height % p or latent.width % p:
        raise ConfigError(f"model.patch_size {p} must be ≥ 1 and divide the latent grid {latent.height}×{latent.width}")
    return latent.height // p, latent.width // p


class FlowNet(Network):
    def __init__(self, model_cfg: ModelConfig, latent: LatentSpec, text: TextSpec, text_encoder=None):
        gh, gw = patch_grid(model_cfg, latent)
        super().__init__(model_cfg, text, gh * gw, adaln=True, text_encoder=text_encoder)
        self.p, self.latent_shape = model_cfg.patch_size, (latent.channels, latent.height, latent.width)
        D, patch = self.size.width, latent.channels * model_cfg.patch_size**2
        self.embed = nn.Linear(patch, D)
        self.t_embed = TimestepEmbedder(D)
        self.head = nn.Linear(D, patch)
        for m in (self.embed, self.head):
            nn.init.normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.weight)  # DiT: the velocity starts at zero

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        B, Ch, H, W = x.shape
        p = self.p
        x = x.reshape(B, Ch, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)  # [B, H/p, W/p, C, p, p]
        return x.reshape(B, (H // p) * (W // p), Ch * p * p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        Ch, H, W = self.latent_shape
        p, B = self.p, x.shape[0]
        x = x.reshape(B, H // p, W // p, Ch, p, p).permute(0, 3, 1, 4, 2, 5)  # [B, C, H/p, p, W/p, p]
        return x.reshape(B, Ch, H, W)

    def forward(self, x_t, t, prefix, text_valid):
        """x_t [B, C, H, W], t [B], caption prefix [B, L, D] + key_valid [B, L] → velocity [B, C, H, W]."""
        L = prefix.shape[1]
        h = self.embed(self.patchify(x_t)) + self.pos.weight  # [B, N, D]
        seq = torch.cat([prefix.to(h.dtype), h], dim=1)  # [B, L + N, D]
        mask = attention_mask(text_valid, seq.shape[1], causal=False)
        out = self.backbone(seq, mask, c=self.t_embed(t))[:, L:]  # [B, N, D]
        return self.unpatchify(self.head(out))


class FlowObjective(Objective):
    name = "flow"
    latent = "continuous"
    paradigm = "diffusion"
    config = FlowConfig
    network = FlowNet

    def loss(self, model, latents, text, generator, drop_captions=True):
        x = latents
        B, dev = x.shape[0], x.device
        t = torch.sigmoid(self.cfg.t_mean + self.cfg.t_std * randn(B, generator, dev))  # logit-normal
        noise = randn(x.shape, generator, dev)
        drop = self.caption_drop(B, generator, drop_captions, dev)
        tb = t[:, None, None, None]
        x_t = (1 - tb) * x + tb * noise
        prefix, valid = model.encode_text(text, drop)
        v = model(x_t, t, prefix, valid)
        return F.mse_loss(v.float(), (noise - x).float())

    @torch.no_grad()
    def sample(self, model, text, steps, cfg_scale, generator):
        self.check_steps(steps, model.image_tokens)
        dev, B = model.device, text.shape[0]
        guided = cfg_scale != 1
        prefix, valid = model.guided_prefix(text.to(dev), guided)  # the caption is encoded once for all steps
        x = randn((B, *model.latent_shape), generator, dev)  # t = 1: pure noise

        def velocity(x, t):
            xin = torch.cat([x, x]) if guided else x
            v = model(xin, torch.full((xin.shape[0],), t, device=dev), prefix, valid).float()
            return guide(v, cfg_scale) if guided else v

        ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
        for i in range(steps):
            t, t_next = ts[i], ts[i + 1]
            v = velocity(x, t)
            if self.cfg.sampler == "heun" and i < steps - 1:  # Heun's correction; the last step stays Euler
                v = 0.5 * (v + velocity(x + (t_next - t) * v, t_next))
            x = x + (t_next - t) * v
        return x

    def image_tokens(self, model_cfg, latent):
        gh, gw = patch_grid(model_cfg, latent)
        return gh * gw

    # one default everywhere (the study's evaluation, `sample`, `serve`, `evaluate`); 10 Euler steps is what the
    # default study evaluates, its sweep adds 4 and 20
    def default_steps(self, latent):
        return 10

    def steps_grid(self, latent):
        return [4, 10, 20]

    def model_evals(self, steps: int) -> int:
        """Network evaluations per sample: Euler one a step, Heun two (but one on the last step)."""
        return steps if self.cfg.sampler == "euler" else 2 * steps - 1

    def _generator_forward(self, model_cfg, latent, text) -> int:
        size = get_size(model_cfg.size)
        gh, gw = patch_grid(model_cfg, latent)
        N, D, patch = gh * gw, size.width, latent.channels * model_cfg.patch_size**2
        T = text.max_length + N
        return (
            C.linear(N, patch, D)  # patch embedding
            + C.linear(1, FREQ_DIM, D)
            + C.linear(1, D, D)  # timestep MLP
            + C.transformer(T, T, D, size.depth, adaln=True)
            + C.linear(N, D, patch)
        )  # velocity head

    def forward_flops(self, model_cfg, latent, text):
        return C.Flops(self._generator_forward(model_cfg, latent, text), text_encoder_flops(model_cfg, text))

    def sample_flops_split(self, model_cfg, latent, text, steps, cfg_scale):
        self.check_steps(steps, self.image_tokens(model_cfg, latent))
        per_eval = self._generator_forward(model_cfg, latent, text) * cfg_copies(cfg_scale)
        return C.Flops(self.model_evals(steps) * per_eval, text_encoder_flops(model_cfg, text))
