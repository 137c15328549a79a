"""The in-domain attribute probe: a small CNN that reads a shapes scene back into facts, trained once per dataset.

No pretrained network knows this domain, so the evaluators are trained on it, from renders with exact labels.
The probe reads each of the 3×3 grid cells (the dataset puts every object wholly inside one cell) with one shared
CNN: occupied?, and if so the object's shape, colour and size. A scene of 0–3 objects is decodable from the
cells, and so are what a caption can ask for: count (occupied cells), position (the cell) and relations (the
cells of two objects). Sharing one reader over nine cells gives nine labelled examples per render, which is
why a few thousand steps on one CPU thread suffice.

The probe's penultimate features, averaged over the cells, with each cell's occupancy probability, serve the
Fréchet distance (`evaluate/fid.py`): "fd-probe" compares what objects look like and where they are.

Training data are fresh renders, never the generators' items: the `train` split of the dataset drawn with a
probe-only seed (so pixels come from the train region of the image hash, never a val/test image), mixed with
renders of the held-out colour×shape pairs, which the generators never see but the probe must read. Counting
scenes are included whenever the config has them. The probe is cached under `cache_root/probe-<hash>/` by a hash
of the dataset's distribution (not its size: a study's data-size axis shares one probe) and the probe config.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from synthscale import atomic
from synthscale.compute.device import pick_device
from synthscale.config import ConfigError, DataConfig, ProbeConfig, canonical, config_hash, to_dict
from synthscale.progress import progress_bar

PROBE_VERSION = 1  # bump when the architecture or the training recipe changes, so old caches are not reused
CELLS = 9  # the dataset's 3×3 grid, raster order: cell k is (row k // 3, col k % 3)
PROBE_SEED_OFFSET = 7_919_000  # the probe's renders come from seed + this, a stream no generator config uses
# which DataConfig fields change what a scene looks like (sizes do not: item i is the same at any split size)
DISTRIBUTION_FIELDS = ("dataset", "resolution", "seed", "objects", "counting", "background", "holdout")


def _vocab():
    from synthscale.data.shapes import COLOURS, SHAPES, SIZES

    return SHAPES, tuple(COLOURS), SIZES


# ---------------------------------------------------------------------------------------------- images and labels


def as_uint8_nhwc(images: Any) -> torch.Tensor:
    """Images as uint8 [N, H, W, 3]. Accepts numpy or torch, NHWC or NCHW, uint8 or float in [0, 1]; floats are
    rounded and clamped (a decoder's slight overshoot is clipped, as a PNG would)."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images.detach().cpu()
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[-1]):
        raise ValueError(f"images must be [N, H, W, 3] or [N, 3, H, W], got shape {tuple(x.shape)}")
    if x.shape[-1] != 3:  # NCHW → NHWC
        x = x.permute(0, 2, 3, 1)
    if x.dtype == torch.uint8:
        return x.contiguous()
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {x.dtype}")
    if x.numel() and (x.min() < -0.25 or x.max() > 1.25):
        raise ValueError(
            f"float images must lie in [0, 1] (got min {x.min():.3g}, max {x.max():.3g}); "
            "map [-1, 1] outputs with (x + 1) / 2 or pass uint8"
        )
    return (x.float() * 255).round().clamp(0, 255).to(torch.uint8).contiguous()


def cell_targets(attributes: Sequence[dict]) -> dict[str, torch.Tensor]:
    """Per-cell labels from dataset attributes: occupied [N, 9] in {0, 1}; shape/colour/size [N, 9] class
    indices, -100 (ignored by cross-entropy) where the cell is empty."""
    shapes, colours, sizes = _vocab()
    n = len(attributes)
    occ = torch.zeros(n, CELLS, dtype=torch.long)
    out = {k: torch.full((n, CELLS), -100, dtype=torch.long) for k in ("shape", "colour", "size")}
    for i, a in enumerate(attributes):
        for o in a["objects"]:
            k = 3 * o["row"] + o["col"]
            occ[i, k] = 1
            out["shape"][i, k] = shapes.index(o["shape"])
            out["colour"][i, k] = colours.index(o["colour"])
            out["size"][i, k] = sizes.index(o["size"])
    return {"occupied": occ, **out}


# ---------------------------------------------------------------------------------------------- the network


def _cell_windows(resolution: int) -> tuple[int, list[int]]:
    """Crop side and the 3 crop starts (on the image padded by 1 px) that cover each grid cell with a margin.
    Cells are resolution/3 px, not whole pixels at 16/32/64; a crop one pixel wider than a cell, centred on it,
    holds the whole object (objects keep a 1-px gap inside their cell)."""
    cell = resolution / 3
    side = math.ceil(cell) + 1
    starts = [math.floor((k + 0.5) * cell - side / 2 + 0.5) + 1 for k in range(3)]
    assert starts[0] >= 0 and starts[-1] + side <= resolution + 2, (resolution, side, starts)
    return side, starts


class AttributeProbe(nn.Module):
    """Reads a scene cell by cell.

    `forward(uint8 [N, H, W, 3])` → logits per cell; `features` → [N, feature_dim + 9].
    """

    HEADS = ("occupied", "shape", "colour", "size")

    def __init__(self, resolution: int, cfg: ProbeConfig):
        super().__init__()
        shapes, colours, sizes = _vocab()
        self.resolution = resolution
        self.side, self.starts = _cell_windows(resolution)
        w = cfg.width

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        # one cell crop [B, 3, side, side] → [B, 2w, 3, 3]; full resolution first: small shapes differ by a pixel.
        # At 64 px a 2× box filter first makes a cell look as at 32 px (where this reader is exact) at ¼ the cost.
        self.trunk = nn.Sequential(
            nn.AvgPool2d(2) if resolution >= 64 else nn.Identity(),
            *conv(3, w),
            *conv(w, w),
            nn.MaxPool2d(2),
            *conv(w, 2 * w),
            *conv(2 * w, 2 * w),
            nn.AdaptiveMaxPool2d(3),
        )
        self.mlp = nn.Sequential(  # the penultimate layer: feature_dim per cell
            nn.Flatten(), nn.Linear(2 * w * 9, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, cfg.feature_dim), nn.ReLU()
        )
        self.sizes = {"occupied": 2, "shape": len(shapes), "colour": len(colours), "size": len(sizes)}
        self.head = nn.Linear(cfg.feature_dim, sum(self.sizes.values()))
        self.num_features = cfg.feature_dim + CELLS  # see `features`
        self.key, self.meta = "unsaved", {}  # set when trained or loaded: records name the probe by its key

    def _cells(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 [N, H, W, 3] → normalised crops [N·9, 3, side, side], raster order of cells."""
        x = as_uint8_nhwc(images)
        if x.shape[1:3] != (self.resolution, self.resolution):
            raise ValueError(
                f"the probe reads {self.resolution}×{self.resolution} images, got {x.shape[1]}×{x.shape[2]}; "
                "evaluate at the dataset's resolution"
            )
        x = x.to(self.head.weight.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # [N, 3, H, W] in [-1, 1]
        x = F.pad(x, (1, 1, 1, 1), mode="replicate")  # the background continues past the frame
        s = self.side
        crops = [x[:, :, r : r + s, c : c + s] for r in self.starts for c in self.starts]
        return torch.stack(crops, 1).flatten(0, 1)

    def cell_features(self, images) -> torch.Tensor:
        """[N, 9, feature_dim]."""
        crops = self._cells(images)
        n = crops.shape[0] // CELLS
        return self.mlp(self.trunk(crops)).view(n, CELLS, -1)

    def forward(self, images) -> dict[str, torch.Tensor]:
        """Per-cell logits: occupied [N, 9, 2], shape [N, 9, 4], colour [N, 9, 6], size [N, 9, 2]."""
        logits = self.head(self.cell_features(images))
        return dict(zip(self.sizes, logits.split(list(self.sizes.values()), dim=-1)))

    def _scene_features(self, images) -> torch.Tensor:
        cells = self.cell_features(images)  # [N, 9, feature_dim]
        occupied = self.head(cells)[..., :2].softmax(-1)[..., 1]  # [N, 9] P(object in cell)
        return torch.cat([cells.mean(1), occupied], 1)

    @torch.no_grad()
    def features(self, images, batch_size: int = 512) -> torch.Tensor:
        """The Fréchet-distance features, float32 [N, feature_dim + 9] on the CPU: penultimate features averaged
        over the nine cells (what the objects look like) and each cell's occupancy probability (where they are).
        Averaging keeps the sampling noise of a 500–1000-image Fréchet distance low: nine concatenated per-cell
        vectors, mostly empty cells, gave real-vs-real′ distances a quarter of real-vs-channel-shuffled; the
        average gives 1/25–1/30."""
        x = as_uint8_nhwc(images)
        was_training = self.training
        self.eval()
        out = [self._scene_features(x[i : i + batch_size]).cpu() for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.num_features)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 512) -> dict[str, torch.Tensor]:
        """Per-cell decisions, long [N, 9] each on the CPU: occupied (0/1), shape, colour, size (class indices)."""
        x = as_uint8_nhwc(images)
        was_training = self.training
        self.eval()
        parts = []
        for i in range(0, len(x), batch_size):
            logits = self(x[i : i + batch_size])
            parts.append({k: v.argmax(-1).cpu() for k, v in logits.items()})
        self.train(was_training)
        if not parts:
            return {k: torch.zeros(0, CELLS, dtype=torch.long) for k in self.HEADS}
        return {k: torch.cat([p[k] for p in parts]) for k in self.HEADS}

    def scenes(self, images, batch_size: int = 512) -> list[list[dict[str, Any]]]:
        """What the probe sees: per image, its objects in raster order as {"shape", "colour", "size", "row", "col"}."""
        return decode_scenes(self.predict(images, batch_size))


def decode_scenes(pred: dict[str, torch.Tensor]) -> list[list[dict[str, Any]]]:
    shapes, colours, sizes = _vocab()
    occ, sh, co, si = (pred[k].tolist() for k in AttributeProbe.HEADS)
    scenes = []
    for i in range(len(occ)):
        scenes.append(
            [
                {
                    "shape": shapes[sh[i][k]],
                    "colour": colours[co[i][k]],
                    "size": sizes[si[i][k]],
                    "row": k // 3,
                    "col": k % 3,
                }
                for k in range(CELLS)
                if occ[i][k]
            ]
        )
    return scenes


def probe_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Occupancy on every cell; shape, colour, size only where an object is (targets are -100 elsewhere)."""
    loss = logits["occupied"].new_zeros(())
    for k in AttributeProbe.HEADS:
        loss = loss + F.cross_entropy(logits[k].flatten(0, 1), targets[k].flatten(), ignore_index=-100)
    return loss


# ---------------------------------------------------------------------------------------------- training data


def probe_key(data_cfg: DataConfig, probe_cfg: ProbeConfig) -> str:
    """Cache key: what the scenes look like (not how many a split holds) + the probe recipe."""
    data = {k: getattr(data_cfg, k) for k in DISTRIBUTION_FIELDS}
    return config_hash({"data": data, "probe": canonical(probe_cfg), "version": PROBE_VERSION})


def _check_data(data_cfg: DataConfig) -> None:
    if data_cfg.dataset != "shapes":
        raise ConfigError(
            f"attribute probes need exact scene labels, which only data.dataset 'shapes' has (got "
            f"{data_cfg.dataset!r}); for your own images use Inception FID / CLIP score (synthscale.evaluate.reference)"
        )


class ProbeRenders:
    """The probe's own stream of labelled renders: batch k is the same on every machine, and no item of it is a
    generator's training item (another seed) or a val/test image (train region of the image hash)."""

    def __init__(self, data_cfg: DataConfig, probe_cfg: ProbeConfig, total: int):
        from synthscale.data.shapes import ShapesDataset

        _check_data(data_cfg)
        fresh = dataclasses.replace(
            data_cfg, seed=data_cfg.seed + PROBE_SEED_OFFSET + probe_cfg.seed, size=total, holdout_size=total
        )
        self.seen = ShapesDataset(fresh, "train")
        self.held = ShapesDataset(fresh, "holdout") if data_cfg.holdout else None
        self.holdout_every = 0
        if self.held is not None and probe_cfg.holdout_fraction > 0:
            self.holdout_every = max(1, round(1 / probe_cfg.holdout_fraction))

    def item(self, i: int) -> dict[str, Any]:
        """Render i of the stream: every `holdout_every`-th shows a held-out pair."""
        return (self.held if self.holdout_every and i % self.holdout_every == 0 else self.seen)[i]

    def batch(self, start: int, n: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        items = [self.item(i) for i in range(start, start + n)]
        images = torch.from_numpy(np.stack([it["image"] for it in items]))
        return images, cell_targets([it["attributes"] for it in items])


def real_renders(data_cfg: DataConfig, split: str, n: int, start: int = 0) -> tuple[np.ndarray, list[dict], list[str]]:
    """n items of a split of `data_cfg` (any n: items do not depend on the split's configured size)."""
    from synthscale.data.shapes import ShapesDataset

    _check_data(data_cfg)
    size_field = {"train": "size", "val": "val_size", "test": "test_size", "holdout": "holdout_size"}[split]
    ds = ShapesDataset(dataclasses.replace(data_cfg, **{size_field: start + n}), split)
    items = [ds[i] for i in range(start, start + n)]
    if not items:
        return np.zeros((0, data_cfg.resolution, data_cfg.resolution, 3), np.uint8), [], []
    return np.stack([it["image"] for it in items]), [it["attributes"] for it in items], [it["caption"] for it in items]


# ---------------------------------------------------------------------------------------------- train, cache, load


def cell_accuracy(probe: AttributeProbe, images, attributes: Sequence[dict]) -> dict[str, float]:
    """Per-cell reading accuracy: occupancy over all cells; shape/colour/size over occupied cells."""
    pred, tgt = probe.predict(images), cell_targets(attributes)
    out = {"occupied": (pred["occupied"] == tgt["occupied"]).float().mean().item()}
    mask = tgt["occupied"].bool()
    for k in ("shape", "colour", "size"):
        out[k] = (pred[k][mask] == tgt[k][mask]).float().mean().item() if mask.any() else float("nan")
    return out


def train_probe(
    data_cfg: DataConfig, probe_cfg: ProbeConfig, progress: bool = True, device=None
) -> tuple[AttributeProbe, dict]:
    """Train a probe from scratch on fresh renders on `device` (default: CUDA when present, else the CPU);
    returns it and a summary (time, final loss)."""
    _check_data(data_cfg)
    if probe_cfg.steps < 1 or probe_cfg.batch_size < 1:
        raise ConfigError(
            f"probe.steps and probe.batch_size must be ≥ 1, got {probe_cfg.steps}, {probe_cfg.batch_size}"
        )
    device = pick_device(device)
    torch.manual_seed(probe_cfg.seed)
    probe = AttributeProbe(data_cfg.resolution, probe_cfg).to(device)
    renders = ProbeRenders(data_cfg, probe_cfg, probe_cfg.steps * probe_cfg.batch_size)
    opt = torch.optim.AdamW(probe.parameters(), lr=probe_cfg.lr, weight_decay=probe_cfg.weight_decay)
    warmup = max(1, probe_cfg.steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 0: short runs still end converged
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, probe_cfg.steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    t0, cpu0, ema = time.perf_counter(), time.process_time(), None
    bar = progress_bar(range(probe_cfg.steps), desc="probe", unit="step", enabled=progress, leave=False)
    probe.train()
    for step in bar:
        images, targets = renders.batch(step * probe_cfg.batch_size, probe_cfg.batch_size)
        loss = probe_loss(probe(images), {k: t.to(device) for k, t in targets.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{ema:.4f}")
    probe.eval()
    return probe, {
        "train_seconds": time.perf_counter() - t0,
        "train_cpu_seconds": time.process_time() - cpu0,
        "final_loss_ema": ema,
        "train_images": probe_cfg.steps * probe_cfg.batch_size,
        "threads": torch.get_num_threads(),
        "device": str(device),
    }


def probe_ceiling(probe: AttributeProbe, data_cfg: DataConfig, n: int) -> dict[str, Any]:
    """The probe's accuracy on held-out real renders (the test split and the held-out-combination split of the
    dataset config): per cell, and as the prompt-following metrics would score real images (their ceiling)."""
    from synthscale.evaluate.alignment import prompt_following

    out: dict[str, Any] = {}
    for split in ("test", "holdout") if data_cfg.holdout else ("test",):
        images, attrs, _ = real_renders(data_cfg, split, n)
        scores = prompt_following(probe, images, attrs, n_boot=0)
        out[split] = {
            "n": n,
            "cell": cell_accuracy(probe, images, attrs),
            **{k: v for k, v in scores.items() if not k.endswith(("_lo", "_hi"))},
        }
    return out


def probe_dir(data_cfg: DataConfig, cache_root: str | Path, probe_cfg: ProbeConfig | None = None) -> Path:
    probe_cfg = probe_cfg or ProbeConfig()
    return Path(cache_root) / f"probe-{probe_key(data_cfg, probe_cfg)}"


def save_probe(probe: AttributeProbe, folder: str | Path, meta: dict[str, Any]) -> None:
    """Weights first, then the JSON that names them: a folder with probe.json is complete."""
    folder = Path(folder)
    atomic.save_safetensors(folder / "probe.safetensors", probe.state_dict(), metadata={"key": meta["key"]})
    atomic.write_json(folder / "probe.json", meta)


def load_probe(folder: str | Path, device=None) -> AttributeProbe:
    """The probe saved in `folder`, on `device` (default: CUDA when present, else the CPU)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights = folder / "probe.json", folder / "probe.safetensors"
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no complete probe in {folder} (needs probe.json and probe.safetensors)")
    meta = json.loads(meta_path.read_text())
    from synthscale.config import from_dict

    probe = AttributeProbe(meta["resolution"], from_dict(ProbeConfig, meta["probe"], source=str(meta_path)))
    try:
        probe.load_state_dict(load_file(str(weights)))
    except Exception as e:  # truncated or foreign file: say which, and how to recover
        raise ValueError(f"cannot read the probe weights {weights} ({e}); delete {folder} to train it again") from e
    probe.to(pick_device(device)).eval()
    probe.key, probe.meta = meta["key"], meta
    return probe


def load_or_train_probe(
    data_cfg: DataConfig,
    cache_root: str | Path,
    probe_cfg: ProbeConfig | None = None,
    progress: bool = True,
    device=None,
) -> AttributeProbe:
    """The probe for this dataset config: loaded from `cache_root/probe-<key>/` if trained before, else trained on
    fresh renders (progress bar), scored on held-out renders and saved atomically. `probe.key` names it
    ("probe:<key>" is the extractor name records carry) and `probe.meta["ceiling"]` holds its accuracies."""
    probe_cfg = probe_cfg or ProbeConfig()
    _check_data(data_cfg)
    folder = probe_dir(data_cfg, cache_root, probe_cfg)
    if (folder / "probe.json").is_file() and (folder / "probe.safetensors").is_file():
        return load_probe(folder, device)  # (weights without their JSON: an interrupted save, trained again below)
    probe, summary = train_probe(data_cfg, probe_cfg, progress=progress, device=device)
    key = probe_key(data_cfg, probe_cfg)
    probe.key = key
    meta = {
        "key": key,
        "version": PROBE_VERSION,
        "resolution": data_cfg.resolution,
        "data": {k: getattr(data_cfg, k) for k in DISTRIBUTION_FIELDS},
        "probe": to_dict(probe_cfg),
        "train": summary,
        "ceiling": probe_ceiling(probe, data_cfg, probe_cfg.eval_items),
    }
    probe.meta = meta
    save_probe(probe, folder, meta)
    return probe


def format_ceiling(meta: dict[str, Any]) -> str:
    """A probe's training summary and ceiling as a small table."""
    train = meta["train"]
    lines = [
        f"probe:{meta['key']}  {meta['resolution']} px  trained on {train['train_images']} renders in "
        f"{train['train_seconds']:.0f} s ({train['train_cpu_seconds']:.0f} CPU s, {train['threads']} thread"
        f"{'s' if train['threads'] > 1 else ''})"
    ]
    for split, c in meta["ceiling"].items():
        accs = "  ".join(f"{k[len('attr_acc_') :]} {v:.4f}" for k, v in c.items() if k.startswith("attr_acc_"))
        cells = "  ".join(f"{k} {v:.4f}" for k, v in c["cell"].items())
        lines.append(f"  {split:<8} n={c['n']}  whole prompt {c['prompt_acc']:.4f}  {accs}")
        lines.append(f"  {'':<8} per cell: {cells}")
    return "\n".join(lines)
