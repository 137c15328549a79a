"""Does a study's verdict survive a re-run with other seeds?

Reads two finished studies of the same spec that differ only in their seeds (e.g. `seeds: [0, 1, 2]` and
`--set "seeds=[3, 4, 5]"`). For each paradigm's best model at the top matched training-compute level (the
findings' rule, `findings.best_models`), it prints the seed-averaged whole-prompt accuracy and fd-probe of each
study with its 95 % interval (two-level bootstrap: seeds, then prompts/images) and checks that each study's mean
lies inside the other's interval; then it compares the six findings' verdicts. Writes
benchmarks/results/replication.json.

Usage: python benchmarks/replication.py STUDY_A STUDY_B
"""

from __future__ import annotations

import argparse

from common import print_table, write_json

from synthscale.study import compare as cmp
from synthscale.study import findings as fnd
from synthscale.study.report import analyse

METRICS = ("prompt_acc", "fd_probe")


def top_level_best(data: cmp.StudyData) -> tuple[float, dict[str, dict[str, dict]]]:
    """The top matched compute level and, per metric, each objective's best record there."""
    per_metric = {m: fnd.best_models(data, m) for m in METRICS}
    level = max(per_metric["prompt_acc"])
    return level, {m: per_metric[m][level] for m in METRICS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study_a")
    ap.add_argument("study_b")
    args = ap.parse_args()
    studies = {name: cmp.load_study(path) for name, path in (("A", args.study_a), ("B", args.study_b))}
    best = {name: top_level_best(data) for name, data in studies.items()}
    rows, agree = [], dict.fromkeys(METRICS, True)
    for metric in METRICS:
        for obj in studies["A"].objectives:
            ra, rb = best["A"][1][metric].get(obj), best["B"][1][metric].get(obj)
            if ra is None or rb is None:
                continue
            va, vb = cmp.value(ra, metric), cmp.value(rb, metric)
            ia, ib = cmp.interval(ra, metric), cmp.interval(rb, metric)
            inside = bool(ia and ib and ia[0] <= vb <= ia[1] and ib[0] <= va <= ib[1])
            agree[metric] &= inside
            rows.append(
                {
                    "metric": metric,
                    "objective": obj,
                    "seeds A": ",".join(map(str, ra.get("seeds") or [])),
                    "A": f"{va:.3g} {cmp.fmt_interval(ia)}",
                    "seeds B": ",".join(map(str, rb.get("seeds") or [])),
                    "B": f"{vb:.3g} {cmp.fmt_interval(ib)}",
                    "each inside the other's interval": "yes" if inside else "no",
                }
            )
    print_table(rows, f"top level: A {best['A'][0]:.3g} FLOPs, B {best['B'][0]:.3g} FLOPs")
    verdicts = {
        name: {f.number: f.verdict for f in analyse(path, n_boot=50).findings} for name, path in vars(args).items()
    }
    finding_rows = [
        {"finding": n, "A": verdicts["study_a"][n], "B": verdicts["study_b"][n]} for n in sorted(verdicts["study_a"])
    ]
    same = all(r["A"] == r["B"] for r in finding_rows)
    print_table(finding_rows, "findings")
    print(f"\nmeans inside each other's interval: {agree}; verdicts agree: {same}")
    write_json(
        "replication",
        {
            "study_a": args.study_a,
            "study_b": args.study_b,
            "level_flops": {"A": best["A"][0], "B": best["B"][0]},
            "cells": rows,
            "findings": finding_rows,
            "means_inside_intervals": agree,
            "verdicts_agree": same,
        },
    )


if __name__ == "__main__":
    main()
