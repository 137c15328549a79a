"""Images between their two forms: uint8 [N, H, W, 3] arrays (datasets, PNGs) and float [N, 3, H, W] tensors
in [-1, 1] (networks)."""

from __future__ import annotations

import numpy as np
import torch


def to_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N, H, W, 3] (or one [H, W, 3]) → float32 [N, 3, H, W] in [-1, 1]."""
    if not isinstance(images, torch.Tensor):
        images = np.asarray(images)
        # PIL-backed arrays are read-only, which torch.from_numpy warns about; a uint8 copy is cheap
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    x = images
    if x.dtype != torch.uint8:
        raise TypeError(f"to_tensor expects uint8 images, got {x.dtype}")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"to_tensor expects images shaped [N, H, W, 3], got {list(x.shape)}")
    return x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] → uint8 [N, H, W, 3] (clamped, rounded to nearest)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"to_uint8 expects images shaped [N, 3, H, W], got {list(images.shape)}")
    x = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
