"""Reference metrics for real data, from weights the user supplies at a local path (nothing is downloaded):

- Inception FID / KID: torch-fidelity's TF-compatible InceptionV3 (via torchmetrics) from a local weights file,
  resized with `antialias=False` as the original TF implementation did. Extra: `reference-metrics` (torch-fidelity,
  which brings torchvision; not a core dependency).
- CLIP score: transformers' CLIPModel + CLIPProcessor from a local folder, scored by torchmetrics' CLIPScore.
  Extra: `clip` (transformers).

On the embedded shapes domain these say little (ImageNet/web features on synthetic scenes); there the in-domain
probe (fd-probe, prompt following) is the instrument. Every number names its weights by file content hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from synthscale.evaluate.fid import FeatureDistance
from synthscale.evaluate.probes import as_uint8_nhwc


def _digest(path: Path) -> str:
    """Short content hash of a weights file or folder: what records name the instrument by."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- Inception


def inception_extractor(weights: str | Path, antialias: bool = False, device=None):
    """torch-fidelity's InceptionV3 (2048-d pool features) from a local weights file: uint8 NHWC → [N, 2048]."""
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"no Inception weights at {weights}; put torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
            "(a PyTorch state dict) there — nothing is downloaded at run time"
        )
    try:
        import torch_fidelity  # noqa: F401
        from torchmetrics.image.fid import NoTrainInceptionV3
    except ImportError as e:
        raise ImportError(
            "Inception FID needs torch-fidelity: pip install 'synthscale[reference-metrics]' (it brings torchvision, "
            f"which is not a core dependency); on shapes data use fd-probe instead ({e})"
        ) from e
    net = NoTrainInceptionV3(
        name="inception-v3-compat",
        features_list=["2048"],
        feature_extractor_weights_path=str(weights),
        antialias=antialias,
    )

    device = torch.device(device or "cpu")
    net.to(device)

    def extract(x: torch.Tensor) -> torch.Tensor:  # uint8 NCHW in; resized to 299 inside
        return net(as_uint8_nhwc(x).permute(0, 3, 1, 2).contiguous().to(device)).cpu()

    return extract, f"inception-v3-compat:{_digest(weights)}"


def inception_distance(weights: str | Path, real_images, antialias: bool = False, **kwargs) -> FeatureDistance:
    """Inception FID/KID against `real_images`: `.score(images)` → {"fd", "kid", "kid_std"}, `.instruments()` names
    the weights by content hash and the resize."""
    extract, name = inception_extractor(weights, antialias)
    fd = FeatureDistance(extract, name, real_images, **kwargs)
    fd.resize = f"299 bilinear (tf1 compatible, antialias={antialias})"
    return fd


# ---------------------------------------------------------------------------------------------- CLIP score


class _TensorFeatures(nn.Module):
    """CLIPModel whose get_*_features return tensors. transformers ≥ 5 returns a BaseModelOutputWithPooling (the
    projected embedding in `pooler_output`), which torchmetrics ≤ 1.9 would treat as a tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.config = model, model.config

    @staticmethod
    def _tensor(out: Any) -> torch.Tensor:
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    def get_image_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs) -> torch.Tensor:
        return self._tensor(self.model.get_text_features(*args, **kwargs))


def load_clip(model_dir: str | Path):
    """(model, processor) from a local folder saved by `save_pretrained`; never reaches the network."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"no CLIP model at {model_dir} (expected a save_pretrained folder with config.json)")
    try:
        from transformers import CLIPModel, CLIPProcessor
    except ImportError as e:
        raise ImportError(f"CLIP score needs transformers: pip install 'synthscale[clip]' ({e})") from e
    model = CLIPModel.from_pretrained(model_dir, local_files_only=True).eval()
    processor = CLIPProcessor.from_pretrained(model_dir, local_files_only=True)
    return _TensorFeatures(model), processor


class ClipScorer:
    """CLIP score (100 · cosine of image and caption embeddings, mean over pairs, floored at 0) via torchmetrics'
    CLIPScore with a locally loaded model."""

    def __init__(self, model_dir: str | Path, batch_size: int = 64):
        from torchmetrics.multimodal.clip_score import CLIPScore

        self.model_dir, self.batch_size = Path(model_dir), batch_size
        model, processor = load_clip(model_dir)
        self.metric = CLIPScore(model_name_or_path=lambda: (model, processor))
        self.name = f"clip:{self.model_dir.name}:{_digest(self.model_dir)}"
        self.n = 0

    @torch.no_grad()
    def score(self, images, captions: Sequence[str]) -> float:
        x = as_uint8_nhwc(images).permute(0, 3, 1, 2)  # uint8 [N, 3, H, W]: the processor resizes and normalises
        if len(x) != len(captions) or len(x) == 0:
            raise ValueError(
                f"CLIP score needs one caption per image, got {len(x)} images and {len(captions)} captions"
            )
        self.metric.reset()
        for i in range(0, len(x), self.batch_size):
            self.metric.update(list(x[i : i + self.batch_size]), list(captions[i : i + self.batch_size]))
        self.n = len(x)
        return float(self.metric.compute())

    def instruments(self) -> dict[str, Any]:
        return {"clip_model": self.name, "clip_n": self.n}
