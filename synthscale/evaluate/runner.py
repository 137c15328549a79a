"""Evaluate a trained run: sample from fixed prompts with fixed seeds at chosen checkpoints and settings, score
quality, prompt following, loss and speed, and append one `EvalRecord` per (checkpoint, weights, steps, CFG)
to `RUN_DIR/eval/records.jsonl`, with a labelled sample grid PNG per setting.

Every setting samples from the same prompts with the same generator seed, so differences between settings
(milestones, EMA vs raw, steps, CFG) are not differences of noise draws. A setting already in records.jsonl with
the same instruments is skipped, so an interrupted evaluation resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthscale import atomic
from synthscale.compute.device import pick_device
from synthscale.compute.flops import decode_flops
from synthscale.config import EvalSettings, RunConfig, from_stored
from synthscale.data.latents import LatentSpec
from synthscale.data.pixels import to_uint8
from synthscale.data.text import tokenizer_for
from synthscale.evaluate.instruments import Instrument, Prompts, deciding, score_images
from synthscale.evaluate.prompts import prompt_set
from synthscale.evaluate.record import EvalRecord
from synthscale.evaluate.speed import measure_speed
from synthscale.imagegrid import labelled_grid, save_png
from synthscale.progress import progress_bar

RECORDS = "records.jsonl"
SELECTIONS = "selections.json"  # sampling settings chosen on validation prompts, so a resumed evaluation reuses them


@dataclass(frozen=True)
class Tuning:
    """Where a checkpoint's sampling setting is chosen on validation prompts: these weights at these steps."""

    weights: str
    steps: int


@dataclass(frozen=True)
class Setting:
    checkpoint: Any  # train.checkpoint.CheckpointInfo
    milestone: int  # index among the evaluated run's milestones (0 = first)
    weights: str
    steps: int
    cfg_scale: float | None  # None: the scale chosen on validation prompts (`tune`), then reported on test
    speed: bool = False
    # with a tuning: the checkpoint's choice on validation prompts sets the temperature (objectives that sample
    # with one) and, when cfg_scale is None, the scale; None: cfg_scale as given, the objective's own temperature
    tune: Tuning | None = None
    temperature: float | None = None  # resolved from the choice; None: the objective's own

    @property
    def tag(self) -> str:
        cfg = "best" if self.cfg_scale is None else f"{self.cfg_scale:g}"
        temp = "" if self.temperature is None else f"-temp{self.temperature:g}"
        return f"{self.checkpoint.name}-{self.weights}-steps{self.steps}-cfg{cfg}{temp}"


def milestones_of(run_dir: str | Path) -> list:
    """The run's milestone checkpoints (and the final one), in order of training FLOPs."""
    from synthscale.train import milestone_checkpoints

    return milestone_checkpoints(run_dir)


def study_settings(run_dir: str | Path, objective, latent_spec, settings: EvalSettings) -> list[Setting]:
    """A study's plan: every milestone at (steps, cfg_scale) for each weights; the last milestone also sweeps
    steps and CFG (EMA weights when evaluated) and measures sampling speed at the main steps. cfg_scale `best`:
    each milestone's scale and temperature are chosen once, on validation prompts at the main steps with those
    weights, and every setting of that milestone samples with them (the steps and CFG sweeps and raw weights
    then vary one thing at a time)."""
    infos = milestones_of(run_dir)
    chosen = infos if settings.milestones == "all" else infos[-1:]
    steps = settings.steps.get(objective.name, objective.default_steps(latent_spec))
    last, w = infos[-1], ("ema" if "ema" in settings.weights else settings.weights[0])
    best = settings.cfg_scale == "best"
    cfg, tune = (None, Tuning(w, steps)) if best else (settings.cfg_scale, None)
    plan = [Setting(info, infos.index(info), x, steps, cfg, tune=tune) for info in chosen for x in settings.weights]
    sweep = settings.sweep.get(objective.name, objective.steps_grid(latent_spec))
    for s in sorted(set(sweep) | {steps}):
        plan.append(Setting(last, len(infos) - 1, w, s, cfg, speed=settings.speed and s == steps, tune=tune))
    for c in settings.cfg_sweep:
        plan.append(Setting(last, len(infos) - 1, w, steps, c, tune=tune))
    unique: dict[tuple, Setting] = {}
    for p in plan:  # keep one setting per key; a speed request wins
        key = (p.checkpoint.name, p.weights, p.steps, p.cfg_scale)
        if key not in unique or p.speed:
            unique[key] = p
    return list(unique.values())


def product_settings(
    run_dir, which: str, weights: Iterable[str], steps: Iterable[int], cfgs: Iterable[float], speed: bool = False
) -> list[Setting]:
    """Every combination (the `synthscale evaluate` flags): milestones `all` or `last` × weights × steps × CFG (None:
    chosen on validation prompts for that checkpoint, weights and steps)."""
    infos = milestones_of(run_dir)
    chosen = infos if which == "all" else infos[-1:]
    return [
        Setting(i, infos.index(i), w, s, c, speed, tune=Tuning(w, s) if c is None else None)
        for i in chosen
        for w in weights
        for s in steps
        for c in cfgs
    ]


def as_instruments(instruments) -> list[Instrument]:
    """A list of instruments; a bare attribute probe (the older call) is wrapped as the probe instrument."""
    if isinstance(instruments, Instrument):
        return [instruments]
    if not isinstance(instruments, (list, tuple)):
        from synthscale.evaluate.instruments.probe import ProbeInstrument

        return [ProbeInstrument(instruments)]
    if not instruments:
        raise ValueError("evaluation needs at least one instrument")
    return list(instruments)


class RunEvaluator:
    """Everything fixed across one run's settings: prompts, instruments with their real reference features,
    autoencoder, validation data."""

    def __init__(self, run_dir: str | Path, instruments, settings: EvalSettings, device=None, progress: bool = True):
        from synthscale.autoencoders import load_autoencoder

        self.run_dir, self.settings = Path(run_dir), settings
        self.instruments = as_instruments(instruments)
        self.device, self.progress = pick_device(device), progress  # default: CUDA when present, else the CPU
        self.run_cfg = self.run_config(run_dir)
        if self.run_cfg.autoencoder is None:
            raise ValueError(f"{self.run_dir} was trained on random latents; there is nothing to decode into images")
        self.autoencoder = load_autoencoder(self.run_cfg.autoencoder).to(self.device).eval()
        data = self.run_cfg.data
        self.test = prompt_set(data, "test", settings.n)
        # held-out colour×shape prompts exist only where the dataset makes that split (shapes)
        has_holdout = settings.holdout_n and data.holdout and data.dataset == "shapes"
        self.holdout = prompt_set(data, "holdout", settings.holdout_n) if has_holdout else None
        tok = tokenizer_for(data)
        self.prompts: list[dict] = self.test.attributes + (self.holdout.attributes if self.holdout else [])
        self.captions = self.test.captions + (self.holdout.captions if self.holdout else [])
        self.text = tok.encode(self.captions).to(self.device)
        self.prompt_info = Prompts(self.captions, self.prompts, data.holdout, n_test=len(self.test))
        self.bound = [i.bind(self.test.images, seed=settings.seed) for i in self.instruments]
        self._losses: dict[tuple[str, str], float] = {}
        self._val = None  # validation prompts, loaded when a sampling setting is chosen on them
        self._val_latents = None  # validation latent cache, for the loss
        self.out = self.run_dir / "eval"
        self._selections = _read_json(self.out / SELECTIONS)

    @functools.cached_property
    def decode_flops(self) -> int:
        """The decoder's FLOPs per image: the same for every setting of the run, so counted once, on first use."""
        return decode_flops(self.autoencoder)

    @property
    def sampling_seed(self) -> int:
        """The settings' seed offset by the run's: replicate seeds of a study differ in their sampling draws too
        (the prompts stay the settings'); seed 0 samples as a single-seed study always did."""
        return self.settings.seed + self.run_cfg.seed

    @staticmethod
    def run_config(run_dir: str | Path) -> RunConfig:
        cfg_path = Path(run_dir) / "config.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{cfg_path} is missing: is {run_dir} a run folder made by `synthscale train`?")
        import synthscale.objectives  # noqa: F401  the registry, which reads the objective section

        return from_stored(RunConfig, json.loads(cfg_path.read_text()), source=str(cfg_path))

    @staticmethod
    def latent_spec(run_dir: str | Path) -> LatentSpec:
        """The latent shape the run was trained on (from its newest milestone's metadata)."""
        from synthscale.train.checkpoint import read_meta

        return LatentSpec(**read_meta(milestones_of(run_dir)[-1].path, verify=False)["latent_spec"])

    # ------------------------------------------------------------------------------------------ pieces

    @torch.no_grad()
    def sample(
        self,
        gen_model,
        steps: int,
        cfg_scale: float,
        text: torch.Tensor | None = None,
        temperature: float | None = None,
    ) -> np.ndarray:
        """uint8 images [len(prompts), H, W, 3] for every evaluation prompt (or `text`), from the sampling seed,
        at `temperature` (None: the objective's own)."""
        text = self.text if text is None else text
        objective = gen_model.objective
        if temperature is not None:
            from synthscale.objectives import get_objective

            objective = get_objective(dataclasses.replace(objective.cfg, temperature=temperature))
        generator = torch.Generator(self.device).manual_seed(self.sampling_seed)
        bs, out = self.settings.batch_size, []
        for i in range(0, len(text), bs):
            latents = objective.sample(gen_model.model, text[i : i + bs], steps, cfg_scale, generator)
            out.append(to_uint8(self.autoencoder.decode(latents)))
        return np.concatenate(out)

    def _val_source(self):
        """The validation latent cache, opened once per evaluator (it is read into memory)."""
        if self._val_latents is None:
            from synthscale.train.data import open_source

            self._val_latents = open_source(self.run_cfg, split="val")
        return self._val_latents

    @torch.no_grad()
    def validation_loss(self, gen_model) -> float:
        """Mean objective loss on fixed validation batches, captions never dropped (the same draws every time)."""
        key = (gen_model.checkpoint.name, gen_model.weights)
        if key not in self._losses:
            s = self.settings
            self._losses[key] = validation_loss(gen_model, self._val_source(), s.batch_size, s.loss_batches, s.seed)
        return self._losses[key]

    def choose(self, checkpoint, tune: Tuning, load) -> dict[str, Any]:
        """The sampling setting chosen for `checkpoint` on validation prompts (evaluate/selection.py has the rule):
        every candidate CFG scale × temperature sampled for the first `val_n` validation prompts with the
        `tune.weights` generator (`load(checkpoint, weights)`) at `tune.steps`, scored by the deciding quality and
        prompt-following instruments against the validation images. Never reads a test prompt. Kept in
        eval/selections.json, so a resumed evaluation does not sample again."""
        from synthscale.evaluate.selection import choose, rule_text

        cfgs, temps = self.settings.candidates(self.run_cfg.objective)
        quality, following = deciding(self.instruments, "quality"), deciding(self.instruments, "following")
        q_name, f_name = quality.quality if quality else None, following.following if following else None
        where = {
            "checkpoint": checkpoint.name,
            "weights": tune.weights,
            "steps": tune.steps,
            "split": "val",
            "n_val": self.settings.val_n,
            "seed": self.settings.seed,
            "candidates": {"cfg_scale": cfgs, "temperature": temps},
            "instruments": sorted(i.name for i in (quality, following) if i is not None),
        }
        key = json.dumps(where, sort_keys=True)
        if key in self._selections:
            return self._selections[key]
        if self._val is None:
            self._val = prompt_set(self.run_cfg.data, "val", self.settings.val_n)
            self._val_text = tokenizer_for(self.run_cfg.data).encode(self._val.captions).to(self.device)
            self._val_prompts = Prompts(self._val.captions, self._val.attributes, self.run_cfg.data.holdout)
            self._val_quality = quality.bind(self._val.images, seed=self.settings.seed) if quality else None
        gen_model, scores = load(checkpoint, tune.weights), []
        for c in cfgs:
            for t in temps:
                images = self.sample(gen_model, tune.steps, c, self._val_text, temperature=t)
                row: dict[str, Any] = {"cfg_scale": c, "temperature": t}
                if quality:
                    row[q_name] = self._val_quality.quality(images)[q_name]
                if following:
                    row[f_name] = following.follow(images, self._val_prompts, self.settings.seed)[f_name]
                scores.append(row)
        won = scores[choose(scores, q_name, f_name)]
        selection = {
            **where,
            "by": rule_text(q_name, f_name),
            "scores": scores,
            "chosen": {"cfg_scale": won["cfg_scale"], "temperature": won["temperature"]},
        }
        self._selections[key] = selection
        atomic.write_json(self.out / SELECTIONS, self._selections)
        return selection

    def resolve(self, setting: Setting, load) -> tuple[Setting, dict[str, Any] | None]:
        """`setting` with its chosen scale and temperature filled in, and the choice as its record carries it
        (with `applied`: which of the setting's values came from it); a setting without a tuning as it is."""
        if setting.tune is None:
            return setting, None
        selection = self.choose(setting.checkpoint, setting.tune, load)
        chosen, applied = selection["chosen"], ["temperature"] if selection["chosen"]["temperature"] is not None else []
        cfg = setting.cfg_scale
        if cfg is None:
            cfg, applied = chosen["cfg_scale"], ["cfg_scale", *applied]
        resolved = dataclasses.replace(setting, cfg_scale=cfg, temperature=chosen["temperature"])
        return resolved, {**selection, "applied": applied}

    # ------------------------------------------------------------------------------------------ one setting

    def evaluate(self, setting: Setting, gen_model, cfg_selection: dict[str, Any] | None = None) -> EvalRecord:
        s, obj, rc = setting, gen_model.objective, self.run_cfg
        images = self.sample(gen_model, s.steps, s.cfg_scale, temperature=s.temperature)
        n_test = len(self.test)
        metrics: dict[str, float] = {"loss": self.validation_loss(gen_model)}
        metrics.update(score_images(self.bound, images, self.prompt_info))
        grid_path = self.out / "samples" / f"{s.tag}.png"
        k = min(self.settings.grid_samples, len(images))
        save_png(labelled_grid(images[:k], self.captions[:k], cell=96), grid_path)
        if s.speed:
            decode = self.autoencoder.decode
            metrics.update(measure_speed(obj, gen_model.model, self.text[:32], s.steps, s.cfg_scale, decode=decode))
        counts = obj.param_counts(rc.model, gen_model.latent_spec, gen_model.text_spec)
        # the generator's share; the caption encoder's is a separate, labelled column (compute/flops.py)
        flops = obj.sample_flops_split(rc.model, gen_model.latent_spec, gen_model.text_spec, s.steps, s.cfg_scale)
        instruments = {
            "scored_by": {b.instrument.kind: b.describe() for b in self.bound},
            "n": n_test,
            "loss": {
                "split": "val",
                "batches": self.settings.loss_batches,
                "batch_size": self.settings.batch_size,
                "captions_dropped": False,
            },
            "prompts": {"test": n_test, "holdout": len(self.prompts) - n_test, "seed": self.settings.seed},
            "sampling_seed": self.sampling_seed,
            "steps": s.steps,
            "cfg_scale": s.cfg_scale,
            "temperature": s.temperature,  # None: the objective's own (the run config's)
            "weights": s.weights,
            "checkpoint": s.checkpoint.name,
            "sample_flops": {
                "generator": flops.generator,
                "text_encoder": flops.text_encoder,
                "decoder": self.decode_flops,
                "convention": "2 per MAC, CFG included; the autoencoder decode in its own column",
            },
            "cfg_selection": cfg_selection,
            "decoder": self.autoencoder.name,
            "device": str(self.device),  # where it was sampled and scored
            "sample_grid": str(grid_path.relative_to(self.run_dir)),
            "speed": {
                "device": str(self.device),
                "threads": torch.get_num_threads(),
                "repeats": 3,
                "batch_sizes": [1, 16, 64],
                "median": True,
                "decoder": "timed apart: decode_latency_s, decode_throughput_ips",
            }
            if s.speed
            else None,
        }
        return EvalRecord(
            run=self.run_dir.name,
            objective=obj.name,
            size=rc.model.size,
            params=counts["total"],
            params_nonembedding=counts["non_embedding"],
            data_size=rc.data.size,
            autoencoder=self.autoencoder.name,
            milestone=s.milestone,
            step=s.checkpoint.step,
            train_flops=float(s.checkpoint.train_flops),
            weights=s.weights,
            steps=s.steps,
            cfg_scale=s.cfg_scale,
            sample_flops_per_image=float(flops.generator),
            decode_flops_per_image=float(self.decode_flops),
            metrics=metrics,
            instruments=instruments,
        )


@torch.no_grad()
def validation_loss(gen_model, source, batch_size: int, batches: int | None, seed: int) -> float:
    """Mean objective loss of `gen_model` on `batches` fixed batches of the validation latent cache `source`
    (None: the whole split once), captions never dropped, every draw from `seed`: the same draws for every model,
    so two models' losses differ by the models only."""
    bs = min(batch_size, len(source))
    batches = -(-len(source) // bs) if batches is None else batches
    generator = torch.Generator().manual_seed(seed)
    device = next(gen_model.model.parameters()).device
    losses = []
    for b in range(batches):
        idx = (torch.arange(bs) + b * bs) % len(source)
        batch = source.get_batch(idx, generator)
        latents, text = batch["latents"].to(device), batch["text"].to(device)
        losses.append(float(gen_model.objective.loss(gen_model.model, latents, text, generator, drop_captions=False)))
    return float(np.mean(losses))


# ---------------------------------------------------------------------------------------------- records file


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _key(r: dict) -> tuple:
    ins = r["instruments"]
    temperature = ins.get("temperature")
    return (
        ins["checkpoint"],
        r["weights"],
        r["steps"],
        float(r["cfg_scale"]),
        temperature,
        ins["n"],
        ins["prompts"]["seed"],
    )


def _key_of(s: Setting, settings: EvalSettings) -> tuple:
    return (s.checkpoint.name, s.weights, s.steps, float(s.cfg_scale), s.temperature, settings.n, settings.seed)


def _scored_by(r: dict) -> list[str]:
    """The instruments a record was scored with (a record from before instruments: its probe extractor)."""
    ins = r["instruments"]
    if "scored_by" in ins:
        return sorted(b["name"] for b in ins["scored_by"].values())
    return [ins["extractor"]] if "extractor" in ins else []


def read_records(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "eval" / RECORDS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_records(run_dir: Path, records: list[dict]) -> None:
    atomic.write_text(run_dir / "eval" / RECORDS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


def evaluate_run(
    run_dir: str | Path,
    instruments,
    settings: EvalSettings,
    plan: list[Setting] | None = None,
    device=None,
    progress: bool = True,
) -> list[EvalRecord]:
    """Evaluate `plan` (default: the study plan of `settings`) with `instruments` (a list of Instrument; a bare
    probe is the probe instrument) and return this run's records (old and new). A setting scored before with other
    instruments is scored again and its record replaced. Records are written after every setting, so an
    interruption loses at most the setting in progress."""
    from synthscale.train import load_generator

    run_dir = Path(run_dir)
    ev = RunEvaluator(run_dir, instruments, settings, device, progress)
    device = ev.device
    names = sorted(i.name for i in ev.instruments)
    if plan is None:
        from synthscale.objectives import get_objective

        plan = study_settings(run_dir, get_objective(ev.run_cfg.objective), ev.latent_spec(run_dir), settings)
    done = {_key(r): r for r in read_records(run_dir)}

    def finished(s: Setting) -> bool:
        r = done.get(_key_of(s, settings))
        return r is not None and _scored_by(r) == names and (not s.speed or "latency_s" in r["metrics"])

    loaded: dict[tuple[str, str], Any] = {}

    def load(checkpoint, weights: str):
        key = (checkpoint.name, weights)
        if key not in loaded:
            loaded.clear()  # one generator in memory at a time
            loaded[key] = load_generator(run_dir, checkpoint, weights, device=device)
        return loaded[key]

    todo = [s for s in plan if s.tune is not None or not finished(s)]
    made: set[tuple] = set()  # a fixed scale that equals the chosen one samples the same images: scored once
    for s in progress_bar(todo, desc=f"evaluate {run_dir.name}", unit="setting", enabled=progress, leave=False):
        s, selection = ev.resolve(s, load)
        key = _key_of(s, settings)
        if key in made:
            continue
        made.add(key)
        if selection is not None and finished(s) and done[key]["instruments"].get("cfg_selection") == selection:
            continue
        record = ev.evaluate(s, load(s.checkpoint, s.weights), selection).to_dict()
        done[_key(record)] = record
        _write_records(
            run_dir, sorted(done.values(), key=lambda r: (r["train_flops"], r["weights"], r["steps"], r["cfg_scale"]))
        )
    return [EvalRecord.from_dict(r) for r in done.values()]
