"""Where a stage computes: the one place that decides the default device (CUDA when present, else the CPU)."""

from __future__ import annotations

import torch

from synthscale.config import ConfigError


def pick_device(preference: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """`auto` (or None): this process's GPU (`cuda:LOCAL_RANK`) when CUDA is present, else the CPU. Anything else
    is a torch device name; asking for CUDA where there is none is a clear error."""
    if preference is None or preference == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(preference)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device {preference!r} is not a torch device ({e}); use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(preference)!r} but no CUDA GPU is visible; use cpu or auto")
        if device.index is None:
            device = torch.device(f"cuda:{local_rank}")
    return device
