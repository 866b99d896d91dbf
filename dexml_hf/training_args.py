"""Training arguments of :class:`~dexml_hf.trainer.DEXMLTrainer`: the negatives strategy and its knobs.

Every field carries ``metadata["help"]`` so that ``HfArgumentParser`` (and ``dexml-hf train --help``) documents it;
``__post_init__`` rejects bad combinations before any model or data is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

__all__ = ["DEXMLTrainingArguments", "NEGATIVES_MODES", "POSITIVE_SAMPLING_MODES"]

NEGATIVES_MODES = ("in_batch", "all", "all_cached", "hard")
POSITIVE_SAMPLING_MODES = ("uniform", "relevance")
QUERY_TEXT_MODES = ("title", "content", "title_content")  # as XMCDataset.query_texts
LABEL_TEXT_MODES = ("title", "title_alt")  # as XMCDataset.label_texts


@dataclass
class DEXMLTrainingArguments(SentenceTransformerTrainingArguments):
    """Arguments for dual-encoder XMC training (DEXML, Gupta et al., ICLR 2024).

    The defaults follow the paper's EURLex-4K recipe where one exists (τ = 0.05, label chunks of 4096,
    a 100-label shortlist for hard negatives) and pick the best checkpoint by ``precision@1``.
    """

    # --- negatives -----------------------------------------------------------------------------------------
    negatives: str = field(
        default="in_batch",
        metadata={
            "help": "Which labels each query is contrasted with: 'in_batch' (the batch's sampled positives, masked "
            "by the label matrix), 'all' (every label every step, exact, two encoder passes over label chunks, "
            "memory independent of the number of labels), 'all_cached' (every label from an embedding cache "
            "refreshed every `label_refresh_steps`, plus the batch's positives with gradient), 'hard' (in-batch "
            "plus `num_hard_negatives` mined from each query's top `shortlist_size` labels).",
            "choices": list(NEGATIVES_MODES),
        },
    )
    label_chunk_size: int = field(
        default=4096,
        metadata={
            "help": "Labels encoded at once in the 'all', 'all_cached' and 'hard' modes (and per search block). "
            "Bounds activation memory; the results do not depend on it."
        },
    )
    label_mini_batch_size: int | None = field(
        default=None,
        metadata={
            "help": "'all': labels per encoder call inside a chunk, grouped by text length (unset: the whole chunk "
            "in one call). Less padding and activation memory, same loss and gradients; on CPU, 64 or 256 made a "
            "MovieLens step 3.5x faster (benchmarks/RESULTS.md)."
        },
    )
    label_refresh_steps: int = field(
        default=50,
        metadata={"help": "'all_cached': re-embed every label every this many optimizer steps."},
    )
    mining_interval: int = field(
        default=1,
        metadata={"help": "'hard': re-mine the hard-negative shortlists every this many epochs."},
    )
    hard_negatives_start_epoch: int = field(
        default=0,
        metadata={"help": "'hard': first epoch (0-based) that uses mined negatives; earlier epochs are in-batch."},
    )
    shortlist_size: int = field(
        default=100,
        metadata={"help": "'hard': each query's shortlist is its top this-many labels, minus its positives."},
    )
    num_hard_negatives: int = field(
        default=1,
        metadata={"help": "'hard': negatives sampled per query from its shortlist (extra candidate columns)."},
    )
    use_faiss: bool = field(
        default=False,
        metadata={"help": "'hard': mine with a faiss exact inner-product index instead of the chunked torch search."},
    )
    encode_batch_size: int = field(
        default=256,
        metadata={"help": "Batch size for the no-grad encodings (label cache, mining, evaluation)."},
    )
    # --- positives and batches -----------------------------------------------------------------------------
    positive_sampling: str = field(
        default="uniform",
        metadata={
            "help": "How each query's positive is drawn every epoch: 'uniform' over its labels, or 'relevance' "
            "(proportional to the label matrix values).",
            "choices": list(POSITIVE_SAMPLING_MODES),
        },
    )
    avoid_duplicate_labels_in_batch: bool = field(
        default=True,
        metadata={
            "help": "Build batches in which no sampled positive label appears twice (a repeated label would be a "
            "wasted, masked-out candidate)."
        },
    )
    # --- scoring ---------------------------------------------------------------------------------------------
    temperature: float = field(
        default=0.05,
        metadata={"help": "Softmax temperature τ; the default loss gets scale = 1/τ. Scores are fp32 under autocast."},
    )
    query_text_mode: str = field(
        default="title",
        metadata={
            "help": "Query text: 'title', 'content' or 'title_content' of the query table.",
            "choices": list(QUERY_TEXT_MODES),
        },
    )
    label_text_mode: str = field(
        default="title",
        metadata={
            "help": "Label text: 'title' (the name) or 'title_alt' (name and alternative names).",
            "choices": list(LABEL_TEXT_MODES),
        },
    )
    eval_max_queries: int | None = field(
        default=None,
        metadata={"help": "Evaluate on at most this many eval queries (the first ones), to keep evaluation cheap."},
    )

    def __post_init__(self) -> None:
        self._validate_dexml_fields()
        if self.load_best_model_at_end and self.metric_for_best_model is None:
            # The trainer rewrites this to the evaluator's full key once it knows the evaluator's name.
            self.metric_for_best_model = "precision@1"
            if self.greater_is_better is None:
                self.greater_is_better = True
        super().__post_init__()

    def _validate_dexml_fields(self) -> None:
        """Raise a ValueError naming the field for every setting that cannot work."""
        if self.negatives not in NEGATIVES_MODES:
            raise ValueError(f"negatives={self.negatives!r} is unknown; choose one of {', '.join(NEGATIVES_MODES)}")
        if self.positive_sampling not in POSITIVE_SAMPLING_MODES:
            raise ValueError(
                f"positive_sampling={self.positive_sampling!r} is unknown; choose one of "
                f"{', '.join(POSITIVE_SAMPLING_MODES)}"
            )
        for name, modes in (("query_text_mode", QUERY_TEXT_MODES), ("label_text_mode", LABEL_TEXT_MODES)):
            value = getattr(self, name)
            if value not in modes:
                raise ValueError(f"{name}={value!r} is unknown; choose one of {', '.join(modes)}")
        for name in (
            "label_chunk_size",
            "label_refresh_steps",
            "mining_interval",
            "shortlist_size",
            "encode_batch_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.label_mini_batch_size is not None and (
            not isinstance(self.label_mini_batch_size, int) or self.label_mini_batch_size <= 0
        ):
            raise ValueError(
                f"label_mini_batch_size must be a positive integer or unset, got {self.label_mini_batch_size!r}"
            )
        if not isinstance(self.num_hard_negatives, int) or self.num_hard_negatives < 0:
            raise ValueError(f"num_hard_negatives must be an integer >= 0, got {self.num_hard_negatives!r}")
        if self.hard_negatives_start_epoch < 0:
            raise ValueError(f"hard_negatives_start_epoch must be >= 0, got {self.hard_negatives_start_epoch!r}")
        if self.negatives == "hard":
            if self.num_hard_negatives == 0:
                raise ValueError("negatives='hard' needs num_hard_negatives >= 1")
            if self.num_hard_negatives > self.shortlist_size:
                raise ValueError(
                    f"num_hard_negatives={self.num_hard_negatives} exceeds shortlist_size={self.shortlist_size}"
                )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.eval_max_queries is not None and self.eval_max_queries <= 0:
            raise ValueError(f"eval_max_queries must be a positive integer or None, got {self.eval_max_queries!r}")
        if self.use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError as exc:
                raise ValueError("use_faiss=True needs faiss: pip install 'dexml_hf[faiss]'") from exc

    @property
    def scale(self) -> float:
        """The loss's scale, 1/τ."""
        return 1.0 / self.temperature
