"""Model cards for DEXML dual encoders: a card-data dataclass, a TrainerCallback that fills it, a Jinja template.

The template ships in the package (``dexml_hf/templates/model_card.md``). The YAML header is built by
``huggingface_hub.ModelCardData`` so the ``model-index`` entries are valid Hub metadata. Secrets never reach a
card: every argument whose name mentions a token/password/secret is dropped before rendering.

Render the card of a recipe's model (no training; metrics marked as not yet measured)::

    python -m dexml_hf.model_card --recipe recipes/eurlex-4k/distilbert.yaml --output model_cards/eurlex-4k.md
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

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

DEXML_CITATION = """@inproceedings{gupta2024dualencoders,
  title     = {Dual-Encoders for Extreme Multi-Label Classification},
  author    = {Gupta, Nilesh and Khatri, Devvrit and Rawat, Ankit Singh and Bhojanapalli, Srinadh and Jain, Prateek and Dhillon, Inderjit S.},
  booktitle = {The Twelfth International Conference on Learning Representations},
  year      = {2024},
  url       = {https://openreview.net/forum?id=dNe1T0Ahby}
}"""

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

_SECRET_MARKERS = ("token", "password", "secret")
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
    "disable_tqdm",
    "overwrite_output_dir",
    "do_train",
    "do_eval",
    "do_predict",
}

# The paper's numbers for its four benchmarks (DESIGN.md §1), shown on cards of the matching recipes.
PAPER_RESULTS = {
    "eurlex-4k": "P@1 86.78, P@5 60.19",
    "lf-amazontitles-131k": "P@1 42.52, P@5 20.64",
    "lf-amazontitles-1.3m": "P@1 58.40, P@5 45.46",
    "lf-wikipedia-500k": "P@1 85.78, P@5 50.53",
}


def _is_secret(key: str) -> bool:
    return any(marker in key.lower() for marker in _SECRET_MARKERS)


def _plain(value: Any) -> Any:
    """JSON/YAML-safe copy (enums to values, unknown objects to str)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "value") and isinstance(value.value, (str, int, float)):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not _is_secret(str(k))}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def format_metrics_table(metrics: dict[str, float], baseline: dict[str, float] | None = None) -> str:
    """A markdown table of the XMC metrics (percentages); a second row for the untrained model when given."""
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
class DEXMLModelCardData:
    """What a DEXML model card says; filled by the ``train`` command and :class:`DEXMLModelCardCallback`.

    Metric values are fractions (``0.42``); the table shows percentages and ``model-index`` the fractions.
    """

    model_id: str | None = None
    model_name: str | None = None
    base_model: str | None = None
    dataset_name: str = "unknown"
    dataset_id: str | None = None
    dataset_is_synthetic: bool = False
    num_labels: int | None = None
    num_train_queries: int | None = None
    num_eval_queries: int | None = None
    eval_split: str = "test"
    filtered: bool = False
    example_query: str = "how do I keep bread crust soft?"  # the usage snippet's query; the CLI uses a test query
    query_text_mode: str = "title"
    label_text_mode: str = "title"
    pooling: str | None = None
    normalize: bool = True
    max_seq_length: int | None = None
    embedding_dim: int | None = None
    loss_name: str = "DecoupledSoftmaxLoss"
    loss_config: dict[str, Any] = field(default_factory=dict)
    citations: list[str] = field(default_factory=lambda: [DEXML_CITATION])
    negatives: str = "in_batch"
    temperature: float = 0.05
    top_k: int = 100
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] | None = None
    baseline_metrics: dict[str, float] | None = None
    training_logs: list[dict[str, Any]] = field(default_factory=list)
    train_runtime: str | None = None
    recipe: str | None = None
    train_command: str | None = None
    reference_results: str | None = None
    language: str | None = "en"
    license: str | None = "apache-2.0"
    tags: list[str] = field(
        default_factory=lambda: [
            "sentence-transformers",
            "dexml",
            "extreme-multi-label-classification",
            "dual-encoder",
        ]
    )

    # ------------------------------------------------------------------ filling
    def set_loss(self, loss: Any) -> None:
        """Name, ``get_config_dict()`` and ``citation`` of a loss object (DEXML's citation is always kept)."""
        self.loss_name = type(loss).__name__
        if hasattr(loss, "get_config_dict"):
            self.loss_config = _plain(loss.get_config_dict())
        citation = getattr(loss, "citation", None)
        if citation and citation.strip() not in (c.strip() for c in self.citations):
            self.citations = [citation, *self.citations] if "gupta2024" not in citation else [citation]

    def set_model(self, model: Any) -> None:
        """Embedding size and max length from a SentenceTransformer."""
        try:
            self.embedding_dim = int(model.get_embedding_dimension())
        except Exception:  # noqa: BLE001 - some modules cannot tell; the card just omits it
            pass
        if getattr(model, "max_seq_length", None):
            self.max_seq_length = int(model.max_seq_length)

    def set_hyperparameters(self, args: Any, defaults: dict[str, Any] | None = None) -> None:
        """Keep the training arguments that differ from ``defaults`` (tokens never kept).

        ``defaults`` is ``type(args)(output_dir=...).to_dict()``; build it *before* a Trainer exists, since a new
        TrainingArguments resets accelerate's global state.
        """
        values = args.to_dict() if hasattr(args, "to_dict") else dataclasses.asdict(args)
        if defaults is None:
            defaults = default_args_dict(type(args))
        changed = {}
        for key, value in values.items():
            if key in _IGNORED_HYPERPARAMETERS or _is_secret(key) or key.startswith("_"):
                continue
            if key in defaults and _plain(defaults[key]) == _plain(value):
                continue
            changed[key] = _plain(value)
        self.hyperparameters = changed

    # ------------------------------------------------------------------ rendering
    def _eval_results(self) -> list:
        from huggingface_hub import EvalResult

        if not self.metrics:
            return []
        results = []
        for key, name in METRIC_ROWS:
            if key not in self.metrics:
                continue
            results.append(
                EvalResult(
                    task_type="text-classification",
                    task_name="Extreme Multi-label Classification",
                    dataset_type=self.dataset_id or self.dataset_name,
                    dataset_name=self.dataset_name,
                    dataset_split=self.eval_split,
                    metric_type=key.replace("@", "_at_"),
                    metric_name=name,
                    metric_value=round(float(self.metrics[key]), 6),
                )
            )
        return results

    def _card_data(self):
        from huggingface_hub import ModelCardData

        return ModelCardData(
            language=self.language,
            license=self.license,
            library_name="sentence-transformers",
            pipeline_tag="sentence-similarity",
            tags=list(self.tags),
            base_model=self.base_model if self.base_model and not Path(self.base_model).exists() else None,
            datasets=[self.dataset_id] if self.dataset_id else None,
            model_name=self.display_name(),
            eval_results=self._eval_results() or None,
        )

    def display_name(self) -> str:
        if self.model_name:
            return self.model_name
        base = Path(self.base_model).name if self.base_model else "an encoder"
        return f"DEXML dual encoder on {self.dataset_name} (from {base})"

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
                f"queries = [{self.example_query[:200]!r}]",
                "scores, label_ids = index.search(model.encode(queries, convert_to_tensor=True), k=5)",
                "for score, label_id in zip(scores[0].tolist(), label_ids[0].tolist()):",
                '    print(f"{score:.3f}  {index.texts[label_id] if index.texts else label_id}")',
            ]
        )

    def render(self) -> str:
        """The card as markdown with its YAML header."""
        from huggingface_hub import ModelCard

        log_columns = sorted({k for row in self.training_logs for k in row if k not in ("epoch", "step")})
        card = ModelCard.from_template(
            self._card_data(),
            template_path=str(TEMPLATE_PATH),
            model_name=self.display_name(),
            base_model=self.base_model,
            dataset_name=self.dataset_name,
            dataset_id=self.dataset_id,
            dataset_url=f"https://huggingface.co/datasets/{self.dataset_id}" if self.dataset_id else None,
            dataset_is_synthetic=self.dataset_is_synthetic,
            num_labels=self.num_labels,
            num_train_queries=self.num_train_queries,
            num_eval_queries=self.num_eval_queries,
            eval_split=self.eval_split,
            filtered=self.filtered,
            query_text_mode=self.query_text_mode,
            label_text_mode=self.label_text_mode,
            pooling=self.pooling,
            normalize=self.normalize,
            max_seq_length=self.max_seq_length,
            embedding_dim=self.embedding_dim,
            loss_name=self.loss_name,
            loss_config=json.dumps(self.loss_config, indent=2, sort_keys=True),
            citations=self.citations,
            negatives=self.negatives,
            negatives_description=NEGATIVES_DESCRIPTIONS.get(self.negatives, ""),
            temperature=self.temperature,
            top_k=self.top_k,
            hyperparameters={k: v for k, v in self.hyperparameters.items() if not _is_secret(k)},
            metrics_table=format_metrics_table(self.metrics or {}, self.baseline_metrics),
            training_logs=self.training_logs,
            training_log_columns=log_columns,
            train_runtime=self.train_runtime,
            recipe=self.recipe,
            train_command=self.train_command,
            reference_results=self.reference_results,
            usage_snippet=self.usage_snippet(),
            versions=_versions(),
        )
        return str(card)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        if path.is_dir():
            path = path / "README.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.render(), encoding="utf-8")
        return path


def default_args_dict(args_class: type) -> dict[str, Any]:
    """The defaults of a TrainingArguments class after ``__post_init__`` (which normalises several fields)."""
    try:
        reference = args_class(output_dir="unused")
        return reference.to_dict() if hasattr(reference, "to_dict") else dataclasses.asdict(reference)
    except Exception:  # noqa: BLE001 - fall back to the declared field defaults
        return _declared_defaults(args_class)


def _declared_defaults(args_class: type) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(args_class) if f.default is not dataclasses.MISSING}


class DEXMLModelCardCallback(TrainerCallback):
    """Fills a :class:`DEXMLModelCardData` while the Trainer runs: hyperparameters, logs, eval metrics, runtime.

    Create it before the Trainer: it computes the default arguments then (see ``set_hyperparameters``).
    """

    def __init__(self, card_data: DEXMLModelCardData, args_class: type | None = None, max_log_rows: int = 20):
        self.card_data = card_data
        self.default_args = default_args_dict(args_class) if args_class is not None else None
        self.max_log_rows = max_log_rows
        self._logs: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        defaults = self.default_args if self.default_args is not None else _declared_defaults(type(args))
        self.card_data.set_hyperparameters(args, defaults)
        self.card_data.negatives = getattr(args, "negatives", self.card_data.negatives)
        self.card_data.temperature = getattr(args, "temperature", self.card_data.temperature)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        row = {"epoch": round(float(state.epoch or 0.0), 2), "step": state.global_step, "loss": round(logs["loss"], 4)}
        self._logs.append(row)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not metrics:
            return
        row = {"epoch": round(float(state.epoch or 0.0), 2), "step": state.global_step}
        for key, value in metrics.items():
            if key.endswith(("precision@1", "precision@5")) and isinstance(value, float):
                row["eval " + key.rsplit("_", 1)[-1]] = round(value, 4)
        self._logs.append(row)

    def on_train_end(self, args, state, control, **kwargs):
        logs = self._logs
        if len(logs) > self.max_log_rows:  # keep evenly spaced rows, always the last one
            step = len(logs) / self.max_log_rows
            logs = [logs[int(i * step)] for i in range(self.max_log_rows - 1)] + [logs[-1]]
        self.card_data.training_logs = logs


# ---------------------------------------------------------------------- recipe cards
def render_recipe_card(recipe: str | Path) -> str:
    """The card of a recipe's model before training: settings from the recipe, metrics 'not yet measured'."""
    from dexml_hf.config import hub_base_model, parse_train_args

    model_args, data_args, loss_args, training_args = parse_train_args([], config=recipe)
    recipe = Path(recipe)
    if "recipes" in recipe.parts:  # show it as the project-relative path users type
        recipe = Path(*recipe.parts[len(recipe.parts) - 1 - recipe.parts[::-1].index("recipes") :])
    dataset_key = recipe.parent.name
    synthetic = data_args.dataset == "synthetic"
    is_hub_id = not synthetic and data_args.dataset_format is None and not data_args.dataset.startswith((".", "/"))
    card = DEXMLModelCardData(
        model_id=training_args.hub_model_id,
        base_model=hub_base_model(model_args.model_name_or_path),
        dataset_name=Path(data_args.dataset).name if not is_hub_id else data_args.dataset.split("/")[-1],
        dataset_id=data_args.dataset if is_hub_id else None,
        dataset_is_synthetic=synthetic,
        eval_split=data_args.test_split,
        query_text_mode=training_args.query_text_mode,
        label_text_mode=training_args.label_text_mode,
        pooling=model_args.pooling,
        normalize=True if model_args.normalize is None else model_args.normalize,
        max_seq_length=model_args.max_seq_length,
        loss_name=_LOSS_CLASS_NAMES.get(loss_args.loss, loss_args.loss),
        loss_config={"scale": 1.0 / training_args.temperature, **_loss_extra_config(loss_args)},
        negatives=training_args.negatives,
        temperature=training_args.temperature,
        top_k=data_args.top_k,
        recipe=recipe.as_posix(),
        train_command=(
            f"dexml-hf train --config {recipe.as_posix()}"
            if recipe.stem == "cpu" or recipe.stem == "quickstart"
            else "accelerate launch --config_file recipes/accelerate_configs/ddp.yaml -m dexml_hf.cli train "
            f"--config {recipe.as_posix()}"
        ),
        reference_results=PAPER_RESULTS.get(dataset_key),
    )
    card.set_hyperparameters(training_args)
    return card.render()


_LOSS_CLASS_NAMES = {
    "decoupled_softmax": "DecoupledSoftmaxLoss",
    "cached_decoupled_softmax": "CachedDecoupledSoftmaxLoss",
    "softmax": "SoftmaxLoss",
    "soft_topk": "SoftTopKLoss",
    "cached_soft_topk": "CachedSoftTopKLoss",
    "ova_bce": "OvABCELoss",
}


def _loss_extra_config(loss_args) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if loss_args.loss in ("soft_topk", "cached_soft_topk"):
        extra.update(k=loss_args.topk_k, alpha=loss_args.topk_alpha)
    if getattr(loss_args, "logq_correction", False):
        extra["logq_correction"] = True
    return extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dexml_hf.model_card", description="Render the model card of a recipe's model (untrained)."
    )
    parser.add_argument("--recipe", required=True, nargs="+", help="One or more recipe YAML files.")
    parser.add_argument(
        "--output", default=None, help="Output .md file (one recipe) or folder (cards named <dataset>-<variant>.md)."
    )
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
