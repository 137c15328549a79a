"""Inception FID/KID from torch-fidelity's weights file at a local path (`inception:/path/to/weights.pth`);
nothing is downloaded. Needs the `reference-metrics` extra (torch-fidelity, which brings torchvision)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from synthscale.config import ConfigError, DataConfig
from synthscale.evaluate.instruments import Instrument

WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"  # torch-fidelity's TF-compatible InceptionV3 state dict


class InceptionInstrument(Instrument):
    kind = "inception"
    label = "Inception (pretrained)"
    precedence = 1
    quality_names = {"fd": "fd_inception", "kid": "kid_inception"}
    resize = "299 bilinear (tf1 compatible, antialias=False)"

    def __init__(self, weights: Path, device=None):
        from synthscale.evaluate.reference import _digest, inception_extractor

        self.weights = Path(weights)
        self.extract, _ = inception_extractor(self.weights, device=device)
        super().__init__(f"inception:{_digest(self.weights)}")

    @classmethod
    def check(cls, arg: str | None, data_cfg: DataConfig) -> None:
        if not arg:
            raise ConfigError(f"the inception instrument needs its weights file: 'inception:/path/to/{WEIGHTS}'")
        if not Path(arg).is_file():
            raise ConfigError(
                f"instrument inception:{arg}: no file at {arg}; expected torch-fidelity's InceptionV3 weights "
                f"({WEIGHTS}, a PyTorch state dict) there — nothing is downloaded at run time"
            )
        try:
            import torch_fidelity  # noqa: F401
        except ImportError:
            raise ConfigError(
                "instrument inception: needs torch-fidelity: pip install 'synthscale[reference-metrics]' (it brings "
                "torchvision, which is not a core dependency)"
            ) from None

    @classmethod
    def key(cls, arg: str | None, data_cfg: DataConfig, options) -> str:
        from synthscale.evaluate.reference import _digest

        return _digest(Path(arg))

    @classmethod
    def open(cls, arg, data_cfg: DataConfig, cache_root: Path, options, progress: bool, device) -> InceptionInstrument:
        cls.check(arg, data_cfg)
        return cls(Path(arg), device)

    def features(self, images):
        return self.extract(images)

    def describe(self) -> dict[str, Any]:
        return {"weights": self.weights.name}
