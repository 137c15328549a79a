"""Training-step throughput of each objective as a fraction of a measured matmul peak.

One run measures a float32 matmul peak, then the training step (loss, backward, AdamW step) of every objective
at 4x128 and 6x192 with 16 and 64 image tokens (+ 24 caption tokens), in float32 and under bf16 autocast, and
prints achieved FLOP/s (analytic `train_flops` / median step time) against the float32 and bf16 matmul peaks,
and against the FLOP/s of a lone matmul of the model's own MLP shape ([B·T, D] @ [D, 4D]; `fp32_of_mlp_mm`).
Goal: ≥ 0.6 of the float32 peak at 6x192 with 64 image tokens. The optimizer is the trainer's (`build_optimizer`);
`--compile` adds a column for the float32 step under torch.compile (the trainer's `train.compile`).

Usage: python benchmarks/train_step.py [--threads 1] [--batch 32] [--repeats 5] [--device cpu|cuda] [--compile]
       [--objectives flow masked autoregressive] [--sizes 4x128 6x192]
"""

from __future__ import annotations

import argparse
import contextlib

import torch
from common import median_time, print_table, write_json

from synthscale.config import ModelConfig, ObjectiveConfig, TrainConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.objectives import get_objective
from synthscale.train.loop import build_optimizer

GOAL = 0.6  # fraction of the float32 peak at 6x192, 64 image tokens
TEXT = TextSpec(vocab_size=64, max_length=24)
VOCAB = 1024  # discrete codebook (e.g. 10-bit LFQ)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak(dtype: torch.dtype, device: str, repeats: int) -> tuple[float, int]:
    """Best FLOP/s over square matmuls of a few sizes (the size that fits the cache/cores best wins)."""
    best = (0.0, 0)
    for n in (1024, 2048, 4096) if device == "cuda" else (512, 1024, 2048):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)

        def mm():
            a @ b
            sync(device)

        best = max(best, (2 * n**3 / median_time(mm, repeats=repeats), n))
    return best


def shape_peak(rows: int, width: int, device: str, repeats: int) -> float:
    """FLOP/s of the model's own widest matmul, [rows, D] @ [D, 4D] (the MLP): what a step could reach if it
    were nothing but matmuls of its own shapes."""
    a = torch.randn(rows, width, device=device)
    b = torch.randn(width, 4 * width, device=device)

    def mm():
        a @ b
        sync(device)

    return 2 * rows * width * 4 * width / median_time(mm, repeats=repeats)


def latents(obj, side: int, batch: int, device: str):
    g = torch.Generator().manual_seed(0)
    if obj.latent == "continuous":
        spec = LatentSpec("continuous", 4, side, side)
        x = torch.randn(batch, 4, side, side, generator=g)
    else:
        spec = LatentSpec("discrete", 10, side, side, vocab_size=VOCAB)
        x = torch.randint(0, VOCAB, (batch, side, side), generator=g)
    text = torch.randint(3, TEXT.vocab_size, (batch, TEXT.max_length), generator=g)
    text[:, 12:] = 0  # half-length captions, padded
    return spec, x.to(device), text.to(device)


def step_time(obj, model_cfg, side, batch, repeats, device, bf16: bool, compiled: bool = False) -> tuple[float, int]:
    torch.manual_seed(0)
    spec, x, text = latents(obj, side, batch, device)
    model = obj.build_model(model_cfg, spec, TEXT).to(device)
    if compiled:
        model.compile()
    opt = build_optimizer(model, TrainConfig(lr=1e-4))
    gen = torch.Generator().manual_seed(0)
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step():
        with autocast:
            loss = obj.loss(model, x, text, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)

    return median_time(step, repeats=repeats, warmup=2), obj.train_flops(model_cfg, spec, TEXT, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", action="store_true", help="also time the float32 step under torch.compile")
    names = ObjectiveConfig.names()
    ap.add_argument("--objectives", nargs="+", default=names, choices=names)
    ap.add_argument("--sizes", nargs="+", default=["4x128", "6x192"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device

    peak32, n32 = matmul_peak(torch.float32, dev, args.repeats)
    peak16, n16 = matmul_peak(torch.bfloat16, dev, args.repeats)
    rows = []
    for name in args.objectives:
        obj = get_objective(ObjectiveConfig.of(name))
        for size in args.sizes:
            for side in (4, 8):
                t32, flops = step_time(obj, ModelConfig(size=size), side, args.batch, args.repeats, dev, False)
                t16, _ = step_time(obj, ModelConfig(size=size), side, args.batch, args.repeats, dev, True)
                width = int(size.split("x")[1])
                mlp_peak = shape_peak(args.batch * (side * side + TEXT.max_length), width, dev, args.repeats)
                row = {
                    "objective": name,
                    "size": size,
                    "img_tokens": side * side,
                    "batch": args.batch,
                    "GFLOP_step": flops / 1e9,
                    "fp32_ms": 1e3 * t32,
                    "fp32_GFLOPs": flops / t32 / 1e9,
                    "fp32_of_peak": flops / t32 / peak32,
                    "fp32_of_mlp_mm": flops / t32 / mlp_peak,
                    "bf16_ms": 1e3 * t16,
                    "bf16_GFLOPs": flops / t16 / 1e9,
                    "bf16_of_peak": flops / t16 / peak16,
                }
                if args.compile:
                    tc, _ = step_time(obj, ModelConfig(size=size), side, args.batch, args.repeats, dev, False, True)
                    row.update(compiled_fp32_ms=1e3 * tc, compiled_fp32_GFLOPs=flops / tc / 1e9)
                rows.append(row)
    # the peak again at the end: on a shared machine, keep the better of the two
    peak32 = max(peak32, matmul_peak(torch.float32, dev, args.repeats)[0])
    for r in rows:
        r["fp32_of_peak"] = r["fp32_GFLOPs"] * 1e9 / peak32
        if args.compile:
            r["compiled_fp32_of_peak"] = r["compiled_fp32_GFLOPs"] * 1e9 / peak32
    goal = [r for r in rows if r["size"] == "6x192" and r["img_tokens"] == 64]
    print(
        f"matmul peak: float32 {peak32 / 1e9:.1f} GFLOP/s (n={n32}), bf16 {peak16 / 1e9:.1f} GFLOP/s (n={n16}); "
        f"{args.threads} thread(s), device {dev}"
    )
    print_table(
        rows,
        f"Training step (loss + backward + AdamW), {TEXT.max_length} caption tokens, codebook {VOCAB}; "
        f"achieved = analytic train_flops / median step time",
    )
    met = {r["objective"]: r["fp32_of_peak"] >= GOAL for r in goal}
    print(f"\ngoal ≥ {GOAL} of the float32 peak at 6x192, 64 tokens: {met}")
    write_json(
        f"train_step_{dev}",
        {
            "rows": rows,
            "peak_fp32_flops": peak32,
            "peak_bf16_flops": peak16,
            "threads": args.threads,
            "goal_fraction": GOAL,
            "goal_met": met,
        },
    )


if __name__ == "__main__":
    main()
