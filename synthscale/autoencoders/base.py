"""What every autoencoder shares: its name and identity (a content hash of its weights), input checks, and the
interface the latent cache and the generators use (`latent_spec`, `encode_for_cache`, `decode`)."""

from __future__ import annotations

import abc
import hashlib

import torch
from torch import nn

from synthscale.config import AutoencoderConfig, ConfigError
from synthscale.data.latents import LatentSpec


class AutoencoderError(ConfigError):
    """An autoencoder that cannot be used as asked; the message names the problem and the fix."""


class CheckpointError(AutoencoderError):
    """A missing, corrupt or mismatched autoencoder checkpoint."""


class ImageSizeError(AutoencoderError):
    """Images of a size, layout or range the autoencoder was not trained for."""


class Autoencoder(nn.Module, abc.ABC):
    """Base class. Subclasses set `kind` ("continuous" | "discrete") and implement `losses`, `reconstruct`,
    `encode_for_cache`, `decode` and `latent_spec`."""

    kind: str

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        self.name = cfg.name
        self.resolution = cfg.data.resolution
        self.downsample = cfg.downsample

    @property
    def weights_hash(self) -> str:
        """Content hash of every tensor in the state dict (weights and stored latent shift/scale): a cache or a
        generator built on this autoencoder records it, so a changed autoencoder is never silently reused."""
        h = hashlib.sha256()
        for name, t in sorted(self.state_dict().items()):
            t = t.detach().to("cpu").contiguous()
            h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def latent_side(self, resolution: int) -> int:
        if resolution != self.resolution:
            raise ImageSizeError(
                f"autoencoder {self.name!r} was trained on {self.resolution}×{self.resolution} images, not "
                f"{resolution}×{resolution}; train one with data.resolution={resolution} (or resize the images)"
            )
        return resolution // self.downsample

    @abc.abstractmethod
    def latent_spec(self, resolution: int) -> LatentSpec:
        """The latents of one image of `resolution` pixels a side."""

    def check_images(self, images: torch.Tensor) -> None:
        """Refuse what would encode to garbage: wrong layout, size, dtype or value range."""
        if not isinstance(images, torch.Tensor) or not images.is_floating_point():
            raise ImageSizeError(
                f"autoencoder {self.name!r} takes float images [B, 3, H, W] in [-1, 1], got "
                f"{type(images).__name__} {getattr(images, 'dtype', '')}; "
                "convert uint8 with synthscale.data.pixels.to_tensor"
            )
        if images.ndim != 4 or images.shape[1] != 3:
            raise ImageSizeError(
                f"autoencoder {self.name!r} takes images shaped [B, 3, H, W], got {list(images.shape)}"
            )
        h, w = images.shape[-2:]
        if h != w:
            raise ImageSizeError(f"autoencoder {self.name!r} takes square images, got {h}×{w}")
        self.latent_side(h)
        if images.numel() and images.abs().max() > 1.0 + 1e-3:
            raise ImageSizeError(
                f"autoencoder {self.name!r} takes pixel values in [-1, 1], got values up to "
                f"{images.abs().max().item():.3g}; convert uint8 with synthscale.data.pixels.to_tensor"
            )
