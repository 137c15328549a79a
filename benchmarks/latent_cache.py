"""Latent cache: build rate and read rate on one core (goal: get_batch ≥ 50,000 latents/s).

Builds real caches of the shapes training split (default 20,000 items, the study's size) with freshly
initialised kl-f4c4, lfq-f8 and lfq-f4 autoencoders (the weights do not change the cost), then times
`get_batch` on random indices. Usage: python benchmarks/latent_cache.py [--items N]"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from common import median_time, print_table, write_json

from synthscale.autoencoders import build_autoencoder
from synthscale.config import AutoencoderConfig, load
from synthscale.data import get_dataset
from synthscale.data.latents import build_cache
from synthscale.data.text import tokenizer_for

GOAL = 50_000
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "autoencoders"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20000, help="training items to cache (default 20000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, builds = [], []
    with tempfile.TemporaryDirectory() as root:
        for name in ("kl-f4c4", "lfq-f8", "lfq-f4"):
            cfg = load(AutoencoderConfig, CONFIGS / f"{name}.yaml", [f"data.size={args.items}"])
            torch.manual_seed(0)
            ae = build_autoencoder(cfg).eval()
            ds = get_dataset(cfg.data, "train")
            t = time.perf_counter()
            cache = build_cache(ae, ds, tokenizer_for(cfg.data), root, progress=False)
            build_s = time.perf_counter() - t
            builds.append(
                {"autoencoder": name, "items": len(cache), "build_s": build_s, "items_per_s": len(cache) / build_s}
            )
            gen = torch.Generator().manual_seed(0)
            for batch in (64, 256, 1024):
                batches = [torch.randint(len(cache), (batch,), generator=gen) for _ in range(50)]
                t_s = median_time(lambda: [cache.get_batch(i, gen) for i in batches], repeats=5) / len(batches)
                rows.append(
                    {
                        "autoencoder": name,
                        "latent": _shape(cache.spec),
                        "batch": batch,
                        "latents_per_s": batch / t_s,
                        "goal": GOAL,
                        "met": batch / t_s >= GOAL,
                    }
                )
    print_table(builds, "Cache build (render + encode + write; one core)")
    print_table(rows, "LatentCache.get_batch on random indices (one core, median of 5 × 50 batches)")
    write_json("latent_cache", {"builds": builds, "rows": rows, "goal_latents_per_s": GOAL, "threads": 1})


def _shape(spec) -> str:
    if spec.kind == "continuous":
        return f"{spec.channels}x{spec.height}x{spec.width} float"
    return f"{spec.height}x{spec.width} tokens"


if __name__ == "__main__":
    main()
