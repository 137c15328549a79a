"""What several subcommands share: compute arguments (threads, device), dataset arguments, list parsers, and
choices and defaults read from the config dataclasses, so the CLI never repeats them."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from pathlib import Path
from typing import Any

from synthscale.config import ConfigError, DataConfig, load
from synthscale.data import SPLITS


def default_of(cls: type, name: str) -> Any:
    """The default of dataclass field `cls.name`."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def choices_of(cls: type, name: str) -> list[Any]:
    """The values a Literal field (or a list of Literals) of dataclass `cls` allows."""
    tp = typing.get_type_hints(cls)[name]
    if typing.get_origin(tp) is list:
        (tp,) = typing.get_args(tp)
    return list(typing.get_args(tp))


def add_compute_args(p: argparse.ArgumentParser) -> None:
    """Arguments every command that computes takes."""
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice; 1 is safest on a busy 2-core machine)",
    )
    p.add_argument("--device", default="auto", help="torch device: auto (cuda when present, else cpu), cpu, cuda:N")


def apply_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", None) is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be ≥ 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)


def device_of(args: argparse.Namespace):
    """The torch device `--device` names (auto: CUDA when present, else the CPU)."""
    from synthscale.compute.device import pick_device

    try:
        return pick_device(args.device)
    except ConfigError as e:
        raise ConfigError(f"--{e}") from None  # "--device 'x' ...": the flag that named it


def add_data_args(p: argparse.ArgumentParser, split: str = "train") -> None:
    p.add_argument(
        "--dataset",
        default=default_of(DataConfig, "dataset"),
        choices=choices_of(DataConfig, "dataset"),
        help="which dataset (default: %(default)s; folder/shards also need --set path=DIR)",
    )
    p.add_argument("--config", type=Path, default=None, help="a YAML data config (keys of DataConfig)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a data config key, e.g. resolution=64")
    add_split_arg(p, split)


def add_split_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--split", default=default, choices=SPLITS, help="which split (default: %(default)s)")


def data_config(args: argparse.Namespace) -> DataConfig:
    return load(DataConfig, args.config, [f"dataset={args.dataset}", *(args.set or [])])


def csv_list(kind):
    """An argparse type: comma-separated values of `kind`."""

    def parse(text: str):
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated values, e.g. 4,10,20; got {text!r}") from None

    return parse


def cfg_list(text: str):
    """Guidance scales, or 'best' (chosen on validation prompts)."""
    return [None] if text.strip() == "best" else csv_list(float)(text)


def existing_dir(path: Path, marker: str, what: str) -> Path:
    """`path`, when it is a folder holding `marker`; else a one-line error saying what was expected."""
    if not path.is_dir():
        raise ConfigError(f"{path} does not exist or is not a folder; expected {what}")
    if not (path / marker).is_file():
        raise ConfigError(f"{path} is not {what}: it has no {marker}")
    return path
