"""The `synthscale` command. Thin: each subcommand parses its arguments, then calls its stage's function.

One module a command group, each with `register(subparsers)` (its arguments, beside its functions) and its
`cmd_*` functions; `common.py` holds what they share (compute and dataset arguments, choices and defaults read
from the config dataclasses). To add a subcommand, add a module with `register` and list it in COMMANDS.
"""

from __future__ import annotations

import argparse
import sys

import synthscale  # noqa: F401  (sets OMP_WAIT_POLICY before torch is imported)
from synthscale.cli import autoencoder, data, evaluate, probe, sample, study, train
from synthscale.cli.common import apply_threads
from synthscale.config import ConfigError

# in the order `synthscale --help` lists them
COMMANDS = (data, autoencoder, train, study, evaluate, sample, probe)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthscale",
        description="Compute-controlled comparison of diffusion, masked-token and next-token image synthesis.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return e.code if isinstance(e.code, int) else 2
    try:
        apply_threads(args)
        return args.func(args)
    except (ConfigError, FileNotFoundError) as e:  # misuse: one line naming the problem and the fix, no traceback
        print(f"synthscale: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("synthscale: interrupted; finished stages and checkpoints are kept", file=sys.stderr)
        return 130
