"""Retrieval fusion and the tail: does the memory cost PSP@1 against the dual encoder alone, and what stops it?

One dual encoder is trained (``eurlex_rae.train``, same settings; or loaded from ``--model-dir`` when it holds one
from an earlier run), its label index and the training-query memory are built once, and every fusion variant is
tuned on the **validation** split and scored on test, side by side:

- ``dual encoder``: λ = 1;
- ``fusion (P@1)``: λ, k, T chosen by P@1 — what the recipes did;
- ``fusion (P@1, guard PSP@1, margin m)``: the same grid, only points whose validation PSP@1 clears the dual
  encoder's by ``m`` standard errors of the paired per-query difference (``grid_search(guard_margin=)``; 0 = a plain
  comparison);
- ``+ agreement gate``: a per-query λ, ``1 − (1 − λ)·a_q^γ`` with ``a_q`` the neighbours' agreement
  (``dexml_hf.retrieval.query_weights``; γ in the grid), with and without the guard;
- with ``--lexical``, three more rows: the default chosen by P@5+nDCG@5+PSP@5, and both criteria with the memory's
  lexical neighbours (TF-IDF of the training titles, or of ``--lexical-text-mode`` texts such as ``title_content``,
  ``dexml_hf.lexical``; their share β chosen on validation).

    python benchmarks/fusion_tail.py --dataset cooking --epochs 2 --model-dir /tmp/fusion_cooking
    python benchmarks/fusion_tail.py --dataset eurlex57k --max-train 4000 --max-val 1000 --max-test 1000 \\
        --epochs 2 --train-max-length 64 --model-dir /tmp/fusion_eurlex_subset
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, quiet_libraries, write_json  # noqa: E402
from eurlex_rae import DATASETS, METRICS, base_model, load_data, train  # noqa: E402

logger = logging.getLogger("fusion_tail")

GATES = (0.0, 1.0, 2.0, 4.0)
#: (row name, selection metric, guard, guard margin in standard errors, agreement exponents)
VARIANTS = (
    ("fusion (P@1)", "precision@1", None, 0.0, (0.0,)),
    ("fusion (P@1, guard PSP@1, margin 0)", "precision@1", "psp@1", 0.0, (0.0,)),
    ("fusion + agreement gate (P@1)", "precision@1", None, 0.0, GATES),
    ("fusion + agreement gate (P@1, guard PSP@1, margin 0)", "precision@1", "psp@1", 0.0, GATES),
    ("fusion + agreement gate (P@1, guard PSP@1, margin 1)", "precision@1", "psp@1", 1.0, GATES),
    ("fusion + agreement gate (P@1, guard PSP@1, margin 2) — the default", "precision@1", "psp@1", 2.0, GATES),
    ("fusion + agreement gate (P@1+PSP@1, guard PSP@1, margin 1)", "precision@1+psp@1", "psp@1", 1.0, GATES),
)
GOAL = "precision@5+ndcg@5+psp@5"  # issue 23's metrics besides P@1
#: with --lexical: (row name, selection metric, guard, margin, gates, lexical neighbours)
LEXICAL_VARIANTS = (
    ("default, chosen by P@5+nDCG@5+PSP@5", GOAL, "psp@1", 2.0, GATES, False),
    ("+ lexical neighbours (the default: P@1, guard PSP@1, margin 2)", "precision@1", "psp@1", 2.0, GATES, True),
    ("+ lexical neighbours, chosen by P@5+nDCG@5+PSP@5", GOAL, "psp@1", 2.0, GATES, True),
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="600 train / 100 validation / 200 test queries, 10 steps")
    parser.add_argument("--dataset", default="cooking", choices=DATASETS)
    parser.add_argument("--data", default=None, help="the EURLEX57K folder (default: the shared one)")
    parser.add_argument("--max-train", type=int, default=None)
    parser.add_argument("--max-val", type=int, default=None)
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--train-max-length", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--augment", action="store_true", help="train with label texts as extra queries")
    parser.add_argument("--negatives", default="in_batch", choices=["in_batch", "hard", "all_cached"])
    parser.add_argument("--hard-start-epoch", type=int, default=1, help="hard: first epoch with mined negatives")
    parser.add_argument("--num-hard", type=int, default=1, help="hard: mined negatives per query")
    parser.add_argument("--shortlist", type=int, default=100, help="hard: mined from each query's top labels")
    parser.add_argument("--mining-interval", type=int, default=1, help="hard: re-mine every this many epochs")
    parser.add_argument(
        "--label-text-mode", default="title", choices=["title", "title_alt"], help="label texts (training and index)"
    )
    parser.add_argument("--lexical", action="store_true", help="add the rows with lexical neighbours (scikit-learn)")
    parser.add_argument(
        "--lexical-text-mode",
        default="title",
        choices=["title", "content", "title_content"],
        help="--lexical: the text mode of the lexical neighbours (the model always reads the titles)",
    )
    parser.add_argument("--model-dir", default=None, help="save the trained model here; reuse it when present")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    args.cooccurrence_top = 0
    if args.quick:
        args.max_train, args.max_val, args.max_test = args.max_train or 600, args.max_val or 100, args.max_test or 200
        args.steps = args.steps or 10
    if args.data is None:
        from common import SHARED_DATA

        args.data = str(SHARED_DATA / "eurlex57k")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    quiet_libraries()

    from sentence_transformers import SentenceTransformer

    from dexml_hf.evaluation import xmc_metrics
    from dexml_hf.index import LabelIndex
    from dexml_hf.lexical import LexicalNeighbours
    from dexml_hf.retrieval import DEFAULT_GRID, RetrievalMemory, grid_search

    xmc = load_data(args)
    model_dir = Path(args.model_dir) if args.model_dir else None
    train_s = 0.0
    if model_dir is not None and (model_dir / "modules.json").is_file():
        model = SentenceTransformer(str(model_dir), device="cpu")
        logger.info(f"reusing the model in {model_dir}")
    else:
        with tempfile.TemporaryDirectory() as work:
            model, train_s, steps = train(base_model(args.max_seq_length), xmc, args, work, args.augment)
        logger.info(f"trained {steps} steps in {train_s:.0f} s")
        if model_dir is not None:
            model.save(str(model_dir))
    model.max_seq_length = args.max_seq_length

    inv_p = xmc.inv_propensity()
    bars = args.progress
    start = time.perf_counter()
    index = LabelIndex.from_texts(model, xmc.label_texts(args.label_text_mode), batch_size=128, show_progress_bar=bars)
    encode = {
        split: index.encode_queries(model, xmc.query_texts(split, "title"), batch_size=128, show_progress_bar=bars)
        for split in ("train", "validation", "test")
    }
    words = {split: xmc.query_texts(split, args.lexical_text_mode) for split in ("train", "validation", "test")}
    lexical = LexicalNeighbours.fit(words["train"]) if args.lexical else None
    memory = RetrievalMemory(
        encode["train"], xmc.label_matrices["train"], normalized=index.normalized, lexical=lexical
    )
    encode_s = time.perf_counter() - start
    truth, exclude = xmc.label_matrices["test"], xmc.filters.get("test")

    def test_metrics(lam=1.0, k=10, temperature=0.1, agreement=0.0, lexical_params=(0.0, 20, 0.1)) -> dict:
        memory.set_params(lam, k, temperature, agreement)
        memory.set_lexical_params(*lexical_params)
        index.memory = memory if lam < 1.0 else None
        _, ids = index.search(encode["test"], k=100, exclude=exclude, texts=words["test"])
        return xmc_metrics(ids, truth, ks=(1, 3, 5), inv_propensity=inv_p)

    def row(method: str, metrics: dict, note: str = "", seconds: float = 0.0) -> dict:
        out = {"method": method, **{label: round(100 * metrics[key], 2) for label, key in METRICS}}
        return {**out, "tuning s": round(seconds, 1), "notes": note}

    rows = [row("dual encoder", test_metrics())]
    variants = [(*v, False) for v in VARIANTS] + (list(LEXICAL_VARIANTS) if args.lexical else [])
    for name, metric, guard, margin, gates, use_lexical in variants:
        start = time.perf_counter()
        result = grid_search(
            index,
            memory,
            encode["validation"],
            xmc.label_matrices["validation"],
            metric,
            {**DEFAULT_GRID, "agreement": gates},
            inv_p,
            exclude=xmc.filters.get("validation"),
            guard=guard,
            guard_margin=margin,
            query_texts=words["validation"] if use_lexical else None,
        )
        seconds = time.perf_counter() - start
        note = f"λ {result.lam}, k {result.k}, T {result.temperature}, gate {result.agreement}"
        lexical_params = (result.lexical_weight, result.lexical_k or 20, result.lexical_temperature or 0.1)
        if use_lexical:
            note += f", β {result.lexical_weight}, lexical k {result.lexical_k}, T {result.lexical_temperature}"
        note += f" (val {metric} {100 * result.value:.2f} vs {100 * result.baseline:.2f})"
        chosen = test_metrics(result.lam, result.k, result.temperature, result.agreement, lexical_params)
        rows.append(row(name, chosen, note, seconds))
        logger.info(f"{name}: {rows[-1]}")
    print(markdown_table(rows, list(rows[0])))
    if args.output:
        payload = {"machine": machine(), "args": vars(args), "train_s": train_s, "encode_s": encode_s, "rows": rows}
        write_json(args.output, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
