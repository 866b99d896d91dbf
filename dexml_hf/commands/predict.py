"""``dexml-hf predict``: top-k labels of free texts from a model and its saved ``LabelIndex``.

dexml-hf predict --model out/ --index out/label_index "how do I reverse a list" "sql join syntax" --k 5
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dexml_hf.errors import UsageError

__all__ = ["PredictArguments", "build_parser", "main"]

HELP = "print the top-k labels of texts"


@dataclass
class PredictArguments:
    """Embed texts with a model and print their top-k labels from a LabelIndex."""

    model: str | None = field(
        default=None, metadata={"help": "sentence-transformers model or DEXML checkpoint (path or Hub id); required"}
    )
    index: str | None = field(
        default=None, metadata={"help": "LabelIndex folder (LabelIndex.save) or Hub repo id; required"}
    )
    k: int = field(default=5, metadata={"help": "labels per text"})
    json: bool = field(
        default=False, metadata={"help": "print JSON lines instead of a table (`--json true` before the texts)"}
    )
    model_revision: str | None = field(default=None, metadata={"help": "model revision on the Hub"})
    use_memory: bool = field(
        default=True,
        metadata={
            "help": "rank with the retrieval memory saved with the index, if it has one (retrieval-augmented "
            "scores lam*s + (1-lam)*kNN term); --no_use_memory ranks by the dual encoder alone"
        },
    )

    def __post_init__(self):
        if not self.model or not self.index:
            raise UsageError("--model and --index are required")
        if self.k < 1:
            raise UsageError(f"--k must be >= 1, got {self.k}")


def build_parser():
    from dexml_hf.script_args import DEXMLArgumentParser

    parser = DEXMLArgumentParser([PredictArguments], prog="dexml-hf predict", description=PredictArguments.__doc__)
    parser.add_argument("texts", nargs="+", help="texts to label")
    return parser


def main(argv: list[str]) -> int:
    from dexml_hf.factory import load_model
    from dexml_hf.index import LabelIndex

    args, extra = build_parser().parse(argv)
    texts = list(extra.texts)
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise UsageError(f"text {empty[0] + 1} is empty: there is nothing to label")
    model = load_model(args.model, revision=args.model_revision)
    index = LabelIndex.load(args.index, load_memory=args.use_memory)
    if index.dim != model.get_embedding_dimension():
        raise UsageError(
            f"index {args.index} holds {index.dim}-dim embeddings but model {args.model} makes "
            f"{model.get_embedding_dimension()}-dim ones"
        )
    results = index.search_texts(model, texts, k=args.k)
    for text, labels in zip(texts, results):
        if args.json:
            print(json.dumps({"text": text, "labels": labels}, ensure_ascii=False))
            continue
        print(text)
        for rank, hit in enumerate(labels, 1):
            name = next(v for v in (hit["text"], hit["label_id"], hit["id"]) if v is not None)
            print(f"  {rank:>2}. {hit['score']:.4f}  {name}")
    return 0
