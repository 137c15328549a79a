"""`synthscale data preview | stats | shard`: look at and prepare datasets."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from synthscale.cli.common import add_data_args, data_config


def register(sub) -> None:
    data = sub.add_parser("data", help="look at and prepare datasets")
    actions = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = actions.add_parser("preview", help="write a labelled grid of dataset items to a PNG")
    add_data_args(p)
    p.add_argument("--n", type=int, default=64, help="number of items (default %(default)s)")
    p.add_argument("--out", type=Path, default=Path("grid.png"), help="PNG to write (default %(default)s)")
    p.set_defaults(func=cmd_preview)

    p = actions.add_parser("stats", help="print attribute frequencies per split")
    add_data_args(p)
    p.add_argument("--only-split", action="store_true", help="only the split named by --split")
    p.add_argument("--limit", type=int, default=2000, help="items per split to count (default %(default)s; 0 = all)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_stats)

    p = actions.add_parser(
        "shard",
        help="write an image folder with captions as webdataset tar shards",
        description="Write SRC (images + captions.jsonl / captions.csv / name.txt sidecars) as "
        "shard-NNNNNN.tar files ({key}.png|jpg + {key}.txt [+ {key}.json]) and manifest.json. "
        "Unreadable images are skipped and listed in the manifest. Read them back with "
        "--dataset shards --set path=OUT.",
    )
    p.add_argument("src", type=Path, help="the image folder")
    p.add_argument("--out", type=Path, required=True, help="folder to write the shards into")
    p.add_argument("--shard-size", type=int, default=1000, help="items per shard (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace shards already in --out")
    p.set_defaults(func=cmd_shard)


def cmd_preview(args: argparse.Namespace) -> int:
    from synthscale.data import get_dataset
    from synthscale.imagegrid import labelled_grid, save_png

    ds = get_dataset(data_config(args), args.split)
    n = min(args.n, len(ds))
    items = [ds[i] for i in range(n)]
    grid = labelled_grid([it["image"] for it in items], [it["caption"] for it in items])
    path = save_png(grid, args.out)
    print(f"wrote {n} {args.split} items to {path}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from synthscale.data import SPLITS
    from synthscale.data.stats import attribute_stats, format_stats

    cfg = data_config(args)
    splits = [args.split] if args.only_split else list(SPLITS)
    if cfg.dataset != "shapes":  # user data has no attribute labels: counts, skips and truncations per split
        from synthscale.data.userdata import format_summaries, split_summaries

        summaries = split_summaries(cfg, [s for s in splits if s != "holdout"])
        print(json.dumps(summaries, indent=2) if args.json else format_summaries(summaries))
        return 0
    stats = {s: attribute_stats(cfg, s, limit=args.limit) for s in splits}
    print(json.dumps(stats, indent=2) if args.json else format_stats(stats))
    return 0


def cmd_shard(args: argparse.Namespace) -> int:
    from synthscale.data.shards import MANIFEST, write_shards

    m = write_shards(args.src, args.out, shard_size=args.shard_size, overwrite=args.overwrite, progress=True)
    size = sum(s["bytes"] for s in m["shards"])
    print(
        f"wrote {m['items']} items in {len(m['shards'])} shards ({size / 2**20:.1f} MiB) to {args.out}; "
        f"skipped {m['skipped_count']} (listed in {args.out / MANIFEST})"
    )
    for s in m["skipped"][:10]:
        print(f"  skipped {s['where']}: {s['reason']}")
    return 0
