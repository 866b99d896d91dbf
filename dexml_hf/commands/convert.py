"""``dexml-hf convert SRC DST``: an XMC dataset in any format -> the Hub layout (or another format).

The output is written into a temp folder next to DST and renamed at the end, so a failure (or a kill) leaves
nothing half-written; DST is checked before the source is read, and ``--overwrite true`` replaces only a folder
that dexml-hf wrote (it holds .dexml_hf_dataset.json). ``--push_to_hub REPO`` also pushes the result to a
dataset repo.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["ConvertArguments", "build_parser", "main"]

HELP = "convert an XMC dataset (LF raw, PECOS, sparse, BoW, tag CSV, MovieLens) into the Hub layout"


@dataclass
class ConvertArguments:
    """Convert an XMC dataset; SRC and DST are positional."""

    format: str = field(default="auto", metadata={"help": "source format (default: detected from the file names)"})
    output_format: str = field(default="hub", metadata={"help": "what to write into DST (default: the Hub layout)"})
    name: str | None = field(default=None, metadata={"help": "dataset name (default: the source folder name)"})
    family: str | None = field(
        default=None,
        metadata={"help": "propensity family (default: from the name)", "choices": ["generic", "amazon", "wikipedia"]},
    )
    seed: int | None = field(default=None, metadata={"help": "csv: seed of the train/test split"})
    test_fraction: float | None = field(default=None, metadata={"help": "csv: fraction of rows put in test"})
    overwrite: bool = field(
        default=False, metadata={"help": "replace DST if it is a dataset folder dexml-hf wrote (never anything else)"}
    )
    push_to_hub: str | None = field(default=None, metadata={"help": "also push the Hub layout to this dataset repo"})
    private: bool = field(default=False, metadata={"help": "with --push_to_hub: create a private repo"})


def build_parser():
    from dexml_hf.script_args import DEXMLArgumentParser

    parser = DEXMLArgumentParser([ConvertArguments], prog="dexml-hf convert", description=__doc__)
    parser.add_argument("src", help="source folder (or .csv file)")
    parser.add_argument("dst", help="output folder (created; must not exist unless --overwrite)")
    return parser


def main(argv: list[str]) -> int:
    from dexml_hf.data import convert_dataset

    args, paths = build_parser().parse(argv)
    options = {"name": args.name, "family": args.family, "seed": args.seed, "test_fraction": args.test_fraction}
    options = {key: value for key, value in options.items() if value is not None}
    ds = convert_dataset(
        paths.src, paths.dst, format=args.format, output_format=args.output_format, overwrite=args.overwrite, **options
    )
    print(f"read {paths.src}: {ds}")
    print(json.dumps(ds.summary(), indent=1))
    print(f"wrote {paths.dst} ({args.output_format})")
    if args.push_to_hub:
        ds.push_to_hub(args.push_to_hub, private=args.private or None)
        print(f"pushed to {args.push_to_hub}")
    return 0
