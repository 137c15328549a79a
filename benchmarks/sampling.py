"""Per-image sampling time of each objective, and the KV-cache speedup of next-token sampling.

Samples a batch of captions with classifier-free guidance (batched cond + uncond) at 4x128 with 16 and 64
image tokens (+ 24 caption tokens) and reports wall time and analytic FLOPs per image. Next-token sampling runs
with the KV cache and with full recomputation (same seed, same tokens); goal: ≥ 10× faster with the cache at
64 image tokens.

Usage: python benchmarks/sampling.py [--threads 1] [--batch 16] [--repeats 3] [--size 4x128] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from common import median_time, print_table, write_json

from synthscale.config import ModelConfig, ObjectiveConfig
from synthscale.data.latents import LatentSpec, TextSpec
from synthscale.objectives import get_objective

GOAL = 10.0
TEXT = TextSpec(vocab_size=64, max_length=24)
VOCAB = 1024
CFG = 4.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", default="4x128")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev, B = args.device, args.batch
    model_cfg = ModelConfig(size=args.size)
    text = torch.randint(3, TEXT.vocab_size, (B, TEXT.max_length), generator=torch.Generator().manual_seed(0))
    text[:, 12:] = 0

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    rows, speedup = [], {}
    for side in (4, 8):
        N = side * side
        for name, steps_list, extra in (
            ("flow", (10, 50), {}),
            ("masked", (8, 16), {}),
            ("autoregressive", (N,), {"kv_cache": True}),
            ("autoregressive", (N,), {"kv_cache": False}),
        ):
            obj = get_objective(ObjectiveConfig.of(name))
            spec = (
                LatentSpec("continuous", 4, side, side)
                if obj.latent == "continuous"
                else LatentSpec("discrete", 10, side, side, vocab_size=VOCAB)
            )
            torch.manual_seed(0)
            model = obj.build_model(model_cfg, spec, TEXT).to(dev)
            for steps in steps_list:

                def run():
                    obj.sample(model, text.to(dev), steps, CFG, torch.Generator().manual_seed(0), **extra)
                    sync()

                t = median_time(run, repeats=args.repeats) / B
                flops = obj.sample_flops(model_cfg, spec, TEXT, steps, CFG, **extra)
                label = name + ("" if not extra else " (KV cache)" if extra["kv_cache"] else " (recompute)")
                rows.append(
                    {
                        "objective": label,
                        "img_tokens": N,
                        "steps": steps,
                        "cfg": CFG,
                        "batch": B,
                        "ms_per_image": 1e3 * t,
                        "GFLOP_per_image": flops / 1e9,
                        "GFLOPs": flops / t / 1e9,
                    }
                )
        ar = {r["objective"]: r for r in rows if r["img_tokens"] == N and r["objective"].startswith("autoreg")}
        kv, re = ar["autoregressive (KV cache)"], ar["autoregressive (recompute)"]
        speedup[N] = {
            "time": re["ms_per_image"] / kv["ms_per_image"],
            "flops": re["GFLOP_per_image"] / kv["GFLOP_per_image"],
        }
    print_table(
        rows,
        f"Sampling at {args.size}, CFG {CFG} (batched cond + uncond), {TEXT.max_length} caption tokens, "
        f"codebook {VOCAB}; {args.threads} thread(s), device {dev}, median of {args.repeats}",
    )
    print()
    for N, s in speedup.items():
        print(f"KV-cache speedup at {N} image tokens: {s['time']:.1f}× in time ({s['flops']:.1f}× fewer FLOPs)")
    met = speedup[64]["time"] >= GOAL
    print(f"goal ≥ {GOAL:.0f}× at 64 image tokens: {'met' if met else 'NOT met'}")
    write_json(
        f"sampling_{dev}",
        {
            "rows": rows,
            "kv_speedup": speedup,
            "size": args.size,
            "threads": args.threads,
            "goal_speedup": GOAL,
            "goal_met": met,
        },
    )


if __name__ == "__main__":
    main()
