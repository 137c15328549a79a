"""Discrete latents: the conv trunk with a quantiser (LFQ or FSQ) between encoder and decoder. The cache
stores token indices; generators predict them; `decode` maps indices back to codes and images."""

from __future__ import annotations

import torch

from synthscale.autoencoders.base import Autoencoder, ImageSizeError
from synthscale.autoencoders.conv import Decoder, Encoder
from synthscale.autoencoders.fsq import FSQ
from synthscale.autoencoders.lfq import LFQ
from synthscale.config import AutoencoderConfig
from synthscale.data.latents import LatentSpec


class DiscreteAutoencoder(Autoencoder):
    kind = "discrete"

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__(cfg)
        if cfg.kind == "lfq":
            self.quantizer = LFQ(cfg.latent_channels, cfg.lfq_temperature, cfg.diversity)
        elif cfg.kind == "fsq":
            self.quantizer = FSQ(cfg.fsq_levels)
        else:
            raise ValueError(f"DiscreteAutoencoder takes kind lfq or fsq, got {cfg.kind!r}")
        self.vocab_size = self.quantizer.vocab_size
        self.encoder = Encoder(cfg.widths, cfg.blocks, self.quantizer.dim)
        self.decoder = Decoder(cfg.widths, cfg.blocks, self.quantizer.dim)

    def latent_spec(self, resolution: int) -> LatentSpec:
        side = self.latent_side(resolution)
        levels = self.quantizer.levels if isinstance(self.quantizer, FSQ) else [2] * self.quantizer.dim
        return LatentSpec("discrete", self.quantizer.dim, side, side, vocab_size=self.vocab_size, levels=levels)

    def losses(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Training forward: (reconstruction [B, 3, H, W], the quantiser's auxiliary losses)."""
        zq, _, aux = self.quantizer(self.encoder(images))
        return self.decoder(zq), aux

    @torch.no_grad()
    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] → int64 token grid [B, H/f, W/f]."""
        self.check_images(images)
        return self.quantizer.indices(self.encoder(images))

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode(self.tokens(images))

    @torch.no_grad()
    def encode_for_cache(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"tokens": self.tokens(images)}

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """int64 token grid [B, h, w] → images [B, 3, H, W] in [-1, 1]."""
        side = self.resolution // self.downsample
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16) or tokens.ndim != 3:
            raise ImageSizeError(
                f"autoencoder {self.name!r} decodes integer token grids [B, {side}, {side}], got "
                f"{tokens.dtype} {list(tokens.shape)}"
            )
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.vocab_size):
            raise ImageSizeError(
                f"autoencoder {self.name!r} has {self.vocab_size} codes; got token ids in "
                f"[{tokens.min().item()}, {tokens.max().item()}]"
            )
        return self.decoder(self.quantizer.codes(tokens.long())).clamp(-1.0, 1.0)
