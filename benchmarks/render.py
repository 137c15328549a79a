"""Shapes render rate on one core (goal ≥ 2,000 images/s at 32×32). Usage: python benchmarks/render.py"""

from __future__ import annotations

import torch
from common import median_time, print_table, write_json

from synthscale.config import DataConfig
from synthscale.data.shapes import ShapesDataset

GOAL = 2000


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for res in (16, 32, 64):
        for split in ("train", "test"):
            ds = ShapesDataset(DataConfig(resolution=res, counting=True), split)
            n = 1000
            t = median_time(lambda: [ds[i] for i in range(n)], repeats=3)
            rows.append(
                {
                    "resolution": res,
                    "split": split,
                    "images_per_s": n / t,
                    "goal": GOAL if (res, split) == (32, "train") else "",
                    "met": (n / t >= GOAL) if (res, split) == (32, "train") else "",
                }
            )
    print_table(
        rows,
        "Shapes render rate (one core, median of 3 × 1000 items; val/test redraw ~10× per kept item to stay disjoint)",
    )
    write_json("render", {"rows": rows, "goal_images_per_s_at_32": GOAL})


if __name__ == "__main__":
    main()
