"""``dexml-hf card``: render the model card of a recipe's model before training (metrics 'not yet measured').

dexml-hf card --recipe recipes/eurlex-4k/distilbert.yaml --output model_cards/
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dexml_hf.errors import UsageError

__all__ = ["CardArguments", "build_parser", "main"]

HELP = "render the model card of a recipe's model (before training)"


@dataclass
class CardArguments:
    """Render the model card of one or more recipes' models."""

    recipe: list[str] = field(default_factory=list, metadata={"help": "one or more recipe YAML files; required"})
    output: str | None = field(
        default=None,
        metadata={
            "help": "output .md file (one recipe) or folder (cards named <dataset>-<variant>.md); unset: stdout"
        },
    )

    def __post_init__(self):
        if not self.recipe:
            raise UsageError("--recipe is required")


def build_parser():
    from dexml_hf.script_args import DEXMLArgumentParser

    return DEXMLArgumentParser([CardArguments], prog="dexml-hf card", description=CardArguments.__doc__)


def main(argv: list[str]) -> int:
    import sys

    from dexml_hf.model_card import render_recipe_card

    (args,) = build_parser().parse(argv)
    for recipe in args.recipe:
        text = render_recipe_card(recipe)
        if args.output is None:
            sys.stdout.write(text)
            continue
        out = Path(args.output)
        if len(args.recipe) > 1 or out.is_dir():
            out.mkdir(parents=True, exist_ok=True)
            out = out / f"{Path(recipe).parent.name}-{Path(recipe).stem}.md"
        out.write_text(text, encoding="utf-8")
        print(f"wrote {out}")
    return 0
