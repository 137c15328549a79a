"""Run-to-run (seed) noise a study measured, and the decision rules' calibration at that noise.

For a study trained with replicate seeds (`seeds: [0, 1, 2]`), prints per paradigm and main-grid cell the
whole-prompt accuracy and fd-probe of each seed, the between-seed sd pooled per paradigm (logit / log scale, what
the calibration simulates), and the calibration table of findings 2-6 simulated at this study's design and
measured noise (`calibration.study_design`): every false-confirmation bound must be ≤ 5 %. A study without
replicates is calibrated at the stated conservative default and says so. Writes benchmarks/results/seed_noise.json.
Usage: python benchmarks/seed_noise.py STUDY_DIR [--false 200] [--true 50]"""

from __future__ import annotations

import argparse
import time

from common import print_markdown_table, print_table, write_json

from synthscale.study import calibration as cal
from synthscale.study import compare as cmp
from synthscale.study import findings as fnd


def cell_rows(data: cmp.StudyData) -> list[dict]:
    """Per main-grid cell at its last milestone: each seed's whole-prompt accuracy and fd-probe."""
    main = cmp.main_grid_records(data)
    last: dict[str, int] = {}
    for r in main:
        last[r["run"]] = max(last.get(r["run"], -1), r["milestone"])
    rows = []
    for r in main:
        if r["milestone"] != last[r["run"]]:
            continue
        values = r.get("seed_values") or {}
        rows.append(
            {
                "objective": r["objective"],
                "size": r["size"],
                "train_flops": r["train_flops"],
                "seeds": ",".join(str(s) for s in r.get("seeds") or [0]),
                "prompt_acc": " ".join(f"{v:.3f}" for v in values.get("prompt_acc", [cmp.value(r, "prompt_acc")])),
                "fd_probe": " ".join(f"{v:.3g}" for v in values.get("fd_probe", [cmp.value(r, "fd_probe")])),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("study_dir")
    ap.add_argument("--false", dest="n_false", type=int, default=200, help="simulations per claim-false scenario")
    ap.add_argument("--true", dest="n_true", type=int, default=50, help="simulations of the claim-true scenario")
    args = ap.parse_args()
    data = cmp.load_study(args.study_dir)
    rows = cell_rows(data)
    print_table(rows, f"{data.name}: each seed at each main-grid cell's last milestone")
    noise = cal.seed_noise(data)
    head, noise_table = cal.noise_rows(noise)
    print(f"\nbetween-seed sd ({noise.source}; {noise.seeds} seed(s) per cell)\n")
    print_markdown_table(head, noise_table)
    design = cal.study_design(data)
    t = time.process_time()
    table = cal.calibrate((2, 3, 4, 5, 6), n_false=args.n_false, n_true=args.n_true, design=design)
    cpu = time.process_time() - t
    head, cal_rows = cal.table_rows(table)
    print(f"\ncalibration at this study's design and noise ({cpu:.0f} CPU s)\n")
    print_markdown_table(head, cal_rows)
    bounds = {n: r["false_confirm_upper"] for n, r in table["findings"].items()}
    held = all(b <= fnd.FALSE_CONFIRM_LIMIT for b in bounds.values())
    print(f"\nevery false-confirmation bound ≤ {fnd.FALSE_CONFIRM_LIMIT:.0%}: {held}")
    write_json(
        "seed_noise",
        {
            "study": str(args.study_dir),
            "cells": rows,
            "noise": {
                "source": noise.source,
                "seeds": noise.seeds,
                "prompt_logit_sd": noise.prompt_measured,
                "fd_log_sd": noise.fd_measured,
                "prompt_used": noise.prompt_used,
                "fd_used": noise.fd_used,
            },
            "calibration": table,
            "bounds_held": held,
            "cpu_seconds": cpu,
        },
    )


if __name__ == "__main__":
    main()
