"""``dexml-hf predict``: top-k labels of free texts, or of a whole corpus, from a model and its saved ``LabelIndex``.

dexml-hf predict --model out/ --index out/label_index "how do I reverse a list" "sql join syntax" --k 5
dexml-hf predict --model out/ --index out/label_index --input docs.jsonl --text_field body --output labels.parquet

With ``--input`` the work is :func:`dexml_hf.predict.predict_corpus` (streamed, resumable, shared by the processes
of ``accelerate launch``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dexml_hf.errors import UsageError
from dexml_hf.script_args import inference_dtype_field

__all__ = ["PredictArguments", "build_parser", "main"]

HELP = "print the top-k labels of texts, or write those of a whole corpus (--input/--output)"


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
    dtype: str = inference_dtype_field()
    use_memory: bool = field(
        default=True,
        metadata={
            "help": "rank with the retrieval memory saved with the index, if it has one (retrieval-augmented "
            "scores lam*s + (1-lam)*kNN term); --no_use_memory ranks by the dual encoder alone"
        },
    )

    input: str | None = field(
        default=None,
        metadata={
            "help": "label a corpus instead of texts: a .txt (one document a line), .jsonl, .csv/.tsv or .parquet "
            "file, an XMC dataset (folder or Hub id, with --split) or, with --input_format hub, any Hub dataset"
        },
    )
    output: str | None = field(
        default=None,
        metadata={"help": "with --input: the .jsonl or .parquet file to write (row, id, label_ids, label_uids, "
                  "label_texts, scores per document); a killed run resumes when re-run the same way"},
    )  # fmt: skip
    input_format: str = field(default="auto", metadata={"help": "auto, text, jsonl, csv, parquet, xmc or hub"})
    text_field: str | None = field(
        default=None, metadata={"help": "the text field/column of a JSONL, CSV, parquet or Hub input (default: text)"}
    )
    id_field: str | None = field(default=None, metadata={"help": "a field/column copied to the output as `id`"})
    split: str | None = field(default=None, metadata={"help": "split of an XMC or Hub dataset (default: test)"})
    hub_config: str | None = field(default=None, metadata={"help": "configuration name of a Hub dataset"})
    dataset_format: str | None = field(
        default=None, metadata={"help": "format of a local XMC dataset (default: detect)"}
    )
    dataset_revision: str | None = field(default=None, metadata={"help": "revision of a Hub dataset"})
    query_text_mode: str | None = field(
        default=None,
        metadata={"help": "XMC input: title, content, title_content, wikipedia (unset: a released checkpoint's own)"},
    )
    batch_size: int = field(default=64, metadata={"help": "documents embedded at once"})
    rows_per_part: int | None = field(
        default=None,
        metadata={"help": "documents per committed part, the unit of resuming (default 32 batches)"},
    )
    overwrite: bool = field(
        default=False, metadata={"help": "replace an existing --output, or drop an unfinished run of another job"}
    )

    def __post_init__(self):
        if not self.model or not self.index:
            raise UsageError("--model and --index are required")
        if self.k < 1:
            raise UsageError(f"--k must be >= 1, got {self.k}")
        if (self.input is None) != (self.output is None):
            raise UsageError("--input and --output go together (a corpus in, a .jsonl or .parquet file out)")
        if self.input is None:
            corpus_only = ("text_field", "id_field", "split", "hub_config", "dataset_format", "dataset_revision",
                           "rows_per_part", "query_text_mode")  # fmt: skip
            given = [name for name in corpus_only if getattr(self, name) is not None]
            if given or self.overwrite or self.input_format != "auto":
                raise UsageError(f"--{(given or ['overwrite'])[0]} applies to a corpus (--input/--output)")
        elif self.json:
            raise UsageError("--json prints texts' labels; with --input the output file's extension picks the format")
        for name in ("batch_size", "rows_per_part"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be a positive integer, got {value}")


def build_parser():
    from dexml_hf.script_args import DEXMLArgumentParser

    parser = DEXMLArgumentParser([PredictArguments], prog="dexml-hf predict", description=PredictArguments.__doc__)
    parser.add_argument("texts", nargs="*", help="texts to label (or --input FILE --output FILE)")
    return parser


def main(argv: list[str]) -> int:
    from dexml_hf.factory import load_model
    from dexml_hf.index import LabelIndex

    args, extra = build_parser().parse(argv)
    texts = list(extra.texts)
    if args.input is not None:
        if texts:
            raise UsageError("give texts or --input, not both")
        return _predict_corpus(args)
    if not texts:
        raise UsageError("nothing to label: give texts, or --input FILE --output FILE")
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise UsageError(f"text {empty[0] + 1} is empty: there is nothing to label")
    model = load_model(args.model, revision=args.model_revision, dtype=args.dtype)
    index = LabelIndex.load(args.index, load_memory=args.use_memory)
    if index.dim != model.get_embedding_dimension():
        raise UsageError(
            f"index {args.index} holds {index.dim}-dim embeddings but model {args.model} makes "
            f"{model.get_embedding_dimension()}-dim ones"
        )
    if index.memory is not None and index.memory.lexical_text_mode is not None:
        from dexml_hf.predict import warn_one_text_for_both

        warn_one_text_for_both(index.memory.lexical_text_mode)
    results = index.search_texts(model, texts, k=args.k, batch_size=args.batch_size)
    for text, labels in zip(texts, results):
        if args.json:
            print(json.dumps({"text": text, "labels": labels}, ensure_ascii=False))
            continue
        print(text)
        for rank, hit in enumerate(labels, 1):
            name = next(v for v in (hit["text"], hit["label_id"], hit["id"]) if v is not None)
            print(f"  {rank:>2}. {hit['score']:.4f}  {name}")
    return 0


def _predict_corpus(args: PredictArguments) -> int:
    from dexml_hf.factory import load_model
    from dexml_hf.hub import resolve_text_modes
    from dexml_hf.index import LabelIndex
    from dexml_hf.predict import Corpus, predict_corpus

    corpus = Corpus(
        args.input,
        input_format=args.input_format,
        text_field=args.text_field,
        id_field=args.id_field,
        split=args.split,
        query_text_mode=args.query_text_mode,
        dataset_format=args.dataset_format,
        revision=args.dataset_revision,
        hub_config=args.hub_config,
    )
    if corpus.kind == "xmc" and args.query_text_mode is None:  # a released checkpoint labels the text it trained on
        corpus.query_text_mode = resolve_text_modes(args.model, None, None)[0] or corpus.query_text_mode
    model = load_model(args.model, revision=args.model_revision, dtype=args.dtype)
    index = LabelIndex.load(args.index, load_memory=args.use_memory)
    out = predict_corpus(
        model,
        index,
        corpus,
        args.output,
        top_k=args.k,
        batch_size=args.batch_size,
        rows_per_part=args.rows_per_part,
        use_memory=args.use_memory,
        overwrite=args.overwrite,
    )
    from accelerate import PartialState

    if PartialState().is_main_process:
        print(f"wrote {out}")
    return 0
