"""Which trained model stands for each paradigm at a training-compute level: among the study's evaluated
(run, milestone) points at the matched level nearest to the compute asked, the one with the best quality metric
of the study's deciding instrument (the one its report's findings decide on, read from the records' instrument
metadata; the validation loss where no quality was measured). `synthscale sample STUDY_DIR --compute` and
`synthscale serve` show these side by side."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthscale.study import compare as cmp
from synthscale.study.instruments import decisive_metrics

FALLBACK = "loss"  # a study evaluated without a probe still has validation losses


@dataclass(frozen=True)
class Choice:
    """One paradigm's model at a compute level, and the sampling setting the study evaluated it at."""

    objective: str
    run: str
    run_dir: Path
    milestone: int
    step: int
    train_flops: float
    level: float
    size: str
    params: int
    autoencoder: str
    weights: str
    steps: int
    cfg_scale: float
    metric: str
    quality: float | None
    temperature: float | None = None  # chosen on validation prompts with the CFG scale; None: the objective's own

    def label(self) -> str:
        q = f", {self.metric.replace('_', '-')} {cmp.fmt(self.quality)}" if self.quality is not None else ""
        return f"{self.objective} {self.size} @ {self.train_flops:.3g} training FLOPs{q}"

    def as_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()} | {"label": self.label()}


def _records(study_dir: Path) -> tuple[cmp.StudyData, list[dict[str, Any]]]:
    """The study and its primary-setting records whose run folder is present with its checkpoints: one per seed (a
    served model is one run, so its own numbers, not its cell's mean over seeds, describe it)."""
    data = cmp.load_study(study_dir)
    primary = [r for r in data.seed_records if data.settings.get(r["objective"]) == cmp.setting(r)]
    recs = [r for r in primary if (study_dir / "train" / r["run"] / "checkpoints").is_dir()]
    return data, recs


def compute_levels(study_dir: str | Path) -> list[float]:
    """The study's matched training-compute levels that have an evaluated model on disk, ascending."""
    _, recs = _records(Path(study_dir))
    return cmp.compute_levels([r["train_flops"] for r in recs])


def best_models(study_dir: str | Path, compute: float | None = None) -> dict[str, Choice]:
    """Per objective (display order), its best model at the level nearest to `compute` (default: the highest
    level); an objective without records at that level takes its own nearest level, so each choice says its
    actual training FLOPs."""
    study_dir = Path(study_dir)
    if compute is not None and not (math.isfinite(compute) and compute > 0):
        raise ValueError(f"compute must be positive training FLOPs, e.g. 3e12; got {compute!r}")
    data, recs = _records(study_dir)
    if not recs:
        raise FileNotFoundError(
            f"{study_dir} has no evaluated runs with checkpoints; run `synthscale study SPEC --out {study_dir}` first"
        )
    levels = cmp.compute_levels([r["train_flops"] for r in recs])
    target = math.log10(compute if compute is not None else levels[-1])
    quality = decisive_metrics(data.records).quality
    chosen: dict[str, Choice] = {}
    for obj in data.objectives:
        mine = [(cmp.level_of(r["train_flops"], levels), r) for r in recs if r["objective"] == obj]
        mine = [(lv, r) for lv, r in mine if lv is not None]
        if not mine:
            continue
        level = min({lv for lv, _ in mine}, key=lambda lv: abs(math.log10(lv) - target))
        here = [r for lv, r in mine if lv == level]
        metric = quality if any(cmp.value(r, quality) is not None for r in here) else FALLBACK
        ranked = [r for r in here if cmp.value(r, metric) is not None] or here
        best = min(ranked, key=lambda r: (_rank(r, metric), -r["params"], r["run"]))
        chosen[obj] = _choice(study_dir, best, level, metric)
    return chosen


def _rank(r: dict[str, Any], metric: str) -> float:
    v = cmp.value(r, metric)
    if v is None:
        return math.inf
    return v if cmp.lower_is_better(metric) else -v


def _choice(study_dir: Path, r: dict[str, Any], level: float, metric: str) -> Choice:
    return Choice(
        objective=r["objective"],
        run=r["run"],
        run_dir=study_dir / "train" / r["run"],
        milestone=r["milestone"],
        step=r["step"],
        train_flops=r["train_flops"],
        level=level,
        size=r["size"],
        params=r["params"],
        autoencoder=r["autoencoder"],
        weights=r["weights"],
        steps=r["steps"],
        cfg_scale=r["cfg_scale"],
        metric=metric,
        quality=cmp.value(r, metric),
        temperature=(r.get("instruments") or {}).get("temperature"),
    )


def use_chosen_temperature(generator, choice: Choice) -> None:
    """Make `generator` sample at the temperature its milestone was evaluated at (chosen on validation prompts)."""
    if choice.temperature is not None:
        import dataclasses

        from synthscale.objectives import get_objective

        cfg = dataclasses.replace(generator.objective.cfg, temperature=choice.temperature)
        generator.objective = get_objective(cfg)
