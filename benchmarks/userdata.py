"""User-data throughput on one core: indexing a folder / shards, reading items (decode + resize + crop), writing
shards, and what JPEG draft decoding buys. Images are loaded once, to build the latent cache, so the number that
matters is core-hours per million images. Usage: python benchmarks/userdata.py [--n 400]"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import median_time, print_table, write_json
from PIL import Image

from synthscale.config import DataConfig
from synthscale.data import get_dataset
from synthscale.data.imagefit import decode, fit_image
from synthscale.data.shards import _index_once, write_shards


def photo_like(seed: int, w: int, h: int) -> Image.Image:
    """Smooth gradients, a few blobs and mild noise: compresses and decodes like a photo, unlike pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    img = np.stack([np.sin(6 * x + rng.uniform(0, 6)) + np.cos(5 * y + rng.uniform(0, 6)) for _ in range(3)], -1)
    for _ in range(4):
        cx, cy, r = rng.uniform(0, 1), rng.uniform(0, h / w), rng.uniform(0.05, 0.2)
        img += 1.5 * ((x - cx) ** 2 + (y - cy) ** 2 < r * r)[..., None] * rng.uniform(-1, 1, 3)
    img = (img - img.min()) / (np.ptp(img) + 1e-9) * 255 + rng.normal(0, 4, img.shape)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8))


def make_folder(root: Path, n: int, size: tuple[int, int]) -> None:
    root.mkdir(parents=True)
    rows = []
    for i in range(n):
        name = f"img{i:05d}.jpg"
        photo_like(i, *size).save(root / name, quality=90)
        rows.append({"file": name, "caption": f"a photo of thing {i} on a table"})
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400, help="images in the test folder (default 400)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "src", Path(tmp) / "shards"
        make_folder(src, args.n, (512, 384))
        n = args.n
        t = median_time(lambda: write_shards(src, out, shard_size=100, overwrite=True), repeats=3)
        rows.append(
            {
                "what": "write shards (full decode check + copy)",
                "resolution": "-",
                "per_s": n / t,
                "core_h_per_1M": 1e6 / (n / t) / 3600,
            }
        )
        for dataset, path in (("folder", src), ("shards", out)):
            cfg = DataConfig(dataset=dataset, path=str(path), size=n, val_fraction=0.0, test_fraction=0.0)
            t = median_time(lambda: (_index_once.cache_clear(), get_dataset(cfg, "train")), repeats=3)  # cold index
            rows.append(
                {
                    "what": f"{dataset}: index train split",
                    "resolution": "-",
                    "per_s": n / t,
                    "core_h_per_1M": 1e6 / (n / t) / 3600,
                }
            )
            for res in (64, 256):
                cfg.resolution = res
                ds = get_dataset(cfg, "train")
                t = median_time(lambda: [ds[i] for i in range(n)], repeats=3)
                rows.append(
                    {
                        "what": f"{dataset}: read items",
                        "resolution": res,
                        "per_s": n / t,
                        "core_h_per_1M": 1e6 / (n / t) / 3600,
                    }
                )
        # what Image.draft buys: the same 512×384 JPEG to 64×64, DCT-scaled decode vs full decode
        data = [(src / f"img{i:05d}.jpg").read_bytes() for i in range(min(n, 100))]
        cfg = DataConfig(dataset="folder", resolution=64)
        bg = (0, 0, 0)
        t_draft = median_time(lambda: [fit_image(d, cfg, bg) for d in data], repeats=5)

        def full(d):
            from synthscale.data.imagefit import resize_crop, to_rgb

            return np.asarray(resize_crop(to_rgb(decode(d), bg), 64, cfg.crop, cfg.resize_filter))

        t_full = median_time(lambda: [full(d) for d in data], repeats=5)
        diff = max(np.abs(fit_image(d, cfg, bg).astype(int) - full(d).astype(int)).mean() for d in data[:20])
        rows.append(
            {
                "what": "fit 512x384 JPEG, draft decode",
                "resolution": 64,
                "per_s": len(data) / t_draft,
                "core_h_per_1M": 1e6 / (len(data) / t_draft) / 3600,
            }
        )
        rows.append(
            {
                "what": "fit 512x384 JPEG, full decode",
                "resolution": 64,
                "per_s": len(data) / t_full,
                "core_h_per_1M": 1e6 / (len(data) / t_full) / 3600,
            }
        )
    print_table(rows, f"User data on one core ({n} photo-like 512×384 JPEGs, median of 3; per_s = items/s)")
    print(f"draft decode speed-up {t_full / t_draft:.2f}×; mean |Δ| pixel vs full decode ≤ {diff:.2f} (0–255)")
    write_json(
        "userdata",
        {
            "rows": rows,
            "n": n,
            "source": "512x384 JPEG q90",
            "draft_speedup": t_full / t_draft,
            "draft_mean_abs_pixel_diff": diff,
            "threads": 1,
        },
    )


if __name__ == "__main__":
    main()
