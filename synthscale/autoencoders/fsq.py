"""Finite scalar quantisation (Mentzer et al. 2023): each of d channels is bounded with tanh to L_i levels and
rounded (straight-through), index = mixed-radix number of the digits, vocabulary Π L_i. No codebook, no
auxiliary loss, and in practice near-full codebook usage — the robust alternative to LFQ. Hand-written for the
same reason as LFQ (a few lines; the library brings einx/einops)."""

from __future__ import annotations

import math

import torch
from torch import nn


class FSQ(nn.Module):
    def __init__(self, levels: list[int], eps: float = 1e-3):
        super().__init__()
        if not levels or any(int(level) < 2 for level in levels):
            raise ValueError(f"fsq_levels must be a non-empty list of integers ≥ 2, got {levels}")
        self.levels = [int(level) for level in levels]
        self.dim = len(levels)
        self.vocab_size = math.prod(self.levels)
        L = torch.tensor(self.levels, dtype=torch.float64)
        half_l = (L - 1) * (1 + eps) / 2
        offset = torch.where(L % 2 == 0, 0.5, 0.0)  # even L: levels sit at half-integers before the shift
        self.register_buffer("half_l", half_l.float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("offset", offset.float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", torch.atanh(offset / half_l).float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("half_width", (L // 2).float().view(1, -1, 1, 1), persistent=False)
        basis = torch.tensor([math.prod(self.levels[:i]) for i in range(self.dim)], dtype=torch.long)
        self.register_buffer("basis", basis.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("radix", torch.tensor(self.levels, dtype=torch.long).view(1, -1, 1, 1), persistent=False)

    def _bounded(self, z: torch.Tensor) -> torch.Tensor:
        """[B, d, h, w] → values in (−L/2, L/2) whose nearest integers are the levels −⌊L/2⌋ …"""
        return torch.tanh(z + self.shift) * self.half_l - self.offset

    @staticmethod
    def _straight_through(bounded: torch.Tensor) -> torch.Tensor:
        """Bounded values → their integer levels as floats, with the identity's gradient."""
        return bounded + (bounded.round() - bounded).detach()

    def _round(self, z: torch.Tensor) -> torch.Tensor:
        """[B, d, h, w] → integer levels −⌊L/2⌋ … (straight-through), as floats."""
        return self._straight_through(self._bounded(z))

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """int64 [B, h, w] → codes in [−1, 1], [B, d, h, w]."""
        digits = (indices[:, None] // self.basis) % self.radix  # [B, d, h, w] in 0..L−1
        return (digits - self.half_width) / self.half_width

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        digits = (self._round(z).detach().round() + self.half_width).long()
        return (digits * self.basis).sum(dim=1)

    def forward(self, z: torch.Tensor):
        """z [B, d, h, w] → (straight-through codes [B, d, h, w] in [−1, 1], indices [B, h, w], {"fsq_commit"}).

        "fsq_commit" is the mean squared distance of the bounded values from their levels, in level units: FSQ needs no
        such term to train, but a flat region the decoder draws the same whatever its code (a plain background)
        otherwise settles on a rounding boundary and flips between neighbouring codes with far-away content; the
        token models then spend their capacity predicting that noise. A small weight (`fsq_commit_weight`) pulls
        values to level centres, so such a region mostly keeps one code (docs/models.md: Autoencoders)."""
        bounded = self._bounded(z)
        q = self._straight_through(bounded)
        digits = (q.detach().round() + self.half_width).long()
        commit = (bounded - bounded.detach().round()).pow(2).mean()
        return q / self.half_width, (digits * self.basis).sum(dim=1), {"fsq_commit": commit}
