"""The one config schema: dataclasses, loaded from YAML, overridden with dotted `--set key=value`, hashed.

Every stage's config is a dataclass here. `load(cls, path, overrides)` validates as it builds: an unknown key or a
wrong type raises `ConfigError` naming the key, the file and the valid choices, so a typo never silently falls
back to a default. `config_hash` is a stable content hash used to key every cached stage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

T = TypeVar("T")
# PyYAML reads 3e-4 (no dot) as a string; numeric fields accept such scientific notation.
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class ConfigError(ValueError):
    """A config that cannot be used as written; the message names the key, where it came from and the fix."""


# ---------------------------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    """A captioned image dataset. `shapes` is the embedded procedural default (exact labels, no download)."""

    dataset: Literal["shapes", "folder", "shards"] = "shapes"
    path: str | None = None  # folder / shards: where the user's data lies
    resolution: int = 32  # shapes: 16, 32 or 64
    size: int = 20000  # unique training items: the study's data-size axis
    val_size: int = 1000
    test_size: int = 1000
    holdout_size: int = 1000  # items of the held-out-combination split
    seed: int = 0
    objects: list[int] = field(default_factory=lambda: [1, 2])  # object counts drawn uniformly
    counting: bool = False  # also 0..3 identical objects with a counting caption
    background: str = "black"  # a colour name or "#rrggbb"
    # colour×shape pairs never shown in train/val/test; they form the `holdout` split instead
    holdout: list[list[str]] = field(default_factory=lambda: [["red", "triangle"], ["blue", "circle"]])
    max_caption_tokens: int = 24


@dataclass
class ModelConfig:
    """The shared Transformer backbone (`model/`); `size` names a preset in `model/sizes.py`."""

    size: str = "4x128"
    patch_size: int = 1  # continuous latents are patchified p×p into tokens
    text_layers: int = 2  # depth of the caption encoder (same width as the backbone)


@dataclass
class ObjectiveConfig:
    """What differs between paradigms; `name` picks from the objectives registry."""

    name: Literal["flow", "masked", "autoregressive"] = "flow"
    cfg_dropout: float = 0.1  # caption replaced by the learned null with this probability
    # flow matching
    t_mean: float = 0.0  # logit-normal t: sigmoid(N(mean, std))
    t_std: float = 1.0
    sampler: Literal["euler", "heun"] = "euler"
    # token samplers
    temperature: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    mask_temperature: float = 4.5  # masked decoding: initial Gumbel noise scale, annealed to 0


# ---------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list[{_type_name(inner)}]"
    if origin is dict:
        return "dict"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check `value` against the annotation `tp`, converting the lossless cases (int → float, dict → dataclass)."""
    origin = typing.get_origin(tp)

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(
            f"{source}: key '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__}){extra}"
        )

    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{source}: key '{key}' is {value!r}; valid choices: {', '.join(map(repr, choices))}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise fail()
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError as e:
                errors.append(e)
        raise fail()
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise fail()
        (inner,) = typing.get_args(tp) or (Any,)
        return [_convert(v, inner, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise fail(" (a mapping of its fields)")
        return from_dict(tp, value, source=source, prefix=f"{key}.")
    if tp is bool:
        if not isinstance(value, bool):
            raise fail()
        return value
    if tp in (int, float) and isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value) if tp is float or not value.strip().lstrip("+-").isdigit() else int(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
                return int(value)  # YAML writes 1e4 as a float
            raise fail()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise fail()
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise fail()
    return value


def from_dict(cls: type[T], data: dict[str, Any], source: str = "<config>", prefix: str = "") -> T:
    """Build dataclass `cls` from a mapping, rejecting unknown keys and wrong types with a helpful message."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: '{prefix.rstrip('.') or 'top level'}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{source}: unknown key '{prefix}{unknown[0]}'; valid keys{' under ' + prefix.rstrip('.') if prefix else ''}: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {name: _convert(value, hints[name], prefix + name, source) for name, value in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {prefix.rstrip('.') or cls.__name__}: {e}") from e
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.lr=3e-4' → (['train', 'lr'], 0.0003). The value is read as YAML, so lists and bools work."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. --set train.lr=3e-4")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key; expected key=value, e.g. --set train.lr=3e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({e})") from e
    return key.split("."), value


def apply_overrides(cls: type, data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted overrides to a raw mapping, checking each key exists in the schema of `cls`."""
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node, schema = data, cls
        for depth, part in enumerate(path):
            fields = {f.name: f for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
            if fields is None:
                raise ConfigError(f"--set {text}: '{'.'.join(path[:depth])}' is not a section, it has no key '{part}'")
            if part not in fields:
                raise ConfigError(
                    f"--set {text}: unknown key '{'.'.join(path[: depth + 1])}'; valid keys: {', '.join(sorted(fields))}"
                )
            hint = typing.get_type_hints(schema)[part]
            if depth == len(path) - 1:
                node[part] = value
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict):
                    raise ConfigError(f"--set {text}: '{'.'.join(path[: depth + 1])}' is not a section")
                schema = hint
    return data


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data


def load(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Load `cls` from a YAML file (or defaults when `path` is None) and apply `--set` overrides."""
    data = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    if overrides:
        data = apply_overrides(cls, data, overrides)
        source += " with --set " + " ".join(overrides)
    return from_dict(cls, data, source=source)


def config_hash(cfg: Any, length: int = 16) -> str:
    """Stable content hash of a config (dataclass or plain data): same content, same hash, on every machine."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]
