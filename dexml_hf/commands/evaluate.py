"""``dexml-hf evaluate``: exact top-k of a model on a dataset split, a metric table, a JSON report and a plot.

    dexml-hf evaluate --model quicktensor/dexml_eurlex-4k --dataset user/eurlex-4k --split test --output_dir eval/

Writes ``<output-dir>/eval_<split>.json`` (metrics, per-bucket contributions, P@k / R@k / nDCG@k within the
frequent (> 50 training documents), few-shot (1-50) and zero-shot (0) label groups, settings) and
``<output-dir>/eval_<split>.png`` (P@k and PSP@k contributed by head / torso / tail labels, bucketed by
training frequency so each holds a third of the positive occurrences).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from dexml_hf.errors import UsageError
from dexml_hf.script_args import inference_dtype_field

logger = logging.getLogger(__name__)

__all__ = ["EvaluateArguments", "build_parser", "main", "run_evaluate"]

HELP = "evaluate a model on an XMC dataset split (P@k, nDCG@k, PSP@k, ...)"


@dataclass
class EvaluateArguments:
    """Exact top-k evaluation of a dual encoder on an XMC dataset split."""

    model: str | None = field(
        default=None, metadata={"help": "sentence-transformers model or DEXML checkpoint (path or Hub id); required"}
    )
    dataset: str | None = field(
        default=None, metadata={"help": "XMC dataset: Hub id, or a local folder / file in any format; required"}
    )
    dataset_format: str | None = field(default=None, metadata={"help": "format of a local dataset (default: detect)"})
    split: str = field(default="test", metadata={"help": "split to evaluate"})
    output_dir: str | None = field(default=None, metadata={"help": "where to write the JSON report and the PNG plot"})
    ks: str = field(default="1,3,5", metadata={"help": "comma-separated cut-offs"})
    batch_size: int = field(default=64, metadata={"help": "encoding batch size"})
    max_queries: int | None = field(default=None, metadata={"help": "evaluate only the first N queries"})
    query_text_mode: str | None = field(
        default=None,
        metadata={
            "help": "query text: title, content, title_content, wikipedia (unset: a released checkpoint's own, else title)"
        },
    )
    label_text_mode: str | None = field(
        default=None,
        metadata={"help": "label text: title, title_alt, wikipedia (unset: a released checkpoint's own, else title)"},
    )
    model_revision: str | None = field(default=None, metadata={"help": "model revision on the Hub"})
    dtype: str = inference_dtype_field()
    dataset_revision: str | None = field(default=None, metadata={"help": "dataset revision on the Hub"})
    plot: bool = field(default=True, metadata={"help": "write the head/torso/tail PNG (needs matplotlib)"})
    index: str | None = field(
        default=None,
        metadata={
            "help": "a saved LabelIndex of the dataset's labels (folder or Hub id, e.g. <model>/label_index) made by "
            "this model: its label embeddings are used, and its retrieval memory if it has one (retrieval-augmented "
            "ranking with the stored lam, k, T). Unset: the labels are encoded, no memory."
        },
    )
    use_memory: bool = field(
        default=True, metadata={"help": "with --index: use its retrieval memory (--no_use_memory: dual encoder only)"}
    )

    def __post_init__(self):
        if not self.model or not self.dataset:
            raise UsageError("--model and --dataset are required")
        try:
            self.cutoffs = tuple(int(k) for k in self.ks.split(","))
        except ValueError as err:
            raise UsageError(f"--ks must be comma-separated integers, got {self.ks!r}") from err
        if min(self.cutoffs) < 1:
            raise UsageError(f"--ks must be positive, got {self.ks!r}")
        for name in ("batch_size", "max_queries"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"--{name} must be a positive integer, got {value}")


def build_parser():
    from dexml_hf.script_args import DEXMLArgumentParser

    return DEXMLArgumentParser([EvaluateArguments], prog="dexml-hf evaluate", description=EvaluateArguments.__doc__)


def run_evaluate(
    model,
    dataset,
    split: str = "test",
    ks=(1, 3, 5),
    batch_size: int = 64,
    max_queries: int | None = None,
    query_mode: str | None = None,
    label_mode: str | None = None,
    output_dir: str | Path | None = None,
    plot: bool = True,
    model_name: str | None = None,
    dataset_name: str | None = None,
    index=None,
) -> dict:
    """Evaluate and return the report dict; writes ``eval_<split>.json`` / ``.png`` into ``output_dir`` if given."""
    import numpy as np

    from dexml_hf.encoding import encoder_dtype
    from dexml_hf.evaluation import bucket_metrics, frequency_buckets, label_group_metrics
    from dexml_hf.factory import build_evaluator
    from dexml_hf.index import resolve_normalize

    memory = None if index is None else index.memory
    evaluator = build_evaluator(
        dataset,
        split,
        query_text_mode=query_mode,
        label_text_mode=label_mode,
        max_queries=max_queries,
        lexical_query_mode=None if memory is None else memory.lexical_text_mode,
        ks=ks,
        batch_size=batch_size,
        name="",
        write_csv=False,
        show_progress_bar=True,
        index=index,
    )
    _, topk = evaluator.compute_topk(model)
    metrics = evaluator.compute_metrics(topk)
    if "train" in dataset.label_matrices:
        freq = np.bincount(dataset.label_matrices["train"].indices, minlength=len(evaluator.label_texts))
    else:
        freq = np.bincount(evaluator.truth.indices, minlength=len(evaluator.label_texts))
    buckets = bucket_metrics(topk, evaluator.truth, frequency_buckets(freq), ks, evaluator.inv_propensity)
    report = {
        "model": model_name,
        "dataset": dataset_name or getattr(dataset, "name", None),
        "split": split,
        "num_queries": len(evaluator.queries),
        "num_labels": len(evaluator.label_texts),
        "filtered_pairs": 0 if evaluator.filters is None else int(len(evaluator.filters)),
        "normalized_embeddings": resolve_normalize(model, evaluator.normalize),
        "encoder_dtype": str(encoder_dtype(model)).removeprefix("torch."),
        "metrics": metrics,
        "buckets": buckets,
    }
    if "train" in dataset.label_matrices:  # frequent (> 50 training docs) / few (1-50) / zero-shot (0) labels
        report["label_groups"] = label_group_metrics(topk, evaluator.truth, freq, ks)
    if memory is not None:
        report["retrieval"] = {
            "lam": memory.lam,
            "k": memory.k,
            "temperature": memory.temperature,
            "agreement": memory.agreement,
        }
        if memory.uses_lexical:
            report["retrieval"].update(lexical_weight=memory.lexical_weight, lexical_k=memory.lexical_k)
            if memory.lexical_text_mode is not None:
                report["retrieval"]["lexical_text_mode"] = memory.lexical_text_mode
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with open(out / f"eval_{split}.json", "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        if plot:
            plot_buckets(buckets, sorted(set(ks)), out / f"eval_{split}.png", title=f"{report['dataset']} / {split}")
    return report


def plot_buckets(buckets: dict, ks, path: str | Path, title: str = "") -> Path:
    """Grouped bars: P@k (and PSP@k when present) contributed by each label-frequency bucket."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(buckets)
    families = [m for m in ("precision", "psp") if f"{m}@{ks[0]}" in buckets[names[0]]]
    fig, axes = plt.subplots(1, len(families), figsize=(5 * len(families), 3.5), squeeze=False)
    width = 0.8 / len(ks)
    for ax, fam in zip(axes[0], families):
        for j, k in enumerate(ks):
            values = [100 * buckets[b][f"{fam}@{k}"] for b in names]
            ax.bar([i + j * width for i in range(len(names))], values, width, label=f"@{k}")
        ax.set_xticks([i + width * (len(ks) - 1) / 2 for i in range(len(names))], names)
        ax.set_ylabel(f"{'P' if fam == 'precision' else 'PSP'}@k contribution (%)")
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def main(argv: list[str]) -> int:
    from dexml_hf.factory import load_dataset, load_model
    from dexml_hf.hub import resolve_text_modes
    from dexml_hf.model_card import format_metrics_table

    (args,) = build_parser().parse(argv)
    model = load_model(args.model, revision=args.model_revision, dtype=args.dtype)
    dataset = load_dataset(args.dataset, format=args.dataset_format, revision=args.dataset_revision)
    if args.split not in dataset.splits:
        raise UsageError(f"dataset {args.dataset}: no {args.split!r} split (has {', '.join(dataset.splits)})")
    index = None
    if args.index:
        from dexml_hf.index import LabelIndex

        index = LabelIndex.load(args.index, load_memory=args.use_memory)
        if len(index) != dataset.num_labels or index.dim != model.get_embedding_dimension():
            raise UsageError(
                f"index {args.index} ({len(index)} labels, {index.dim} dims) does not fit dataset {args.dataset} "
                f"({dataset.num_labels} labels) and model {args.model} ({model.get_embedding_dimension()} dims)"
            )
    # a released checkpoint is evaluated on the texts it was trained on (e.g. Wikipedia's preprocessing)
    query_mode, label_mode = resolve_text_modes(args.model, args.query_text_mode, args.label_text_mode)
    report = run_evaluate(
        model,
        dataset,
        split=args.split,
        ks=args.cutoffs,
        batch_size=args.batch_size,
        max_queries=args.max_queries,
        query_mode=query_mode,
        label_mode=label_mode,
        output_dir=args.output_dir,
        plot=args.plot,
        model_name=args.model,
        dataset_name=args.dataset,
        index=index,
    )
    if "retrieval" in report:
        r = report["retrieval"]
        print(
            f"retrieval-augmented ranking: lam={r['lam']}, k={r['k']}, temperature={r['temperature']}, "
            f"agreement={r['agreement']}"
            + (f", lexical_weight={r['lexical_weight']}, lexical_k={r['lexical_k']}" if "lexical_weight" in r else "")
            + (f" (lexical texts: {r['lexical_text_mode']})" if "lexical_text_mode" in r else "")
        )
    print(f"{report['dataset']} / {args.split}: {report['num_queries']} queries, {report['num_labels']} labels")
    print(format_metrics_table(report["metrics"], every_metric=True))
    for group, values in report.get("label_groups", {}).items():
        at = [k for k in args.cutoffs if f"precision@{k}" in values]
        shown = ", ".join(
            f"P@{k} {100 * values[f'precision@{k}']:.2f} R@{k} {100 * values[f'recall@{k}']:.2f}" for k in at
        )
        print(f"{group} labels ({int(values['labels'])} labels, {int(values['queries'])} queries): {shown or '-'}")
    if args.output_dir:
        print(f"report: {Path(args.output_dir) / f'eval_{args.split}.json'}")
    return 0
