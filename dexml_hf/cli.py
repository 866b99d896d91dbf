"""The ``dexml-hf`` command line: ``train``, ``evaluate``, ``predict``, ``convert``.

Each subcommand lives in ``dexml_hf/commands/<name>.py`` and exposes ``register(subparsers)``,
which adds its parser and sets ``func`` (called with the parsed namespace and the leftover argv).
Subcommands are imported only when listed here, so ``dexml-hf --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS = ("train", "evaluate", "predict", "convert")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dexml-hf", description="Dual encoders for extreme multi-label classification (DEXML)."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="{" + ",".join(SUBCOMMANDS) + "}")
    for name in SUBCOMMANDS:
        try:
            module = importlib.import_module(f"dexml_hf.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"dexml_hf.commands.{name}":
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if rest and not getattr(args, "accepts_extra_args", False):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(args.func(args, rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
