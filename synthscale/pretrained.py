"""Loading pretrained parts from local folders only: offline, safetensors only, clear errors.

Nothing here downloads: the Hugging Face libraries are switched offline before they are imported and every
`from_pretrained` passes `local_files_only=True`. Weights load only from safetensors (`use_safetensors=True`),
so no pickle from a model folder is ever executed: nothing untrusted is unpickled.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from pathlib import Path
from types import ModuleType

from synthscale.config import ConfigError

EXTRAS = {"transformers": "pretrained", "diffusers": "pretrained"}  # module → the pip extra that installs it


class MissingExtra(ConfigError):
    """An optional dependency is not installed."""


def offline() -> None:
    """Make the Hugging Face libraries refuse the network (set before they are imported; users may override)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def require(module: str, what: str) -> ModuleType:
    """Import an optional dependency, or raise MissingExtra saying which extra installs it."""
    offline()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = EXTRAS.get(module, module)
        raise MissingExtra(
            f"{what} needs the '{module}' package, which is not installed: pip install 'synthscale[{extra}]' "
            f"(or pip install {module}); error was: {e}"
        ) from e


def local_dir(path: str | os.PathLike | None, what: str, key: str) -> Path:
    """A model folder that exists locally, or a ConfigError that says what belongs there."""
    if not path:
        raise ConfigError(f"{what}: {key} is not set; point it at a local model folder (nothing is downloaded)")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"{what}: {key}={str(path)!r} is not a local folder. Models are never downloaded: save the model "
            "with save_pretrained() (or copy its folder) to this machine and point the config at that folder"
        )
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{what}: {folder} has no config.json; is it a model folder written by save_pretrained()?")
    if not any(folder.glob("*.safetensors")):
        raise ConfigError(
            f"{what}: {folder} has no *.safetensors weights. Only safetensors load (pickled .bin files can run "
            "code); convert with model.save_pretrained(folder, safe_serialization=True)"
        )
    return folder


def transformer_dir(path: str | os.PathLike | None, what: str, key: str) -> Path:
    """The transformers model folder inside `path`: the folder itself, or for a sentence-transformers folder
    whose transformer sits in a sub-folder (modules.json names it), that sub-folder."""
    folder = Path(path).expanduser() if path else None
    if folder is not None and folder.is_dir() and not (folder / "config.json").is_file():
        modules = folder / "modules.json"
        if modules.is_file():
            for module in json.loads(modules.read_text()):
                if module.get("type", "").endswith("Transformer") and module.get("path"):
                    return local_dir(folder / module["path"], what, key)
    return local_dir(path, what, key)


def weights_hash(folder: Path, length: int = 16) -> str:
    """Content hash of a model folder's config and safetensors weights (names and bytes, in sorted order)."""
    h = hashlib.sha256()
    for file in sorted([folder / "config.json", *folder.glob("*.safetensors")]):
        h.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]
