"""Named backbone sizes. Paper scale follows DiT (S/B/L/XL); the CPU presets are named depth×width."""

from __future__ import annotations

from dataclasses import dataclass

from synthscale.config import ConfigError


@dataclass(frozen=True)
class Size:
    name: str
    depth: int  # Transformer blocks
    width: int  # model dimension D
    heads: int  # attention heads; head dim = width // heads

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


def _cpu(depth: int, width: int) -> Size:
    # head dim 64 like DiT, but never fewer than two heads on the narrow CPU models
    return Size(f"{depth}x{width}", depth, width, max(2, width // 64))


SIZES: dict[str, Size] = {
    s.name: s
    for s in (
        Size("S", 12, 384, 6),  # DiT-S
        Size("B", 12, 768, 12),  # DiT-B
        Size("L", 24, 1024, 16),  # DiT-L
        Size("XL", 28, 1152, 16),  # DiT-XL
        _cpu(1, 64),  # the smallest: at the default study's budgets optimizer steps, not capacity, limit 2x64
        _cpu(2, 64),
        _cpu(3, 96),  # between 2x64 and 4x128: a third size for short CPU studies (cpu-hour.yaml)
        _cpu(4, 128),
        _cpu(6, 192),
        _cpu(8, 256),
    )
}


def get_size(name: str) -> Size:
    """The preset called `name`; an unknown name is a ConfigError listing the valid ones."""
    try:
        return SIZES[name]
    except KeyError:
        raise ConfigError(f"unknown model size {name!r}; valid sizes: {', '.join(SIZES)}") from None
