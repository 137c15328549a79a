"""Calibration of the findings' decision rules: on simulated studies with a known truth (synthscale/study/
simulate.py, the default study's grid), how often each rule says "confirmed" where its claim is false (worst of
its claim-false scenarios; one-sided 95 % Clopper-Pearson upper bound) and where it holds with a stated effect
(power). Prints the table (Markdown, as the report shows it), writes benchmarks/results/calibration.json and — with
--store — synthscale/study/calibration.json, the table every report shows and its rules obey (a rule whose
bound exceeds 5 % cannot confirm).
Usage: python benchmarks/calibration.py [--false 400] [--true 200] [--n-images 128] [--store]"""

from __future__ import annotations

import argparse
import dataclasses
import time

from common import print_markdown_table, write_json

from synthscale import atomic
from synthscale.study import calibration as cal
from synthscale.study import simulate as sim


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--false", dest="n_false", type=int, default=400, help="simulations per claim-false scenario")
    ap.add_argument("--true", dest="n_true", type=int, default=200, help="simulations of the claim-true scenario")
    ap.add_argument("--n-images", type=int, default=128, help="evaluation images per record")
    ap.add_argument("--bootstrap", type=int, default=40, help="refits per loss fit (finding 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--f1-runs", type=int, default=6, help="runs per objective for finding 1 (a run bootstrap needs ≥ 4)"
    )
    ap.add_argument("--f1-sims", type=int, default=100, help="simulations per scenario for finding 1 (loss fits: slow)")
    ap.add_argument("--store", action="store_true", help="write synthscale/study/calibration.json for reports")
    args = ap.parse_args()
    design = dataclasses.replace(sim.Design(), n_images=args.n_images)
    t = time.process_time()
    table = cal.calibrate((2, 3, 4, 5, 6), n_false=args.n_false, n_true=args.n_true, seed=args.seed, design=design)
    f1_design = dataclasses.replace(design, sizes=tuple((f"s{i}", 100_000 * (i + 1)) for i in range(args.f1_runs)))
    f1 = cal.calibrate((1,), args.f1_sims, args.f1_sims, args.seed, f1_design, n_boot=args.bootstrap)
    table["findings"]["1"] = f1["findings"]["1"]
    cpu = time.process_time() - t
    head, rows = cal.table_rows(table)
    print(f"\nDecision-rule calibration ({args.n_images} images per record; {cpu:.0f} CPU s)\n")
    print_markdown_table(head, rows)
    write_json(
        "calibration" if args.n_images == 128 else f"calibration-n{args.n_images}", {"cpu_seconds": cpu, **table}
    )
    if args.store:
        atomic.write_json(cal.TABLE_PATH, table)
        print(f"wrote {cal.TABLE_PATH}")


if __name__ == "__main__":
    main()
