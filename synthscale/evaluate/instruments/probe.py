"""The attribute probe as an instrument (shapes only: it reads exact scene labels). Its numbers keep their names:
fd_probe, kid, kid_std (quality) and prompt_acc, attr_acc_<fact>, task_acc_<task>, holdout_* (prompt following)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from synthscale.config import ConfigError, DataConfig, ProbeConfig, load
from synthscale.evaluate.instruments import Instrument, Prompts


def probe_config(options: list[str] | dict | None) -> ProbeConfig:
    """The probe recipe from --set style overrides (a study's probe_overrides)."""
    return load(ProbeConfig, None, list(options or []))


class ProbeInstrument(Instrument):
    kind = "probe"
    label = "attribute probe"
    precedence = 0  # exact labels: decides wherever it applies
    quality_names = {"fd": "fd_probe", "kid": "kid"}
    following = "prompt_acc"

    def __init__(self, probe):
        super().__init__(f"probe:{probe.key}", probe.meta)
        self.probe = probe

    @classmethod
    def check(cls, arg: str | None, data_cfg: DataConfig) -> None:
        if data_cfg.dataset != "shapes":
            raise ConfigError(
                f"the attribute probe needs exact scene labels, which only data.dataset 'shapes' has (got "
                f"{data_cfg.dataset!r}); score your images with the in-domain encoder ('encoder') or pretrained "
                "'inception:PATH' / 'clip:PATH' in evaluation.instruments"
            )
        if arg:
            raise ConfigError(f"the probe instrument takes no argument, got 'probe:{arg}'")

    @classmethod
    def key(cls, arg: str | None, data_cfg: DataConfig, options) -> str:
        from synthscale.evaluate.probes import probe_key

        return probe_key(data_cfg, probe_config(options))

    @classmethod
    def open(cls, arg, data_cfg: DataConfig, cache_root: Path, options, progress: bool, device) -> ProbeInstrument:
        from synthscale.evaluate.probes import load_or_train_probe

        cls.check(arg, data_cfg)
        return cls(load_or_train_probe(data_cfg, cache_root, probe_config(options), progress=progress, device=device))

    def features(self, images):
        return self.probe.features(images)

    def follow(self, images: np.ndarray, prompts: Prompts, seed: int) -> dict[str, float]:
        from synthscale.evaluate.alignment import prompt_following

        return prompt_following(self.probe, images, prompts.attributes, prompts.holdout_pairs, seed=seed)

    def describe(self) -> dict[str, Any]:
        return {"bootstrap": 1000, "ci": 0.95, "probe_ceiling": self.meta.get("ceiling")}
