"""A finished study's headline numbers as JSON: what a results page quotes.

Per matched training-compute level and paradigm, the best model by the findings' rule (`findings.best_models`)
for whole-prompt accuracy and fd-probe: the mean over seeds, its 95 % interval (two-level bootstrap with replicate
seeds), each seed's value; each main autoencoder's ceiling; the learning rate each paradigm trained at, and the LR
sweep's candidates with their validation losses; each run's validation loss at its last milestone; the six
findings' verdicts. Writes benchmarks/results/study_summary-<name>.json.

Usage: python benchmarks/study_summary.py STUDY_DIR [--name NAME]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import print_table, write_json

from synthscale.study import compare as cmp
from synthscale.study import findings as fnd
from synthscale.study.report import analyse

METRICS = ("prompt_acc", "fd_probe")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("study_dir")
    ap.add_argument("--name", default=None, help="suffix of the JSON file (default: the folder's name)")
    args = ap.parse_args()
    data = cmp.load_study(args.study_dir)
    levels: dict[str, dict] = {}
    rows = []
    for metric in METRICS:
        for level, best in sorted(fnd.best_models(data, metric).items()):
            for obj, r in best.items():
                cell = {
                    "mean": cmp.value(r, metric),
                    "interval": cmp.interval(r, metric),
                    "per_seed": (r.get("seed_values") or {}).get(metric, [cmp.value(r, metric)]),
                    "seeds": r.get("seeds") or [0],
                    "setting": cmp.describe_setting(cmp.setting(r)),
                    "size": r["size"],
                }
                levels.setdefault(f"{level:.3g}", {}).setdefault(obj, {})[metric] = cell
                rows.append({"level": f"{level:.3g}", "objective": obj, "metric": metric, "mean": cell["mean"]})
    ceilings = {o: cmp.ceiling(data, o) for o in data.objectives}
    lr = {
        o: sorted({(r.get("config") or {}).get("train", {}).get("lr") for r in data.runs if r["objective"] == o})
        for o in data.objectives
    }
    final_loss = {}  # run → (train FLOPs, validation loss) of its last evaluated milestone
    for r in data.seed_records or data.records:
        loss = (r.get("metrics") or {}).get("loss")
        if loss is not None and r["train_flops"] >= final_loss.get(r["run"], (0.0, None))[0]:
            final_loss[r["run"]] = (r["train_flops"], loss)
    findings = {f.number: f.verdict for f in analyse(args.study_dir, n_boot=50).findings}
    print_table(rows, f"{data.name}: best model per level and paradigm (mean over seeds)")
    print("\nfindings:", json.dumps(findings))
    write_json(
        f"study_summary-{args.name or Path(args.study_dir).name}",
        {
            "study": str(args.study_dir),
            "levels": levels,
            "ceilings": {o: (c or {}).get("metrics") for o, c in ceilings.items()},
            "lr": lr,
            "lr_sweep": json.loads(data.meta.get("lr_sweep", "null")),
            "final_loss": {run: loss for run, (_, loss) in sorted(final_loss.items())},
            "findings": findings,
        },
    )


if __name__ == "__main__":
    main()
