"""A pretrained diffusers `AutoencoderKL` from a local folder as the continuous autoencoder (optional extra).

It has the interface of `kl.KLAutoencoder` that the latent cache and the generators use — `kind`, `name`,
`weights_hash`, `shift`/`scale`, `latent_spec(resolution)`, `encode_for_cache(images) → {"mean", "logvar"}`,
`decode(scaled latents)`, `reconstruct` — but it is frozen and never trained here. Cached latents are
(z − shift)·scale with the folder's `shift_factor` (0 when absent) and `scaling_factor` (SD's 0.18215), the
diffusers convention; `measure_scale` replaces them with values measured on your images, as `kl.py` does,
because SD's factor was tuned on its own data. Loading is offline and safetensors-only.

    ae = load_diffusers_kl("/models/sd-vae-ft-mse")
    moments = ae.encode_for_cache(images)            # images float [B, 3, H, W] in [-1, 1]
    images = ae.decode(scaled_latents)               # [B, 4, H/8, W/8] → [B, 3, H, W] in [-1, 1]
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from synthscale.autoencoders.kl import posterior_shift_scale
from synthscale.config import ConfigError
from synthscale.data.latents import LatentSpec
from synthscale.pretrained import local_dir, require, weights_hash

WHAT = "diffusers AutoencoderKL"


class DiffusersKL(nn.Module):
    kind = "continuous"

    def __init__(self, path: str | Path, name: str | None = None, cfg=None):
        super().__init__()
        self.cfg = cfg  # an AutoencoderConfig of kind "diffusers" when built by build_autoencoder
        self.resolution = cfg.data.resolution if cfg is not None else None
        self.path = local_dir(path, WHAT, "the autoencoder path")
        diffusers = require("diffusers", WHAT)
        try:
            self.vae = diffusers.AutoencoderKL.from_pretrained(
                str(self.path), local_files_only=True, use_safetensors=True
            )
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(f"{WHAT}: cannot load {self.path}: {e}") from e
        self.vae.requires_grad_(False).eval()
        cfg = self.vae.config
        self.name = name or f"diffusers-kl:{self.path.name}"
        self.channels = cfg.latent_channels
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.register_buffer("latent_shift", torch.tensor(float(getattr(cfg, "shift_factor", None) or 0.0)))
        self.register_buffer("latent_scale", torch.tensor(float(getattr(cfg, "scaling_factor", None) or 1.0)))
        self._files_hash = weights_hash(self.path)

    def saved_state(self) -> dict[str, torch.Tensor]:
        """What a synthscale autoencoder folder stores of it: the latent shift/scale. The weights stay in the
        diffusers folder (recorded by hash), so a study does not copy them."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("vae.")}

    def train(self, mode: bool = True) -> DiffusersKL:
        return super().train(False)  # frozen: GroupNorm has no batch statistics, but keep eval semantics anyway

    @property
    def shift(self) -> float:
        return float(self.latent_shift)

    @property
    def scale(self) -> float:
        return float(self.latent_scale)

    @property
    def weights_hash(self) -> str:
        """The folder's weights and config, plus the latent shift/scale in use."""
        text = f"{self._files_hash}|{self.shift!r}|{self.scale!r}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def latent_spec(self, resolution: int) -> LatentSpec:
        if resolution % self.downsample:
            raise ConfigError(
                f"{self.name}: resolution {resolution} is not a multiple of its downsampling factor "
                f"{self.downsample}; set data.resolution to a multiple"
            )
        side = resolution // self.downsample
        return LatentSpec(kind="continuous", channels=self.channels, height=side, width=side)

    def check_images(self, images: torch.Tensor) -> None:
        if (
            not isinstance(images, torch.Tensor)
            or not images.is_floating_point()
            or images.ndim != 4
            or images.shape[1] != 3
        ):
            raise ConfigError(
                f"{self.name} takes float images [B, 3, H, W] in [-1, 1], got "
                f"{getattr(images, 'dtype', type(images).__name__)} {list(getattr(images, 'shape', []))}; "
                "convert uint8 with synthscale.data.pixels.to_tensor"
            )
        self.latent_spec(images.shape[-1])
        if images.numel() and images.abs().max() > 1.0 + 1e-3:
            raise ConfigError(
                f"{self.name} takes pixel values in [-1, 1], got values up to {images.abs().max().item():.3g}"
            )

    @torch.no_grad()
    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images [B, 3, H, W] in [-1, 1] → {"mean", "logvar"}, each [B, c, H/f, W/f] (raw, unscaled)."""
        self.check_images(images)
        posterior = self.vae.encode(images).latent_dist
        return {"mean": posterior.mean, "logvar": posterior.logvar}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, c, h, w] (as the cache yields them) → images [B, 3, h·f, w·f] in [-1, 1]."""
        if not latents.is_floating_point() or latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ConfigError(
                f"{self.name} decodes float latents [B, {self.channels}, h, w], got "
                f"{latents.dtype} {list(latents.shape)}"
            )
        z = latents / self.latent_scale + self.latent_shift
        return self.vae.decode(z).sample.clamp(-1.0, 1.0)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode to the posterior mean and decode, clamped to [-1, 1]."""
        mean = self.encode_for_cache(images)["mean"]
        return self.vae.decode(mean).sample.clamp(-1.0, 1.0)

    @torch.no_grad()
    def measure_scale(self, batches) -> tuple[float, float]:
        """Set shift = E[z], scale = 1/std(z) over posterior samples z of the image batches, as
        `kl.KLAutoencoder.measure_scale`. Returns (shift, scale)."""
        moments = ((m["mean"], m["logvar"]) for m in map(self.encode_for_cache, batches))
        mu, scale = posterior_shift_scale(moments)
        self.latent_shift.fill_(mu)
        self.latent_scale.fill_(scale)
        return mu, scale


def diffusers_latent_spec(path: str | Path, resolution: int) -> LatentSpec:
    """The latent shape from the folder's config.json alone (no weights loaded, no extra needed): for planning."""
    cfg = json.loads((local_dir(path, WHAT, "the autoencoder path") / "config.json").read_text())
    f = 2 ** (len(cfg.get("block_out_channels", [0])) - 1)
    if resolution % f:
        raise ConfigError(f"{WHAT} {path}: resolution {resolution} is not a multiple of its downsampling factor {f}")
    return LatentSpec(
        kind="continuous", channels=int(cfg.get("latent_channels", 4)), height=resolution // f, width=resolution // f
    )


def load_diffusers_kl(path: str | Path, name: str | None = None) -> DiffusersKL:
    """A frozen diffusers AutoencoderKL from a local folder written by `save_pretrained`."""
    return DiffusersKL(path, name)
