"""``dexml-hf convert SRC DST --format ...``: XC-repository files -> the Hub layout (or another format).

The output is written into a temp folder next to DST and renamed at the end, so a failure (or a kill) leaves
nothing half-written; DST is checked before the source is read, and --overwrite replaces only a folder that
dexml-hf wrote (it holds .dexml_hf_dataset.json). ``--push-to-hub REPO`` also pushes the result to a dataset repo.
"""

from __future__ import annotations

import argparse
import json

FORMAT_CHOICES = ("auto", "lf", "wiki500k", "pecos", "sparse", "bow", "csv", "hub")
OUTPUT_CHOICES = ("hub", "lf", "wiki500k", "pecos", "sparse", "bow", "csv")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert",
        help="convert an XMC dataset (LF raw, PECOS, sparse, BoW, tag CSV) into the Hub layout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("src", help="source folder (or .csv file)")
    parser.add_argument("dst", help="output folder (created; must not exist unless --overwrite)")
    parser.add_argument("--format", default="auto", choices=FORMAT_CHOICES, help="source format (default: detect)")
    parser.add_argument(
        "--output-format", default="hub", choices=OUTPUT_CHOICES, help="what to write into DST (default: hub layout)"
    )
    parser.add_argument("--name", default=None, help="dataset name (default: the source folder name)")
    parser.add_argument(
        "--family",
        default=None,
        choices=("generic", "amazon", "wikipedia"),
        help="propensity family (default: inferred from the name)",
    )
    parser.add_argument("--seed", type=int, default=0, help="csv: seed of the train/test split")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="csv: fraction of rows put in test")
    parser.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    parser.add_argument("--push-to-hub", metavar="REPO", default=None, help="also push the Hub layout to REPO")
    parser.add_argument("--private", action="store_true", help="with --push-to-hub: create a private repo")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, extra_argv: list[str] | None = None) -> int:
    from dexml_hf.data import convert_dataset, resolve_format

    kwargs = {key: value for key, value in (("name", args.name), ("family", args.family)) if value is not None}
    if resolve_format(args.src, args.format) == "csv":
        kwargs.update(seed=args.seed, test_fraction=args.test_fraction)
    ds = convert_dataset(
        args.src, args.dst, format=args.format, output_format=args.output_format, overwrite=args.overwrite, **kwargs
    )
    print(f"read {args.src}: {ds}")
    print(json.dumps(ds.summary(), indent=1))
    print(f"wrote {args.dst} ({args.output_format})")
    if args.push_to_hub:
        ds.push_to_hub(args.push_to_hub, private=args.private or None)
        print(f"pushed to {args.push_to_hub}")
    return 0


# Interim adapter to the new ``dexml_hf.cli`` contract (HELP, build_parser, main) around the argparse parser above,
# until convert moves to the shared DEXMLArgumentParser convention like the other subcommands.
HELP = "convert an XMC dataset (LF raw, PECOS, sparse, BoW, tag CSV, MovieLens) into the Hub layout"


class _StandaloneParser:
    """Stands in for argparse's subparsers object: ``register`` builds its parser as a top-level one."""

    parser: argparse.ArgumentParser

    def add_parser(self, name: str, help: str = "", **kwargs) -> argparse.ArgumentParser:  # noqa: A002
        self.parser = argparse.ArgumentParser(prog=f"dexml-hf {name}", allow_abbrev=False, **kwargs)
        return self.parser


def build_parser() -> argparse.ArgumentParser:
    holder = _StandaloneParser()
    register(holder)
    return holder.parser


def main(argv: list[str]) -> int:
    return run(build_parser().parse_args(argv))
