"""The functions a study's stages run, `fn(stage_dir, **kwargs) -> summary`. Each is a thin call into its stage's
module; kwargs are plain JSON data so any executor (a local process, a cluster job) can carry them. `device` is
the study's (`auto`: the GPU a cluster job was given when it has one, else the CPU); training runs use their own
`train.device`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthscale.config import AutoencoderConfig, DataConfig, EvalSettings, ProbeConfig, RunConfig, from_dict


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


def probe_stage(stage_dir: Path, data: dict[str, Any], probe: dict[str, Any], device: str = "auto") -> dict[str, Any]:
    from synthscale.evaluate.probes import load_or_train_probe

    data_cfg = from_dict(DataConfig, data, source="probe stage data")
    probe_cfg = from_dict(ProbeConfig, probe, source="probe stage")
    model = load_or_train_probe(data_cfg, stage_dir, probe_cfg, progress=False, device=device)
    return {"key": model.key, "ceiling": model.meta.get("ceiling")}


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


def evaluate_stage(
    stage_dir: Path,
    run_dir: str,
    probe_dir: str,
    settings: dict[str, Any],
    run_config: dict[str, Any],
    device: str = "auto",
) -> dict[str, Any]:
    from synthscale.evaluate.probes import load_probe
    from synthscale.evaluate.runner import evaluate_run
    from synthscale.train.location import relocate

    # a run trained before the study moved still names the old autoencoder and cache folders
    relocate(run_dir, from_dict(RunConfig, run_config, source="evaluate stage"))
    probe = _find_probe(Path(probe_dir), lambda folder: load_probe(folder, device))
    settings_ = from_dict(EvalSettings, settings, source="evaluate stage")
    records = evaluate_run(run_dir, probe, settings_, device=device, progress=False)
    return {"records": len(records), "run_dir": run_dir}


def _find_probe(folder: Path, load_probe):
    """The probe stage folder holds one trained probe (load_or_train_probe keys a subfolder by its config)."""
    found = sorted(p.parent for p in folder.glob("**/probe.json"))
    if not found:
        raise FileNotFoundError(f"no trained probe under {folder}; the probe stage has not finished")
    return load_probe(found[0])
