"""Convolutional encoder/decoder trunks (the LDM/VQGAN shape, shrunk for a CPU): GroupNorm residual blocks,
one resolution level per entry of `widths`, a stride-2 convolution between levels (factor f = 2^(levels-1)).

At 32×32 with widths [16, 32, 64] every level costs about the same (H·W·C² is constant), which keeps the
full-resolution level — the one that dominates CPU time — narrow."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def group_norm(channels: int) -> nn.GroupNorm:
    # 8 groups where the width allows (GroupNorm behaves like LayerNorm at 1 group, InstanceNorm at C groups)
    groups = 8 if channels % 8 == 0 else 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """x + conv(silu(norm(conv(silu(norm(x)))))), with a 1×1 skip when the width changes."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.norm1 = group_norm(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return h.add_(self.skip(x))  # in place: a convolution's backward never reads its output (the same sum)


class Encoder(nn.Module):
    """images [B, 3, H, W] → features [B, out_channels, H/f, W/f], f = 2^(len(widths)-1)."""

    def __init__(self, widths: list[int], blocks: int, out_channels: int, in_channels: int = 3):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, widths[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, w in enumerate(widths):
            c = widths[max(i - 1, 0)]
            if i > 0:  # halve the resolution, widen
                layers.append(nn.Conv2d(c, w, 3, stride=2, padding=1))
                c = w
            layers += [ResBlock(c, w) for _ in range(blocks)]
        self.levels = nn.Sequential(*layers)
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.levels(self.conv_in(x))  # [B, widths[-1], H/f, W/f]
        return self.conv_out(F.silu(self.norm_out(h)))


# Output pixel 2i+a of a 3×3 convolution over a nearest ×2 upsampling sees input pixels i−1, i (a = 0) or i, i+1
# (a = 1), with the 3×3 taps that land on the same input pixel summed. A stride-2 transposed convolution with a 4-tap
# kernel computes exactly that; tap t of it, in terms of the 3 taps, is row t of this matrix.
FOLD_3_TO_4 = [[0.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]


class Upsample(nn.Module):
    """Nearest ×2 then a 3×3 convolution (no checkerboard artefacts of a transposed convolution).

    Training computes the same function as one stride-2 transposed convolution with the 3×3 kernel folded to 4×4
    (4·4 instead of 9·4 multiply-adds per input pixel, no upsampled tensor; the same result up to float rounding,
    and the gradient reaches the same 3×3 weights): the largest of the autoencoder trainer's CPU speed-ups
    (docs/results/autoencoder-step.md). Evaluation keeps the plain form, so decoding and its counted FLOPs
    (`compute.flops.decode_flops`) are those of the architecture as described."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.register_buffer("fold", torch.tensor(FOLD_3_TO_4), persistent=False)  # [4, 3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        fold = self.fold.to(self.conv.weight.dtype)
        kernel = (fold @ self.conv.weight @ fold.T).transpose(0, 1)  # [c_out, c_in, 3, 3] → [c_in, c_out, 4, 4]
        return F.conv_transpose2d(x, kernel, self.conv.bias, stride=2, padding=1)  # [B, c_out, 2H, 2W]


class Decoder(nn.Module):
    """latents [B, in_channels, h, w] → images [B, 3, h·f, w·f] (unbounded; the autoencoder clamps for output)."""

    def __init__(self, widths: list[int], blocks: int, in_channels: int, out_channels: int = 3):
        super().__init__()
        rev = list(reversed(widths))
        self.conv_in = nn.Conv2d(in_channels, rev[0], 3, padding=1)
        layers: list[nn.Module] = []
        for i, w in enumerate(rev):
            c = rev[max(i - 1, 0)]
            if i > 0:  # double the resolution, narrow
                layers.append(Upsample(c, w))
                c = w
            layers += [ResBlock(c, w) for _ in range(blocks)]
        self.levels = nn.Sequential(*layers)
        self.norm_out = group_norm(rev[-1])
        self.conv_out = nn.Conv2d(rev[-1], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.levels(self.conv_in(z))  # [B, widths[0], H, W]
        return self.conv_out(F.silu(self.norm_out(h)))
