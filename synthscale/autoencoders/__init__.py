"""Image autoencoders: continuous (KL) for diffusion, discrete (LFQ, FSQ) for the token methods.

A trained autoencoder is a folder: `model.safetensors` (every tensor, including the latent shift/scale) and
`config.json` (the `AutoencoderConfig` and the weights hash). `load_autoencoder(dir)` rebuilds it and refuses a
missing, corrupt or mismatched checkpoint with a `CheckpointError` that says what to do.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from synthscale import atomic
from synthscale.autoencoders.base import Autoencoder, AutoencoderError, CheckpointError, ImageSizeError
from synthscale.config import AutoencoderConfig, ConfigError, config_hash, from_stored, to_dict
from synthscale.data.latents import LatentSpec
from synthscale.data.pixels import to_tensor, to_uint8

__all__ = [
    "Autoencoder",
    "AutoencoderError",
    "CheckpointError",
    "ImageSizeError",
    "build_autoencoder",
    "latent_spec_of",
    "load_autoencoder",
    "save_autoencoder",
    "validate",
    "to_tensor",
    "to_uint8",
]

WEIGHTS, CONFIG = "model.safetensors", "config.json"
FORMAT = 1


def validate(cfg: AutoencoderConfig) -> None:
    """Check a config before any work, with messages that name the key and the fix."""
    if cfg.kind == "diffusers":  # pretrained: no trunk to check; the folder is checked when it loads
        if not cfg.path:
            raise ConfigError(f"autoencoder {cfg.name!r}: kind diffusers needs path=<a local AutoencoderKL folder>")
        return
    f = cfg.downsample
    if f < 1 or f & (f - 1):
        raise ConfigError(f"autoencoder {cfg.name!r}: downsample must be a power of two (2, 4, 8), got {f}")
    levels = int(math.log2(f)) + 1
    if len(cfg.widths) != levels:
        raise ConfigError(
            f"autoencoder {cfg.name!r}: downsample {f} needs {levels} widths (one per resolution level), got "
            f"widths={cfg.widths}"
        )
    if any(w < 1 for w in cfg.widths) or cfg.blocks < 1:
        raise ConfigError(f"autoencoder {cfg.name!r}: widths and blocks must be ≥ 1, got {cfg.widths}, {cfg.blocks}")
    if cfg.data.resolution % f:
        raise ConfigError(
            f"autoencoder {cfg.name!r}: data.resolution {cfg.data.resolution} is not divisible by downsample {f}"
        )
    if cfg.kind == "fsq":
        if cfg.latent_channels != len(cfg.fsq_levels):
            raise ConfigError(
                f"autoencoder {cfg.name!r}: fsq uses one channel per level, so latent_channels must be "
                f"len(fsq_levels)={len(cfg.fsq_levels)}, got {cfg.latent_channels}"
            )
        if any(level < 2 for level in cfg.fsq_levels):
            raise ConfigError(f"autoencoder {cfg.name!r}: fsq_levels must all be ≥ 2, got {cfg.fsq_levels}")
    if cfg.kind == "lfq" and not 1 <= cfg.latent_channels <= 20:
        raise ConfigError(
            f"autoencoder {cfg.name!r}: lfq latent_channels is the bits per token (vocabulary 2^c); use 1..20, "
            f"got {cfg.latent_channels}"
        )
    if cfg.latent_channels < 1:
        raise ConfigError(f"autoencoder {cfg.name!r}: latent_channels must be ≥ 1, got {cfg.latent_channels}")
    t = cfg.train
    if not t.foreground_weight > 0:
        raise ConfigError(
            f"autoencoder {cfg.name!r}: train.foreground_weight must be > 0 (1 = a plain mean), "
            f"got {t.foreground_weight}"
        )
    if t.steps < 1 or t.batch_size < 1 or t.lr <= 0 or t.warmup < 0:
        raise ConfigError(
            f"autoencoder {cfg.name!r}: train.steps, train.batch_size and train.lr must be positive "
            f"(got {t.steps}, {t.batch_size}, {t.lr}) and train.warmup ≥ 0"
        )


def build_autoencoder(cfg: AutoencoderConfig) -> Autoencoder:
    """A freshly initialised autoencoder for a config (uses torch's global RNG for the initial weights)."""
    validate(cfg)
    if cfg.kind == "diffusers":  # pretrained and frozen: loaded from its folder, never initialised here
        from synthscale.autoencoders.diffusers_kl import DiffusersKL

        return DiffusersKL(cfg.path, name=cfg.name, cfg=cfg)
    if cfg.kind == "kl":
        from synthscale.autoencoders.kl import KLAutoencoder

        return KLAutoencoder(cfg)
    from synthscale.autoencoders.discrete import DiscreteAutoencoder

    return DiscreteAutoencoder(cfg)


def save_autoencoder(model: Autoencoder, out: str | Path, info: dict | None = None) -> Path:
    """Write weights then config atomically; the config records the weights hash, so a torn pair is detected."""
    out = Path(out)
    weights_hash = model.weights_hash
    state = model.saved_state() if hasattr(model, "saved_state") else model.state_dict()  # diffusers: shift/scale
    atomic.save_safetensors(out / WEIGHTS, state, metadata={"name": model.name, "weights_hash": weights_hash})
    atomic.write_json(
        out / CONFIG,
        {
            "format": FORMAT,
            "name": model.name,
            "kind": model.kind,
            "weights_hash": weights_hash,
            "config_hash": config_hash(model.cfg),
            "config": to_dict(model.cfg),
            **({"info": info} if info else {}),
        },
    )
    return out


def latent_spec_of(cfg: AutoencoderConfig) -> LatentSpec:
    """The latents an autoencoder config makes at its data resolution, without weights (for planning)."""
    if cfg.kind == "diffusers":
        from synthscale.autoencoders.diffusers_kl import diffusers_latent_spec

        return diffusers_latent_spec(cfg.path, cfg.data.resolution)
    with torch.device("meta"):  # only the shape is needed: no weights are allocated
        return build_autoencoder(cfg).latent_spec(cfg.data.resolution)


def load_autoencoder(path: str | Path) -> Autoencoder:
    """Rebuild a trained autoencoder from its folder, in eval mode. Raises `CheckpointError` when the folder,
    its config or its weights are missing, unreadable, corrupt or do not match each other."""
    from safetensors.torch import load_file

    path = Path(path)
    retrain = f"retrain it with `synthscale autoencoder train --config <config.yaml> --out {path}`"
    if not path.is_dir():
        raise CheckpointError(f"no autoencoder at {path}: not a folder; {retrain}")
    cfg_file, weights_file = path / CONFIG, path / WEIGHTS
    for f in (cfg_file, weights_file):
        if not f.is_file():
            raise CheckpointError(f"autoencoder folder {path} has no {f.name}; {retrain}")
    try:
        meta = json.loads(cfg_file.read_text())
        cfg = from_stored(AutoencoderConfig, meta["config"], source=str(cfg_file))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{cfg_file} is corrupt or from another version ({e}); {retrain}") from e
    try:
        state = load_file(str(weights_file))
    except Exception as e:  # safetensors raises SafetensorError / OSError for truncated or garbled files
        raise CheckpointError(f"{weights_file} is corrupt or truncated ({type(e).__name__}: {e}); {retrain}") from e
    with torch.random.fork_rng(devices=[]):  # the throwaway initial weights must not move the caller's RNG
        model = build_autoencoder(cfg)
    expected = model.saved_state() if hasattr(model, "saved_state") else model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights_file} does not match its config {cfg.name!r} (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, wrong shape {wrong[:3]}); the folder mixes two autoencoders — {retrain}"
        )
    model.load_state_dict(state, strict=not hasattr(model, "saved_state"))
    if meta.get("weights_hash") != model.weights_hash:
        raise CheckpointError(
            f"{weights_file} has weights hash {model.weights_hash} but {cfg_file.name} records "
            f"{meta.get('weights_hash')}: the files are from different trainings or were modified; {retrain}"
        )
    return model.eval()
