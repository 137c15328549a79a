"""The one backbone: a pre-norm Transformer with SDPA attention, QK-norm and MLP ratio 4.

It knows nothing about objectives. Callers pass embedded tokens, a boolean attention mask (True = may attend)
and, for diffusion, a conditioning vector `c` that drives adaLN-Zero modulation. Decoding passes a `KVCache`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from synthscale.compute.flops import MLP_RATIO  # the FLOP count must use the same MLP width


class KVCache:
    """Keys and values of every layer for incremental decoding. Buffers are allocated on the first write, so
    they take the batch, device and dtype (e.g. under autocast) of the keys.

    Growing (default): `length` positions are filled and attention reads keys [0, length), so every step costs
    exactly its per-position FLOPs. Static (`static=True`, CUDA-graph friendly): attention always reads all
    `max_len` positions — the caller's mask hides the unfilled ones, which hold zeros — and the write position
    `pos` is a tensor (int64 [1]), so every decoding step has the same shapes and one compiled step (CUDA
    graphs included) serves every position. Static caches count positions in `pos`, not `length`."""

    def __init__(self, depth: int, max_len: int, static: bool = False):
        self.depth, self.max_len, self.length, self.static = depth, max_len, 0, static
        self.k: torch.Tensor | None = None  # [depth, B, H, max_len, hd]
        self.v: torch.Tensor | None = None
        self.pos: torch.Tensor | None = None  # static: int64 [1], the next position to write

    def _allocate(self, k: torch.Tensor) -> None:
        B, H, _, hd = k.shape
        # zeros, not garbage: a hidden key still meets its value as 0 · v, and 0 · NaN would be NaN
        self.k = k.new_zeros(self.depth, B, H, self.max_len, hd)
        self.v = k.new_zeros(self.depth, B, H, self.max_len, hd)
        if self.static:
            self.pos = torch.zeros(1, dtype=torch.long, device=k.device)
            if k.is_cuda and hasattr(torch, "_dynamo"):  # fixed addresses: CUDA graphs read them in place
                for t in (self.k, self.v, self.pos):
                    torch._dynamo.mark_static_address(t)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v [B, H, T, hd] after the filled positions; return the keys/values attention reads:
        growing, those filled so far [B, H, length + T, hd]; static, the whole buffers [B, H, max_len, hd]."""
        if self.k is None:
            self._allocate(k)
        if self.static:
            index = self.pos + torch.arange(k.shape[2], device=k.device)  # [T]; writes past max_len raise
            self.k[layer].index_copy_(2, index, k)
            self.v[layer].index_copy_(2, index, v)
            return self.k[layer], self.v[layer]
        end = self.length + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; cannot write up to {end}")
        self.k[layer, :, :, self.length : end] = k
        self.v[layer, :, :, self.length : end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def place(self, rows: slice, at: int, other: KVCache, start: int, count: int, batch: int) -> None:
        """Copy `other`'s positions [start, start + count) of every layer into rows `rows` at positions
        [at, at + count), allocating for `batch` rows at the first call; a one-row `other` fills every row of
        `rows`. Prefills of different lengths (CFG's captions and its one null caption) assemble one cache;
        `filled` then says how many positions it holds."""
        if self.k is None:
            self._allocate(other.k[0, :1, :, :1].expand(batch, -1, -1, -1))
        self.k[:, rows, :, at : at + count] = other.k[:, :, :, start : start + count]
        self.v[:, rows, :, at : at + count] = other.v[:, :, :, start : start + count]

    def filled(self, n: int) -> None:
        """Positions [0, n) of every row hold keys and values (real ones or, where the mask hides them, zeros)."""
        if self.static:
            self.pos.fill_(n)
        else:
            self.length = n

    def advance(self, n: int) -> None:
        """n positions were written by every layer."""
        if self.static:
            self.pos += n  # in place: the compiled step sees the same tensor every time
        else:
            self.length += n


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        # QK-norm keeps attention logits bounded as width grows (ViT-22B, SD3)
        self.q_norm = nn.RMSNorm(width // heads)
        self.k_norm = nn.RMSNorm(width // heads)

    def forward(self, x, mask=None, cache: KVCache | None = None, layer: int = 0):
        B, T, D = x.shape
        h = self.qkv(x).view(B, T, 3, self.heads, D // self.heads)
        # QK-norm before moving heads forward: rows of hd stay contiguous, so rms_norm takes its fused kernel
        # (sampling 4–9 % faster at 4x128 than normalising the permuted [B, H, T, hd] views)
        # unbind, not three h[:, :, i]: its backward stacks the three gradients in one copy, where each select's
        # backward zero-fills a whole [B, T, 3, H, hd] gradient and the three are summed
        q, k, v = h.unbind(2)  # [B, T, H, hd]
        q, k = _rms(self.q_norm, q), _rms(self.k_norm, k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, T, hd]
        if cache is not None:
            k, v = cache.update(layer, k, v)  # [B, H, T_cached + T, hd]
        if T == 1 and cache is not None and not torch.is_grad_enabled() and (mask is None or mask.is_floating_point()):
            y = _one_query_attention(q, k, v, mask)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [B, H, T, hd]
        return self.proj(y.transpose(1, 2).reshape(B, T, D))


def _one_query_attention(q, k, v, bias=None):
    """SDPA's result for one query a row, q [B, H, 1, hd] over k, v [B, H, K, hd] with an additive mask, as two
    batched matmuls and a softmax: equal up to rounding, and 5–25 % faster on a CPU at decoding's shapes (SDPA's
    fused kernel pays per batch × head for blocking a single query)."""
    B, H, _, hd = q.shape
    K = k.shape[2]
    bias = q.new_zeros(()) if bias is None else bias.expand(B, H, 1, K).reshape(B * H, 1, K)
    kt = k.reshape(B * H, K, hd).transpose(1, 2)  # a view: the cache's rows are (B, H)-major
    scores = torch.baddbmm(bias, q.reshape(B * H, 1, hd), kt, alpha=hd**-0.5)  # [B·H, 1, K]
    return torch.bmm(scores.softmax(-1), v.reshape(B * H, K, hd)).view(B, H, 1, hd)


def _rms(norm: nn.RMSNorm, x: torch.Tensor) -> torch.Tensor:
    # the weight in x's dtype: under bf16 autocast a float32 weight would force the slow unfused kernel
    weight = norm.weight.to(x.dtype)
    if x.device.type == "cpu" and x.dtype == torch.float32 and torch.is_grad_enabled():
        eps = torch.finfo(x.dtype).eps if norm.eps is None else norm.eps  # F.rms_norm's default
        return _RMSNormCPU.apply(x, weight, eps)
    return F.rms_norm(x, norm.normalized_shape, weight, norm.eps)


class _RMSNormCPU(torch.autograd.Function):
    """F.rms_norm over the last dim with a hand-written backward, for float32 training on a CPU. There ATen's
    rms_norm is a composite (pow, mean, rsqrt, mul) that autograd differentiates op by op; these few passes made a
    2x64 step 1.5–2.7 % faster (`benchmarks/step_ceiling.py --revert rms_norm`, docs/results/train-step-small.md)."""

    @staticmethod
    def forward(ctx, x, weight, eps: float):
        rstd = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [..., 1], as F.rms_norm computes it
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight

    @staticmethod
    def backward(ctx, grad):
        xhat, rstd, weight = ctx.saved_tensors
        gw = grad * weight
        # d/dx of x·rstd·w: rstd · (gw − x̂ · mean(gw · x̂))
        dx = torch.addcmul(gw, xhat, (gw * xhat).mean(-1, keepdim=True), value=-1).mul_(rstd)
        dweight = (grad * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        return dx, dweight, None


class MLP(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.fc = nn.Linear(width, MLP_RATIO * width)
        self.proj = nn.Linear(MLP_RATIO * width, width)

    def forward(self, x):
        # exact (erf) GELU, as nanoGPT: on a CPU (measured, x86 with AVX-512) 3× faster forward and 1.7× faster
        # backward than DiT's tanh approximation
        return self.proj(F.gelu(self.fc(x)))


def modulate(x, shift, scale):
    return x * (1 + scale) + shift


class Block(nn.Module):
    """Pre-norm block. With `adaln`, c [B, D] sets shift/scale/gate of both branches (DiT's adaLN-Zero):
    the gates start at zero, so a fresh block is the identity."""

    def __init__(self, width: int, heads: int, adaln: bool = False):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=not adaln, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=not adaln, eps=1e-6)
        self.mlp = MLP(width)
        self.ada = nn.Linear(width, 6 * width) if adaln else None

    def forward(self, x, mask=None, c=None, cache: KVCache | None = None, layer: int = 0):
        if self.ada is None:
            x = x + self.attn(self.norm1(x), mask, cache, layer)
            return x + self.mlp(self.norm2(x))
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)  # [B, 1, D]
        x = x + gate1 * self.attn(modulate(self.norm1(x), shift1, scale1), mask, cache, layer)
        return x + gate2 * self.mlp(modulate(self.norm2(x), shift2, scale2))


class Transformer(nn.Module):
    """`depth` blocks and a final norm (adaLN-modulated when `adaln`). x [B, T, D] → [B, T, D]."""

    def __init__(self, width: int, depth: int, heads: int, adaln: bool = False):
        super().__init__()
        self.width, self.depth, self.heads, self.adaln = width, depth, heads, adaln
        self.blocks = nn.ModuleList(Block(width, heads, adaln) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=not adaln, eps=1e-6)
        self.final_ada = nn.Linear(width, 2 * width) if adaln else None
        self.apply(_init)
        for m in [b.ada for b in self.blocks] + [self.final_ada]:
            if m is not None:  # adaLN-Zero: modulation starts at zero
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x, mask=None, c=None, cache: KVCache | None = None):
        if self.adaln and c is None:
            raise ValueError("this Transformer uses adaLN: pass the conditioning vector c [B, D]")
        for i, block in enumerate(self.blocks):
            x = block(x, mask, c, cache, i)
        if cache is not None:
            cache.advance(x.shape[1])
        x = self.norm(x)
        if self.final_ada is not None:
            shift, scale = self.final_ada(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)
            x = modulate(x, shift, scale)
        return x

    def new_cache(self, max_len: int, static: bool = False) -> KVCache:
        return KVCache(self.depth, max_len, static)


def _init(m: nn.Module) -> None:
    # nanoGPT/DiT: small normal weights, zero biases
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
