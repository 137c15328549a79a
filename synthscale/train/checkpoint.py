"""Checkpoints: safetensors for tensors, JSON for everything else, never a pickle.

    RUN_DIR/checkpoints/step_00001234/
        model.safetensors      raw weights (the module's state_dict names)
        ema.safetensors        EMA weights, same names
        optimizer.safetensors  optimizer state tensors, "state.<param index>.<key>"
        rng.safetensors        torch RNG states of every rank ("cpu.rank0", "cuda.rank0", ...)
        meta.json              step, FLOPs used, data position, milestone, optimizer hyper-parameters, ...,
                               and the sha256 of each file above

A checkpoint is written into a hidden temp folder (every file fsynced) and renamed into place: a crash or a full
disk leaves no half checkpoint under a real name and never touches an earlier one. `meta.json` lists each file's
size and sha256, so truncation or bit rot is detected on load and the checkpoint skipped with a warning.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from synthscale import atomic

FORMAT = 1
META = "meta.json"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint folder that is incomplete, truncated or altered; it is never loaded."""


@dataclass(frozen=True)
class CheckpointInfo:
    path: Path
    step: int
    train_flops: int  # analytic training FLOPs consumed when it was written
    milestone: int | None  # 0, 1, 2, … along the run's milestone checkpoints (None: a resume-only checkpoint)
    milestone_flops: float | None  # the grid point it stands for (train_flops is the first step at or past it)
    is_final: bool  # written when the budget was reached

    @property
    def name(self) -> str:
        return self.path.name


def checkpoint_dir(root: str | os.PathLike, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def save(root: str | os.PathLike, step: int, groups: dict[str, dict[str, torch.Tensor]], meta: dict[str, Any]) -> Path:
    """Write `groups` (name → tensors, one safetensors file each) and `meta` as the checkpoint of `step`."""
    root = Path(root)
    final = checkpoint_dir(root, step)
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = {}
        for name, tensors in groups.items():
            path = tmp / f"{name}.safetensors"
            atomic.save_safetensors(path, tensors)
            files[path.name] = {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        atomic.write_json(tmp / META, {**meta, "format": FORMAT, "step": step, "files": files})
        if final.exists():  # re-reaching a step after resuming from an earlier checkpoint: replace it
            trash = root / f".trash-{final.name}-{os.getpid()}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        atomic._fsync_dir(root)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            raise OSError(e.errno, f"disk full while writing checkpoint {final}; earlier checkpoints are intact") from e
        raise
    return final


def remove_stale(run_dir: str | os.PathLike) -> list[Path]:
    """Delete the temp/trash folders a killed save left behind (never a real checkpoint). Call before training,
    when no other process writes this run."""
    root = Path(run_dir) / "checkpoints"
    stale = (
        [p for p in root.iterdir() if p.is_dir() and p.name.startswith((".tmp-", ".trash-"))] if root.is_dir() else []
    )
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def read_meta(path: str | os.PathLike, verify: bool = True) -> dict[str, Any]:
    """The checkpoint's metadata after checking every file (size always, sha256 when `verify`)."""
    path = Path(path)
    try:
        meta = json.loads((path / META).read_text())
    except (OSError, ValueError) as e:
        raise CorruptCheckpoint(f"{path}: unreadable {META} ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
        raise CorruptCheckpoint(f"{path}: {META} is not a synthscale checkpoint of format {FORMAT}")
    for name, expect in meta["files"].items():
        f = path / name
        if not f.is_file():
            raise CorruptCheckpoint(f"{path}: {name} is missing")
        if f.stat().st_size != expect["bytes"]:
            raise CorruptCheckpoint(
                f"{path}: {name} has {f.stat().st_size} bytes, expected {expect['bytes']} (truncated?)"
            )
        if verify and _sha256(f) != expect["sha256"]:
            raise CorruptCheckpoint(f"{path}: {name} fails its sha256 check (corrupted)")
    return meta


def load_tensors(path: str | os.PathLike, group: str, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """One tensor group of a checkpoint (safetensors: no code runs on load)."""
    from safetensors.torch import load_file

    try:
        return load_file(str(Path(path) / f"{group}.safetensors"), device=str(device))
    except Exception as e:  # safetensors raises its own error types for a bad header
        raise CorruptCheckpoint(f"{path}: {group}.safetensors cannot be read ({e})") from e


def _info(path: Path, meta: dict[str, Any]) -> CheckpointInfo:
    return CheckpointInfo(
        path=path,
        step=int(meta["step"]),
        train_flops=int(meta["train_flops"]),
        milestone=meta.get("milestone"),
        milestone_flops=meta.get("milestone_flops"),
        is_final=bool(meta.get("is_final", False)),
    )


def _candidates(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_")), key=lambda p: p.name)


def list_checkpoints(run_dir: str | os.PathLike, verify: bool = False) -> list[CheckpointInfo]:
    """The run's intact checkpoints, oldest first; incomplete ones are skipped with a warning.
    `verify` also checks every file's sha256 (reads all bytes)."""
    out = []
    for path in _candidates(Path(run_dir) / "checkpoints"):
        try:
            out.append(_info(path, read_meta(path, verify=verify)))
        except CorruptCheckpoint as e:
            warnings.warn(f"skipping checkpoint: {e}", stacklevel=2)
    return out


def latest(run_dir: str | os.PathLike) -> tuple[CheckpointInfo, dict[str, Any]] | None:
    """The newest checkpoint that passes the full check; newer corrupt ones are skipped with a warning."""
    for path in reversed(_candidates(Path(run_dir) / "checkpoints")):
        try:
            meta = read_meta(path, verify=True)
            for group in meta["files"]:  # the header parses too (sha256 guards the rest)
                load_tensors(path, group.removesuffix(".safetensors"))
            return _info(path, meta), meta
        except CorruptCheckpoint as e:
            warnings.warn(f"skipping corrupt checkpoint (using an earlier one): {e}", stacklevel=2)
    return None


def prune(run_dir: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete resume-only checkpoints beyond the newest `keep_last`; milestones, the final checkpoint and the
    newest checkpoint of all are always kept. Returns what was deleted."""
    infos = list_checkpoints(run_dir)
    if not infos:
        return []
    resume_only = [i for i in infos if i.milestone is None and not i.is_final]
    doomed = [i for i in (resume_only[:-keep_last] if keep_last else resume_only) if i.path != infos[-1].path]
    for info in doomed:
        shutil.rmtree(info.path, ignore_errors=True)
    return [i.path for i in doomed]


# ---------------------------------------------------------------------------------------------- optimizer


def optimizer_to_tensors(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state_dict → (tensors for safetensors, JSON-able rest)."""
    tensors, scalars = {}, {}
    for idx, state in state_dict["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int | str, dict[str, Any]] = {}
    # keys are a param index (torch's state_dict) or a dotted parameter name (distributed state dicts)
    for name, value in [(n.removeprefix("state."), v) for n, v in tensors.items()] + list(rest["scalars"].items()):
        idx, key = name.rsplit(".", 1)
        state.setdefault(int(idx) if idx.isdigit() else idx, {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}
