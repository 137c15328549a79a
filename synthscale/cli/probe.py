"""`synthscale probe train`: the in-domain attribute probe behind fd-probe and prompt following."""

from __future__ import annotations

import argparse
from pathlib import Path

from synthscale.cli.common import add_compute_args, data_config, device_of


def register(sub) -> None:
    probe = sub.add_parser("probe", help="the in-domain attribute probe behind fd-probe and prompt following")
    actions = probe.add_subparsers(dest="probe_command", required=True, metavar="ACTION")
    p = actions.add_parser(
        "train",
        help="train (or load) the probe of a dataset config and print its ceiling",
        description="Trains once per dataset distribution on fresh renders and caches it by "
        "hash; prints its accuracy on held-out real renders (the ceiling of every "
        "prompt-following number).",
    )
    p.add_argument("--dataset", default="shapes", choices=["shapes"], help="probes need exact labels: shapes")
    p.add_argument("--config", type=Path, default=None, help="a YAML data config (keys of DataConfig)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a data key, e.g. counting=true")
    p.add_argument("--probe-config", type=Path, default=None, help="a YAML probe config (keys of ProbeConfig)")
    p.add_argument("--probe-set", action="append", metavar="KEY=VALUE", help="override a probe key, e.g. steps=400")
    p.add_argument("--cache", type=Path, default=Path("cache/probes"), help="probe cache (default cache/probes)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_compute_args(p)
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from synthscale.config import ProbeConfig, load
    from synthscale.evaluate.probes import format_ceiling, load_or_train_probe, probe_dir

    data = data_config(args)
    probe_cfg = load(ProbeConfig, args.probe_config, args.probe_set or [])
    probe = load_or_train_probe(data, args.cache, probe_cfg, progress=not args.quiet, device=device_of(args))
    print(format_ceiling(probe.meta))
    print(f"probe:{probe.key} at {probe_dir(data, args.cache, probe_cfg)}")
    return 0
