"""Exact FLOP accounting (the convention is also in docs/architecture.md).

Convention: 2 FLOPs per multiply-add (MACs = FLOPs / 2, DiT's "Gflops"); every matmul that runs is counted,
embedding lookups are 0, elementwise work (norms, activations, softmax) is not counted; attention is counted
at the length it runs (a masked SDPA call computes the full Q×K block; a KV-cache step computes 1×K);
training = 3 × forward. The analytic count is the source of truth; `count_flops` measures the same with
`torch.utils.flop_counter.FlopCounterMode` as a cross-check.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

MLP_RATIO = 4  # the backbone's MLP width / model width (model/transformer.py builds with it)
TRAIN_MULTIPLIER = 3  # backward costs two forwards: gradients w.r.t. inputs and w.r.t. weights


@dataclass(frozen=True)
class Flops:
    """FLOPs split into labelled columns: the generator (backbone, embeddings, head) and the caption encoder."""

    generator: int = 0
    text_encoder: int = 0

    @property
    def total(self) -> int:
        return self.generator + self.text_encoder

    @property
    def macs(self) -> int:
        return self.total // 2

    def __add__(self, other: Flops) -> Flops:
        return Flops(self.generator + other.generator, self.text_encoder + other.text_encoder)

    def __mul__(self, k: int) -> Flops:
        return Flops(self.generator * k, self.text_encoder * k)

    __rmul__ = __mul__

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "total": self.total, "macs": self.macs}


# ------------------------------------------------------------------------------------------- analytic parts


def linear(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def attention(queries: int, keys: int, width: int) -> int:
    """Q·Kᵀ and P·V over all heads (heads × head_dim = width)."""
    return 2 * 2 * queries * keys * width


def block(queries: int, keys: int, width: int) -> int:
    """One Transformer block for `queries` new tokens attending to `keys` positions."""
    D = width
    return (
        linear(queries, D, 3 * D)
        + attention(queries, keys, D)
        + linear(queries, D, D)
        + linear(queries, D, MLP_RATIO * D)
        + linear(queries, MLP_RATIO * D, D)
    )


def transformer(queries: int, keys: int, width: int, depth: int, adaln: bool = False) -> int:
    """A stack of blocks; adaLN adds the per-example modulation (6·D per block, 2·D for the final norm)."""
    flops = depth * block(queries, keys, width)
    if adaln:
        flops += depth * linear(1, width, 6 * width) + linear(1, width, 2 * width)
    return flops


def format_report(report: dict) -> str:
    """The `synthscale flops` table from an objective's `flops_report`."""
    g = 1e9
    p = report["params"]
    lines = [
        f"{report['objective']} · size {report['size']} ({report['depth']}×{report['width']}, {report['heads']} heads)"
        f" · {report['image_tokens']} image tokens · {report['text_tokens']} text tokens"
        f" ({report['text_layers']}-layer text encoder)",
        f"params: {p['total'] / 1e6:.2f} M total, {p['non_embedding'] / 1e6:.2f} M non-embedding",
        "",
        f"{'':<28}{'generator':>12}{'text enc':>12}{'total':>12}{'total':>12}",
        f"{'':<28}{'GFLOPs':>12}{'GFLOPs':>12}{'GFLOPs':>12}{'GMACs':>12}",
    ]

    def num(x: int) -> str:
        return f"{x / g:>12,.0f}" if x >= 1000 * g else f"{x / g:>12.4g}"

    def row(label: str, f: dict) -> str:
        return f"{label:<28}{num(f['generator'])}{num(f['text_encoder'])}{num(f['total'])}{num(f['macs'])}"

    lines.append(row("forward (per example)", report["forward"]))
    lines.append(row("training (per example)", report["train_example"]))
    for s in report["sample"]:
        lines.append(row(f"sample {s['steps']} steps, {'CFG' if s['cfg'] else 'no CFG'}", s))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- measurement


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs torch's counter sees while `fn()` runs. SDPA runs under the MATH backend so its matmuls are
    visible (the fused CPU kernel reports 0)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        fn()
    return counter.get_total_flops()


def decode_flops(autoencoder) -> int:
    """FLOPs of decoding one image's latents to pixels (the autoencoder's decoder; the same for every sample of a
    run, so counted once): torch's counter over one decode of zero latents at the autoencoder's resolution. Its
    convolutions and matmuls count 2 per multiply-add (the convention above); norms, activations and upsampling
    are not counted, as elsewhere."""
    import torch

    spec = autoencoder.latent_spec(autoencoder.resolution)
    p = next(autoencoder.parameters())
    if spec.kind == "discrete":  # a token grid; id 0 is a valid code
        z = torch.zeros(1, spec.height, spec.width, dtype=torch.long, device=p.device)
    else:
        z = torch.zeros(1, spec.channels, spec.height, spec.width, dtype=p.dtype, device=p.device)
    with torch.no_grad():
        return count_flops(lambda: autoencoder.decode(z))


def param_counts(model: nn.Module) -> dict[str, int]:
    """Parameters: total and non-embedding (Kaplan et al.: lookup tables — tokens, positions, the null
    caption — are excluded; every matmul weight, output heads included, counts)."""
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return {"total": total, "non_embedding": total - embedding}
