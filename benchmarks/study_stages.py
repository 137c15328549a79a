"""Where a finished study's time went: wall and CPU seconds of every stage, and the training rate of every run.

    python benchmarks/study_stages.py STUDY_DIR [--name default]

Reads each stage's `done.json` (its wall and process-CPU seconds, recorded by the study runner) and, for training
runs, its FLOPs and training seconds: achieved GFLOP/s = analytic training FLOPs / training seconds, at the
precision the study chose (`STUDY_DIR/precision.json`). CPU seconds are what a machine shared with other work does
not inflate much; compare wall seconds only between runs on an equally quiet machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402


def stage_rows(study: Path) -> list[dict]:
    """One row per finished stage, in kind order, then name."""
    precision = (
        json.loads((study / "precision.json").read_text())["choice"] if (study / "precision.json").exists() else ""
    )
    rows = []
    for done in sorted(study.glob("*/*/done.json")):
        info = json.loads(done.read_text())
        kind, name = done.parent.parent.name, done.parent.name
        row = {"kind": kind, "stage": name, "wall_s": info.get("seconds"), "cpu_s": info.get("cpu_seconds")}
        if kind == "train":
            train_s = info.get("train_seconds") or info.get("seconds")
            row |= {
                "steps": info.get("steps"),
                "train_flops": info.get("train_flops"),
                "gflop_per_s": round(info["train_flops"] / train_s / 1e9, 1) if train_s else None,
                "precision": precision,
            }
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study", type=Path, help="a study folder (holds the stage folders and done.json files)")
    ap.add_argument("--name", default=None, help="results file name (default: study_stages-<folder name>)")
    args = ap.parse_args()
    if not args.study.is_dir():
        sys.exit(f"study_stages: {args.study} is not a folder; pass the --out folder of a finished study")
    rows = stage_rows(args.study)
    if not rows:
        sys.exit(f"study_stages: no finished stage (done.json) under {args.study}")
    columns = ("kind", "stage", "wall_s", "cpu_s", "steps", "gflop_per_s", "precision")
    print_table([{c: r.get(c, "") for c in columns} for r in rows], f"Stages of {args.study}")
    totals = defaultdict(float)
    for r in rows:
        totals[r["kind"]] += r["cpu_s"] or 0.0
    summary = [{"kind": k, "cpu_s": round(v, 1)} for k, v in totals.items()]
    summary.append({"kind": "all stages", "cpu_s": round(sum(totals.values()), 1)})
    print_table(summary, "CPU seconds by stage kind")
    write_json(args.name or f"study_stages-{args.study.resolve().name}", {"study": str(args.study), "stages": rows})


if __name__ == "__main__":
    main()
