"""A study spec expanded into stages: autoencoders, instruments (the probe, the in-domain encoder, …), latent caches,
training runs, evaluations.

Every stage is keyed by a content hash of what decides its output — never by a path — so a study folder can be
moved, a second study reuses nothing by accident, and a changed config gets a new stage instead of a stale one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from synthscale.config import (
    AutoencoderConfig,
    ConfigError,
    ModelConfig,
    ObjectiveConfig,
    RunConfig,
    StudyConfig,
    TrainConfig,
    apply_overrides,
    canonical,
    config_hash,
    from_dict,
    has_temperature,
    read_yaml,
    to_dict,
)
from synthscale.objectives import latent_kind
from synthscale.study import tuning
from synthscale.study.grid import Stage

AE_LATENT = {"kl": "continuous", "lfq": "discrete", "fsq": "discrete", "diffusers": "continuous"}
STAGES = "synthscale.study.stages"
INSTRUMENT_CACHE = "instruments"  # trained instruments, keyed by content, shared by the study's stages


@dataclass
class RunPlan:
    """One training run of the grid and the stages that serve it."""

    run_cfg: RunConfig
    train: Stage
    evaluate: Stage
    autoencoder: str  # autoencoder name
    ablation: bool


@dataclass
class StudyPlan:
    study: StudyConfig
    root: Path
    stages: list[Stage]
    runs: list[RunPlan]
    autoencoders: dict[str, tuple[AutoencoderConfig, Stage]]  # name → (config, stage)
    instruments: list[Stage]  # one stage per instrument the evaluation scores with
    ceilings: dict[str, Stage] = dataclasses.field(default_factory=dict)  # autoencoder name → its ceiling stage
    lr_sweeps: dict[str, Any] = dataclasses.field(default_factory=dict)  # objective → study.tuning.LrSweep


def _autoencoder_config(path: str, study: StudyConfig, base: Path) -> AutoencoderConfig:
    file = Path(path)
    if not file.is_absolute() and not file.is_file():
        file = base / path
    raw = read_yaml(file)
    raw["data"] = {**to_dict(study.data), **raw.get("data", {})} if "data" in raw else to_dict(study.data)
    data = apply_overrides(AutoencoderConfig, raw, study.autoencoder_overrides)
    return from_dict(AutoencoderConfig, data, source=f"{file} with autoencoder_overrides")


def _split_overrides(overrides: list[str], objective: str) -> list[str]:
    """`[objective:]key=value` entries that apply to `objective`."""
    out = []
    for text in overrides:
        head, eq, _ = text.partition("=")
        if ":" in head:
            scope, _, rest = text.partition(":")
            if scope not in ObjectiveConfig.names():
                raise ConfigError(
                    f"run_overrides entry {text!r}: {scope!r} is not an objective "
                    f"({', '.join(ObjectiveConfig.names())})"
                )
            if scope == objective:
                out.append(rest)
        else:
            out.append(text)
    return out


def _run_config(
    study: StudyConfig,
    objective: str,
    size: str,
    data_size: int,
    budget: float,
    ae_dir: Path,
    cache_root: Path,
    seed: int = 0,
) -> RunConfig:
    base = RunConfig(
        data=dataclasses.replace(study.data, size=data_size),
        model=ModelConfig(size=size),
        objective=ObjectiveConfig.of(objective),
        train=TrainConfig(budget_flops=budget),
        autoencoder=str(ae_dir),
        cache_root=str(cache_root),
    )
    overrides = _split_overrides(study.run_overrides, objective)
    if any(o.partition("=")[0].strip() == "seed" for o in overrides):
        if study.seeds != [0]:
            raise ConfigError("run_overrides sets seed= and the study sets seeds:; list the seeds in `seeds:` only")
    else:
        base.seed = seed  # the study's replicate axis
    raw = apply_overrides(RunConfig, to_dict(base), overrides)
    return from_dict(RunConfig, raw, source="study run_overrides")


def _portable_hash(run_cfg: RunConfig, ae_key: str) -> str:
    """The run's key: its config with machine paths replaced by the content keys they stand for, and the version of
    the generator code that trains it."""
    import synthscale.objectives

    d = canonical(run_cfg)
    d["autoencoder"], d["cache_root"] = ae_key, None
    d["generator_version"] = synthscale.objectives.GENERATOR_VERSION
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("log_every", "checkpoint_every", "keep_last")}
    return config_hash(d)


def plan_study(study: StudyConfig, root: str | Path, spec_dir: str | Path = ".") -> StudyPlan:
    """The study's stages and runs under `root`: autoencoders, the probe, then per run its cache, training and
    evaluation (the main grid, then each ablation autoencoder with the objectives of its latent kind)."""
    root, spec_dir = Path(root).resolve(), Path(spec_dir)
    study = resolve_objectives(study)
    if study.precision is not None:
        overrides = [*study.run_overrides, f"train.precision={planned_precision(study, root)}"]
        study = dataclasses.replace(study, run_overrides=overrides)
    stages: list[Stage] = []
    autoencoders, main, ablations = _plan_autoencoders(study, spec_dir, stages)
    instruments = _plan_instruments(study, root)
    stages += instruments
    ceilings = {n: _ceiling_stage(study, cfg, stage, instruments, root) for n, (cfg, stage) in autoencoders.items()}
    stages += ceilings.values()
    runs: list[RunPlan] = []
    caches: dict[str, Stage] = {}
    sweeps = tuning.plan_lr_sweeps(study, root, main, caches, stages)  # before the grid: it sets LRs
    at_lr = tuning.at_chosen_lrs(study, sweeps)
    for objective, size, data_size, budget, ae, ablation in _run_grid(study, main, ablations):
        for seed in study.seeds:
            point = (objective, size, data_size, budget, seed)
            runs.append(_plan_run(at_lr, root, point, ae, ablation, instruments, caches, stages))
    tuning.link_to_sweeps(runs, sweeps, stages, root)
    check_parity(study, runs, autoencoders)
    return StudyPlan(study, root, stages, runs, autoencoders, instruments, ceilings, sweeps)


def check_parity(study: StudyConfig, runs: list[RunPlan], autoencoders: dict[str, AutoencoderStage]) -> None:
    """`parity: tokens`: the main grid's objectives must see the same number of image tokens, or the comparison
    measures the token count rather than the paradigm; refused here, before anything trains."""
    from synthscale.study.controls import image_token_counts

    if study.parity == "none":
        return
    counts = image_token_counts([r for r in runs if not r.ablation], autoencoders)
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{o} {n}" for o, n in counts.items())
        raise ConfigError(
            f"parity: tokens, but the objectives see different image-token counts per image ({listed}). Make them "
            f"equal (e.g. flow's model.patch_size through run_overrides `flow:model.patch_size=1`, or autoencoders "
            f"with the same latent grid), or set `parity: none` in the study spec to compare them anyway (the "
            f"report then names the mismatch)"
        )


def resolve_objectives(study: StudyConfig) -> StudyConfig:
    """The study with its objectives checked against the registry, and none listed meaning all of them."""
    from synthscale.objectives import OBJECTIVES, check_names

    check_names(study.objectives)
    study = study if study.objectives else dataclasses.replace(study, objectives=list(OBJECTIVES))
    for key, per_objective in (
        ("lr_sweep", study.lr_sweep),
        ("evaluation.cfg_candidates", study.evaluation.cfg_candidates),
        ("evaluation.temperature_candidates", study.evaluation.temperature_candidates),
    ):
        if isinstance(per_objective, dict):
            check_names(list(per_objective), key)
    if isinstance(study.lr_sweep, dict):
        extra = [o for o in study.lr_sweep if o not in study.objectives]
        if extra:
            raise ConfigError(
                f"lr_sweep names {extra[0]!r}, which the study does not train (objectives: "
                f"{', '.join(study.objectives)}); remove it or add it to objectives"
            )
    temps = study.evaluation.temperature_candidates
    if isinstance(temps, dict):
        plain = [o for o in temps if not has_temperature(ObjectiveConfig.of(o))]
        if plain:
            raise ConfigError(
                f"evaluation.temperature_candidates names {plain[0]!r}, which samples without a temperature; remove it"
            )
    return study


PRECISION_JSON = "precision.json"


def planned_precision(study: StudyConfig, root: Path) -> str:
    """The study's training precision; `auto`: the choice measured when the study first started (fp32 before)."""
    if study.precision != "auto":
        return study.precision
    path = Path(root) / PRECISION_JSON
    return json.loads(path.read_text())["choice"] if path.is_file() else "fp32"


def _ceiling_stage(
    study: StudyConfig, cfg: AutoencoderConfig, ae_stage: Stage, instruments: list[Stage], root: Path
) -> Stage:
    """The autoencoder's reconstructions of the evaluation prompts' images, scored by every instrument: what a
    generator on its latents can at best reach (keyed by the autoencoder, the instruments and the evaluation set)."""
    ev = study.evaluation
    where = {"n": ev.n, "holdout_n": ev.holdout_n, "seed": ev.seed}
    key = config_hash({"autoencoder": ae_stage.key, "instruments": sorted(s.key for s in instruments), **where})
    kwargs = {
        "model_dir": str(root / ae_stage.id / "model"),
        "instruments": [{"spec": s.kwargs["spec"], "stage_dir": str(root / s.id)} for s in instruments],
        "instrument_options": _instrument_options(study),
        "cache_root": str(root / INSTRUMENT_CACHE),
        "data": to_dict(study.data),
        "device": study.device,
        **where,
    }
    deps = [ae_stage.id, *(s.id for s in instruments)]
    return Stage("ceiling", cfg.name, key, f"{STAGES}:ceiling_stage", kwargs, deps, cost=0.2)


AutoencoderStage = tuple[AutoencoderConfig, Stage]


def _plan_autoencoders(
    study: StudyConfig, spec_dir: Path, stages: list[Stage]
) -> tuple[dict[str, AutoencoderStage], dict[str, AutoencoderStage], list[AutoencoderStage]]:
    """(every autoencoder by name, the main grid's by latent kind, the ablation extras)."""
    autoencoders: dict[str, AutoencoderStage] = {}

    def autoencoder(path: str) -> AutoencoderStage:
        cfg = _autoencoder_config(path, study, spec_dir)
        if cfg.name in autoencoders:
            if config_hash(autoencoders[cfg.name][0]) != config_hash(cfg):
                raise ConfigError(f"two different autoencoder configs are both named {cfg.name!r}; rename one")
            return autoencoders[cfg.name]
        kwargs = {"config": to_dict(cfg), "device": study.device}
        stage = Stage("autoencoder", cfg.name, config_hash(cfg), f"{STAGES}:autoencoder_stage", kwargs, cost=3.0)
        stages.append(stage)
        autoencoders[cfg.name] = (cfg, stage)
        return autoencoders[cfg.name]

    main = {
        "continuous": autoencoder(study.continuous_autoencoder),
        "discrete": autoencoder(study.discrete_autoencoder),
    }
    for kind, (cfg, _) in main.items():
        if AE_LATENT[cfg.kind] != kind:
            raise ConfigError(
                f"study.{kind}_autoencoder is {cfg.name} ({cfg.kind}), which makes {AE_LATENT[cfg.kind]} "
                f"latents; pick a {kind} one"
            )
    ablations = [autoencoder(p) for p in study.ablation_autoencoders]
    return autoencoders, main, ablations


def _instrument_options(study: StudyConfig) -> dict[str, list[str]]:
    """Per instrument kind, its recipe overrides from the spec."""
    return {"probe": list(study.probe_overrides), "encoder": list(study.encoder_overrides)}


def _plan_instruments(study: StudyConfig, root: Path) -> list[Stage]:
    """One stage per instrument: trains (or loads) it in the study's instrument cache, keyed by content (the data
    size does not key it), and measures its ceiling at the evaluation's n. A wrong spec or a missing weights path
    is refused here, before any training."""
    from synthscale.evaluate.instruments import instrument_key, parse_spec, resolve_specs

    options, ev = _instrument_options(study), study.evaluation
    stages = []
    for spec in resolve_specs(ev.instruments, study.data):
        kind = parse_spec(spec)[0].kind
        inner = instrument_key(spec, study.data, options)
        key = config_hash({"instrument": inner, "data": canonical(study.data), "n": ev.n, "seed": ev.seed})
        kwargs = {
            "spec": spec,
            "data": to_dict(study.data),
            "options": options,
            "cache_root": str(root / INSTRUMENT_CACHE),
            "n": ev.n,
            "seed": ev.seed,
            "device": study.device,
        }
        stages.append(Stage("instrument", kind, key, f"{STAGES}:instrument_stage", kwargs, cost=2.0))
    return stages


def _run_grid(study: StudyConfig, main: dict[str, AutoencoderStage], ablations: list[AutoencoderStage]) -> list:
    """(objective, size, data size, budget, autoencoder, ablation?) of every run: the main grid, then each ablation
    autoencoder with the objectives of its latent kind at the smallest size, data size and budget."""
    grid = [
        (o, s, d, b, main[latent_kind(o)], False)
        for o in study.objectives
        for s in study.sizes
        for d in study.data_sizes
        for b in study.budgets
    ]
    smallest = (study.sizes[0], min(study.data_sizes), min(study.budgets))
    for ae in ablations:
        kind = AE_LATENT[ae[0].kind]
        grid += [(o, *smallest, ae, True) for o in study.objectives if latent_kind(o) == kind]
    return grid


def _plan_run(
    study: StudyConfig,
    root: Path,
    point: tuple[str, str, int, float, int],
    ae: AutoencoderStage,
    ablation: bool,
    instruments: list[Stage],
    caches: dict[str, Stage],
    stages: list[Stage],
) -> RunPlan:
    """One run's stages: its latent cache (shared by runs on the same autoencoder and data), training and
    evaluation."""
    (objective, size, data_size, budget, seed), (ae_cfg, ae_stage) = point, ae
    cache_root = root / "latents"  # the trainer keeps latent caches here, keyed by content
    ae_dir = root / ae_stage.id / "model"
    run_cfg = _run_config(study, objective, size, data_size, budget, ae_dir, cache_root, seed)
    cache_id = config_hash({"ae": ae_stage.key, "data": canonical(run_cfg.data)})
    if cache_id not in caches:
        kwargs = {"run_config": to_dict(run_cfg), "device": study.device}
        name = f"{ae_cfg.name}-d{data_size}"
        caches[cache_id] = Stage("cache", name, cache_id, f"{STAGES}:cache_stage", kwargs, [ae_stage.id], cost=0.5)
        stages.append(caches[cache_id])
    key = _portable_hash(run_cfg, ae_stage.key)
    name = f"{objective}-{size}-d{data_size}-{budget:.0e}-{ae_cfg.name}".replace("+", "")
    name += f"-s{seed}" if seed else ""  # seed 0 keeps the name (and key) a single-seed study always had
    kwargs = {"run_config": to_dict(run_cfg)}
    train = Stage("train", name, key, f"{STAGES}:train_stage", kwargs, [caches[cache_id].id], cost=6.0)
    evaluate = Stage(
        "evaluate",
        name,
        config_hash(
            {"run": key, "eval": canonical(study.evaluation), "instruments": sorted(s.key for s in instruments)}
        ),
        f"{STAGES}:evaluate_stage",
        {
            "run_dir": str(root / train.id),
            "instruments": [{"spec": s.kwargs["spec"], "stage_dir": str(root / s.id)} for s in instruments],
            "instrument_options": _instrument_options(study),
            "cache_root": str(root / INSTRUMENT_CACHE),
            "settings": to_dict(study.evaluation),
            "run_config": to_dict(run_cfg),
            "device": study.device,
        },
        deps=[train.id, *(s.id for s in instruments)],
        cost=3.0,
    )
    stages += [train, evaluate]
    _check_eval_steps(study, run_cfg, _latent_shape(ae_cfg, []), name)
    return RunPlan(run_cfg, train, evaluate, ae_cfg.name, ablation)


def _check_eval_steps(study: StudyConfig, run_cfg: RunConfig, latent, name: str) -> None:
    """A run's evaluation steps must suit its objective and token count: refused when planned, not after training."""
    from synthscale.objectives import get_objective

    objective, ev = get_objective(run_cfg.objective), study.evaluation
    tokens = objective.image_tokens(run_cfg.model, latent)
    asked = [("steps", k) for k in ([ev.steps[objective.name]] if objective.name in ev.steps else [])]
    for key, steps in asked + [("sweep", k) for k in ev.sweep.get(objective.name, [])]:
        try:
            objective.check_steps(steps, tokens)
        except ValueError as e:
            raise ConfigError(f"evaluation.{key} of run {name}: {e}") from None


def estimate_flops(plan: StudyPlan) -> dict[str, Any]:
    """Training FLOPs of every run (their budgets) and sampling FLOPs of the evaluation plan, analytically."""
    from synthscale.data.latents import TextSpec
    from synthscale.data.text import tokenizer_for
    from synthscale.objectives import get_objective
    from synthscale.train import milestone_grid

    s = plan.study
    notes = []
    try:
        tok = tokenizer_for(s.data)
        text = TextSpec(tok.vocab_size, tok.max_length, tok.pad_id)
    except (ConfigError, OSError) as e:  # data not reachable from here (a dry run on a login node)
        text = TextSpec(s.data.caption_vocab, s.data.max_caption_tokens, 0)
        notes.append(f"caption tokenizer assumed from data.caption_vocab/max_caption_tokens ({e})")
    train_total = sum(r.run_cfg.train.budget_flops for r in plan.runs)
    # the sweeps' runs beyond the grid cells the chosen candidate's runs are (study/tuning.py)
    train_total += sum(sw.point[2] * (len(sw.candidates) - 1) * len(sw.seeds) for sw in plan.lr_sweeps.values())
    sample_total, per_run, ev = 0.0, [], s.evaluation
    for r in plan.runs:
        latent = _latent_shape(plan.autoencoders[r.autoencoder][0], notes)
        obj = get_objective(r.run_cfg.objective)
        steps = ev.steps.get(obj.name, obj.default_steps(latent))
        cfgs, temps = ev.candidates(r.run_cfg.objective)
        cfg = max(cfgs, key=lambda c: obj.sample_flops(r.run_cfg.model, latent, text, steps, c))
        cfg = cfg if ev.cfg_scale == "best" else ev.cfg_scale  # best: counted at the costliest candidate
        per_image = obj.sample_flops(r.run_cfg.model, latent, text, steps, cfg)
        images = ev.n + ev.holdout_n
        milestones = len(milestone_grid(r.run_cfg.train)) if ev.milestones == "all" else 1
        sweep = ev.sweep.get(obj.name, obj.steps_grid(latent))
        flops = images * (
            milestones * len(ev.weights) * per_image
            + sum(obj.sample_flops(r.run_cfg.model, latent, text, k, cfg) for k in sweep)
            + sum(obj.sample_flops(r.run_cfg.model, latent, text, steps, c) for c in ev.cfg_sweep)
        )
        if ev.cfg_scale == "best":  # choosing on validation prompts: every candidate at every evaluated milestone
            per_val = sum(obj.sample_flops(r.run_cfg.model, latent, text, steps, c) for c in cfgs) * len(temps)
            flops += milestones * ev.val_n * per_val
        sample_total += flops
        per_run.append(
            {
                "run": r.train.name,
                "train_flops": r.run_cfg.train.budget_flops,
                "eval_sample_flops": flops,
                "lr": tuning.lr_of(plan, r),
                "params": obj.param_counts(r.run_cfg.model, latent, text)["total"],
            }
        )
    if ev.cfg_scale == "best":
        notes.append(
            f"cfg_scale best: evaluation sampling counted at the costliest CFG candidate, plus every candidate on "
            f"{ev.val_n} validation prompts at each evaluated milestone"
        )
    if plan.lr_sweeps:
        notes.append(
            "training includes the LR sweeps' runs (each candidate at the smallest size and budget; the chosen one "
            "is that grid cell's run)"
        )
    return {
        "runs": per_run,
        "train_flops": train_total,
        "eval_sample_flops": sample_total,
        "total_flops": train_total + sample_total,
        "notes": sorted(set(notes)),
    }


# What a stage's work takes, in seconds on one CPU core, measured on the default study (b47d410, per-stage CPU
# seconds by `benchmarks/study_stages.py`): the ETA weighs the stages left by these estimates, and its pace, measured
# as stages finish, scales them to the machine. Only their ratios matter.
TRAIN_FLOPS_PER_S = 43e9  # analytic training FLOPs (6 runs of 5e12 took 696 s)
SAMPLE_FLOPS_PER_S = 30e9  # the evaluation's analytic sampling FLOPs; decoding and scoring ride along (219 s)
AUTOENCODER_S_PER_IMAGE = 4.2e-3  # per 32×32 training image (fsq-f4 51 200 images in 209 s, kl-f4c4 38 400 in 163)
CACHE_S_PER_IMAGE = 0.7e-3  # per 32×32 image encoded (two caches of 23 000 images, 28 s)
INSTRUMENT_S, CEILING_S = 75.0, 2.0  # the attribute probe took 74 s, both ceilings 3 s


def weigh_stages(plan: StudyPlan) -> None:
    """Set every stage's `cost` to its estimated seconds (see above), from the plan's FLOPs estimates for training
    and evaluation, and the images an autoencoder trains on or a cache encodes."""
    est = estimate_flops(plan)
    for r, e in zip(plan.runs, est["runs"], strict=True):
        r.train.cost = e["train_flops"] / TRAIN_FLOPS_PER_S
        r.evaluate.cost = e["eval_sample_flops"] / SAMPLE_FLOPS_PER_S
    for cfg, stage in plan.autoencoders.values():
        stage.cost = cfg.train.steps * cfg.train.batch_size * (cfg.data.resolution / 32) ** 2 * AUTOENCODER_S_PER_IMAGE
    d = plan.study.data
    for stage in plan.stages:
        if stage.kind == "cache":
            size = stage.kwargs["run_config"]["data"]["size"]
            images = size + d.val_size + d.test_size + d.holdout_size
            stage.cost = images * (d.resolution / 32) ** 2 * CACHE_S_PER_IMAGE
        elif stage.kind == "instrument":
            stage.cost = INSTRUMENT_S
        elif stage.kind == "ceiling":
            stage.cost = CEILING_S


def _latent_shape(cfg: AutoencoderConfig, notes: list[str]):
    """The latents an autoencoder config makes (no weights); from the config's own fields when its files are absent."""
    from synthscale.autoencoders import latent_spec_of
    from synthscale.data.latents import LatentSpec

    try:
        return latent_spec_of(cfg)
    except (ConfigError, OSError) as e:
        notes.append(f"{cfg.name}: latent shape taken from downsample/latent_channels ({e})")
    side = cfg.data.resolution // cfg.downsample
    if AE_LATENT[cfg.kind] == "continuous":
        return LatentSpec("continuous", cfg.latent_channels, side, side)
    levels = [2] * cfg.latent_channels if cfg.kind == "lfq" else cfg.fsq_levels
    return LatentSpec("discrete", len(levels), side, side, vocab_size=math.prod(levels), levels=levels)
