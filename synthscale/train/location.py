"""Where a run's latents live. A run config names its autoencoder folder and latent-cache root by path: those are
locations, not identity, so a study copied or moved to another disk must keep its runs. The run folder records what
its autoencoder path pointed at (`latents.json`: name and weights hash); the run may resume, or be evaluated, with
new locations when the autoencoder found there is the one it recorded. `relocate` checks that and points the run's
config.json at the new places.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from synthscale import atomic
from synthscale.config import ConfigError, RunConfig

LOCATION_KEYS = ("autoencoder", "cache_root")  # RunConfig fields that say where, not what
RECORD = "latents.json"


def record_latents(run_dir: Path, identity: dict[str, Any] | None) -> None:
    """Write what the run's latents come from (`{"name", "weights_hash"}` of its autoencoder), once."""
    if identity is not None and not (run_dir / RECORD).exists():
        atomic.write_json(run_dir / RECORD, {"autoencoder": identity})


def relocate(run_dir: str | Path, run_cfg: RunConfig) -> bool:
    """Point `run_dir`'s config.json at `run_cfg`'s locations when they differ from the recorded ones, after
    checking that the autoencoder now at `run_cfg.autoencoder` is the one the run was trained on. Returns whether
    config.json was rewritten; raises ConfigError (naming both autoencoders) when it is another one."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return False  # a fresh run folder: nothing to move
    moved = {k: getattr(run_cfg, k) for k in LOCATION_KEYS if saved.get(k) != getattr(run_cfg, k)}
    if not moved:
        return False
    was = ", ".join(f"{k}={saved.get(k)!r}" for k in moved)
    try:
        recorded = json.loads((run_dir / RECORD).read_text())["autoencoder"]
    except (OSError, ValueError, KeyError):
        raise ConfigError(
            f"{run_dir} was made with {was} and does not record which autoencoder that was (it predates "
            f"{RECORD}); resume or evaluate it with those paths"
        ) from None
    now = _identity(run_cfg.autoencoder) if run_cfg.autoencoder is not None else None
    if now != recorded:
        found = f"{now['name']!r} (weights {now['weights_hash']})" if now else "no autoencoder"
        raise ConfigError(
            f"{run_dir} was trained on latents of autoencoder {recorded.get('name')!r} (weights "
            f"{recorded.get('weights_hash')}), but autoencoder={run_cfg.autoencoder!r} gives {found}; "
            "point autoencoder at the folder it was trained with"
        )
    atomic.write_json(path, {**saved, **moved})
    return True


def _identity(folder: str) -> dict[str, Any]:
    from synthscale.autoencoders import load_autoencoder  # raises, naming the folder, when it holds none

    model = load_autoencoder(folder)
    return {"name": model.name, "weights_hash": model.weights_hash}
