"""``dexml-hf predict``: top-k labels of free texts from a model and its saved ``LabelIndex``.

dexml-hf predict --model out/ --index out/label_index "how do I reverse a list" "sql join syntax" --k 5
"""

from __future__ import annotations

import json

__all__ = ["register"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="print the top-k labels of texts",
        description="Embed texts with a model and print their top-k labels from a LabelIndex.",
    )
    parser.add_argument(
        "--model", required=True, help="sentence-transformers model or DEXML checkpoint (path or Hub id)"
    )
    parser.add_argument("--index", required=True, help="LabelIndex folder (LabelIndex.save) or Hub repo id")
    parser.add_argument("texts", nargs="+", help="texts to label")
    parser.add_argument("--k", type=int, default=5, help="labels per text (default: 5)")
    parser.add_argument("--json", action="store_true", help="print JSON lines instead of a table")
    parser.add_argument("--revision", default=None, help="model revision on the Hub")
    parser.set_defaults(func=main)


def main(args, extra_argv=None) -> int:
    from dexml_hf.commands.evaluate import load_model_arg
    from dexml_hf.index import LabelIndex

    if args.k < 1:
        raise SystemExit(f"--k must be >= 1, got {args.k}")
    model = load_model_arg(args.model, args.revision)
    index = LabelIndex.load(args.index)
    if index.dim != model.get_embedding_dimension():
        raise SystemExit(
            f"index {args.index} holds {index.dim}-dim embeddings but model {args.model} makes "
            f"{model.get_embedding_dimension()}-dim ones"
        )
    results = index.search_texts(model, args.texts, k=args.k)
    for text, labels in zip(args.texts, results):
        if args.json:
            print(json.dumps({"text": text, "labels": labels}, ensure_ascii=False))
            continue
        print(text)
        for rank, hit in enumerate(labels, 1):
            name = (
                hit["text"]
                if hit["text"] is not None
                else (hit["label_id"] if hit["label_id"] is not None else hit["id"])
            )
            print(f"  {rank:>2}. {hit['score']:.4f}  {name}")
    return 0
