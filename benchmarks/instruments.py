"""The in-domain image–caption encoder on a folder of real captioned images: training time on one thread, its
ceiling (R-precision and CLIP-score style agreement of real test images with their own captions), the sanity
check (FD of real val vs real test, against the same val images blurred / channel-shuffled / noised) and the
time to score 1,000 images with it.

    python benchmarks/instruments.py --data ../shared/datasets/emoji-noto-64 [--resolution 32] [--n 256]

Goals: training ≤ 3 CPU-minutes on one core; scoring 1,000 images ≤ 10 CPU-seconds; every corruption's FD at
least 2× real-vs-real.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import print_table, write_json


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="a folder of captioned images (data.dataset=folder)")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--n", type=int, default=256, help="images per set for the ceiling and sanity (evaluation.n)")
    ap.add_argument("--score-n", type=int, default=1000, help="images scored for the timing")
    ap.add_argument("--encoder-set", action="append", default=[], metavar="KEY=VALUE", help="an EncoderConfig key")
    ap.add_argument("--cache", type=Path, default=None, help="instrument cache (default: a temporary folder)")
    ap.add_argument("--name", default="instruments", help="results file name (results/NAME.json)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from synthscale.config import DataConfig
    from synthscale.data import get_dataset
    from synthscale.evaluate.instruments import Prompts, open_instrument
    from synthscale.evaluate.instruments.ceiling import measure_ceiling, real_prompts

    data = DataConfig(dataset="folder", path=str(args.data), resolution=args.resolution)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="instrument-bench-"))
    encoder = open_instrument("encoder", data, cache, {"encoder": args.encoder_set})
    train = encoder.meta["train"]
    ceiling = measure_ceiling(encoder, data, args.n)

    # scoring time: score_n train images (any real images will do) against the n test images
    test_images, _ = real_prompts(data, "test", args.n)
    bound = encoder.bind(test_images)
    ds = get_dataset(data, "train")
    items = [ds[i % len(ds)] for i in range(args.score_n)]
    images, prompts = np.stack([it["image"] for it in items]), Prompts([it["caption"] for it in items])
    cpu, wall = time.process_time(), time.perf_counter()
    bound.score(images, prompts)
    score_cpu, score_wall = time.process_time() - cpu, time.perf_counter() - wall

    real, val = ceiling["real_test"], ceiling["real_val"]
    rows = [
        {"what": "train (CPU s, 1 thread)", "value": train["train_cpu_seconds"], "goal": "≤ 180"},
        {"what": "train items / distinct captions", "value": f"{train['train_items']} / {train['distinct_captions']}"},
        {
            "what": f"R-precision, real test (n={args.n})",
            "value": f"{real['rprec_encoder']:.3f} [{real['rprec_encoder_lo']:.3f}, {real['rprec_encoder_hi']:.3f}]",
            "goal": f"chance {1 / real['rprec_encoder_candidates']:.3f}",
        },
        {
            "what": "CLIP-score style, real test",
            "value": f"{real['clipscore_encoder']:.1f} [{real['clipscore_encoder_lo']:.1f}, "
            f"{real['clipscore_encoder_hi']:.1f}]",
        },
        {"what": f"FD real val vs test (n={ceiling['n_val']})", "value": val["fd_encoder"]},
        *(
            {"what": f"FD {name} val vs test", "value": c["fd_encoder"], "goal": f"≥ {2 * val['fd_encoder']:.3g}"}
            for name, c in ceiling["corrupted"].items()
        ),
        {"what": f"score {args.score_n} images (CPU s)", "value": score_cpu, "goal": "≤ 10"},
    ]
    for r in rows:
        r.setdefault("goal", "")
    print_table(rows, f"in-domain encoder {encoder.name} on {args.data.name} at {args.resolution} px")
    result = {
        "data": str(args.data),
        "resolution": args.resolution,
        "encoder": encoder.name,
        "config": encoder.meta["encoder"],
        "train": train,
        "ceiling": ceiling,
        "score": {"images": args.score_n, "cpu_seconds": score_cpu, "wall_seconds": score_wall},
    }
    write_json(args.name, result)
    return result


if __name__ == "__main__":
    main()
