"""How the token objectives read and write code ids: one softmax over the whole vocabulary, or factorised over
the code's channels.

An FSQ/LFQ code id is a mixed-radix number of per-channel levels (id = Σ digit_i · Π_{j<i} L_j; LFQ: L_i = 2).
With a full softmax, codes that share levels share no parameters. Factorised (`objective.factorised`):
  embedding  the sum of one learned vector per (channel, level) — the extra id (mask / BOS) keeps its own row;
  head       one softmax per channel over its L_i levels, so the code's probability is the product of the
             channels' (conditionally independent given the context); its NLL is the sum of the per-channel
             cross-entropies, nats per code like the full softmax's;
  sampling   each channel drawn from its own softmax (temperature and top-k per channel: top-k keeps the k most
             likely levels of every channel); guidance mixes the per-channel logits, which are one linear output.
The head is one Linear either way (V or Σ L_i outputs), so FLOPs stay a single matmul.
"""

from __future__ import annotations

import math
from itertools import accumulate

import torch
import torch.nn.functional as F
from torch import nn

from synthscale.config import ConfigError
from synthscale.data.latents import LatentSpec
from synthscale.objectives.base import sample_logits


def code_levels(latent: LatentSpec, factorised: bool) -> tuple[int, ...] | None:
    """The per-channel levels a factorised objective splits ids into; None for a full softmax."""
    if not factorised:
        return None
    if not latent.levels:
        raise ConfigError(
            f"objective.factorised needs the latents' per-channel levels, but this {latent.vocab_size}-code latent "
            "spec has none; use an FSQ or LFQ autoencoder (its cache and checkpoints carry them), or set "
            "objective.factorised=false"
        )
    return latent.levels


def logits_width(latent: LatentSpec, factorised: bool) -> int:
    """Outputs of the head: V logits, or Σ L_i when factorised (the FLOP count's head fan-out)."""
    levels = code_levels(latent, factorised)
    return latent.vocab_size if levels is None else sum(levels)


class LevelEmbedding(nn.Module):
    """ids [...] in 0..V (V: the one extra input id) → [..., D]: the sum of the code's per-channel level vectors;
    id V reads its own row (table row Σ L_i)."""

    def __init__(self, levels: tuple[int, ...], width: int):
        super().__init__()
        self.vocab_size = math.prod(levels)
        self.table = nn.Embedding(sum(levels) + 1, width)
        self.register_buffer("offsets", torch.tensor([0, *accumulate(levels)][:-1]), persistent=False)
        self.register_buffer("basis", torch.tensor([math.prod(levels[:i]) for i in range(len(levels))]), False)
        self.register_buffer("radix", torch.tensor(levels), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        extra = ids == self.vocab_size
        digits = (ids.clamp_max(self.vocab_size - 1)[..., None] // self.basis) % self.radix  # [..., d]
        h = self.table(digits + self.offsets).sum(-2)  # [..., D]
        return torch.where(extra[..., None], self.table.weight[-1], h)


class TokenCodes(nn.Module):
    """The head's reading of its logits [..., K] (K = V, or Σ L_i when factorised): loss, draw, log-prob.
    Holds only non-persistent buffers, so a checkpoint's weights do not change with it."""

    def __init__(self, latent: LatentSpec, factorised: bool = False):
        super().__init__()
        self.vocab_size = latent.vocab_size
        self.levels = code_levels(latent, factorised)
        if self.levels is None:
            return
        L = self.levels
        self.register_buffer("basis", torch.tensor([math.prod(L[:i]) for i in range(len(L))]), persistent=False)
        self.register_buffer("radix", torch.tensor(L), persistent=False)
        # [d, max L] indices into the logits, with one past the end (a −inf column) where a channel has fewer levels
        starts = [0, *accumulate(L)][:-1]
        width, top = sum(L), max(L)
        index = [[s + j if j < n else width for j in range(top)] for s, n in zip(starts, L)]
        self.register_buffer("pad_index", torch.tensor(index), persistent=False)

    @property
    def factorised(self) -> bool:
        return self.levels is not None

    @property
    def width(self) -> int:
        return self.vocab_size if self.levels is None else sum(self.levels)

    def embedding(self, width: int) -> nn.Module:
        """The input table for ids 0..V (V: mask / BOS); `init_embedding` sets its weights."""
        if self.levels is not None:
            return LevelEmbedding(self.levels, width)
        return nn.Embedding(self.vocab_size + 1, width)

    def init_embedding(self, embed: nn.Module) -> None:
        if self.levels is None:
            nn.init.normal_(embed.weight, std=0.02)
        else:  # a sum of d vectors: each 1/√d of the full table's scale, so a code's vector starts at the same norm
            nn.init.normal_(embed.table.weight, std=0.02 / math.sqrt(len(self.levels)))

    def per_channel(self, logits: torch.Tensor) -> torch.Tensor:
        """[..., Σ L_i] → [..., d, max L], −inf where a channel has no such level."""
        pad = logits.new_full((*logits.shape[:-1], 1), float("-inf"))
        return torch.cat([logits, pad], dim=-1)[..., self.pad_index]

    def digits(self, ids: torch.Tensor) -> torch.Tensor:
        return (ids[..., None] // self.basis) % self.radix  # [..., d]

    def nll(self, logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
        """Mean negative log-likelihood (nats per code) of ids [M] under logits [M, K]; with `scored` bool [M],
        the mean over the scored rows only (what `nll(logits[scored], ids[scored])` computes)."""
        logits = logits.float()
        if self.levels is None:
            return token_cross_entropy(logits, ids, scored)
        if scored is not None:
            return self.nll(logits[scored], ids[scored])
        per = self.per_channel(logits)  # [M, d, max L]
        ce = F.cross_entropy(per.flatten(0, 1), self.digits(ids).flatten(), reduction="none")  # [M·d]
        return ce.view(per.shape[:2]).sum(-1).mean()

    def draw(self, logits: torch.Tensor, generator: torch.Generator, temperature: float, top_k: int) -> torch.Tensor:
        """ids [...] drawn from logits [..., K] (float)."""
        if self.levels is None:
            return sample_logits(logits, generator, temperature, top_k)
        digits = sample_logits(self.per_channel(logits), generator, temperature, top_k)  # [..., d]
        return (digits * self.basis).sum(-1)

    def log_prob(self, logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """log p(ids) [...] under the unscaled logits [..., K]: factorised, the sum of the channels' log-probs."""
        if self.levels is None:
            return logits.log_softmax(-1).gather(-1, ids[..., None])[..., 0]
        logp = self.per_channel(logits).log_softmax(-1)  # [..., d, max L]
        return logp.gather(-1, self.digits(ids)[..., None])[..., 0].sum(-1)


class _TokenCrossEntropy(torch.autograd.Function):
    """F.cross_entropy's mean over the scored rows, with a backward that writes the logits' gradient
    (softmax − one-hot) · weight in one fresh tensor. On a CPU autograd's own backward (nll_loss's, and an
    index's when the rows were gathered first) zero-fills a [M, V] gradient and scatters into it: at the default
    study's shapes (64→1024 head, batch 32) that zero-fill and gather cost about as much as the log-softmax."""

    @staticmethod
    def forward(ctx, logits, ids, scored):
        logp = torch.log_softmax(logits, -1)  # [M, V]
        picked = logp.gather(1, ids[:, None])[:, 0]  # [M]
        if scored is None:
            weight, count = None, ids.numel()
            total = picked.sum()
        else:
            weight = scored.to(logp.dtype)
            count = weight.sum()
            total = (picked * weight).sum()
        ctx.save_for_backward(logp, ids, weight)
        ctx.count = count
        return -total / count

    @staticmethod
    def backward(ctx, grad):
        logp, ids, weight = ctx.saved_tensors
        out = logp.exp()  # softmax [M, V]
        out.scatter_add_(1, ids[:, None], out.new_full((ids.numel(), 1), -1.0))  # − one-hot
        scale = grad / ctx.count
        out.mul_(scale if weight is None else (weight * scale)[:, None])
        return out, None, None


def token_cross_entropy(logits: torch.Tensor, ids: torch.Tensor, scored: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy (nats) of ids [M] under logits [M, V]; with `scored` bool [M], over those rows only
    (F.cross_entropy's value up to rounding; unscored rows get a zero gradient)."""
    if logits.device.type == "cpu" and torch.is_grad_enabled() and logits.requires_grad:
        return _TokenCrossEntropy.apply(logits, ids, scored)
    if scored is None:  # no gradient, or a GPU: its fused kernels
        return F.cross_entropy(logits, ids)
    return F.cross_entropy(logits, ids.masked_fill(~scored, -100))  # ignore_index: the mean over scored rows
