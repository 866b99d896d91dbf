"""Training arguments of :class:`~dexml_hf.trainer.DEXMLTrainer`: the negatives strategy and its knobs.

Every field carries ``metadata["help"]`` so that ``HfArgumentParser`` (and ``dexml-hf train --help``) documents it;
``__post_init__`` rejects bad combinations before any model or data is touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sentence_transformers.sentence_transformer.training_args import (
    BatchSamplers,
    SentenceTransformerTrainingArguments,
)

from dexml_hf.data.dataset import LABEL_TEXT_MODES, QUERY_TEXT_MODES
from dexml_hf.errors import UsageError
from dexml_hf.factory import LOSSES
from dexml_hf.lexical import require_lexical
from dexml_hf.retrieval import parse_guard, parse_selection_metric

__all__ = ["DEXMLTrainingArguments", "NEGATIVES_MODES", "POSITIVE_SAMPLING_MODES"]

NEGATIVES_MODES = ("in_batch", "all", "all_cached", "hard")
POSITIVE_SAMPLING_MODES = ("uniform", "relevance")


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def _parse_topk_k(value) -> int | str:
    """``topk_k`` as the loss takes it: a positive int (from an int or its string, as the CLI passes it) or
    ``"num_pos"``."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "num_pos" or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return value
    raise UsageError(f"topk_k must be a positive integer or 'num_pos', got {value!r}")


@dataclass
class DEXMLTrainingArguments(SentenceTransformerTrainingArguments):
    """Arguments for dual-encoder XMC training (DEXML, Gupta et al., ICLR 2024).

    The defaults follow the paper's EURLex-4K recipe where one exists (τ = 0.05, label chunks of 4096,
    a 100-label shortlist for hard negatives) and pick the best checkpoint by ``precision@1``.
    """

    # --- loss ---------------------------------------------------------------------------------------------------
    loss: str = field(
        default="decoupled_softmax",
        metadata={
            "help": "The loss the trainer builds when none is passed (dexml_hf.factory.LOSSES): decoupled_softmax "
            "(the paper's), cached_decoupled_softmax, softmax (PAL), soft_topk, cached_soft_topk, ova_bce.",
            "choices": list(LOSSES),
        },
    )
    topk_k: str = field(
        default="5",
        metadata={
            "help": "soft_topk losses: k (5 optimises P@5, 100 R@100), or 'num_pos': k = the query's number of "
            "positives (then every positive enters the constraint). A number caps the positives per row and step "
            "at k, as the reference samples them."
        },
    )
    topk_alpha: float = field(default=2.0, metadata={"help": "soft_topk losses: sharpness alpha of the operator."})
    logq_correction: bool = field(
        default=False,
        metadata={
            "help": "In-batch negatives only (decoupled_softmax, cached_decoupled_softmax, softmax): subtract each "
            "label's log share of the training positives from its scores, so popular labels are not pushed down "
            "for being frequent negatives (recommendation-like data)."
        },
    )
    scale_lr_with_world_size: bool = field(
        default=False,
        metadata={
            "help": "Optimise with world_size x learning_rate, as the DEXML reference does (its configs give the "
            "per-GPU rate and it runs on 4 GPUs); on in the paper recipes. The start log and the card show the "
            "effective rate."
        },
    )
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
            "wasted, masked-out candidate). With an XMCDataset the trainer builds the batches itself (seeded by seed "
            "and epoch, so a resume replays them): `batch_sampler` may then be the default or no_duplicates (the same "
            "as this option), other samplers are refused. With ready-made rows, the default `batch_sampler` becomes "
            "sentence-transformers' no_duplicates (no text twice in a batch) unless this is False; another "
            "`batch_sampler` decides instead."
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
            "help": "Query text: 'title', 'content' or 'title_content' of the query table, or 'wikipedia' (the "
            "reference's LF-Wikipedia-500K preprocessing: lower-cased title, title, content, split on "
            "non-alphanumerics).",
            "choices": list(QUERY_TEXT_MODES),
        },
    )
    label_text_mode: str = field(
        default="title",
        metadata={
            "help": "Label text: 'title' (the name), 'title_alt' (name and alternative names) or 'wikipedia' (the "
            "name, preprocessed as the reference does for LF-Wikipedia-500K).",
            "choices": list(LABEL_TEXT_MODES),
        },
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Token limit of the training batches only (queries and labels, every negatives mode), as "
            "sentence-transformers' max_length: evaluation, the label index, mining, the retrieval memory and the "
            "saved model keep the model's max_seq_length. Train short for speed, predict on the whole text: on "
            "EURLEX57K titles, a model trained at 32 tokens scored P@1 66.1 when evaluated at 64 tokens against "
            "44.8 at 32 (benchmarks/RESULTS.md). Unset: the model's max_seq_length."
        },
    )
    eval_max_queries: int | None = field(
        default=None,
        metadata={"help": "Evaluate on at most this many eval queries (the first ones), to keep evaluation cheap."},
    )
    # --- final evaluation (test split) --------------------------------------------------------------------------
    test_split: str | None = field(
        default=None,
        metadata={
            "help": "Split of the XMCDataset evaluated after training (exact top-k over all labels; the card's "
            "metric table); its label index is saved beside the model. Unset: no final evaluation."
        },
    )
    evaluate_untrained: bool = field(
        default=False,
        metadata={"help": "Also evaluate `test_split` before training (the card's 'untrained' row)."},
    )
    max_test_samples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N queries of `test_split`."}
    )
    top_k: int = field(
        default=100,
        metadata={
            "help": "Labels retrieved per query at evaluation, during training and on `test_split` (R@top_k); >= 5."
        },
    )
    propensity_a: float | None = field(
        default=None, metadata={"help": "Propensity A for PSP@k (unset: the dataset family's default)."}
    )
    propensity_b: float | None = field(
        default=None, metadata={"help": "Propensity B for PSP@k (unset: the dataset family's default)."}
    )
    # --- label-text augmentation (Gandalf) ----------------------------------------------------------------------
    augment_with_label_texts: bool = field(
        default=False,
        metadata={
            "help": "Add every label's text as an extra training query whose positive is the label itself (and its "
            "`label_cooccurrence_top` most co-occurring labels); labels never seen in train are included. Works with "
            "every negatives mode; evaluation and propensities use the original dataset (dexml_hf.data.augment)."
        },
    )
    label_cooccurrence_top: int = field(
        default=0,
        metadata={
            "help": "With `augment_with_label_texts`: also make each label's row positive for the labels it "
            "co-occurs with most in train (this many), with relevance P(other | label); use "
            "positive_sampling='relevance' to sample by it. 0: the label only."
        },
    )
    # --- retrieval-augmented prediction (RAE-XMC) ---------------------------------------------------------------
    retrieval_memory: bool = field(
        default=False,
        metadata={
            "help": "After training, keep the training queries' embeddings and label matrix beside the label index "
            "(label_index/memory.safetensors) and rank by lam*s(q,l) + (1-lam)*sum_kNN w*Y (dexml_hf.retrieval); "
            "lam, k and the temperature are chosen on the 'validation' split, or on a held-out slice of train "
            "(`retrieval_holdout` queries) when there is none — never on the test split."
        },
    )
    retrieval_metric: str = field(
        default="precision@1",
        metadata={
            "help": "`retrieval_memory`: the validation metric maximised when choosing lam, k, T (e.g. psp@5), or "
            "several joined by '+' whose mean is maximised (precision@1+psp@5: head and tail together)."
        },
    )
    retrieval_guard: str = field(
        default="psp@1",
        metadata={
            "help": "`retrieval_memory`: metrics the fusion may not lower below the dual encoder alone on the "
            "validation queries (several joined by +): only such grid points (and lam=1) are chosen; 'none' = off."
        },
    )
    retrieval_guard_margin: float = field(
        default=2.0,
        metadata={
            "help": "`retrieval_guard`: standard errors (of the paired per-query difference on validation) by which a "
            "grid point must clear the guard; 0 = a plain comparison, which small validation sets pass by chance."
        },
    )
    retrieval_lexical: bool = field(
        default=False,
        metadata={
            "help": "`retrieval_memory`: also keep the training queries' TF-IDF rows and mix a lexical neighbour term "
            "(nearest training queries by word/bigram TF-IDF cosine) into the memory's, its share chosen on "
            "validation (0 if it does not pay); needs scikit-learn (the 'lexical' extra)."
        },
    )
    retrieval_lexical_text_mode: str | None = field(
        default=None,
        metadata={
            "help": "`retrieval_lexical`: the query text mode of the lexical neighbours (their TF-IDF rows and the "
            "queries' texts compared with them), e.g. 'title_content' (the documents' full texts) while the model "
            "reads `query_text_mode`; unset = the same texts. Evaluation and predict on a dataset read that mode."
        },
    )
    retrieval_holdout: int = field(
        default=2000,
        metadata={
            "help": "`retrieval_memory` without a validation split: training queries held out of the memory (seeded "
            "by `seed`) to choose lam, k, T on."
        },
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
        """Raise a UsageError naming the field for every setting that cannot work (before anything is loaded)."""
        self._validate_numbers()
        if self.loss not in LOSSES:
            raise UsageError(f"loss={self.loss!r} is unknown; choose one of {', '.join(LOSSES)}")
        if self.logq_correction and self.loss not in ("decoupled_softmax", "cached_decoupled_softmax", "softmax"):
            raise UsageError(f"logq_correction applies to the softmax losses, not to loss={self.loss!r}")
        if self.logq_correction and self.negatives in ("all", "all_cached"):
            raise UsageError(
                f"logq_correction corrects the sampling bias of in-batch negatives; negatives={self.negatives!r} "
                "already scores every label, so turn it off"
            )
        self.topk_k = _parse_topk_k(self.topk_k)
        if not self.topk_alpha > 0:
            raise UsageError(f"topk_alpha must be positive, got {self.topk_alpha!r}")
        if "soft_topk" in self.loss and self.negatives in ("in_batch", "hard") and self.topk_k != "num_pos":
            per_query = self.per_device_train_batch_size * (
                1 + (self.num_hard_negatives if self.negatives == "hard" else 0)
            )
            if self.topk_k >= per_query * max(1, self.world_size if self._world_size_known() else 1):
                raise UsageError(
                    f"topk_k={self.topk_k} but a query sees only {per_query} candidate labels per device batch "
                    f"(per_device_train_batch_size={self.per_device_train_batch_size}, negatives={self.negatives!r}): "
                    "the soft top-k loss would be 0 at every step. Lower topk_k or raise the batch size."
                )
        self._validate_augmentation_and_retrieval()
        for name in ("max_test_samples", "top_k", "max_length"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.top_k < 5:
            raise UsageError(f"top_k={self.top_k}: evaluation reports P@5, nDCG@5 and PSP@5, so it needs top_k >= 5")
        if self.negatives not in NEGATIVES_MODES:
            raise UsageError(f"negatives={self.negatives!r} is unknown; choose one of {', '.join(NEGATIVES_MODES)}")
        self._validate_parallelism()
        if self.positive_sampling not in POSITIVE_SAMPLING_MODES:
            raise UsageError(
                f"positive_sampling={self.positive_sampling!r} is unknown; choose one of "
                f"{', '.join(POSITIVE_SAMPLING_MODES)}"
            )
        for name, modes in (("query_text_mode", QUERY_TEXT_MODES), ("label_text_mode", LABEL_TEXT_MODES)):
            value = getattr(self, name)
            if value not in modes:
                raise UsageError(f"{name}={value!r} is unknown; choose one of {', '.join(modes)}")
        for name in (
            "label_chunk_size",
            "label_refresh_steps",
            "mining_interval",
            "shortlist_size",
            "encode_batch_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if self.label_mini_batch_size is not None and (
            not isinstance(self.label_mini_batch_size, int) or self.label_mini_batch_size <= 0
        ):
            raise UsageError(
                f"label_mini_batch_size must be a positive integer or unset, got {self.label_mini_batch_size!r}"
            )
        if not isinstance(self.num_hard_negatives, int) or self.num_hard_negatives < 0:
            raise UsageError(f"num_hard_negatives must be an integer >= 0, got {self.num_hard_negatives!r}")
        if self.hard_negatives_start_epoch < 0:
            raise UsageError(f"hard_negatives_start_epoch must be >= 0, got {self.hard_negatives_start_epoch!r}")
        if self.negatives == "hard":
            if self.num_hard_negatives == 0:
                raise UsageError("negatives='hard' needs num_hard_negatives >= 1")
            if self.num_hard_negatives > self.shortlist_size:
                raise UsageError(
                    f"num_hard_negatives={self.num_hard_negatives} exceeds shortlist_size={self.shortlist_size}"
                )
        if not self.temperature > 0:
            raise UsageError(f"temperature must be > 0, got {self.temperature!r}")
        if self.eval_max_queries is not None and self.eval_max_queries <= 0:
            raise UsageError(f"eval_max_queries must be a positive integer or None, got {self.eval_max_queries!r}")
        if self.use_faiss:
            try:
                import faiss  # noqa: F401
            except ImportError as exc:
                raise UsageError("use_faiss=True needs faiss: pip install 'dexml_hf[faiss]'") from exc

    def _validate_augmentation_and_retrieval(self) -> None:
        top = self.label_cooccurrence_top
        if not isinstance(top, int) or isinstance(top, bool) or top < 0:
            raise UsageError(f"label_cooccurrence_top must be an integer >= 0, got {top!r}")
        if top and not self.augment_with_label_texts:
            raise UsageError("label_cooccurrence_top needs augment_with_label_texts=True")
        holdout = self.retrieval_holdout
        if not isinstance(holdout, int) or isinstance(holdout, bool) or holdout <= 0:
            raise UsageError(f"retrieval_holdout must be a positive integer, got {holdout!r}")
        try:
            parse_selection_metric(self.retrieval_metric)
        except ValueError as err:
            raise UsageError(f"retrieval_metric: {err}") from None
        try:
            parse_guard(self.retrieval_guard)
        except ValueError as err:
            raise UsageError(f"retrieval_guard: {err}") from None
        margin = self.retrieval_guard_margin
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < float("inf"):
            raise UsageError(f"retrieval_guard_margin must be a finite number >= 0, got {margin!r}")
        if self.retrieval_memory and self.test_split is None:
            raise UsageError("retrieval_memory is stored with the label index, which needs test_split")
        if self.retrieval_lexical:
            if not self.retrieval_memory:
                raise UsageError(
                    "retrieval_lexical mixes lexical neighbours into the memory: it needs retrieval_memory"
                )
            require_lexical("retrieval_lexical")
        mode = self.retrieval_lexical_text_mode
        if mode is not None:
            if not self.retrieval_lexical:
                raise UsageError(
                    "retrieval_lexical_text_mode is the text of the lexical neighbours: it needs retrieval_lexical"
                )
            if mode not in QUERY_TEXT_MODES:
                raise UsageError(
                    f"retrieval_lexical_text_mode={mode!r} is unknown; choose one of {', '.join(QUERY_TEXT_MODES)}"
                )

    def validate_for_xmc_dataset(self) -> None:
        """Options that an XMCDataset as ``train_dataset`` cannot honour (the trainer calls this before training).

        The trainer's batches come from its own sampler (no sampled positive label twice in a batch with
        ``avoid_duplicate_labels_in_batch``, a pure function of seed and epoch): upstream's ``no_duplicates``
        sampler says the same for these rows, ``group_by_label`` (one class label per row, for triplet losses) and
        custom samplers do not apply."""
        sampler = self.batch_sampler
        if sampler == BatchSamplers.BATCH_SAMPLER:
            return
        if sampler in (BatchSamplers.NO_DUPLICATES, BatchSamplers.NO_DUPLICATES_HASHED):
            if not self.avoid_duplicate_labels_in_batch:
                raise UsageError(
                    f"batch_sampler={sampler.value!r} contradicts avoid_duplicate_labels_in_batch=False: with an "
                    "XMCDataset, no_duplicates means no sampled positive label twice in a batch; drop one of the two"
                )
            return
        name = sampler.value if isinstance(sampler, BatchSamplers) else getattr(sampler, "__name__", repr(sampler))
        raise UsageError(
            f"batch_sampler={name!r} does not apply to XMCDataset training: the trainer draws each epoch's positives "
            "and builds the batches itself (avoid_duplicate_labels_in_batch, or batch_sampler=no_duplicates); for "
            "another sampler pass ready-made training rows as train_dataset"
        )

    def _validate_numbers(self) -> None:
        """The upstream numeric options that would otherwise fail late (ZeroDivisionError) or silently."""
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise UsageError(f"{name} must be a positive integer, got {value!r}")
        if not self.learning_rate >= 0:
            raise UsageError(f"learning_rate must be >= 0, got {self.learning_rate!r}")
        if self.max_steps is not None and self.max_steps == 0 and self.num_train_epochs == 0:
            raise UsageError("max_steps=0 and num_train_epochs=0: there is nothing to train")
        if self.num_train_epochs < 0:
            raise UsageError(f"num_train_epochs must be >= 0, got {self.num_train_epochs!r}")
        if self.weight_decay < 0 or self.warmup_steps < 0:
            raise UsageError("weight_decay and warmup_steps must be >= 0")

    def _validate_parallelism(self) -> None:
        """Data parallel (DDP) only. FSDP and DeepSpeed, asked for here or by ``accelerate launch`` (its environment
        variables), are refused: the label index, test evaluation, hard-negative mining, the label cache and the
        'all' engine's label passes run the model outside the Trainer's wrapper, where sharded weights are not whole,
        and the engine's per-process number of backward passes differs. Nothing of it is tested under them."""
        for name, asked in (
            ("fsdp", bool(self.fsdp) or _env_flag("ACCELERATE_USE_FSDP")),
            ("deepspeed", bool(self.deepspeed) or _env_flag("ACCELERATE_USE_DEEPSPEED")),
        ):
            if asked:
                raise UsageError(
                    f"{name}: DEXMLTrainer trains data-parallel (DDP) only; FSDP and DeepSpeed are not supported "
                    f"(negatives={self.negatives!r} and the label index encode with the model outside their wrapper). "
                    "Launch with DDP: recipes/accelerate_configs/ddp.yaml or torchrun"
                )
        if self.negatives == "all" and self.ddp_static_graph:
            raise UsageError(
                "ddp_static_graph=True with negatives='all': the all-label engine runs a different number of backward "
                "passes on each process, which a static graph cannot follow; leave ddp_static_graph unset"
            )

    def _world_size_known(self) -> bool:
        return "_n_gpu" in self.__dict__  # set by the upstream __post_init__

    @property
    def effective_learning_rate(self) -> float:
        """The optimiser's peak rate: ``learning_rate``, times the world size with ``scale_lr_with_world_size``."""
        return self.learning_rate * (self.world_size if self.scale_lr_with_world_size else 1)

    @property
    def global_batch_size(self) -> int:
        return self.per_device_train_batch_size * self.world_size * self.gradient_accumulation_steps

    def effective_settings(self, num_training_steps: int | None = None, loss=None) -> dict[str, object]:
        """What a run really uses, for the start log, ``--dry_run`` and the card; ``loss``: the trainer's loss object
        (a user-given one may differ from ``loss`` / ``temperature``), whose class and scale are then shown."""
        warmup = self.warmup_steps
        if num_training_steps is not None:
            warmup = self.get_warmup_steps(num_training_steps)
        elif 0 < warmup < 1:
            warmup = f"{warmup:.0%} of the training steps"
        return {
            "world_size": self.world_size,
            "per_device_train_batch_size": self.per_device_train_batch_size,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
            "global_batch_size": self.global_batch_size,
            "learning_rate": self.learning_rate,
            "effective_learning_rate": self.effective_learning_rate,
            "warmup_steps": warmup,
            "negatives": self.negatives,
            "max_length": self.max_length or "the model's max_seq_length",
            **self.loss_settings(loss),
        }

    def loss_settings(self, loss=None) -> dict[str, object]:
        """``loss`` (the class name) and ``temperature`` (1 / its ``scale``) of the loss object when given, else of
        the ``loss`` / ``temperature`` options (what the trainer builds without a loss object)."""
        if loss is None:
            return {"loss": LOSSES[self.loss][0], "temperature": self.temperature}
        if isinstance(loss, dict):  # one loss per dataset (sentence-transformers' multi-dataset training)
            parts = [self.loss_settings(value) for value in loss.values()]
            return {key: ", ".join(f"{name}: {p[key]}" for name, p in zip(loss, parts)) for key in parts[0]}
        scale = getattr(loss, "scale", None)
        temperature = 1.0 / float(scale) if isinstance(scale, (int, float)) and scale else "n/a (no scale)"
        return {"loss": type(loss).__name__, "temperature": temperature}

    @property
    def scale(self) -> float:
        """The loss's scale, 1/τ."""
        return 1.0 / self.temperature
