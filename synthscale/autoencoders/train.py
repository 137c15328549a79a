"""Train an autoencoder (`synthscale autoencoder train`) and measure its reconstructions (`... eval`).

Training: the training split is rendered once into memory (uint8), then AdamW with linear warm-up and cosine
decay minimises L2 (or L1) reconstruction plus the kind's regulariser (KL, or LFQ entropy + commitment). One
seed fixes the initial weights, the batch order and the KL noise, so the same seed on CPU gives the same weights.

Evaluation: PSNR (per image on the uint8 reconstruction, then averaged), SSIM (torchmetrics, Gaussian 11×11),
mean L1 on [0, 1] pixels, and for discrete autoencoders codebook usage and perplexity of the test tokens.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from synthscale import atomic
from synthscale.autoencoders import Autoencoder, build_autoencoder, load_autoencoder, save_autoencoder
from synthscale.compute.device import pick_device
from synthscale.compute.schedule import warmup_cosine
from synthscale.config import AutoencoderConfig, config_hash
from synthscale.data import get_dataset
from synthscale.data.pixels import to_tensor, to_uint8
from synthscale.progress import progress_bar

TRAIN_LOG, EVAL_JSON, RECON_PNG = "train.json", "eval.json", "reconstructions.png"


def render_split(data_cfg, split: str, limit: int = 0, progress: bool = True) -> np.ndarray:
    """Every image of a split (or the first `limit`), uint8 [N, H, W, 3]."""
    ds = get_dataset(data_cfg, split)
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    if n == 0:
        raise ValueError(f"the {split} split of this data config is empty; raise data.size / data.test_size")
    it = progress_bar(range(n), desc=f"render {split}", unit="img", enabled=progress, leave=False)
    return np.stack([ds[i]["image"] for i in it])


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to cfg.lr over cfg.warmup steps, then cosine decay to 0 at cfg.steps."""
    return warmup_cosine(step, cfg.lr, cfg.warmup, cfg.steps)


def objective(model: Autoencoder, images: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
    """Total training loss and its named parts (floats) for one batch in [-1, 1]."""
    cfg = model.cfg
    recon, aux = model.losses(images, gen)
    err = recon - images
    per_pixel = err.pow(2) if cfg.train.loss == "l2" else err.abs()
    if cfg.train.foreground_weight != 1.0:
        per_pixel = per_pixel * foreground_weights(images, cfg.train.foreground_weight)
    rec = per_pixel.mean()
    weights = {
        "kl": cfg.kl_weight,
        "entropy": cfg.entropy_weight,
        "commit": cfg.commit_weight,
        "fsq_commit": cfg.fsq_commit_weight,
    }
    total = rec + sum(weights[k] * v for k, v in aux.items())
    parts = {"recon": rec.item(), **{k: v.item() for k, v in aux.items()}}
    parts["psnr_batch"] = psnr_of_mse(err.detach().pow(2).mean().item() / 4.0)  # [-1,1] → [0,1] range
    return total, parts


def foreground_weights(images: torch.Tensor, weight: float, tolerance: float = 0.05) -> torch.Tensor:
    """[B, 1, H, W]: `weight` where a pixel differs from its image's per-channel median (the background of a scene
    of small objects) or touches such a pixel, 1 elsewhere. images [B, 3, H, W] in [-1, 1]."""
    background = images.flatten(2).median(dim=2).values[:, :, None, None]  # [B, 3, 1, 1]
    differs = ((images - background).abs().amax(dim=1, keepdim=True) > tolerance).float()
    grown = torch.nn.functional.max_pool2d(differs, 3, stride=1, padding=1)  # edges decide a shape
    return 1.0 + (weight - 1.0) * grown


def psnr_of_mse(mse: float) -> float:
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


def train_step(
    model: Autoencoder, opt: torch.optim.Optimizer, x: torch.Tensor, step: int, t, noise: torch.Generator
) -> tuple[float, dict]:
    """One optimizer step on the batch x [B, 3, H, W] in [-1, 1] at step `step`'s learning rate: (total loss, its
    named parts)."""
    for group in opt.param_groups:
        group["lr"] = lr_at(step, t)
    loss, parts = objective(model, x, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item(), parts


def build_optimizer(model: Autoencoder, t, device: torch.device) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step on a CPU or CUDA device (the same update up to float rounding; on a
    CPU about 1 % of an autoencoder step, docs/results/autoencoder-step.md)."""
    fused = device.type in ("cpu", "cuda")
    return torch.optim.AdamW(
        model.parameters(), lr=t.lr, betas=(0.9, 0.99), weight_decay=t.weight_decay, fused=fused or None
    )


def train_autoencoder(cfg: AutoencoderConfig, out: str | Path, progress: bool = True, device=None) -> dict[str, Any]:
    """Train from scratch on `device` (default: CUDA when present, else the CPU), write the model folder at `out`
    atomically, return the training summary. A pretrained diffusers autoencoder (kind diffusers) is not trained:
    only its latent shift/scale is measured."""
    out, device = Path(out), pick_device(device)
    if cfg.kind == "diffusers":
        return prepare_pretrained(cfg, out, progress, device)
    t = cfg.train
    start = time.perf_counter()
    torch.manual_seed(t.seed)
    model = build_autoencoder(cfg).to(device)  # validates the config before any rendering
    images = torch.from_numpy(render_split(cfg.data, "train", progress=progress))  # uint8 [N, H, W, 3]
    render_s = time.perf_counter() - start
    gen = torch.Generator().manual_seed(t.seed)  # the data order (and on a CPU every draw)
    noise = gen if device.type == "cpu" else torch.Generator(device).manual_seed(t.seed)  # draws on the device
    opt = build_optimizer(model, t, device)
    model.train()
    order, pos = torch.randperm(len(images), generator=gen), 0
    history: list[dict] = []
    bar = progress_bar(range(t.steps), desc=f"train {cfg.name}", unit="step", enabled=progress)
    train_start, train_cpu = time.perf_counter(), time.process_time()
    for step in bar:
        if pos + t.batch_size > len(order):  # a new epoch: reshuffle
            order, pos = torch.randperm(len(images), generator=gen), 0
        idx = order[pos : pos + t.batch_size]
        pos += t.batch_size
        x = to_tensor(images[idx]).to(device)  # [B, 3, H, W] in [-1, 1]
        loss, parts = train_step(model, opt, x, step, t, noise)
        if not math.isfinite(loss):
            raise FloatingPointError(f"{cfg.name}: loss became {loss} at step {step}; lower train.lr")
        if step % 50 == 0 or step == t.steps - 1:
            history.append({"step": step, "lr": lr_at(step, t), **parts})
            bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{parts['psnr_batch']:.1f}")
    train_s = time.perf_counter() - train_start
    train_cpu_s = time.process_time() - train_cpu  # CPU time: what a busy shared machine does not inflate
    model.eval()
    info: dict[str, Any] = {"train_images": len(images)}
    if model.kind == "continuous":
        n = len(images) if t.scale_items <= 0 else min(t.scale_items, len(images))
        batches = (to_tensor(images[i : i + 256]).to(device) for i in range(0, n, 256))
        shift, scale = model.measure_scale(batches)
        info.update(latent_shift=shift, latent_scale=scale, scale_items=n)
    save_autoencoder(model, out, info)
    summary = {
        "name": cfg.name,
        "config_hash": config_hash(cfg),
        "weights_hash": model.weights_hash,
        "steps": t.steps,
        "batch_size": t.batch_size,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "render_s": render_s,
        "train_s": train_s,
        "train_cpu_s": train_cpu_s,
        "total_s": time.perf_counter() - start,
        "images_per_s": t.steps * t.batch_size / train_s,
        "final": history[-1],
        "history": history,
        **info,
    }
    atomic.write_json(out / TRAIN_LOG, summary)
    return summary


@torch.no_grad()
def prepare_pretrained(cfg: AutoencoderConfig, out: Path, progress: bool = True, device=None) -> dict[str, Any]:
    """A frozen pretrained autoencoder as a synthscale autoencoder folder: the latent shift/scale measured on
    `train.scale_items` train images (its own factors were tuned on other data), and the folder's hash."""
    start, device = time.perf_counter(), pick_device(device)
    model = build_autoencoder(cfg).to(device).eval()
    images = render_split(cfg.data, "train", cfg.train.scale_items, progress)
    render_s = time.perf_counter() - start
    shift, scale = model.measure_scale(to_tensor(images[i : i + 64]).to(device) for i in range(0, len(images), 64))
    first = to_tensor(images[:64])
    recon = to_tensor(to_uint8(model.reconstruct(first.to(device))))
    mse = (recon - first).div(2).pow(2).mean().item()  # on [0, 1] pixels
    info = {
        "train_images": len(images),
        "latent_shift": shift,
        "latent_scale": scale,
        "scale_items": len(images),
        "pretrained": str(model.path),
    }
    save_autoencoder(model, out, info)
    summary = {
        "name": cfg.name,
        "config_hash": config_hash(cfg),
        "weights_hash": model.weights_hash,
        "steps": 0,
        "batch_size": 0,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "render_s": render_s,
        "train_s": 0.0,
        "train_cpu_s": 0.0,
        "total_s": time.perf_counter() - start,
        "images_per_s": 0.0,
        "final": {"psnr_batch": psnr_of_mse(mse)},
        "history": [],
        **info,
    }
    atomic.write_json(out / TRAIN_LOG, summary)
    return summary


def _instruments(model, split: str, n: int, device) -> dict[str, Any]:
    """How each reconstruction metric was measured."""
    out = {
        "split": split,
        "n": n,
        "device": str(device),
        "psnr": "mean over images of per-image PSNR, uint8, data range 255",
        "psnr_pooled": "PSNR of the mean squared error over all test pixels (lower: not Jensen-inflated)",
        "ssim": "torchmetrics SSIM, gaussian 11x11 sigma 1.5, data range 1, mean over images",
        "l1": "mean |x - x̂| on [0, 1] pixels",
    }
    if model.kind == "discrete":
        out["codebook"] = (
            f"share of the {model.vocab_size} codes used by the {split} tokens; "
            "perplexity = exp(entropy of their frequencies)"
        )
    return out


def _save_grid(images: np.ndarray, recon: np.ndarray, psnrs: list[float], split: str, k: int, png: Path) -> None:
    """The first k originals beside their reconstructions."""
    from synthscale.imagegrid import labelled_grid, save_png

    pairs = [img for j in range(k) for img in (images[j], recon[j])]
    labels = [s for j in range(k) for s in (f"{split} {j}", f"recon {psnrs[j]:.1f} dB")]
    save_png(labelled_grid(pairs, labels, cell=96, columns=8, label_lines=1), png)


@torch.no_grad()
def evaluate_autoencoder(
    path: str | Path,
    split: str = "test",
    limit: int = 0,
    batch_size: int = 100,
    grid: int = 16,
    progress: bool = True,
    device=None,
) -> dict[str, Any]:
    """Reconstruction quality on a split, computed on `device` (default: CUDA when present, else the CPU); writes
    eval.json and a reconstruction grid PNG into the folder."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    path = Path(path)
    device = pick_device(device)
    model = load_autoencoder(path).to(device)
    images = render_split(model.cfg.data, split, limit, progress)
    n = len(images)
    psnrs, ssim_sum, l1_sum, se_sum = [], 0.0, 0.0, 0.0
    counts = torch.zeros(getattr(model, "vocab_size", 1), dtype=torch.long)
    recon_u8 = []
    batches = progress_bar(
        range(0, n, batch_size), desc=f"eval {model.name}", unit="batch", enabled=progress, leave=False
    )
    for i in batches:
        x = to_tensor(images[i : i + batch_size]).to(device)
        if model.kind == "discrete":
            tokens = model.tokens(x)
            counts += torch.bincount(tokens.flatten().cpu(), minlength=model.vocab_size)
            y = model.decode(tokens)
        else:
            y = model.reconstruct(x)
        r8 = to_uint8(y)
        recon_u8.append(r8)
        a = torch.from_numpy(images[i : i + batch_size]).double() / 255.0
        b = torch.from_numpy(r8).double() / 255.0
        mse = (a - b).pow(2).flatten(1).mean(1)
        psnrs += [psnr_of_mse(m) for m in mse.tolist()]
        se_sum += mse.sum().item()
        l1_sum += (a - b).abs().flatten(1).mean(1).sum().item()
        ssim_sum += ssim(b.permute(0, 3, 1, 2).float(), a.permute(0, 3, 1, 2).float(), data_range=1.0).item() * len(a)
    metrics: dict[str, float] = {
        "psnr": float(np.mean(psnrs)),
        "psnr_pooled": psnr_of_mse(se_sum / n),
        "ssim": ssim_sum / n,
        "l1": l1_sum / n,
    }
    if model.kind == "discrete":
        p = counts.double() / counts.sum()
        metrics["codebook_usage"] = (counts > 0).double().mean().item()
        metrics["perplexity"] = math.exp(-(p[p > 0] * p[p > 0].log()).sum().item())
    result = {
        "name": model.name,
        "kind": model.kind,
        "weights_hash": model.weights_hash,
        "metrics": metrics,
        "instruments": _instruments(model, split, n, device),
        "latent": dataclasses.asdict(model.latent_spec(model.resolution)),
    }
    atomic.write_json(path / EVAL_JSON, result)
    if grid:
        _save_grid(images, np.concatenate(recon_u8), psnrs, split, min(grid, n), path / RECON_PNG)
        result["grid"] = str(path / RECON_PNG)
    return result
