"""The in-domain image–caption encoder: a small CNN image tower and a caption tower over the dataset's tokenizer
(or its frozen text encoder, `data.text_encoder`), trained contrastively — CLIP's symmetric InfoNCE with a learned
temperature — on the dataset's **train** split only. It needs no labels and no pretrained weights, so any folder of
captioned images gets quality and prompt-following numbers:

- fd_encoder, kid_encoder (kid_encoder_std): Fréchet distance / KID on the image tower's pooled features;
- clipscore_encoder: CLIP-score style, 100 × mean cosine of each image with its own caption (95 % interval);
- rprec_encoder: R-precision (AttnGAN): own caption ranked first among it and 99 other distinct test captions.

Captions that repeat (class labels) are positives of each other inside a batch, so InfoNCE never pushes an image
away from its own caption's duplicate. It is cached under `cache_root/encoder-<key>/`, keyed by the dataset's
distribution (every field but the split sizes, so a study's data-size axis shares one encoder), its config and
`ENCODER_VERSION`; a cache of another version is trained again, never reused.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from synthscale import atomic
from synthscale.compute.device import pick_device
from synthscale.config import ConfigError, DataConfig, EncoderConfig, canonical, config_hash, from_dict, load, to_dict
from synthscale.evaluate.instruments import Instrument, Prompts
from synthscale.evaluate.probes import as_uint8_nhwc
from synthscale.progress import progress_bar

ENCODER_VERSION = 1  # bump when the architecture or the recipe changes: older caches are then trained again
SIZE_FIELDS = ("size", "val_size", "test_size", "holdout_size")  # how many items, not what they look like


def encoder_config(options: list[str] | None) -> EncoderConfig:
    return load(EncoderConfig, None, list(options or []))


def encoder_key(data_cfg: DataConfig, cfg: EncoderConfig) -> str:
    data = {k: v for k, v in canonical(data_cfg).items() if k not in SIZE_FIELDS}
    return config_hash({"data": data, "encoder": canonical(cfg), "version": ENCODER_VERSION})


# ---------------------------------------------------------------------------------------------- the network


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, 1),
        nn.BatchNorm2d(c_out),
        nn.GELU(),
    )


class ImageTower(nn.Module):
    """uint8 [N, H, W, 3] → pooled features [N, 8·width] (the FD features) and an embedding [N, embed_dim]."""

    def __init__(self, width: int, embed_dim: int):
        super().__init__()
        w = width
        layers = [_block(3, w, 1)]
        for c_in, c_out in ((w, 2 * w), (2 * w, 4 * w), (4 * w, 8 * w)):
            layers += [_block(c_in, c_out, 2), _block(c_out, c_out, 1)]
        self.trunk = nn.Sequential(*layers)
        self.feature_dim = 8 * w
        self.proj = nn.Linear(self.feature_dim, embed_dim)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = images.permute(0, 3, 1, 2).float() / 127.5 - 1  # [N, 3, H, W] in [-1, 1]
        feats = self.trunk(x).mean(dim=(2, 3))  # [N, F]
        return feats, self.proj(feats)


class CaptionTower(nn.Module):
    """Caption token ids [B, L] → embedding [B, embed_dim]: a learned Transformer over the dataset's tokenizer,
    or the frozen pretrained text encoder of `data.text_encoder` with a trained projection; mean over tokens."""

    def __init__(self, data_cfg: DataConfig, tokenizer, cfg: EncoderConfig):
        super().__init__()
        self.pad_id = tokenizer.pad_id
        if data_cfg.text_encoder:
            from synthscale.model.pretrained_text import FrozenTextEncoder

            self.text = FrozenTextEncoder(data_cfg.text_encoder, tokenizer.max_length, width=cfg.text_width)
            self.frozen = True
        else:
            from synthscale.model.text_encoder import TextEncoder

            heads = max(1, cfg.text_width // 32)
            self.text = TextEncoder(
                tokenizer.vocab_size, tokenizer.max_length, cfg.text_width, cfg.text_layers, heads, tokenizer.pad_id
            )
            self.frozen = False
        self.norm = nn.LayerNorm(cfg.text_width)
        self.proj = nn.Linear(cfg.text_width, cfg.embed_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        valid = ids != self.pad_id
        valid[:, 0] = True  # an empty caption still has one position
        h = self.text(ids, ~valid) if self.frozen else self.text(ids)[0]  # [B, L, W]
        pooled = (h * valid[..., None]).sum(1) / valid.sum(1, keepdim=True)
        return self.proj(self.norm(pooled))


class ImageCaptionEncoder(nn.Module):
    def __init__(self, data_cfg: DataConfig, tokenizer, cfg: EncoderConfig):
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.image = ImageTower(cfg.width, cfg.embed_dim)
        self.caption = CaptionTower(data_cfg, tokenizer, cfg)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature

    @torch.no_grad()
    def image_features(self, images, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """(pooled features, embeddings) of uint8 images, in batches."""
        x, dev = as_uint8_nhwc(images), self.logit_scale.device
        parts = [self.image(x[i : i + batch_size].to(dev)) for i in range(0, len(x), batch_size)]
        if not parts:
            return torch.zeros(0, self.image.feature_dim), torch.zeros(0, self.cfg.embed_dim)
        return torch.cat([p[0] for p in parts]).cpu(), torch.cat([p[1] for p in parts]).cpu()

    @torch.no_grad()
    def caption_embeddings(self, captions: list[str], batch_size: int = 512) -> torch.Tensor:
        ids, dev = self.tokenizer.encode(captions), self.logit_scale.device
        return torch.cat([self.caption(ids[i : i + batch_size].to(dev)).cpu() for i in range(0, len(ids), batch_size)])


def contrastive_loss(img: torch.Tensor, txt: torch.Tensor, caption_ids: torch.Tensor, logit_scale) -> torch.Tensor:
    """Symmetric InfoNCE; items whose captions are identical are all positives (soft targets over them)."""
    logits = logit_scale.clamp(max=math.log(100)).exp() * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T
    same = (caption_ids[:, None] == caption_ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    i2t = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    t2i = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return (i2t + t2i) / 2


def _shift(images: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Each image translated by up to max_shift pixels (edges replicated): uint8 NHWC in and out."""
    if max_shift == 0:
        return images
    n, h, w, _ = images.shape
    padded = F.pad(images.permute(0, 3, 1, 2).float(), (max_shift,) * 4, mode="replicate")
    dy, dx = (torch.randint(0, 2 * max_shift + 1, (n,), generator=gen) for _ in range(2))
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    return out.permute(0, 2, 3, 1).to(torch.uint8)


# ---------------------------------------------------------------------------------------------- training


def train_fingerprint(data_cfg: DataConfig, cfg: EncoderConfig) -> str | None:
    """A hash of which train items (keys and captions) a user dataset holds, so an encoder cached for a folder
    whose contents changed under the same path is trained again; None for procedural data (its config decides)."""
    if data_cfg.dataset == "shapes":
        return None
    from synthscale.data import get_dataset

    ds = get_dataset(dataclasses.replace(data_cfg, size=cfg.train_items), "train")
    return config_hash([[r.key, r.caption] for r in ds.items])


def train_items(data_cfg: DataConfig, cfg: EncoderConfig) -> tuple[np.ndarray, list[str]]:
    """The train split's images and captions (at most cfg.train_items): never val or test."""
    from synthscale.data import get_dataset

    ds = get_dataset(dataclasses.replace(data_cfg, size=cfg.train_items), "train")
    items = [ds[i] for i in range(len(ds))]
    if len(items) < 2:
        raise ConfigError(
            f"the encoder needs at least 2 train images, the train split of {data_cfg.path} has {len(items)}"
        )
    return np.stack([it["image"] for it in items]), [it["caption"] for it in items]


def train_encoder(
    data_cfg: DataConfig, cfg: EncoderConfig, progress: bool = False, device=None
) -> tuple[ImageCaptionEncoder, dict]:
    from synthscale.data.text import tokenizer_for
    from synthscale.evaluate.retrieval import distinct_captions

    torch.manual_seed(cfg.seed)
    t0, cpu0 = time.perf_counter(), time.process_time()
    images, captions = train_items(data_cfg, cfg)
    tokenizer = tokenizer_for(data_cfg)
    device = pick_device(device)
    model = ImageCaptionEncoder(data_cfg, tokenizer, cfg).to(device)
    distinct, ids = distinct_captions(captions)
    summary: dict[str, Any] = {"train_items": len(images), "distinct_captions": len(distinct)}
    if len(distinct) < 2:  # no contrast to learn from: the towers keep their seeded initialisation
        summary.update(trained=False, note="every train caption is the same: no contrastive signal, quality only")
    else:
        x, tokens, ids = torch.from_numpy(images), tokenizer.encode(captions), torch.from_numpy(ids)
        summary.update(trained=True, final_loss_ema=_fit(model, x, tokens, ids, cfg, progress))
    model.eval()
    summary.update(
        train_seconds=time.perf_counter() - t0,
        train_cpu_seconds=time.process_time() - cpu0,
        threads=torch.get_num_threads(),
        device=str(device),
    )
    return model, summary


def _fit(model, images, tokens, ids, cfg: EncoderConfig, progress: bool) -> float:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 0
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, cfg.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)
    order, pos, ema = torch.randperm(len(images), generator=gen), 0, None
    bs = min(cfg.batch_size, len(images))
    model.train()
    bar = progress_bar(range(cfg.steps), desc="encoder", unit="step", enabled=progress, leave=False)
    for step in bar:
        if pos + bs > len(order):  # a new epoch
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx, pos = order[pos : pos + bs], pos + bs
        dev = model.logit_scale.device
        _, img = model.image(_shift(images[idx], cfg.shift, gen).to(dev))
        loss = contrastive_loss(img, model.caption(tokens[idx].to(dev)), ids[idx].to(dev), model.logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{ema:.3f}")
    return ema


# ---------------------------------------------------------------------------------------------- cache


def encoder_dir(data_cfg: DataConfig, cache_root: str | Path, cfg: EncoderConfig) -> Path:
    return Path(cache_root) / f"encoder-{encoder_key(data_cfg, cfg)}"


def save_encoder(model: ImageCaptionEncoder, folder: Path, meta: dict[str, Any]) -> None:
    """Weights and vocabulary first, then the JSON that names them: a folder with encoder.json is complete."""
    if hasattr(model.tokenizer, "save"):
        model.tokenizer.save(folder / "tokenizer.json")
    atomic.save_safetensors(folder / "encoder.safetensors", model.state_dict(), metadata={"key": meta["key"]})
    atomic.write_json(folder / "encoder.json", meta)


class StaleInstrument(ValueError):
    """An instrument cache written by another version of its code."""


def load_encoder(folder: str | Path, device=None) -> ImageCaptionEncoder:
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights = folder / "encoder.json", folder / "encoder.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no complete encoder in {folder} (needs encoder.json and encoder.safetensors)")
    meta = json.loads(meta_path.read_text())
    if meta.get("version") != ENCODER_VERSION:
        raise StaleInstrument(
            f"the encoder in {folder} was made by encoder version {meta.get('version')}, this code is version "
            f"{ENCODER_VERSION}; it is trained again (delete the folder to free its space)"
        )
    data_cfg = from_dict(DataConfig, meta["data_config"], source=str(meta_path))
    cfg = from_dict(EncoderConfig, meta["encoder"], source=str(meta_path))
    if (folder / "tokenizer.json").is_file():
        from synthscale.data.text import WordTokenizer

        tokenizer = WordTokenizer.load(folder / "tokenizer.json")
    else:
        from synthscale.data.text import tokenizer_for

        tokenizer = tokenizer_for(data_cfg)
    model = ImageCaptionEncoder(data_cfg, tokenizer, cfg)
    try:
        model.load_state_dict(load_file(str(weights)))
    except Exception as e:  # truncated or foreign file: say which, and how to recover
        raise ValueError(f"cannot read the encoder weights {weights} ({e}); delete {folder} to train it again") from e
    model.to(pick_device(device)).eval()
    model.key, model.meta = meta["key"], meta
    return model


def load_or_train_encoder(
    data_cfg: DataConfig, cache_root: str | Path, cfg: EncoderConfig | None = None, progress: bool = False, device=None
) -> ImageCaptionEncoder:
    """The encoder of this dataset distribution and recipe on `device` (default: CUDA when present, else the CPU):
    loaded from its cache folder, else trained on the train split and saved there atomically."""
    cfg = cfg or EncoderConfig()
    folder = encoder_dir(data_cfg, cache_root, cfg)
    fingerprint = train_fingerprint(data_cfg, cfg)
    if (folder / "encoder.json").is_file() and (folder / "encoder.safetensors").is_file():
        try:
            model = load_encoder(folder, device)
            if model.meta.get("train_fingerprint") == fingerprint:
                return model
        except StaleInstrument:
            pass  # an older version's cache, or the folder's images changed: train again, overwriting it
    model, summary = train_encoder(data_cfg, cfg, progress, device)
    key = encoder_key(data_cfg, cfg)
    meta = {
        "key": key,
        "version": ENCODER_VERSION,
        "resolution": data_cfg.resolution,
        "data_config": to_dict(dataclasses.replace(data_cfg, size=cfg.train_items)),
        "encoder": to_dict(cfg),
        "train": summary,
        "train_fingerprint": fingerprint,
    }
    save_encoder(model, folder, meta)
    model.key, model.meta = key, meta
    return model


# ---------------------------------------------------------------------------------------------- the instrument


class EncoderInstrument(Instrument):
    kind = "encoder"
    label = "in-domain encoder"
    precedence = 2
    quality_names = {"fd": "fd_encoder", "kid": "kid_encoder"}
    following = "rprec_encoder"

    def __init__(self, model: ImageCaptionEncoder):
        super().__init__(f"encoder:{model.key}", model.meta)
        self.model = model
        self.notes: list[str] = []
        if not model.meta["train"].get("trained", True):
            self.notes.append(model.meta["train"]["note"])

    @classmethod
    def key(cls, arg: str | None, data_cfg: DataConfig, options) -> str:
        return encoder_key(data_cfg, encoder_config(options))

    @classmethod
    def check(cls, arg: str | None, data_cfg: DataConfig) -> None:
        if arg:
            raise ConfigError(f"the encoder instrument takes no argument, got 'encoder:{arg}'")

    @classmethod
    def open(cls, arg, data_cfg: DataConfig, cache_root: Path, options, progress: bool, device) -> EncoderInstrument:
        return cls(load_or_train_encoder(data_cfg, cache_root, encoder_config(options), progress, device))

    def features(self, images):
        return self.model.image_features(images)[0]

    def follow(self, images: np.ndarray, prompts: Prompts, seed: int) -> dict[str, float]:
        from synthscale.evaluate.retrieval import UndefinedMetric, cosine_score, distinct_captions, r_precision

        if not self.model.meta["train"].get("trained", True):
            return {}  # an untrained caption tower says nothing about prompts (see notes)
        test = prompts.test
        _, img = self.model.image_features(images[: len(test)])
        distinct, ids = distinct_captions(test.captions)
        cap = self.model.caption_embeddings(distinct)
        out = cosine_score(img, cap[ids], seed=seed, name="clipscore_encoder")
        try:
            out.update(r_precision(img, cap, ids, seed=seed, name="rprec_encoder"))
        except UndefinedMetric as e:
            note = f"R-precision not scored: {e} (every test caption is the same)"
            if note not in self.notes:
                self.notes.append(note)
        return out

    def describe(self) -> dict[str, Any]:
        return {"train": self.meta.get("train"), "bootstrap": 1000, "ci": 0.95, "notes": list(self.notes)}
