"""Instruments: what a study scores generated images with. Each is a small plug-in (one file, one line in
`REGISTRY`) that gives image quality — a Fréchet distance and KID over its own image features — and/or prompt
following (image–caption agreement), and names itself by content hash in every record.

    instrument = open_instrument("encoder", data_cfg, cache_root)      # trains (once) or loads
    bound = instrument.bind(real_test_images, seed=0)                   # the quality reference, computed once
    metrics = bound.score(images, Prompts.of(captions, attributes))     # any image set: samples, reconstructions
    metrics = score_images([bound, ...], images, prompts)               # several instruments at once

The runner, the study and the report never branch on an instrument's name: they read `kind`, `precedence`,
`quality` and `following` (the metric names an instrument decides with) from the instrument or its record.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from synthscale.config import ConfigError, DataConfig


@dataclass
class Prompts:
    """What a set of images was made from. The first `n_test` are test prompts: quality compares those images
    with the real test images; the rest (held-out colour×shape prompts on shapes) count for prompt following."""

    captions: list[str]
    attributes: list[dict[str, Any]] = field(default_factory=list)  # dataset attributes ({} for user data)
    holdout_pairs: list = field(default_factory=list)  # the dataset's held-out colour×shape pairs (shapes)
    n_test: int | None = None  # None: every prompt is a test prompt

    def __post_init__(self):
        if not self.attributes:
            self.attributes = [{} for _ in self.captions]
        if len(self.attributes) != len(self.captions):
            raise ValueError(f"got {len(self.captions)} captions but {len(self.attributes)} attribute sets")
        if self.n_test is None:
            self.n_test = len(self.captions)

    def __len__(self) -> int:
        return len(self.captions)

    @property
    def test(self) -> Prompts:
        return Prompts(self.captions[: self.n_test], self.attributes[: self.n_test], self.holdout_pairs)


class Instrument(abc.ABC):
    """One way of scoring images. Subclasses set the class attributes and implement `features` (quality) and/or
    `follow` (prompt following), and the class methods that check, key and open them."""

    kind: ClassVar[str]  # the registry name: the head of a spec such as "clip:/models/clip"
    label: ClassVar[str]  # how a reader calls it, e.g. "in-domain encoder"
    # which instrument decides when several measure the same thing: 0 exact labels, 1 pretrained, 2 in-domain
    precedence: ClassVar[int]
    # the metric names this instrument writes; `quality` (lower is better) and `following` (higher is better)
    # are the ones a finding decides with. None: the instrument does not measure it.
    quality_names: ClassVar[dict[str, str] | None] = None  # {"fd": "fd_<kind>", "kid": "kid_<kind>"}
    following: ClassVar[str | None] = None
    resize: ClassVar[str] = "none"

    def __init__(self, name: str, meta: dict[str, Any] | None = None):
        self.name = name  # "<kind>:<content hash>", what records name it by
        self.meta = meta or {}
        self.ceiling: dict[str, Any] | None = None  # real images' scores (ceiling.py), when measured

    @property
    def quality(self) -> str | None:
        return self.quality_names["fd"] if self.quality_names else None

    @property
    def quality_check(self) -> str | None:
        """The second quality number (KID) the findings check the Fréchet distance against."""
        return self.quality_names["kid"] if self.quality_names else None

    # ------------------------------------------------------------------------------------------ plug-in hooks

    @classmethod
    def check(cls, arg: str | None, data_cfg: DataConfig) -> None:
        """Refuse a spec that cannot work, when the study is planned (before any training): raise ConfigError."""
        return None

    @classmethod
    @abc.abstractmethod
    def key(cls, arg: str | None, data_cfg: DataConfig, options: dict[str, Any]) -> str:
        """Content hash of what decides the instrument (weights, training data distribution, recipe, version)."""

    @classmethod
    @abc.abstractmethod
    def open(
        cls, arg: str | None, data_cfg: DataConfig, cache_root: Path, options: dict[str, Any], progress: bool, device
    ) -> Instrument:
        """The instrument on `device`, loaded from `cache_root` or trained/built there first."""

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] → float [N, D] for the Fréchet distance and KID (instruments with quality_names)."""
        raise NotImplementedError(f"{self.kind} measures no image quality")

    def follow(self, images: np.ndarray, prompts: Prompts, seed: int) -> dict[str, float]:
        """Prompt-following metrics (each with _lo/_hi 95 % bounds) of images made from `prompts`; {} if none."""
        return {}

    def describe(self) -> dict[str, Any]:
        """What records say about the instrument besides its numbers."""
        return {}

    # ------------------------------------------------------------------------------------------ shared

    def bind(self, real_images, seed: int = 0) -> BoundInstrument:
        """The instrument with its quality reference (real test images) computed once."""
        return BoundInstrument(self, real_images, seed)

    def card(self) -> dict[str, Any]:
        """The instrument's identity as records carry it: name, kind, what decides, how it ranks."""
        return {
            "name": self.name,
            "kind": self.kind,
            "label": self.label,
            "precedence": self.precedence,
            "quality": self.quality,
            "quality_check": self.quality_check,
            "following": self.following,
        }


class BoundInstrument:
    """An instrument and its real reference set: `score(images, prompts)` → its named metrics."""

    def __init__(self, instrument: Instrument, real_images, seed: int = 0):
        from synthscale.evaluate.fid import FeatureDistance

        self.instrument, self.seed = instrument, seed
        self.distance = None
        if instrument.quality_names:
            self.distance = FeatureDistance(instrument.features, instrument.name, real_images, seed=seed)
            self.distance.resize = instrument.resize

    def score(self, images, prompts: Prompts) -> dict[str, float]:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images for {len(prompts)} prompts; pass one image per prompt")
        out = self.quality(images[: prompts.n_test]) if self.distance is not None else {}
        out.update(self.instrument.follow(images, prompts, self.seed))
        return out

    def quality(self, images) -> dict[str, float]:
        """The Fréchet distance and KID of `images` against the reference, named by the instrument: fd → its
        quality name, kid → its KID name, with their suffixes (_lo, _hi, _std)."""
        names = self.instrument.quality_names
        out = {}
        for key, value in self.distance.score(images).items():
            head = "fd" if key.startswith("fd") else "kid"
            out[names[head] + key[len(head) :]] = value
        return out

    def describe(self) -> dict[str, Any]:
        quality = self.distance.instruments() if self.distance is not None else None
        return {
            **self.instrument.card(),
            **self.instrument.describe(),
            "quality_reference": quality,
            "ceiling": self.instrument.ceiling,
        }


def score_images(bound: Sequence[BoundInstrument], images, prompts: Prompts) -> dict[str, float]:
    """Every instrument's metrics of one image set (generated samples, reconstructions or real images)."""
    out: dict[str, float] = {}
    for b in bound:
        scores = b.score(images, prompts)
        clash = set(scores) & set(out)
        if clash:
            raise ValueError(f"instrument {b.instrument.name} writes metrics another one wrote: {sorted(clash)}")
        out.update(scores)
    return out


# ---------------------------------------------------------------------------------------------- registry and specs


def _registry() -> dict[str, type[Instrument]]:
    from synthscale.evaluate.instruments.clip import ClipInstrument
    from synthscale.evaluate.instruments.encoder import EncoderInstrument
    from synthscale.evaluate.instruments.inception import InceptionInstrument
    from synthscale.evaluate.instruments.probe import ProbeInstrument

    return {c.kind: c for c in (ProbeInstrument, EncoderInstrument, InceptionInstrument, ClipInstrument)}


def quality_metrics() -> set[str]:
    """Every registered instrument's Fréchet-distance and KID metric names (smaller is better)."""
    return {m for c in _registry().values() if c.quality_names for m in c.quality_names.values()}


def parse_spec(spec: str) -> tuple[type[Instrument], str | None]:
    """'encoder' → (EncoderInstrument, None); 'clip:/models/clip' → (ClipInstrument, '/models/clip')."""
    registry = _registry()
    kind, sep, arg = spec.partition(":")
    if kind not in registry:
        raise ConfigError(
            f"unknown instrument {spec!r}; valid: {', '.join(registry)} (pretrained ones take a local path, "
            "e.g. inception:/weights/pt_inception.pth, clip:/models/clip-vit-b32)"
        )
    return registry[kind], (arg or None) if sep else None


def default_specs(data_cfg: DataConfig) -> list[str]:
    """Shapes: the exact attribute probe and the in-domain encoder; user data: the in-domain encoder."""
    return ["probe", "encoder"] if data_cfg.dataset == "shapes" else ["encoder"]


def resolve_specs(specs: Sequence[str], data_cfg: DataConfig) -> list[str]:
    """The study's instrument specs (its defaults when none are named), each checked; duplicates refused."""
    specs = list(specs) or default_specs(data_cfg)
    kinds = [parse_spec(s)[0].kind for s in specs]
    if len(set(kinds)) != len(kinds):
        raise ConfigError(f"evaluation.instruments names an instrument kind twice: {specs}")
    for s in specs:
        cls, arg = parse_spec(s)
        cls.check(arg, data_cfg)
    return specs


def instrument_key(spec: str, data_cfg: DataConfig, options: dict[str, Any]) -> str:
    cls, arg = parse_spec(spec)
    return cls.key(arg, data_cfg, options.get(cls.kind, {}))


def open_instrument(
    spec: str,
    data_cfg: DataConfig,
    cache_root: str | Path,
    options: dict[str, Any] | None = None,
    progress: bool = False,
    device=None,
) -> Instrument:
    """The instrument a spec names, trained or loaded under `cache_root`, on `device` (default: CUDA when present,
    else the CPU). `options`: per kind, its --set style recipe overrides (e.g. {"encoder": ["steps=200"]})."""
    from synthscale.compute.device import pick_device

    cls, arg = parse_spec(spec)
    return cls.open(arg, data_cfg, Path(cache_root), (options or {}).get(cls.kind, []), progress, pick_device(device))


def deciding(instruments: Sequence[Instrument | dict], role: str) -> Instrument | dict | None:
    """The instrument that decides `role` ("quality" or "following"): exact labels first, pretrained next,
    in-domain otherwise. Works on instruments or on the cards records carry."""

    def get(x, k):
        return x[k] if isinstance(x, dict) else getattr(x, k)

    able = [i for i in instruments if get(i, role)]
    return min(able, key=lambda i: get(i, "precedence"), default=None)
