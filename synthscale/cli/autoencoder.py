"""`synthscale autoencoder train | eval | cache`: the image autoencoders and their latent caches."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from synthscale.cli.common import add_compute_args, add_split_arg, device_of, existing_dir


def register(sub) -> None:
    ae = sub.add_parser("autoencoder", help="train, evaluate and cache image autoencoders")
    actions = ae.add_subparsers(dest="autoencoder_command", required=True, metavar="ACTION")

    p = actions.add_parser(
        "train",
        help="train an autoencoder from a config (e.g. configs/autoencoders/kl-f4c4.yaml)",
        description="Train an autoencoder from scratch and write DIR/model.safetensors, "
        "DIR/config.json and DIR/train.json (atomically). Deterministic for train.seed.",
    )
    p.add_argument("--config", type=Path, default=None, help="a YAML autoencoder config (keys of AutoencoderConfig)")
    p.add_argument("--out", type=Path, required=True, help="the model folder to write")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key, e.g. train.steps=500")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_compute_args(p)
    p.set_defaults(func=cmd_train)

    p = actions.add_parser(
        "eval",
        help="PSNR, SSIM, L1 (+ codebook usage, perplexity) and a reconstruction grid",
        description="Reconstruct a split (default: test) and write DIR/eval.json and "
        "DIR/reconstructions.png (originals beside reconstructions).",
    )
    p.add_argument("dir", type=Path, help="a model folder written by `synthscale autoencoder train`")
    add_split_arg(p, "test")
    p.add_argument("--limit", type=int, default=0, help="evaluate only the first N images (default 0 = all)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-grid", action="store_true", help="do not write the reconstruction grid PNG")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_compute_args(p)
    p.set_defaults(func=cmd_eval)

    p = actions.add_parser(
        "cache",
        help="encode a dataset split once into the latent cache",
        description="Encode a split with the autoencoder in DIR into ROOT/<key>/ (key = hash of "
        "data config + split, autoencoder weights, tokenizer). Resumes an interrupted build; "
        "a complete cache is reused.",
    )
    p.add_argument("dir", type=Path, help="a model folder written by `synthscale autoencoder train`")
    p.add_argument("--root", type=Path, required=True, help="the cache root folder")
    add_split_arg(p, "train")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override the autoencoder's data config for the cached data, e.g. size=5000",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_compute_args(p)
    p.set_defaults(func=cmd_cache)


def cmd_train(args: argparse.Namespace) -> int:
    from synthscale.autoencoders.train import train_autoencoder
    from synthscale.config import AutoencoderConfig, load

    cfg = load(AutoencoderConfig, args.config, args.set)
    s = train_autoencoder(cfg, args.out, progress=not args.quiet, device=device_of(args))
    scale = f", latent shift {s['latent_shift']:.4g} scale {s['latent_scale']:.4g}" if "latent_scale" in s else ""
    if "pretrained" in s:  # a frozen diffusers autoencoder: nothing trained, its latent scale measured
        print(
            f"prepared {s['name']} from {s['pretrained']} (frozen){scale} on {s['scale_items']} train images, "
            f"PSNR {s['final']['psnr_batch']:.2f} dB on the first 64; wrote {args.out}"
        )
        return 0
    print(
        f"trained {s['name']}: {s['steps']} steps in {s['train_s']:.0f} s ({s['images_per_s']:.0f} img/s; "
        f"{s['total_s']:.0f} s with rendering) on {s['device']}, final batch PSNR {s['final']['psnr_batch']:.2f} dB"
        f"{scale}; wrote {args.out}"
    )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from synthscale.autoencoders.train import evaluate_autoencoder

    r = evaluate_autoencoder(
        existing_dir(args.dir, "config.json", "an autoencoder folder (written by `synthscale autoencoder train`)"),
        split=args.split,
        limit=args.limit,
        grid=0 if args.no_grid else 16,
        progress=not args.quiet and not args.json,
        device=device_of(args),
    )
    if args.json:
        print(json.dumps(r, indent=2))
        return 0
    m = r["metrics"]
    extra = (
        f", codebook usage {100 * m['codebook_usage']:.1f}%, perplexity {m['perplexity']:.1f}"
        if "codebook_usage" in m
        else ""
    )
    print(
        f"{r['name']} on {r['instruments']['n']} {args.split} images: PSNR {m['psnr']:.2f} dB, "
        f"SSIM {m['ssim']:.4f}, L1 {m['l1']:.4f}{extra}" + (f"; grid {r['grid']}" if "grid" in r else "")
    )
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from synthscale.autoencoders import load_autoencoder
    from synthscale.config import DataConfig, apply_overrides, from_dict
    from synthscale.data import get_dataset
    from synthscale.data.latents import build_cache
    from synthscale.data.text import tokenizer_for

    folder = existing_dir(args.dir, "config.json", "an autoencoder folder (written by `synthscale autoencoder train`)")
    ae = load_autoencoder(folder).to(device_of(args))
    data = from_dict(
        DataConfig,
        apply_overrides(DataConfig, dataclasses.asdict(ae.cfg.data), args.set or []),
        source=f"{args.dir} data config with --set",
    )
    cache = build_cache(ae, get_dataset(data, args.split), tokenizer_for(data), args.root, progress=not args.quiet)
    print(f"{len(cache)} {args.split} items of {ae.name} at {cache.path}: {cache.spec}")
    return 0
