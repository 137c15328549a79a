"""Lookup-free quantisation (MAGVIT-v2, Yu et al. 2023): each of c latent channels is quantised to its sign,
so a token is a c-bit code, index = Σ bit_i·2^i, vocabulary 2^c, no codebook to look up or collapse.

Training adds an entropy term that keeps codes confident per token and diverse across the batch (codebook
usage), and a commitment term that keeps the encoder output near its code. Written here rather than taken
from a library: it is ~50 lines, and the maintained implementation (vector-quantize-pytorch) brings einx/einops
and changes its API often."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EXACT_ENTROPY_BITS = 12  # up to 4096 codes the batch code distribution is computed exactly


def binary_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of Bernoulli(sigmoid(logits)), elementwise."""
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


class LFQ(nn.Module):
    def __init__(self, bits: int, temperature: float = 0.01, diversity: float = 1.0):
        super().__init__()
        if not 1 <= bits <= 20:
            raise ValueError(f"lfq bits (latent_channels) must be in 1..20, got {bits}")
        self.dim = bits
        self.vocab_size = 2**bits
        self.temperature = temperature
        self.diversity = diversity
        self.register_buffer("powers", 2 ** torch.arange(bits), persistent=False)  # [c]
        if bits <= EXACT_ENTROPY_BITS:  # every code as ±1 bits, [K, c]
            codes = ((torch.arange(self.vocab_size)[:, None] & self.powers) > 0).float()
            self.register_buffer("code_bits", codes, persistent=False)

    def codes(self, indices: torch.Tensor) -> torch.Tensor:
        """int64 [B, h, w] → ±1 codes [B, c, h, w]."""
        bits = (indices[..., None] & self.powers) > 0  # [B, h, w, c]
        return (bits.float() * 2 - 1).permute(0, 3, 1, 2).contiguous()

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """[B, c, h, w] → int64 [B, h, w]: the bits are the signs of the channels."""
        return ((z > 0).long() * self.powers[:, None, None]).sum(dim=1)

    def forward(self, z: torch.Tensor):
        """z [B, c, h, w] → (straight-through codes [B, c, h, w], indices [B, h, w], {"entropy", "commit"})."""
        q = torch.where(z > 0, 1.0, -1.0)
        zq = z + (q - z).detach()  # forward: the code; backward: identity to z
        commit = (z - q).pow(2).mean()
        # distance softmax over codes factorises per bit: logit(+1) − logit(−1) = (‖z+1‖² − ‖z−1‖²)/T = 4z/T
        logits = (4.0 / self.temperature) * z.permute(0, 2, 3, 1).reshape(-1, self.dim)  # [N, c]
        token_entropy = binary_entropy(logits).sum(dim=1).mean()  # exact: bits are independent given z
        if self.dim <= EXACT_ENTROPY_BITS:
            # log p(code k) = Σ_i [b_ki·log σ(l_i) + (1−b_ki)·log σ(−l_i)], as two matmuls: [N, K]
            logp = F.logsigmoid(logits) @ self.code_bits.T + F.logsigmoid(-logits) @ (1 - self.code_bits).T
            avg = logp.exp().mean(dim=0)  # [K]
            batch_entropy = -(avg * torch.log(avg.clamp_min(1e-12))).sum()
        else:  # upper bound from the per-bit marginals (the full table would not fit)
            batch_entropy = binary_entropy(torch.logit(torch.sigmoid(logits).mean(0), eps=1e-6)).sum()
        entropy = token_entropy - self.diversity * batch_entropy
        return zq, self.indices(z), {"entropy": entropy, "commit": commit}
