"""Factorised vs full-softmax code embeddings and heads for the token objectives, on the default study's runs.

    python benchmarks/factorised_heads.py --out DIR [--seeds 0 1 2] [--objectives autoregressive masked]

For each objective, seed and variant (full softmax; `objective.factorised=true`) this runs the default study
(configs/studies/default.yaml) reduced to that one objective at size 2x64, with `seed=N` (and the factorised
option) added to its run_overrides, in one study folder DIR: the autoencoder, the probe and the latent cache are
stages with the same keys in every variant, so they are trained once and shared, and each run trains under the
default study's exact run config (budget, batch, LR, warmup, EMA, milestones). Stages run in this process, one
at a time on one thread, and no study report is written (`synthscale study SPEC --out DIR` on a written spec
makes one). Evaluation is the default study's
primary setting at the last milestone only (EMA weights, CFG 3, masked 8 steps / next-token 64, 256 test prompts,
shapes probe; no held-out prompts, sweeps or speed). Prints and writes (benchmarks/results/factorised_heads.json)
each run's whole-prompt accuracy, validation loss (nats per code) and fd-probe, and the mean ± between-seed sd
per cell.

Two deliberate departures from default.yaml, both the same for every run compared: `precision: fp32` (`auto`
measures its choice on a flow model, which a token-only study cannot build), and a 2-step stand-in for the
continuous autoencoder (the study plans one whatever its objectives; no run here reads it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = REPO / "configs" / "studies" / "default.yaml"
VARIANTS = {"full": [], "factorised": ["objective.factorised=true"]}
EVALUATION = {  # the default study's primary setting, at the last milestone only
    "n": 256,
    "holdout_n": 0,
    "milestones": "last",
    "weights": ["ema"],
    "cfg_scale": 3.0,
    "cfg_sweep": [],
    "steps": {"masked": 8},
    "sweep": {"masked": [8], "autoregressive": [64]},
    "speed": False,
    "instruments": ["probe"],
}


def derived_spec(base: dict, spec_dir: Path, out: Path, objective: str, seed: int, variant: str) -> Path:
    """The default spec reduced to one objective at 2x64, this seed and variant; written under out/specs/."""
    spec = dict(base)
    kl = yaml.safe_load((spec_dir / base["continuous_autoencoder"]).read_text())
    kl["name"] = "kl-unused"
    kl["train"] = {**kl["train"], "steps": 2, "warmup": 1}
    folder = out / "specs"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kl-unused.yaml").write_text(yaml.safe_dump(kl))
    spec.update(
        name=f"factorised-heads-{objective}-{variant}-s{seed}",
        objectives=[objective],
        sizes=["2x64"],
        continuous_autoencoder=str(folder / "kl-unused.yaml"),
        discrete_autoencoder=str((spec_dir / base["discrete_autoencoder"]).resolve()),
        precision="fp32",
        run_overrides=[*base["run_overrides"], f"seed={seed}", *VARIANTS[variant]],
        evaluation=EVALUATION,
        executor="sequential",
        workers=1,
        threads=1,
    )
    path = folder / f"{objective}-{variant}-s{seed}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_spec(spec: Path, out: Path, execute: bool) -> Path:
    """Run the spec's stages not yet done (one at a time, one thread; no report) → its run folder."""
    from synthscale.study.grid import execute as execute_stages
    from synthscale.study.plan import plan_study
    from synthscale.study.run import load_study_config

    plan = plan_study(load_study_config(spec), out, spec_dir=spec.parent)
    if execute:
        states = execute_stages(out, plan.stages, executor="sequential", workers=1, threads=1, progress=False)
        failed = [i for i, state in states.items() if state != "done"]
        if failed:
            raise SystemExit(f"stages not done: {failed} (see their failed.json under {out})")
    (run,) = [r for r in plan.runs if not r.ablation]
    return out / run.train.id


def last_record(run_dir: Path, objective: str) -> dict:
    """The primary setting's record at the last milestone: EMA, CFG 3, the objective's steps, 256 test prompts."""
    steps = EVALUATION["sweep"][objective][0]
    lines = (run_dir / "eval" / "records.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    records = [
        r
        for r in records
        if r["weights"] == "ema" and r["steps"] == steps and float(r["cfg_scale"]) == EVALUATION["cfg_scale"]
    ]
    if not records:
        raise SystemExit(f"no EMA/CFG-3/{steps}-step record in {run_dir}/eval/records.jsonl")
    return max(records, key=lambda r: r["train_flops"])


MATCHED_STEPS = (1600, 1800)  # both variants pass these steps; the factorised head's cheaper FLOPs buy more after


def train_loss_at_matched_steps(run_dir: Path) -> float:
    """Mean logged training loss over steps 1600-1800: the variants at equal optimizer steps rather than FLOPs."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    logged = [json.loads(line) for line in lines if line.strip()]
    losses = [m["loss"] for m in logged if "loss" in m and MATCHED_STEPS[0] <= m.get("step", -1) <= MATCHED_STEPS[1]]
    return round(statistics.mean(losses), 4) if losses else float("nan")


def whole_prompt(metrics: dict) -> float:
    keys = [k for k in metrics if k.endswith("prompt_acc") and "holdout" not in k]
    if len(keys) != 1:
        raise SystemExit(f"expected one whole-prompt accuracy among {sorted(metrics)}")
    return metrics[keys[0]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True, help="study folder (shared by every variant; resumable)")
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="the study spec the runs are taken from")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--objectives", nargs="+", default=["autoregressive", "masked"])
    ap.add_argument("--collect-only", action="store_true", help="train nothing; tabulate the runs already done")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out, spec_dir = args.out.resolve(), args.spec.resolve().parent
    base = yaml.safe_load(args.spec.read_text())
    rows = []
    for objective in args.objectives:
        for seed in args.seeds:
            for variant in VARIANTS:
                spec = derived_spec(base, spec_dir, out, objective, seed, variant)
                run_dir = run_spec(spec, out, execute=not args.collect_only)
                if not (run_dir / "eval" / "records.jsonl").is_file():
                    print(f"skipped (not done): {run_dir.name}")
                    continue
                r = last_record(run_dir, objective)
                done = json.loads((run_dir / "done.json").read_text()) if (run_dir / "done.json").is_file() else {}
                rows.append(
                    {
                        "objective": objective,
                        "variant": variant,
                        "seed": seed,
                        "whole_prompt": round(whole_prompt(r["metrics"]), 4),
                        "val_loss": round(r["metrics"]["loss"], 4),
                        "fd_probe": round(r["metrics"]["fd_probe"], 3),
                        "train_loss_steps_1600_1800": train_loss_at_matched_steps(run_dir),
                        "train_flops": r["train_flops"],
                        "step": r["step"],
                        "params": r["params"],
                        "train_seconds": done.get("seconds"),
                        "run": run_dir.name,
                    }
                )
    summary = []
    for objective in args.objectives:
        for variant in VARIANTS:
            cell = [r for r in rows if r["objective"] == objective and r["variant"] == variant]
            if not cell:
                continue
            line = {"objective": objective, "variant": variant, "seeds": len(cell)}
            for metric in ("whole_prompt", "val_loss", "fd_probe", "train_loss_steps_1600_1800"):
                values = [r[metric] for r in cell]
                line[f"{metric}_mean"] = statistics.mean(values)
                line[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else float("nan")
            summary.append(line)
    print_table(rows, "Per run (last milestone, EMA, CFG 3)")
    print_table(summary, "Mean and between-seed sd")
    write_json("factorised_heads", {"spec": str(args.spec), "evaluation": EVALUATION, "runs": rows, "cells": summary})


if __name__ == "__main__":
    main()
