"""`synthscale study SPEC --out DIR`: plan the grid, run its stages (skipping finished ones), gather every result
into the study's SQLite store and write the report."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from synthscale import atomic
from synthscale.config import ConfigError, StudyConfig, load, to_dict
from synthscale.study import tuning
from synthscale.study.grid import DONE, FAILED, execute, stage_dir, status_of
from synthscale.study.plan import PRECISION_JSON, StudyPlan, estimate_flops, plan_study, weigh_stages


def load_study_config(
    spec: str | Path, overrides: list[str] | None = None, run_sets: list[str] | None = None
) -> StudyConfig:
    """The study spec at `spec` with `--set` overrides, and `run_sets` (`study --run-set`, `[objective:]key=value`)
    appended to its run overrides (a study folder's results are `compare.load_study`)."""
    study = load(StudyConfig, spec, overrides or [])
    for text in run_sets or []:
        if "=" not in text:
            raise ConfigError(f"--run-set {text!r}: expected [objective:]key=value, e.g. flow:model.patch_size=2")
    return dataclasses.replace(study, run_overrides=[*study.run_overrides, *(run_sets or [])])


def dry_run(plan: StudyPlan) -> str:
    """What the study would run and cost, without running it."""
    est = estimate_flops(plan)
    lines = [f"study {plan.study.name}: {len(plan.stages)} stages, {len(plan.runs)} training runs → {plan.root}"]
    counts: dict[str, list[int]] = {}
    for s in plan.stages:
        c = counts.setdefault(s.kind, [0, 0])
        c[0] += 1
        c[1] += status_of(plan.root, s) == "done"
    lines += [f"  {kind:<12} {n} ({done} done)" for kind, (n, done) in counts.items()]
    lines.append("  instruments: " + ", ".join(s.kwargs["spec"] for s in plan.instruments))
    lines += tuning.describe(plan)
    lines.append(f"  {'run':<44} {'params':>10} {'train FLOPs':>12} {'eval FLOPs':>12}  lr")
    for r in est["runs"]:
        lines.append(
            f"  {r['run']:<44} {r['params']:>10,} {r['train_flops']:>12.3g} {r['eval_sample_flops']:>12.3g}  {r['lr']}"
        )
    lines.append(
        f"estimated total: {est['total_flops']:.3g} FLOPs (training {est['train_flops']:.3g} + evaluation "
        f"sampling {est['eval_sample_flops']:.3g}; 2 FLOPs per MAC, autoencoder/instrument costs not included)"
    )
    lines += [f"note: {n}" for n in est["notes"]]
    return "\n".join(lines + ["", controls_text(plan)])


def controls_text(plan: StudyPlan) -> str:
    """The comparison-controls table of the planned main grid, as aligned text."""
    from synthscale.study import controls

    runs = controls.plan_controls(plan)
    head, rows = controls.table(runs, plan.study.objectives)
    cols = [head, *rows]
    widths = [max(len(c[i]) for c in cols) for i in range(len(head))]
    out = [f"comparison controls (parity: {plan.study.parity}; optimizer steps planned from the budget):"]
    out += ["  " + "  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip() for c in cols]
    mismatch = controls.token_mismatch(runs)
    if mismatch:
        out.append(f"  image tokens differ between paradigms: {mismatch}")
    return "\n".join(out)


def ingest(plan: StudyPlan) -> Path:
    """Gather stage outcomes, autoencoders, run records and sample grids into the study's results store."""
    from synthscale.evaluate.runner import read_records
    from synthscale.study.results import ResultsStore, store_path

    root = plan.root
    with ResultsStore(store_path(root), create=True) as store:
        store.set_meta("study", json.dumps(to_dict(plan.study)))
        store.set_meta("updated", time.strftime("%Y-%m-%dT%H:%M:%S"))
        if (root / PRECISION_JSON).is_file():  # precision: auto — what was measured and chosen
            store.set_meta("precision", (root / PRECISION_JSON).read_text())
        if plan.lr_sweeps:
            store.set_meta("lr_sweep", json.dumps(tuning.results(plan)))
        for name, (cfg, stage) in plan.autoencoders.items():
            if status_of(root, stage) != "done":
                continue
            summary = json.loads((stage_dir(root, stage) / DONE).read_text())
            metrics = {**summary["metrics"], **_ceiling_metrics(plan, name)}
            store.add_autoencoder(name, summary["kind"], metrics, config=to_dict(cfg), config_hash=stage.key)
            if summary.get("grid") and Path(summary["grid"]).is_file():
                store.add_artifact(name, "reconstructions", summary["grid"], caption=f"{name} test reconstructions")
        for r in plan.runs:
            run_id = r.train.id.split("/", 1)[1]
            status, error = _run_status(plan, r)
            run_dir = stage_dir(root, r.train)
            records = read_records(run_dir)
            first = records[0] if records else {}
            store.add_run(
                run_id,
                r.run_cfg.objective.name,
                r.run_cfg.model.size,
                r.run_cfg.data.size,
                r.autoencoder,
                status=status,
                error=error,
                params=first.get("params"),
                params_nonembedding=first.get("params_nonembedding"),
                budget_flops=r.run_cfg.train.budget_flops,
                config=to_dict(r.run_cfg),
                config_hash=r.train.key,
            )
            if records:
                store.add_records(records)
            for rec in records:
                grid = run_dir / rec["instruments"].get("sample_grid", "")
                if grid.is_file():
                    store.add_artifact(
                        run_id,
                        "samples",
                        grid,
                        milestone=rec["milestone"],
                        weights=rec["weights"],
                        steps=rec["steps"],
                        cfg_scale=rec["cfg_scale"],
                        caption=f"{rec['objective']} {rec['size']} at {rec['train_flops']:.2g} FLOPs, "
                        f"{rec['weights']}, {rec['steps']} steps, CFG {rec['cfg_scale']:g}",
                    )
        # a re-run under a changed spec: runs it no longer plans stay on disk (reused if it changes back) but
        # leave the report
        store.keep_only({r.train.id.split("/", 1)[1] for r in plan.runs}, plan.autoencoders)
        return store.path


def _measure_precision(plan: StudyPlan) -> None:
    """Time fp32 against bf16 at the study's largest size and its batch, on the threads a stage gets; keep it."""
    import torch

    from synthscale.train.precision import measure_precision

    largest = [r for r in plan.runs if r.run_cfg.model.size == plan.study.sizes[-1]] or plan.runs
    cfg = largest[0].run_cfg
    threads = torch.get_num_threads()
    torch.set_num_threads(plan.study.threads)
    try:
        measured = measure_precision(cfg.model.size, cfg.train.batch_size, cfg.objective.name)
    finally:
        torch.set_num_threads(threads)
    atomic.write_json(plan.root / PRECISION_JSON, measured)


def _ceiling_metrics(plan: StudyPlan, name: str) -> dict[str, float]:
    """The autoencoder's ceiling (its reconstructions scored by the probe) as `ceiling_<metric>` entries; none while
    its ceiling stage has not finished."""
    stage = plan.ceilings.get(name)
    if stage is None or status_of(plan.root, stage) != "done":
        return {}
    metrics = json.loads((stage_dir(plan.root, stage) / DONE).read_text())["metrics"]
    return {f"ceiling_{k}": v for k, v in metrics.items()}


def _run_status(plan: StudyPlan, r) -> tuple[str, str | None]:
    """done, failed (its own training or evaluation failed), blocked (a shared stage it needs failed) or pending."""
    by_id = {s.id: s for s in plan.stages}
    chain, todo = [], [r.evaluate.id]
    while todo:  # every stage the run's evaluation needs, directly or not
        stage = by_id[todo.pop()]
        chain.append(stage)
        todo += stage.deps
    for stage in chain:
        folder = stage_dir(plan.root, stage)
        if (folder / FAILED).is_file():
            error = f"{stage.kind} stage: {json.loads((folder / FAILED).read_text())['error']}"
            return ("failed" if stage in (r.train, r.evaluate) else "blocked"), error
    return ("done", None) if status_of(plan.root, r.evaluate) == "done" else ("pending", None)


def run_study(
    spec: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    executor: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    run_sets: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or resume) a study and write its report. Returns the stage states and the report paths."""
    from synthscale.study.report import build_report

    study = load_study_config(spec, overrides, run_sets)
    plan = plan_study(study, out, spec_dir=Path(spec).resolve().parent)
    root = plan.root
    root.mkdir(parents=True, exist_ok=True)
    if study.precision == "auto" and not (root / PRECISION_JSON).is_file():
        _measure_precision(plan)
        plan = plan_study(study, out, spec_dir=Path(spec).resolve().parent)
    atomic.write_json(root / "study.json", to_dict(study))
    weigh_stages(plan)  # the progress ETA weighs the stages left by their estimated cost
    started = time.time()
    how = dict(
        executor=executor or study.executor,
        workers=workers or study.workers,
        threads=study.threads,
        progress=progress,
        cluster=study.cluster,
    )
    if tuning.awaiting(plan):  # the LR sweeps first: the grid's runs are planned at the LRs they choose
        # its ETA covers the sweep and what it needs; the grid's stages get their own bar once planned
        execute(root, tuning.sweep_stages(plan), **how, desc="LR sweep")
        plan = plan_study(study, out, spec_dir=Path(spec).resolve().parent)
    states = execute(root, plan.stages, **how)
    ingest(plan)
    report = build_report(root)
    return {"states": states, "report": report, "seconds": time.time() - started}
