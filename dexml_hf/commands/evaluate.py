"""``dexml-hf evaluate``: exact top-k of a model on a dataset split, a metric table, a JSON report and a plot.

    dexml-hf evaluate --model quicktensor/dexml_eurlex-4k --dataset user/eurlex-4k --split test --output-dir eval/

Writes ``<output-dir>/eval_<split>.json`` (metrics, per-bucket contributions, settings) and
``<output-dir>/eval_<split>.png`` (P@k and PSP@k contributed by head / torso / tail labels, bucketed by
training frequency so each holds a third of the positive occurrences).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["load_dataset_arg", "load_model_arg", "register", "run_evaluate"]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model on an XMC dataset split (P@k, nDCG@k, PSP@k, ...)",
        description="Exact top-k evaluation of a dual encoder on an XMC dataset split.",
    )
    parser.add_argument(
        "--model", required=True, help="sentence-transformers model or DEXML checkpoint (path or Hub id)"
    )
    parser.add_argument("--dataset", required=True, help="XMC dataset: Hub id or local folder / files")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--output-dir", default=None, help="where to write the JSON report and the PNG plot")
    parser.add_argument("--ks", default="1,3,5", help="comma-separated cut-offs (default: 1,3,5)")
    parser.add_argument("--batch-size", type=int, default=64, help="encoding batch size")
    parser.add_argument("--max-queries", type=int, default=None, help="evaluate only the first N queries")
    parser.add_argument("--query-mode", default=None, help="query text mode of the dataset (e.g. title, content)")
    parser.add_argument("--label-mode", default=None, help="label text mode of the dataset (e.g. title)")
    parser.add_argument("--revision", default=None, help="model revision on the Hub")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG plot (no matplotlib needed)")
    parser.set_defaults(func=main)


def load_model_arg(name: str, revision: str | None = None):
    """A SentenceTransformer for ``name``: released DEXML checkpoints and bare encoders via ``load_dexml_model``."""
    from sentence_transformers import SentenceTransformer

    path = Path(name)
    try:
        from dexml_hf.hub import get_checkpoint, load_dexml_model
    except ImportError:  # hub helpers absent: plain sentence-transformers loading
        return SentenceTransformer(name, revision=revision)
    if get_checkpoint(name) is not None or (path.is_dir() and not (path / "modules.json").is_file()):
        return load_dexml_model(name, revision=revision)
    return SentenceTransformer(name, revision=revision)


def load_dataset_arg(name: str):
    """An ``XMCDataset`` from a local path (any supported format or the Hub layout) or a Hub dataset id."""
    from dexml_hf.data import load_xmc_dataset

    if Path(name).exists():
        from dexml_hf.data.formats import read_xmc

        try:
            return read_xmc(name)
        except (ValueError, FileNotFoundError) as err:
            logger.info("%s is not a raw XMC format (%s); reading it as a Hub-layout folder", name, err)
    return load_xmc_dataset(name)


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
) -> dict:
    """Evaluate and return the report dict; writes ``eval_<split>.json`` / ``.png`` into ``output_dir`` if given."""
    import numpy as np

    from dexml_hf.evaluation import XMCEvaluator, bucket_metrics, frequency_buckets
    from dexml_hf.index import resolve_normalize

    evaluator = XMCEvaluator.from_xmc_dataset(
        dataset,
        split=split,
        query_mode=query_mode,
        label_mode=label_mode,
        max_queries=max_queries,
        ks=ks,
        batch_size=batch_size,
        name="",
        write_csv=False,
        show_progress_bar=True,
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
        "metrics": metrics,
        "buckets": buckets,
    }
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


def format_table(metrics: dict[str, float]) -> str:
    """Markdown table: one row per metric family, one column per k."""
    fams: dict[str, dict[int, float]] = {}
    for key, value in metrics.items():
        fam, k = key.split("@")
        fams.setdefault(fam, {})[int(k)] = value
    ks = sorted({k for v in fams.values() for k in v})
    lines = ["| metric | " + " | ".join(f"@{k}" for k in ks) + " |", "|---" * (len(ks) + 1) + "|"]
    for fam, vals in fams.items():
        lines.append(f"| {fam} | " + " | ".join(f"{100 * vals[k]:.2f}" if k in vals else "" for k in ks) + " |")
    return "\n".join(lines)


def main(args, extra_argv=None) -> int:
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError as err:
        raise SystemExit(f"--ks must be comma-separated integers, got {args.ks!r}") from err
    model = load_model_arg(args.model, args.revision)
    dataset = load_dataset_arg(args.dataset)
    report = run_evaluate(
        model,
        dataset,
        split=args.split,
        ks=ks,
        batch_size=args.batch_size,
        max_queries=args.max_queries,
        query_mode=args.query_mode,
        label_mode=args.label_mode,
        output_dir=args.output_dir,
        plot=not args.no_plot,
        model_name=args.model,
        dataset_name=args.dataset,
    )
    print(f"{report['dataset']} / {args.split}: {report['num_queries']} queries, {report['num_labels']} labels")
    print(format_table(report["metrics"]))
    if args.output_dir:
        print(f"report: {Path(args.output_dir) / f'eval_{args.split}.json'}")
    return 0
