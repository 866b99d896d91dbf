"""``dexml-hf memory``: give a trained model's label index a retrieval memory, its λ, k, T chosen on validation.

    dexml-hf memory --model out/ --dataset ../shared/data/eurlex57k --output out/label_index

Embeds the dataset's training queries (the memory) and its labels (the index), chooses λ, k and the temperature on
the ``validation`` split (or, without one, on a seeded slice of train left out of the memory while tuning; never on
test) and saves the index with ``memory.safetensors``. ``dexml-hf predict`` and ``dexml-hf evaluate --index`` then
rank with it (``dexml_hf.retrieval``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from dexml_hf.errors import UsageError
from dexml_hf.script_args import inference_dtype_field

__all__ = ["MemoryArguments", "build_parser", "main"]

HELP = "add a retrieval memory (training queries, tuned on validation) to a model's label index"


@dataclass
class MemoryArguments:
    """Build a label index with a retrieval memory for a trained model."""

    model: str | None = field(default=None, metadata={"help": "the trained model (path or Hub id); required"})
    dataset: str | None = field(default=None, metadata={"help": "its XMC dataset (path or Hub id); required"})
    output: str | None = field(default=None, metadata={"help": "folder to save the label index into; required"})
    dataset_format: str | None = field(default=None, metadata={"help": "format of a local dataset (default: detect)"})
    query_text_mode: str = field(default="title", metadata={"help": "query text of the dataset"})
    label_text_mode: str = field(default="title", metadata={"help": "label text of the dataset"})
    metric: str = field(
        default="precision@1",
        metadata={"help": "validation metric maximised (e.g. psp@5), or several joined by + (their mean)"},
    )
    guard: str = field(
        default="psp@1",
        metadata={
            "help": "metrics the fusion may not lower below the dual encoder alone on the validation queries "
            "(several joined by +); 'none' switches the guard off"
        },
    )
    guard_margin: float = field(
        default=2.0,
        metadata={"help": "standard errors of the paired per-query difference by which a point must clear the guard"},
    )
    lexical: bool = field(
        default=False,
        metadata={
            "help": "also mix in lexical neighbours (training queries nearest by TF-IDF of their words), their share "
            "chosen on validation; needs scikit-learn"
        },
    )
    lexical_text_mode: str | None = field(
        default=None,
        metadata={
            "help": "with --lexical: the query text mode of the lexical neighbours, e.g. title_content (the "
            "documents' full texts beside embedded titles); unset = --query_text_mode"
        },
    )
    holdout: int = field(default=2000, metadata={"help": "without a validation split: train queries held out"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out slice"})
    batch_size: int = field(default=64, metadata={"help": "encoding batch size"})
    dtype: str = inference_dtype_field()

    def __post_init__(self):
        if not (self.model and self.dataset and self.output):
            raise UsageError("--model, --dataset and --output are required")
        if self.holdout < 1 or self.batch_size < 1:
            raise UsageError("--holdout and --batch_size must be positive")
        if not 0 <= self.guard_margin < float("inf"):
            raise UsageError(f"--guard_margin must be a finite number >= 0, got {self.guard_margin}")
        from dexml_hf.retrieval import parse_guard, parse_selection_metric

        try:
            parse_selection_metric(self.metric)
        except ValueError as err:
            raise UsageError(f"--metric: {err}") from None
        try:
            parse_guard(self.guard)
        except ValueError as err:
            raise UsageError(f"--guard: {err}") from None
        if self.lexical:
            from dexml_hf.lexical import require_lexical

            require_lexical("--lexical")
        if self.lexical_text_mode is not None:
            from dexml_hf.data.dataset import QUERY_TEXT_MODES

            if not self.lexical:
                raise UsageError("--lexical_text_mode is the text of the lexical neighbours: it needs --lexical")
            if self.lexical_text_mode not in QUERY_TEXT_MODES:
                raise UsageError(
                    f"--lexical_text_mode {self.lexical_text_mode!r} is unknown; choose one of "
                    f"{', '.join(QUERY_TEXT_MODES)}"
                )


def build_parser():
    from dexml_hf.script_args import DEXMLArgumentParser

    return DEXMLArgumentParser([MemoryArguments], prog="dexml-hf memory", description=__doc__)


def main(argv: list[str]) -> int:
    from dexml_hf.factory import load_dataset, load_model
    from dexml_hf.index import LabelIndex
    from dexml_hf.retrieval import capped_holdout, tune_retrieval

    (args,) = build_parser().parse(argv)
    model = load_model(args.model, dtype=args.dtype)
    xmc = load_dataset(args.dataset, format=args.dataset_format)
    index = LabelIndex.from_texts(
        model,
        xmc.label_texts(args.label_text_mode),
        label_ids=xmc.labels["uid"],
        batch_size=args.batch_size,
        show_progress_bar=True,
    )
    memory = tune_retrieval(
        model,
        index,
        xmc,
        metric=args.metric,
        guard=args.guard,
        guard_margin=args.guard_margin,
        holdout=capped_holdout(args.holdout, xmc.num_queries("train")),
        seed=args.seed,
        query_mode=args.query_text_mode,
        batch_size=args.batch_size,
        inv_propensity=xmc.inv_propensity(),
        show_progress_bar=True,  # embedding 643k training queries takes half an hour on 2 cores: show it
        lexical=args.lexical,
        lexical_text_mode=args.lexical_text_mode,
    )
    index.save(args.output)
    chosen = {"lam": memory.lam, "k": memory.k, "temperature": memory.temperature, "agreement": memory.agreement}
    if memory.lexical is not None:
        chosen.update(lexical_weight=memory.lexical_weight, lexical_k=memory.lexical_k)
        if memory.lexical_text_mode is not None:
            chosen["lexical_text_mode"] = memory.lexical_text_mode
    print(
        f"saved {args.output} with a retrieval memory of {memory.embeddings.shape[0]:,} queries: {json.dumps(chosen)}"
    )
    return 0
