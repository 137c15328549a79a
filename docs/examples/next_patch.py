"""A fourth objective, worked end to end: next-patch regression on continuous latents (the simplest form of
MAR-style continuous-token autoregression: the head regresses the next patch with an MSE loss instead of MAR's
small diffusion head). One file; to use it, add `NextPatchObjective` to the tuple in
`synthscale/objectives/__init__.py` (or register it at run time, as tests/test_plugins.py does).

Everything the trainer, evaluator, study and CLI need comes from the class attributes and methods below: the
registry gives the study its latent kind (`latent`), config validation its own fields (`config`) and the CLI
its choices.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from synthscale.compute import flops as C
from synthscale.config import ObjectiveConfig
from synthscale.model.network import Network, attention_mask
from synthscale.model.sizes import get_size
from synthscale.objectives.base import Objective, cfg_copies, guide, randn, text_encoder_flops
from synthscale.objectives.flow import patch_grid


@dataclass
class NextPatchConfig(ObjectiveConfig):
    """Only this objective's fields; `cfg_dropout` comes from ObjectiveConfig. A field added later needs a
    default: configs hash without fields at their default, so runs made before it keep their keys."""

    name: str = "next_patch"
    noise: float = 0.0  # std of Gaussian noise added to each sampled patch (0: deterministic decoding)


class NextPatchNet(Network):
    """Caption prefix + [BOS, p_0, …, p_{N-2}] patches under a prefix-LM mask → the next patch at every place."""

    def __init__(self, model_cfg, latent, text, text_encoder=None):
        gh, gw = patch_grid(model_cfg, latent)
        super().__init__(model_cfg, text, gh * gw, text_encoder=text_encoder)
        self.p, self.latent_shape = model_cfg.patch_size, (latent.channels, latent.height, latent.width)
        D, patch = self.size.width, latent.channels * model_cfg.patch_size**2
        self.embed, self.head = nn.Linear(patch, D), nn.Linear(D, patch)
        self.bos = nn.Parameter(torch.zeros(patch))

    def patchify(self, x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] → [B, N, C·p·p]
        B, Ch, H, W = x.shape
        x = x.reshape(B, Ch, H // self.p, self.p, W // self.p, self.p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, -1, Ch * self.p * self.p)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, C·p·p] → [B, C, H, W]
        Ch, H, W = self.latent_shape
        x = x.reshape(x.shape[0], H // self.p, W // self.p, Ch, self.p, self.p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(x.shape[0], Ch, H, W)

    def forward(self, patches: torch.Tensor, prefix: torch.Tensor, text_valid: torch.Tensor) -> torch.Tensor:
        """patches [B, n, P] (the inputs, BOS first) → predicted next patches [B, n, P]."""
        L, n = prefix.shape[1], patches.shape[1]
        h = self.embed(patches) + self.pos.weight[:n]
        seq = torch.cat([prefix.to(h.dtype), h], dim=1)
        return self.head(self.backbone(seq, attention_mask(text_valid, L + n, causal=True))[:, L:])


class NextPatchObjective(Objective):
    name = "next_patch"
    latent = "continuous"
    config = NextPatchConfig
    network = NextPatchNet

    def _inputs(self, model, target: torch.Tensor) -> torch.Tensor:
        bos = model.bos.expand(target.shape[0], 1, -1).to(target.dtype)
        return torch.cat([bos, target[:, :-1]], dim=1)  # teacher forcing

    def loss(self, model, latents, text, generator, drop_captions=True):
        target = model.patchify(latents)  # [B, N, P]
        drop = self.caption_drop(latents.shape[0], generator, drop_captions, latents.device)
        prefix, valid = model.encode_text(text, drop)
        return F.mse_loss(model(self._inputs(model, target), prefix, valid).float(), target.float())

    @torch.no_grad()
    def sample(self, model, text, steps, cfg_scale, generator):
        N = model.image_tokens
        self.check_steps(steps, N)
        dev, B, guided = model.device, text.shape[0], cfg_scale != 1
        prefix, valid = model.guided_prefix(text.to(dev), guided)
        out = torch.zeros(B, 0, model.bos.numel(), device=dev)
        for _ in range(N):  # recomputes the prefix every step: a KV cache is the obvious next improvement
            seq = torch.cat([model.bos.expand(B, 1, -1), out], dim=1)
            pred = model(torch.cat([seq, seq]) if guided else seq, prefix, valid)[:, -1].float()
            pred = guide(pred, cfg_scale) if guided else pred
            pred = pred + self.cfg.noise * randn(pred.shape, generator, dev)
            out = torch.cat([out, pred[:, None]], dim=1)
        return model.unpatchify(out)

    def image_tokens(self, model_cfg, latent):
        gh, gw = patch_grid(model_cfg, latent)
        return gh * gw

    def steps_range(self, tokens):
        return tokens, tokens  # one patch a step

    def default_steps(self, latent):
        return latent.tokens  # the latent grid's tokens; with patch_size p there are tokens / p² steps

    def steps_grid(self, latent):
        return [latent.tokens]

    def _generator_forward(self, model_cfg, latent, text) -> int:
        size, N = get_size(model_cfg.size), self.image_tokens(model_cfg, latent)
        D, patch, T = size.width, latent.channels * model_cfg.patch_size**2, text.max_length + N
        return C.linear(N, patch, D) + C.transformer(T, T, D, size.depth) + C.linear(N, D, patch)

    def forward_flops(self, model_cfg, latent, text):
        return C.Flops(self._generator_forward(model_cfg, latent, text), text_encoder_flops(model_cfg, text))

    def sample_flops_split(self, model_cfg, latent, text, steps, cfg_scale):
        """Recomputation: step j runs the caption and j + 1 patches through the backbone."""
        size, N = get_size(model_cfg.size), self.image_tokens(model_cfg, latent)
        self.check_steps(steps, N)
        D, patch, L = size.width, latent.channels * model_cfg.patch_size**2, text.max_length
        per_image = sum(
            C.linear(j + 1, patch, D) + C.transformer(L + j + 1, L + j + 1, D, size.depth) + C.linear(j + 1, D, patch)
            for j in range(N)
        )
        return C.Flops(per_image * cfg_copies(cfg_scale), text_encoder_flops(model_cfg, text))
