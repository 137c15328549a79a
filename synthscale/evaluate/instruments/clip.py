"""CLIP score and R-precision from a CLIP model at a local path (`clip:/path/to/folder`, a transformers
`save_pretrained` folder); nothing is downloaded. Needs the `clip` extra (transformers).

clipscore_clip is CLIP score as torchmetrics and Hessel et al. define it, 100 × max(cosine, 0), here per image
with a bootstrap interval; rprec_clip is R-precision (AttnGAN) on the CLIP embeddings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthscale.config import ConfigError, DataConfig
from synthscale.evaluate.instruments import Instrument, Prompts
from synthscale.evaluate.probes import as_uint8_nhwc


class ClipInstrument(Instrument):
    kind = "clip"
    label = "CLIP (pretrained)"
    precedence = 1
    following = "rprec_clip"  # in [0, 1] like every prompt-following number the findings compare
    batch_size = 64

    def __init__(self, folder: Path, device=None):
        from synthscale.evaluate.reference import _digest, load_clip

        self.folder, self.device = Path(folder), torch.device(device or "cpu")
        self.model, self.processor = load_clip(self.folder)
        self.model.to(self.device)
        super().__init__(f"clip:{_digest(self.folder)}")

    @classmethod
    def check(cls, arg: str | None, data_cfg: DataConfig) -> None:
        if not arg:
            raise ConfigError("the clip instrument needs its model folder: 'clip:/path/to/save_pretrained/folder'")
        if not (Path(arg) / "config.json").is_file():
            raise ConfigError(
                f"instrument clip:{arg}: no {Path(arg) / 'config.json'}; expected a CLIP model folder written by "
                "transformers' save_pretrained (config.json, weights, tokenizer and preprocessor files)"
            )
        try:
            import transformers  # noqa: F401
        except ImportError:
            raise ConfigError("instrument clip: needs transformers: pip install 'synthscale[clip]'") from None

    @classmethod
    def key(cls, arg: str | None, data_cfg: DataConfig, options) -> str:
        from synthscale.evaluate.reference import _digest

        return _digest(Path(arg))

    @classmethod
    def open(cls, arg, data_cfg: DataConfig, cache_root: Path, options, progress: bool, device) -> ClipInstrument:
        cls.check(arg, data_cfg)
        return cls(Path(arg), device)

    @torch.no_grad()
    def embed_images(self, images) -> torch.Tensor:
        x = as_uint8_nhwc(images)
        parts = []
        for i in range(0, len(x), self.batch_size):
            batch = self.processor(images=list(x[i : i + self.batch_size].numpy()), return_tensors="pt")
            parts.append(self.model.get_image_features(pixel_values=batch["pixel_values"].to(self.device)).cpu())
        return torch.cat(parts)

    @torch.no_grad()
    def embed_captions(self, captions: list[str]) -> torch.Tensor:
        parts = []
        for i in range(0, len(captions), self.batch_size):
            tok = self.processor(
                text=captions[i : i + self.batch_size], return_tensors="pt", padding=True, truncation=True
            )
            ids, mask = tok["input_ids"].to(self.device), tok["attention_mask"].to(self.device)
            parts.append(self.model.get_text_features(input_ids=ids, attention_mask=mask).cpu())
        return torch.cat(parts)

    def follow(self, images: np.ndarray, prompts: Prompts, seed: int) -> dict[str, float]:
        from synthscale.evaluate.alignment import _mean_ci
        from synthscale.evaluate.retrieval import UndefinedMetric, _unit, distinct_captions, r_precision

        test = prompts.test
        img = self.embed_images(images[: len(test)])
        distinct, ids = distinct_captions(test.captions)
        cap = self.embed_captions(distinct)
        cos = (_unit(img) * _unit(cap[ids])).sum(-1).numpy()
        mean, lo, hi = _mean_ci(100 * np.maximum(cos, 0), 1000, seed, "clipscore_clip")
        out = {"clipscore_clip": mean, "clipscore_clip_lo": lo, "clipscore_clip_hi": hi}
        try:
            out.update(r_precision(img, cap, ids, seed=seed, name="rprec_clip"))
        except UndefinedMetric:
            pass  # every caption the same: only the score (the record's describe() says why)
        return out

    def describe(self) -> dict[str, Any]:
        return {"model": self.folder.name, "bootstrap": 1000, "ci": 0.95}
