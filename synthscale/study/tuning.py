"""The learning-rate sweep that runs before a study's grid: per objective, one short run per candidate LR at the
grid's smallest size and budget (at each of the first `lr_sweep_seeds` seeds); the objective's runs then train at
the candidate with the lowest validation loss (averaged over those seeds).

The grid's runs are keyed by their config, LR included, so they cannot be planned before the sweep has chosen:
`plan_study` plans the sweep's stages, reads each objective's choice from its finished pick stage, and plans that
objective's runs at the chosen LR. Until then its runs are planned at the spec's LR as placeholders whose train
stages wait on the pick stage and refuse to run (`awaiting_lr_sweep`); `run_study` runs the sweeps first
(`sweep_stages`) and plans again. Nothing here branches on an objective's name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthscale.config import StudyConfig, config_hash
from synthscale.study.grid import DONE, Stage, stage_dir, status_of

LR_SWEEP_JSON = "lr_sweep.json"
RULE = "lowest mean loss over the whole validation split (fixed draws, captions never dropped), final checkpoint"


@dataclass
class LrSweep:
    """One objective's sweep: a train stage per candidate LR and the pick stage that compares them."""

    objective: str
    candidates: list[float]
    point: tuple[str, int, float]  # (size, data size, budget) the candidates train at
    trains: list[Stage]  # a run per candidate and sweep seed, candidate-major
    pick: Stage
    chosen: float | None  # None: the pick stage has not finished
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])  # the seeds every candidate trains


def candidates_of(study: StudyConfig, objective: str) -> list[float] | None:
    """The objective's candidate LRs; None: it is not swept."""
    sweep = study.lr_sweep
    if isinstance(sweep, dict):
        sweep = sweep.get(objective)
    return None if sweep is None else [float(lr) for lr in sweep]


def sweep_point(study: StudyConfig) -> tuple[str, int, float]:
    """(size, data size, budget) of the sweep's runs: the smallest size (backbone depth × width²) and budget — the
    cheapest runs of the grid — on the largest data size, so no candidate is judged on data it repeats more than
    the grid's runs do."""
    from synthscale.model.sizes import get_size

    size = min(study.sizes, key=lambda s: (get_size(s).depth * get_size(s).width ** 2, study.sizes.index(s)))
    return size, max(study.data_sizes), min(study.budgets)


def plan_lr_sweeps(study: StudyConfig, root: Path, main: dict, caches: dict, stages: list[Stage]):
    """Plan each swept objective's candidate runs (appended to `stages`, with any latent cache they need first)
    and its pick stage. Returns {objective: LrSweep}."""
    from synthscale.objectives import latent_kind
    from synthscale.study.plan import _plan_run

    sweeps = {}
    point = sweep_point(study)
    for objective in study.objectives:
        candidates = candidates_of(study, objective)
        if candidates is None:
            continue
        trains, entries = [], []
        seeds = study.seeds[: study.lr_sweep_seeds]  # the first replicate seeds, as the grid names them
        for lr in candidates:
            at_lr = dataclasses.replace(study, run_overrides=[*study.run_overrides, f"{objective}:train.lr={lr!r}"])
            for seed in seeds:
                scratch: list[Stage] = []
                point_seed = (objective, *point, seed)
                run = _plan_run(at_lr, root, point_seed, main[latent_kind(objective)], False, [], caches, scratch)
                stages += [s for s in scratch if s.kind == "cache"]
                # a train stage like the grid's (folder train/<name>-<key>), so the candidate at the chosen LR is
                # the grid cell's run; only a diverged loss is a result here rather than a failure
                trains.append(dataclasses.replace(run.train, fn=f"{__name__}:sweep_train_stage"))
                entries.append({"lr": lr, "seed": seed})
        stages += trains
        weights = "ema" if "ema" in study.evaluation.weights else study.evaluation.weights[0]
        ev = study.evaluation
        key = config_hash(
            {"runs": [t.key for t in trains], "weights": weights, "batch": ev.batch_size, "seed": ev.seed}
        )
        kwargs = {
            "objective": objective,
            "candidates": [
                {**e, "run_dir": str(root / t.id), "run_config": t.kwargs["run_config"]}
                for e, t in zip(entries, trains)
            ],
            "weights": weights,
            "batch_size": ev.batch_size,
            "seed": ev.seed,
            "device": study.device,
        }
        pick = Stage("lr-sweep", f"{objective}-pick", key, f"{__name__}:lr_sweep_stage", kwargs, [t.id for t in trains])
        stages.append(pick)
        chosen = None
        if status_of(root, pick) == "done":
            chosen = json.loads((stage_dir(root, pick) / DONE).read_text())["chosen_lr"]
        sweeps[objective] = LrSweep(objective, candidates, point, trains, pick, chosen, list(seeds))
    return sweeps


def at_chosen_lrs(study: StudyConfig, sweeps: dict[str, LrSweep]) -> StudyConfig:
    """The study with each swept objective's chosen LR as its last run override (so it wins)."""
    chosen = [f"{o}:train.lr={s.chosen!r}" for o, s in sweeps.items() if s.chosen is not None]
    return dataclasses.replace(study, run_overrides=[*study.run_overrides, *chosen]) if chosen else study


def link_to_sweeps(runs: list, sweeps: dict[str, LrSweep], stages: list[Stage], root: Path) -> None:
    """Tie a swept objective's runs to its sweep. Not chosen yet: the run's train stage waits on the pick stage
    and refuses to run (its LR is a placeholder), under a key of its own so it is never taken for a trained run.
    Chosen: the grid cell the sweep trained at the chosen LR (same config, same key) is that run, not a second one."""
    for r in runs:
        sweep = sweeps.get(r.run_cfg.objective.name)
        if sweep is None:
            continue
        old = r.train
        if sweep.chosen is None:
            r.train = dataclasses.replace(
                old,
                key=config_hash({"awaiting_lr_sweep": sweep.pick.key, "run": old.key}),
                fn=f"{__name__}:awaiting_lr_sweep",
                kwargs={"sweep": sweep.pick.id},
                deps=[*old.deps, sweep.pick.id],
            )
        else:
            r.train = next((t for t in sweep.trains if t.key == old.key), old)
        if r.train is not old:
            if r.train in stages:  # the sweep's run, planned already
                stages.remove(old)
            else:
                stages[stages.index(old)] = r.train
            r.evaluate.deps = [r.train.id if d == old.id else d for d in r.evaluate.deps]
            r.evaluate.kwargs["run_dir"] = str(root / r.train.id)


def awaiting(plan) -> bool:
    """Whether a sweep of the plan has not chosen yet."""
    return any(s.chosen is None for s in plan.lr_sweeps.values())


def sweep_stages(plan) -> list[Stage]:
    """The sweeps' stages and every stage they need (autoencoders, latent caches), in the plan's order."""
    by_id = {s.id: s for s in plan.stages}
    need = [s.pick.id for s in plan.lr_sweeps.values()]
    keep: set[str] = set()
    while need:
        i = need.pop()
        if i not in keep:
            keep.add(i)
            need += by_id[i].deps
    return [s for s in plan.stages if s.id in keep]


def lr_of(plan, run) -> str:
    """A run's LR as the dry run shows it."""
    sweep = plan.lr_sweeps.get(run.run_cfg.objective.name)
    if sweep is not None and sweep.chosen is None:
        return "chosen by the sweep"
    return f"{run.run_cfg.train.lr:g}" + (" (swept)" if sweep is not None else "")


def describe(plan) -> list[str]:
    """Dry-run lines: each sweep's candidates, where they train and what it chose."""
    out = []
    for o, s in plan.lr_sweeps.items():
        size, data, budget = s.point
        chosen = f"chose {s.chosen:g}" if s.chosen is not None else "not run yet: the runs' LR is chosen by the sweep"
        lrs = ", ".join(f"{lr:g}" for lr in s.candidates)
        seeds = f", seeds {', '.join(map(str, s.seeds))} (mean loss)" if len(s.seeds) > 1 else ""
        out.append(f"  LR sweep {o}: {lrs} at {size}, d{data}, {budget:.3g} FLOPs{seeds}; {chosen}")
    return out


def results(plan) -> dict[str, Any]:
    """Per swept objective, its pick stage's outcome (what the results store keeps for the report)."""
    out = {}
    for o, s in plan.lr_sweeps.items():
        done = stage_dir(plan.root, s.pick) / DONE
        base = {"candidates": s.candidates, "size": s.point[0], "data_size": s.point[1], "budget_flops": s.point[2]}
        base |= {"seeds": s.seeds} if len(s.seeds) > 1 else {}
        out[o] = {**base, **json.loads(done.read_text())} if done.is_file() else {**base, "chosen_lr": None}
    return out


# ---------------------------------------------------------------------------------------------- stages


def sweep_train_stage(stage_dir: Path, run_config: dict[str, Any]) -> dict[str, Any]:
    """A candidate's training run; a candidate whose loss diverged is a result of the sweep (it loses), not a
    failure of the study."""
    from synthscale.study.stages import train_stage
    from synthscale.train.loop import NonFiniteLoss

    try:
        return train_stage(stage_dir, run_config)
    except NonFiniteLoss as e:
        return {"diverged": str(e)}


def awaiting_lr_sweep(stage_dir: Path, sweep: str) -> dict[str, Any]:
    raise RuntimeError(
        f"this run was planned before its learning-rate sweep ({sweep}) chose; run the study again to plan it "
        "at the chosen learning rate"
    )


def candidate_loss(run_dir: Path, run_config: dict[str, Any], weights: str, batch_size: int, seed: int, device):
    """The validation loss of a candidate's final checkpoint (`weights`), over the whole validation split."""
    from synthscale.compute.device import pick_device
    from synthscale.config import RunConfig, from_dict
    from synthscale.evaluate.runner import validation_loss
    from synthscale.train import load_generator
    from synthscale.train.data import open_source
    from synthscale.train.location import relocate

    run_cfg = from_dict(RunConfig, run_config, source="lr sweep candidate")
    relocate(run_dir, run_cfg)  # a study moved since: the run still names the old autoencoder and cache folders
    gen = load_generator(run_dir, None, weights, device=pick_device(device))
    return validation_loss(gen, open_source(run_cfg, split="val"), batch_size, None, seed)


def lr_sweep_stage(
    stage_dir: Path,
    objective: str,
    candidates: list[dict[str, Any]],
    weights: str,
    batch_size: int,
    seed: int,
    device: str = "auto",
) -> dict[str, Any]:
    """Compare the candidates' validation losses and choose the lowest (ties: the smaller LR). A candidate LR
    trained at several seeds (`candidates` entries with a `seed`) scores the mean of their losses, and loses if
    any of them diverged. Writes lr_sweep.json; its summary (`chosen_lr`) is what `plan_study` reads."""
    from synthscale import atomic

    by_lr: dict[float, list[tuple[int, float, str | None]]] = {}
    for c in candidates:
        run_dir = Path(c["run_dir"])
        diverged = json.loads((run_dir / DONE).read_text()).get("diverged") if (run_dir / DONE).is_file() else None
        loss = math.inf if diverged else candidate_loss(run_dir, c["run_config"], weights, batch_size, seed, device)
        by_lr.setdefault(c["lr"], []).append((c.get("seed", 0), loss, diverged))
    rows = []
    for lr, runs in by_lr.items():
        mean = statistics.fmean(loss for _, loss, _ in runs)
        row = {"lr": lr, "val_loss": mean if math.isfinite(mean) else None}
        row["diverged"] = next((d for _, _, d in runs if d), None)
        if len(runs) > 1:
            row["seeds"] = [s for s, _, _ in runs]
            row["per_seed"] = [loss if math.isfinite(loss) else None for _, loss, _ in runs]
        rows.append(row)
    finite = [r for r in rows if r["val_loss"] is not None]
    if not finite:
        lrs = ", ".join(f"{r['lr']:g}" for r in rows)
        raise ValueError(
            f"every candidate learning rate of {objective} ({lrs}) diverged or scored no finite validation loss; "
            "list smaller ones in lr_sweep"
        )
    best = min(finite, key=lambda r: (r["val_loss"], r["lr"]))
    summary = {
        "objective": objective,
        "chosen_lr": best["lr"],
        "by": RULE + (f", mean over seeds {', '.join(map(str, rows[0]['seeds']))}" if "seeds" in rows[0] else ""),
        "weights": weights,
        "candidates": rows,
        "edge": best["lr"] in (min(r["lr"] for r in rows), max(r["lr"] for r in rows)) and len(rows) > 1,
    }
    atomic.write_json(Path(stage_dir) / LR_SWEEP_JSON, summary)
    return summary
