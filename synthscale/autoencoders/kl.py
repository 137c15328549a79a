"""Continuous latents: a KL-regularised autoencoder (the LDM "AutoencoderKL", without its perceptual and GAN
terms). The encoder returns a diagonal Gaussian (mean, log-variance) per latent element.

Diffusion wants unit-variance latents, so after training the autoencoder measures, on training images, a
shift and a scale (SD3's `shift_factor`/`scaling_factor`, global scalars) and stores them as buffers:
cached latents are (z − shift)·scale, and `decode` undoes that before the decoder runs."""

from __future__ import annotations

import torch

from synthscale.autoencoders.base import Autoencoder, ImageSizeError
from synthscale.autoencoders.conv import Decoder, Encoder
from synthscale.config import AutoencoderConfig
from synthscale.data.latents import LatentSpec


class KLAutoencoder(Autoencoder):
    kind = "continuous"

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__(cfg)
        self.channels = cfg.latent_channels
        self.encoder = Encoder(cfg.widths, cfg.blocks, 2 * self.channels)
        self.decoder = Decoder(cfg.widths, cfg.blocks, self.channels)
        self.register_buffer("latent_shift", torch.zeros(()))
        self.register_buffer("latent_scale", torch.ones(()))

    @property
    def shift(self) -> float:
        return float(self.latent_shift)

    @property
    def scale(self) -> float:
        return float(self.latent_scale)

    def latent_spec(self, resolution: int) -> LatentSpec:
        side = self.latent_side(resolution)
        return LatentSpec(kind="continuous", channels=self.channels, height=side, width=side)

    def moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images [B, 3, H, W] → mean, logvar, each [B, c, H/f, W/f] (raw, unscaled)."""
        mean, logvar = self.encoder(images).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # LDM's clamp: exp() stays finite

    def losses(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Training forward: (reconstruction [B, 3, H, W], {"kl": mean KL per latent element})."""
        mean, logvar = self.moments(images)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        z = mean + torch.exp(0.5 * logvar) * eps
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).mean()
        return self.decoder(z), {"kl": kl}

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Encode to the posterior mean and decode (what evaluation measures), clamped to [-1, 1]."""
        self.check_images(images)
        mean, _ = self.moments(images)
        return self.decoder(mean).clamp(-1.0, 1.0)

    @torch.no_grad()
    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"mean", "logvar"}: raw posterior parameters; the cache samples and scales them at load time."""
        self.check_images(images)
        mean, logvar = self.moments(images)
        return {"mean": mean, "logvar": logvar}

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """*Scaled* latents [B, c, h, w] (as the cache yields them) → images [B, 3, H, W] in [-1, 1]."""
        if not latents.is_floating_point() or latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ImageSizeError(
                f"autoencoder {self.name!r} decodes float latents [B, {self.channels}, h, w], got "
                f"{latents.dtype} {list(latents.shape)}"
            )
        z = latents / self.latent_scale + self.latent_shift
        return self.decoder(z).clamp(-1.0, 1.0)

    @torch.no_grad()
    def measure_scale(self, batches) -> tuple[float, float]:
        """Set shift = E[z] and scale = 1/std(z) over sampled posteriors z of the given image batches.
        Returns (shift, scale)."""
        mu, scale = posterior_shift_scale(self.moments(images) for images in batches)
        self.latent_shift.fill_(mu)
        self.latent_scale.fill_(scale)
        return mu, scale


def posterior_shift_scale(moments) -> tuple[float, float]:
    """(E[z], 1/std(z)) of posterior samples z ~ N(mean, exp(logvar)) from (mean, logvar) batches, computed from
    the exact moments — Var z = Var(mean) + E[exp(logvar)] — rather than from sampled z."""
    n, s1, s2 = 0, 0.0, 0.0
    for mean, logvar in moments:
        mean, var = mean.double(), logvar.double().exp()
        n += mean.numel()
        s1 += mean.sum().item()
        s2 += (mean.pow(2) + var).sum().item()
    if n == 0:
        raise ValueError("measure_scale needs at least one batch of images")
    mu = s1 / n
    std = max(s2 / n - mu * mu, 1e-12) ** 0.5
    return mu, 1.0 / std
