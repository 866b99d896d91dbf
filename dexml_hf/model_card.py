"""The DEXML model card: a ``SentenceTransformerModelCardData`` subclass rendered with a Jinja template shipped in the
package (``dexml_hf/templates/model_card.md``).

The YAML header is built by ``huggingface_hub.ModelCardData`` so the ``model-index`` entries are valid Hub metadata.
:class:`DEXMLModelCardCallback` (the trainer's ``model_card_callback_class``) is the one place a training run fills
the card. Secrets never reach a card: the trainer strips the token from its arguments, and every credential option
(:func:`~dexml_hf.script_args.is_secret`) is dropped before rendering. ``dexml-hf card --recipe ...`` renders a
recipe's card.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers.sentence_transformer.model_card import (
    SentenceTransformerModelCardCallback,
    SentenceTransformerModelCardData,
)

from dexml_hf.citation import DEXML_CITATION
from dexml_hf.script_args import is_secret

__all__ = [
    "DEXML_CITATION",
    "DEXMLModelCardCallback",
    "DEXMLModelCardData",
    "METRIC_ROWS",
    "TEMPLATE_PATH",
    "format_metrics_table",
    "render_recipe_card",
]

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md"

# (metric key of xmc_metrics, display name) in the order of the card's table.
METRIC_ROWS = (
    ("precision@1", "P@1"),
    ("precision@3", "P@3"),
    ("precision@5", "P@5"),
    ("ndcg@1", "nDCG@1"),
    ("ndcg@3", "nDCG@3"),
    ("ndcg@5", "nDCG@5"),
    ("psp@1", "PSP@1"),
    ("psp@3", "PSP@3"),
    ("psp@5", "PSP@5"),
    ("recall@100", "R@100"),
)

NEGATIVES_DESCRIPTIONS = {
    "in_batch": "the batch's sampled positive labels, other positives of the query masked out",
    "all": "every label every step (exact, two chunked encoder passes over the labels)",
    "all_cached": "every label from an embedding cache refreshed periodically, plus the batch's positives",
    "hard": "in-batch plus negatives mined from each query's top-ranked labels",
}

_IGNORED_HYPERPARAMETERS = {
    "output_dir",
    "logging_dir",
    "logging_strategy",
    "logging_first_step",
    "logging_steps",
    "eval_strategy",
    "eval_steps",
    "save_strategy",
    "save_steps",
    "save_total_limit",
    "report_to",
    "run_name",
    "push_to_hub",
    "hub_model_id",
    "hub_strategy",
    "hub_private_repo",
    "hub_revision",
    "resume_from_checkpoint",
    "disable_tqdm",
    "overwrite_output_dir",
    "do_train",
    "do_eval",
    "do_predict",
}

# The paper's numbers for its four benchmarks (DESIGN.md §1), shown on cards of the matching recipes.
PAPER_RESULTS = {
    "eurlex-4k/distilbert": "P@1 86.78, P@5 60.19",
    "eurlex-4k/distilbert-topk5": "P@1 83.42 (the paper's loss ablation: soft top-5)",
    "lf-amazontitles-131k/distilbert": "P@1 42.52, P@5 20.64",
    "lf-amazontitles-1.3m/distilbert": "P@1 58.40, P@5 45.46",
    "lf-wikipedia-500k/distilbert": "P@1 85.78, P@5 50.53",
}


def paper_results(recipe: str | Path | None) -> str | None:
    """The paper's figures for the setup of ``recipe`` (``recipes/<dataset>/<variant>.yaml``), when it reports them."""
    if recipe is None:
        return None
    recipe = Path(recipe)
    return PAPER_RESULTS.get(f"{recipe.parent.name}/{recipe.stem}")


def _plain(value: Any) -> Any:
    """JSON/YAML-safe copy (enums to values, unknown objects to str)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int, float)):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not is_secret(str(k))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


_FAMILY_NAMES = {"precision": "P", "ndcg": "nDCG", "psp": "PSP", "psndcg": "PSnDCG", "recall": "R", "mrr": "MRR"}


def _metric_name(key: str) -> str:
    family, _, k = key.partition("@")
    return f"{_FAMILY_NAMES.get(family, family)}@{k}"


def format_metrics_table(
    metrics: dict[str, float],
    baseline: dict[str, float] | None = None,
    every_metric: bool = False,
    extra_rows: tuple[tuple[str, dict[str, float]], ...] = (),
) -> str:
    """The one markdown table of XMC metrics (percentages): the card's columns (``METRIC_ROWS``), or with
    ``every_metric`` every key of ``metrics`` (family by family, k ascending); an 'untrained' row and
    ``extra_rows`` (label, metrics) before the model's own row when given."""
    if every_metric:
        order = {family: i for i, family in enumerate(_FAMILY_NAMES)}
        keys = sorted(metrics, key=lambda k: (order.get(k.split("@")[0], 99), k.split("@")[0], int(k.split("@")[1])))
        rows = [(key, _metric_name(key)) for key in keys]
    else:
        rows = [(key, name) for key, name in METRIC_ROWS if key in metrics]
    if not rows:
        return ""
    lines = ["| model | " + " | ".join(name for _, name in rows) + " |", "|---|" + "---:|" * len(rows)]
    if baseline:
        lines.append(
            "| untrained | "
            + " | ".join(f"{100 * baseline[key]:.2f}" if key in baseline else "" for key, _ in rows)
            + " |"
        )
    for label, values in extra_rows:
        lines.append(
            f"| {label} | " + " | ".join(f"{100 * values[key]:.2f}" if key in values else "" for key, _ in rows) + " |"
        )
    lines.append("| **this model** | " + " | ".join(f"{100 * metrics[key]:.2f}" for key, _ in rows) + " |")
    return "\n".join(lines)


def _versions() -> dict[str, str]:
    import platform

    versions = {"Python": platform.python_version()}
    for name, module in [
        ("dexml_hf", "dexml_hf"),
        ("Sentence Transformers", "sentence_transformers"),
        ("Transformers", "transformers"),
        ("PyTorch", "torch"),
        ("Accelerate", "accelerate"),
        ("Datasets", "datasets"),
        ("huggingface_hub", "huggingface_hub"),
    ]:
        try:
            versions[name] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing optional package is just not listed
            continue
    return versions


@dataclass
class DEXMLModelCardData(SentenceTransformerModelCardData):
    """The model card of a DEXML dual encoder, inside sentence-transformers' card system.

    Set as ``model.model_card_data`` (``DEXMLTrainer`` does it), so ``model.save(...)``, ``trainer.save_model()``
    and ``trainer.push_to_hub()`` all write this card: sentence-transformers' callback fills the hyperparameters,
    losses, citations and training logs; the trainer fills the dataset fields and the XMC metrics of its final
    evaluation (into the table and ``model-index``). Metric values are fractions (``0.42``).
    """

    language: str | list[str] | None = field(default_factory=lambda: ["en"])
    license: str | None = "apache-2.0"
    task_name: str | None = "extreme multi-label classification"
    tags: list[str] = field(
        default_factory=lambda: [
            "sentence-transformers",
            "dexml",
            "extreme-multi-label-classification",
            "dual-encoder",
        ]
    )
    base_model: str | None = None
    dataset_name: str | None = None
    dataset_id: str | None = None
    dataset_is_synthetic: bool = False
    num_labels: int | None = None
    num_train_queries: int | None = None
    num_eval_queries: int | None = None
    eval_split: str = "test"
    filtered: bool = False
    example_query: str = "how do I keep bread crust soft?"  # the usage snippet's query; the trainer uses a real one
    query_text_mode: str = "title"
    label_text_mode: str = "title"
    pooling: str | None = None
    normalize: bool | None = None
    max_seq_length: int | None = None
    embedding_dim: int | None = None
    loss_name: str | None = None
    loss_config: dict[str, Any] = field(default_factory=dict)
    negatives: str = "in_batch"
    temperature: float | str | None = 0.05  # 1 / the loss's scale; a note when the loss has none
    top_k: int = 100
    hyperparameters: dict[str, Any] | None = None  # None: sentence-transformers' non-default hyperparameters
    metrics: dict[str, float] | None = None
    baseline_metrics: dict[str, float] | None = None
    dual_encoder_metrics: dict[str, float] | None = None  # with a retrieval memory: the encoder alone
    retrieval: dict[str, Any] | None = None  # the memory's chosen lam, k, temperature
    approximate_search: dict[str, Any] | None = None  # label_index.json's "approximate" entry (kind, params, recall)
    train_runtime: str | None = None
    model_selection: str | None = None
    effective_settings: dict[str, Any] | None = None
    recipe: str | None = None
    train_command: str | None = None
    reference_results: str | None = None
    max_log_rows: int = 20

    template_path: Path = field(default=TEMPLATE_PATH, init=False, repr=False)

    # ------------------------------------------------------------------ filling
    @classmethod
    def from_card_data(cls, other: Any) -> DEXMLModelCardData:
        """A DEXML card keeping what a model's existing card data already says (ids, base model, language...)."""
        card = cls()
        for name in ("model_id", "model_name", "license", "base_model", "base_model_revision", "local_files_only"):
            value = getattr(other, name, None)
            if value:
                setattr(card, name, value)
        if getattr(other, "language", None):
            card.language = list(other.language)
        for tag in getattr(other, "tags", None) or []:
            card.add_tags(tag)
        return card

    def set_loss(self, loss: Any) -> None:
        """Name, ``get_config_dict()`` and citation of the loss (sentence-transformers' ``set_losses`` too)."""
        self.loss_name = type(loss).__name__
        if hasattr(loss, "get_config_dict"):
            self.loss_config = _plain(loss.get_config_dict())
        self.set_losses([loss])

    def set_model(self, model: Any) -> None:
        """Embedding size, max length and normalisation of a SentenceTransformer."""
        try:
            self.embedding_dim = int(model.get_embedding_dimension())
        except Exception:  # noqa: BLE001 - some modules cannot tell; the card just omits it
            pass
        if getattr(model, "max_seq_length", None):
            self.max_seq_length = int(model.max_seq_length)
        if self.normalize is None:
            self.normalize = getattr(model, "similarity_fn_name", "cosine") == "cosine"

    def set_hyperparameters(self, args: Any, defaults: dict[str, Any] | None = None) -> None:
        """Keep the training arguments that differ from ``defaults`` (the class defaults when not given)."""
        values = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
        if defaults is None:
            defaults = default_args_dict(type(args))
        self.hyperparameters = {
            key: _plain(value)
            for key, value in values.items()
            if not (key in _IGNORED_HYPERPARAMETERS or is_secret(key) or key.startswith("_"))
            and not (key in defaults and _plain(defaults[key]) == _plain(value))
        }

    def set_label_index(self, index: Any) -> None:
        """What the card says of the label index saved with the model: its approximate index, if it has one."""
        approximate = getattr(index, "approximate", None)
        self.approximate_search = None if approximate is None else _plain(approximate.config_dict())

    def _approximate_section(self) -> dict[str, Any] | None:
        """The approximate index's kind, codes, parameters and measured recall, formatted for the template."""
        entry = self.approximate_search
        if not entry:
            return None
        params = {k: v for k, v in (entry.get("params") or {}).items() if k != "rerank"}
        out = {
            "kind": entry["kind"],
            "codes": entry.get("codes", "flat"),
            "params": ", ".join(f"{k}={v}" for k, v in params.items()) or "no parameters",
            "reranks": (entry.get("params") or {}).get("rerank", 1) if entry.get("reranks") else None,
            "recall": None,
        }
        recall = entry.get("recall")
        if recall:
            out["recall"] = {
                "k": recall["k"],
                "value": f"{recall['recall']:.4f}",
                "target": recall.get("target_recall"),
                "n_queries": f"{recall['n_queries']:,}",
                "before_changes": bool(recall.get("measured_before_label_changes")),
            }
        return out

    # ------------------------------------------------------------------ rendering
    def _eval_results(self) -> list:
        from huggingface_hub import EvalResult

        return [
            EvalResult(
                task_type="text-classification",
                task_name="Extreme Multi-label Classification",
                dataset_type=self.dataset_id or self.dataset_name or "unknown",
                dataset_name=self.dataset_name or "unknown",
                dataset_split=self.eval_split,
                metric_type=key.replace("@", "_at_"),
                metric_name=name,
                metric_value=round(float(self.metrics[key]), 6),
            )
            for key, name in METRIC_ROWS
            if self.metrics and key in self.metrics
        ]

    def display_name(self) -> str:
        if self.model_name:
            return self.model_name
        base = Path(self.base_model).name if self.base_model else "an encoder"
        return f"DEXML dual encoder on {self.dataset_name or 'an XMC dataset'} (from {base})"

    def to_yaml(self, line_break=None) -> str:
        from huggingface_hub import ModelCardData

        return ModelCardData(
            language=self.language,
            license=self.license,
            library_name="sentence-transformers",
            pipeline_tag="sentence-similarity",
            tags=list(self.tags),
            base_model=self.base_model or None,
            datasets=[self.dataset_id] if self.dataset_id else None,
            model_name=self.display_name(),
            eval_results=self._eval_results() or None,
        ).to_yaml(line_break=line_break)

    def usage_snippet(self) -> str:
        model_id = self.model_id or "path/to/this/model"
        return "\n".join(
            [
                "from huggingface_hub import snapshot_download",
                "from sentence_transformers import SentenceTransformer",
                "from dexml_hf import LabelIndex",
                "",
                f'path = snapshot_download("{model_id}")  # the model and its label index, one download',
                "model = SentenceTransformer(path)",
                'index = LabelIndex.load(f"{path}/label_index")  # embeddings of every label text',
                "",
                *(
                    ["from dexml_hf.data.dataset import wikipedia_text  # the texts this model was trained on", ""]
                    if self.query_text_mode == "wikipedia"
                    else []
                ),
                f"queries = [{self.example_query[:200]!r}]"
                if self.query_text_mode != "wikipedia"
                else f"queries = [wikipedia_text({self.example_query[:200]!r})]",
                "for hit in index.search_texts(model, queries, k=5)[0]:",
                "    print(f\"{hit['score']:.3f}  {hit['text']}\")",
            ]
        )

    def _log_rows(self) -> tuple[list[str], list[dict[str, Any]]]:
        """Training logs (sentence-transformers' rows), evenly thinned to ``max_log_rows``, always the last."""
        logs = [row for row in self.training_logs if any(k not in ("Epoch", "Step") for k in row)]
        if len(logs) > self.max_log_rows:
            step = len(logs) / self.max_log_rows
            logs = [logs[int(i * step)] for i in range(self.max_log_rows - 1)] + [logs[-1]]
        columns = []
        for row in logs:
            columns += [k for k in row if k not in columns and k not in ("Epoch", "Step")]
        rows = [{k: _log_value(v) for k, v in row.items()} for row in logs]
        return columns, rows

    def to_dict(self) -> dict[str, Any]:
        """The template's variables (``ModelCard.from_template`` renders the template with them)."""
        if self.model is not None:
            self.set_model(self.model)
        hyperparameters = self.hyperparameters
        if hyperparameters is None:
            hyperparameters = {
                k: _plain(v)
                for k, v in self.non_default_hyperparameters.items()
                if k not in _IGNORED_HYPERPARAMETERS and not is_secret(k)
            }
        citations = list(dict.fromkeys(c.strip() for c in self.citations.values() if c and c.strip()))
        if not any("Dual-Encoders for Extreme Multi-Label" in c for c in citations):
            citations.insert(0, DEXML_CITATION)
        columns, rows = self._log_rows()
        return {
            "model_name": self.display_name(),
            "base_model": self.base_model,
            "dataset_name": self.dataset_name or "unknown",
            "dataset_id": self.dataset_id,
            "dataset_url": f"https://huggingface.co/datasets/{self.dataset_id}" if self.dataset_id else None,
            "dataset_is_synthetic": self.dataset_is_synthetic,
            "num_labels": self.num_labels,
            "num_train_queries": self.num_train_queries,
            "num_eval_queries": self.num_eval_queries,
            "eval_split": self.eval_split,
            "filtered": self.filtered,
            "query_text_mode": self.query_text_mode,
            "label_text_mode": self.label_text_mode,
            "pooling": self.pooling,
            "normalize": True if self.normalize is None else self.normalize,
            "max_seq_length": self.max_seq_length,
            "embedding_dim": self.embedding_dim,
            "loss_name": self.loss_name or "DecoupledSoftmaxLoss",
            "loss_config": json.dumps(self.loss_config, indent=2, sort_keys=True),
            "citations": citations,
            "negatives": self.negatives,
            "negatives_description": NEGATIVES_DESCRIPTIONS.get(self.negatives, ""),
            "temperature": self.temperature,
            "top_k": self.top_k,
            "hyperparameters": {k: v for k, v in hyperparameters.items() if not is_secret(k)},
            "metrics_table": format_metrics_table(
                self.metrics or {},
                self.baseline_metrics,
                extra_rows=(("dual encoder alone", self.dual_encoder_metrics),) if self.dual_encoder_metrics else (),
            ),
            "retrieval": self.retrieval,
            "approximate": self._approximate_section(),
            "training_logs": rows,
            "training_log_columns": columns,
            "train_runtime": self.train_runtime,
            "effective_settings": self.effective_settings,
            "model_selection": self.model_selection,
            "recipe": self.recipe,
            "train_command": self.train_command,
            "reference_results": self.reference_results,
            "usage_snippet": self.usage_snippet(),
            "versions": _versions(),
        }

    def render(self) -> str:
        """The card as markdown with its YAML header (what ``model.save`` writes as README.md)."""
        from huggingface_hub import ModelCard

        return str(ModelCard.from_template(self, template_path=str(self.template_path)))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path


class DEXMLModelCardCallback(SentenceTransformerModelCardCallback):
    """Fills a ``DEXMLTrainer``'s model card, the only place that does: sentence-transformers' callback (datasets,
    losses, hyperparameters, logs), then at init what the trainer was given (dataset, texts, loss object, negatives,
    model), at train start the effective settings, at train end the runtime and the final test evaluation
    (``trainer.test_metrics`` and its untrained / dual-encoder rows, the retrieval memory's λ, k, T). The trainer
    places it after its own callbacks so that the test evaluation has run when ``on_train_end`` reads it."""

    trainer: Any = None

    def on_init_end(self, args, state, control, model, trainer, **kwargs) -> None:
        super().on_init_end(args, state, control, model=model, trainer=trainer, **kwargs)
        self.trainer = trainer
        card = model.model_card_data
        loss = trainer.loss
        card.set_loss(loss)
        card.temperature = args.loss_settings(loss)["temperature"]
        card.negatives, card.top_k = args.negatives, args.top_k
        card.query_text_mode, card.label_text_mode = args.query_text_mode, args.label_text_mode
        card.add_tags(["dexml", "extreme-multi-label-classification", f"negatives-{args.negatives}"])
        xmc = trainer.source_xmc
        if xmc is not None:
            card.dataset_name = card.dataset_name or xmc.name
            card.dataset_is_synthetic = card.dataset_is_synthetic or xmc.name == "synthetic"
            if card.dataset_is_synthetic:
                card.add_tags("synthetic-data")
            card.num_labels = xmc.num_labels
            card.num_train_queries = xmc.num_queries("train")
            if args.test_split:
                card.eval_split = args.test_split
                card.filtered = bool(len(xmc.filters.get(args.test_split, ())))
                texts = xmc.query_texts(args.test_split, args.query_text_mode)[:100]
                card.example_query = next((t for t in texts if t.strip()), card.example_query)
        if args.load_best_model_at_end and trainer.evaluator is not None:
            split = getattr(trainer.evaluator, "name", "") or "the evaluation split"
            card.model_selection = f"the checkpoint with the best {args.metric_for_best_model} on {split}"
            if trainer.xmc is not None and split in trainer.xmc.splits:
                card.model_selection += f" ({trainer.xmc.num_queries(split):,} queries)"
        card.set_model(model)

    def on_train_begin(self, args, state, control, model, **kwargs) -> None:
        super().on_train_begin(args, state, control, model=model, **kwargs)
        model.model_card_data.effective_settings = args.effective_settings(state.max_steps, loss=self.trainer.loss)

    def on_train_end(self, args, state, control, model, **kwargs) -> None:
        card, trainer = model.model_card_data, self.trainer
        runtime = next((log["train_runtime"] for log in reversed(state.log_history) if "train_runtime" in log), None)
        if runtime is not None:  # the Trainer's own measure of the training loop
            card.train_runtime = f"{runtime / 60:.1f} min ({state.global_step} steps)"
        if trainer.test_metrics is None:
            return
        xmc, split = trainer.source_xmc, args.test_split
        card.metrics, card.baseline_metrics = trainer.test_metrics, trainer.baseline_metrics
        card.dual_encoder_metrics = trainer.dual_encoder_metrics
        memory = getattr(trainer.label_index, "memory", None)
        if trainer.dual_encoder_metrics is not None and memory is not None:
            card.retrieval = {
                "lam": memory.lam,
                "k": memory.k,
                "temperature": memory.temperature,
                "agreement": memory.agreement,
                "lexical_weight": memory.lexical_weight if memory.uses_lexical else None,
                "lexical_k": memory.lexical_k,
                "lexical_temperature": memory.lexical_temperature,
                "lexical_text_mode": memory.lexical_text_mode,
                "guard": (memory.tuning or {}).get("guard"),
                "guard_margin": (memory.tuning or {}).get("guard_margin"),
            }
        card.num_eval_queries = min(xmc.num_queries(split), args.max_test_samples or xmc.num_queries(split))


def _log_value(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def default_args_dict(args_class: type) -> dict[str, Any]:
    """The defaults of a TrainingArguments class after ``__post_init__`` (which normalises several fields)."""
    reference = args_class(output_dir="unused", accelerator_config={"use_configured_state": True})
    return reference.to_dict()


# ---------------------------------------------------------------------- recipe cards
def render_recipe_card(recipe: str | Path) -> str:
    """The card of a recipe's model before training: settings from the recipe, metrics 'not yet measured'."""
    from dexml_hf.factory import LOSSES, hub_base_model, is_hub_id
    from dexml_hf.script_args import parse_train_args

    model_args, data_args, training_args = parse_train_args(["--config", str(recipe)])
    recipe = Path(recipe)
    if "recipes" in recipe.parts:  # show it as the project-relative path users type
        recipe = Path(*recipe.parts[len(recipe.parts) - 1 - recipe.parts[::-1].index("recipes") :])
    hub_dataset = is_hub_id(data_args.dataset) and data_args.dataset_format is None
    card = DEXMLModelCardData(
        model_id=training_args.hub_model_id,
        base_model=hub_base_model(model_args.model_name_or_path),
        dataset_name=data_args.dataset.split("/")[-1] if hub_dataset else Path(data_args.dataset).name,
        dataset_id=data_args.dataset if hub_dataset else None,
        dataset_is_synthetic=data_args.dataset == "synthetic",
        eval_split=training_args.test_split or "test",
        query_text_mode=training_args.query_text_mode,
        label_text_mode=training_args.label_text_mode,
        pooling=model_args.pooling,
        normalize=True if model_args.normalize is None else model_args.normalize,
        max_seq_length=model_args.max_seq_length,
        loss_name=LOSSES[training_args.loss][0],
        loss_config={"scale": training_args.scale, **_recipe_loss_options(training_args)},
        negatives=training_args.negatives,
        temperature=training_args.temperature,
        top_k=training_args.top_k,
        recipe=recipe.as_posix(),
        train_command=(
            f"dexml-hf train --config {recipe.as_posix()}"
            if recipe.stem == "quickstart" or "cpu" in recipe.stem.split("-")
            else "accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m dexml_hf.cli train "
            f"--config {recipe.as_posix()}"
        ),
        reference_results=paper_results(recipe),
    )
    card.set_hyperparameters(training_args)
    return card.render()


def _recipe_loss_options(training_args) -> dict[str, Any]:
    from dexml_hf.factory import loss_options

    return loss_options(
        training_args.loss,
        k=training_args.topk_k,
        alpha=training_args.topk_alpha,
        logq_correction=training_args.logq_correction,
    )
