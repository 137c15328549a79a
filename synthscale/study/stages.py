"""The functions a study's stages run, `fn(stage_dir, **kwargs) -> summary`. Each is a thin call into its stage's
module; kwargs are plain JSON data so any executor (a local process, a cluster job) can carry them. `device` is
the study's (`auto`: the GPU a cluster job was given when it has one, else the CPU); training runs use their own
`train.device`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import synthscale.objectives  # noqa: F401  the registry: run configs read their objective section through it
from synthscale.config import AutoencoderConfig, DataConfig, EvalSettings, RunConfig, from_dict


def autoencoder_stage(stage_dir: Path, config: dict[str, Any], device: str = "auto") -> dict[str, Any]:
    from synthscale.autoencoders.train import evaluate_autoencoder, train_autoencoder

    cfg = from_dict(AutoencoderConfig, config, source=f"{stage_dir} autoencoder stage")
    model_dir = Path(stage_dir) / "model"
    summary = train_autoencoder(cfg, model_dir, progress=False, device=device)
    result = evaluate_autoencoder(model_dir, split="test", progress=False, device=device)
    return {
        "name": cfg.name,
        "kind": result["kind"],
        "model_dir": str(model_dir),
        "metrics": result["metrics"],
        "instruments": result["instruments"],
        "train_s": summary["train_s"],
        "latent": result["latent"],
        "grid": result.get("grid"),
    }


def cache_stage(stage_dir: Path, run_config: dict[str, Any], device: str = "auto") -> dict[str, Any]:
    from synthscale.train.data import open_source

    run_cfg = from_dict(RunConfig, run_config, source="cache stage")
    sizes = {split: len(open_source(run_cfg, split=split, device=device)) for split in ("train", "val")}
    return {"items": sizes}


def train_stage(stage_dir: Path, run_config: dict[str, Any]) -> dict[str, Any]:
    from synthscale.train import train

    run_cfg = from_dict(RunConfig, run_config, source="train stage")
    summary = train(run_cfg, stage_dir, resume=True, progress=False)
    return {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool, type(None)))}


INSTRUMENT_JSON = "instrument.json"


def instrument_stage(
    stage_dir: Path,
    spec: str,
    data: dict[str, Any],
    options: dict[str, Any],
    cache_root: str,
    n: int,
    seed: int,
    device: str = "auto",
) -> dict[str, Any]:
    """Train (or load) an instrument under the study's instrument cache and measure its ceiling and sanity on
    real images at the evaluation's n."""
    from synthscale import atomic
    from synthscale.evaluate.instruments import open_instrument
    from synthscale.evaluate.instruments.ceiling import measure_ceiling

    data_cfg = from_dict(DataConfig, data, source="instrument stage data")
    instrument = open_instrument(spec, data_cfg, cache_root, options, device=device)
    summary = {"spec": spec, **instrument.card(), "ceiling": measure_ceiling(instrument, data_cfg, n, seed)}
    summary["train"] = instrument.meta.get("train")
    atomic.write_json(Path(stage_dir) / INSTRUMENT_JSON, summary)
    return summary


def load_instruments(
    instruments: list[dict[str, Any]], data_cfg: DataConfig, cache_root: str, options, device: str = "auto"
) -> list:
    """The instruments an evaluate stage scores with, each carrying the ceiling its stage measured."""
    from synthscale.evaluate.instruments import open_instrument

    out = []
    for item in instruments:
        instrument = open_instrument(item["spec"], data_cfg, cache_root, options, device=device)
        stored = Path(item["stage_dir"]) / INSTRUMENT_JSON
        if not stored.is_file():
            raise FileNotFoundError(f"no {stored}; the instrument stage of {item['spec']} has not finished")
        instrument.ceiling = json.loads(stored.read_text())["ceiling"]
        out.append(instrument)
    return out


def ceiling_stage(
    stage_dir: Path,
    model_dir: str,
    instruments: list[dict[str, Any]],
    instrument_options: dict[str, Any],
    cache_root: str,
    data: dict[str, Any],
    n: int,
    holdout_n: int,
    seed: int,
    device: str = "auto",
) -> dict[str, Any]:
    """Score the autoencoder's reconstructions of the evaluation prompts' images with every instrument."""
    from synthscale import atomic
    from synthscale.autoencoders import load_autoencoder
    from synthscale.compute.device import pick_device
    from synthscale.evaluate.ceilings import CEILING_JSON, reconstruction_ceiling

    data_cfg = from_dict(DataConfig, data, source="ceiling stage data")
    scored_by = load_instruments(instruments, data_cfg, cache_root, instrument_options, device)
    autoencoder = load_autoencoder(model_dir).to(pick_device(device))
    ceiling = reconstruction_ceiling(autoencoder, scored_by, data_cfg, n, holdout_n, seed)
    atomic.write_json(Path(stage_dir) / CEILING_JSON, ceiling)
    return ceiling


def evaluate_stage(
    stage_dir: Path,
    run_dir: str,
    instruments: list[dict[str, Any]],
    instrument_options: dict[str, Any],
    cache_root: str,
    settings: dict[str, Any],
    run_config: dict[str, Any],
    device: str = "auto",
) -> dict[str, Any]:
    from synthscale.evaluate.runner import evaluate_run
    from synthscale.train.location import relocate

    run_cfg = from_dict(RunConfig, run_config, source="evaluate stage")
    # a run trained before the study moved still names the old autoencoder and cache folders
    relocate(run_dir, run_cfg)
    scored_by = load_instruments(instruments, run_cfg.data, cache_root, instrument_options, device)
    eval_settings = from_dict(EvalSettings, settings, source="evaluate stage")
    records = evaluate_run(run_dir, scored_by, eval_settings, device=device, progress=False)
    return {"records": len(records), "run_dir": run_dir}
