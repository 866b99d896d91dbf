"""Zero-shot labels on EURLEX57K: train without them, index without them, then add them to the index.

A dual encoder embeds a label it never trained on; a classifier (omikuji, any one-vs-rest model) has no weights for
it and can never predict it. Protocol, one run:

1. the labels that no training document has (of the ``--max-train`` documents used) are *left out entirely*: the
   model is trained on in-batch negatives (decoupled softmax), so their texts are in no training row;
2. the label index is built over the labels seen in training only, then the unseen ones are added with
   :meth:`~dexml_hf.index.LabelIndex.add_labels` (the model is not touched);
3. test P@k / R@k / nDCG@k per label group (LMTC's frequent > 50 training documents, few 1–50, zero 0:
   :func:`~dexml_hf.evaluation.metrics.label_group_metrics`), over the test documents that have a label of the group,
   plus the overall metrics; for the untrained encoder, the trained one with the unseen labels missing from the
   index (what a classifier gives on them: 0), and the trained one after ``add_labels``;
4. the index after ``add_labels`` is checked to equal one built from scratch over every label (ids and scores).

    python benchmarks/zero_shot.py                       # 8,000 train documents, one epoch, all 6,000 test
    python benchmarks/zero_shot.py --quick               # ~2 min: 1,000 train, 300 test, 15 steps
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, markdown_table, quiet_libraries, write_json  # noqa: E402
from eurlex_rae import train  # noqa: E402  (in-batch decoupled softmax on titles, the same settings)

logger = logging.getLogger("zero_shot")
GROUPS = ("frequent", "few", "zero")


def load(args):
    from dexml_hf.data import read_xmc

    folder = Path(args.data)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing (the shared EURLEX57K data)")
    xmc = read_xmc(folder, name="EURLEX57K")
    return xmc.head("train", args.max_train).head("test", args.max_test)


def base_model(max_seq_length: int):
    from sentence_transformers import SentenceTransformer

    from dexml_hf.factory import resolve_model_path

    model = SentenceTransformer(resolve_model_path("bundled:all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def evaluate(index, queries, xmc, freq, exclude) -> dict:
    from dexml_hf.evaluation import xmc_metrics
    from dexml_hf.evaluation.metrics import label_group_metrics

    # the index's positions are not label ids once labels were added: map through the uids (filters too)
    uid_to_label = {uid: i for i, uid in enumerate(xmc.labels["uid"])}
    label_of_position = np.array([uid_to_label[u] for u in index.label_ids], dtype=np.int64)
    if exclude is not None and len(exclude):
        position_of_label = np.full(xmc.num_labels, -1, dtype=np.int64)
        position_of_label[label_of_position] = np.arange(len(label_of_position))
        pairs = np.asarray(exclude, dtype=np.int64)
        mapped = position_of_label[pairs[:, 1]]
        exclude = np.stack([pairs[mapped >= 0, 0], mapped[mapped >= 0]], axis=1)
    _, ids = index.search(queries, k=100, exclude=exclude)
    topk = np.where(ids >= 0, label_of_position[np.maximum(ids, 0)], -1)
    truth = xmc.label_matrices["test"]
    return {
        "all": xmc_metrics(topk, truth, ks=(1, 3, 5), inv_propensity=xmc.inv_propensity()),
        "groups": label_group_metrics(topk, truth, freq, ks=(1, 3, 5)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 train / 300 test documents, 15 steps")
    parser.add_argument("--data", default=str(SHARED_DATA / "eurlex57k"))
    parser.add_argument("--max-train", type=int, default=8000)
    parser.add_argument("--max-test", type=int, default=None, help="first N test documents (default: all 6,000)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--train-max-length", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train, args.max_test, args.steps = 1000, 300, 15
    quiet_libraries()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import tempfile

    from dexml_hf.index import LabelIndex

    start = time.perf_counter()
    xmc = load(args)
    freq = np.asarray(xmc.label_matrices["train"].astype(bool).sum(axis=0)).ravel()
    unseen = np.flatnonzero(freq == 0)
    seen = np.flatnonzero(freq > 0)
    texts = xmc.label_texts("title")
    uids = list(xmc.labels["uid"])
    test_truth = xmc.label_matrices["test"]
    docs_with_unseen = int((test_truth[:, unseen].getnnz(axis=1) > 0).sum())
    logger.info(
        f"{len(seen)} labels seen in {xmc.num_queries('train')} training documents, {len(unseen)} unseen; "
        f"{docs_with_unseen} of {xmc.num_queries('test')} test documents have an unseen label"
    )

    model = base_model(args.max_seq_length)
    exclude = xmc.filters.get("test")
    test_texts = xmc.query_texts("test", "title")
    results, timings = {}, {}

    def run(name, encoder, label_positions):
        t0 = time.perf_counter()
        index = LabelIndex.from_texts(
            encoder, [texts[i] for i in label_positions], label_ids=[uids[i] for i in label_positions], batch_size=128
        )
        queries = index.encode_queries(encoder, test_texts, batch_size=128)
        results[name] = evaluate(index, queries, xmc, freq, exclude)
        timings[name] = time.perf_counter() - t0
        return index, queries

    run("untrained, every label indexed", model, np.arange(xmc.num_labels))
    with tempfile.TemporaryDirectory() as workdir:
        trained, train_seconds, steps = train(model, xmc, args, workdir, augment=False)
    index, queries = run("trained, unseen labels not indexed (a classifier's view)", trained, seen)
    t0 = time.perf_counter()
    index.add_labels(trained, [texts[i] for i in unseen], [uids[i] for i in unseen])
    add_seconds = time.perf_counter() - t0
    results["trained, unseen labels added"] = evaluate(index, queries, xmc, freq, exclude)

    scratch = LabelIndex.from_texts(trained, texts, label_ids=uids, batch_size=128)
    order = [uids.index(u) for u in index.label_ids]
    same = bool(np.allclose(scratch.embeddings[order].numpy(), index.embeddings.numpy(), atol=1e-5))

    rows = []
    for name, res in results.items():
        row = {
            "model / index": name,
            "P@1 all": 100 * res["all"]["precision@1"],
            "P@5 all": 100 * res["all"]["precision@5"],
        }
        for g in GROUPS:
            grp = res["groups"][g]
            row[f"{g} P@1"] = 100 * grp.get("precision@1", 0.0)
            row[f"{g} R@5"] = 100 * grp.get("recall@5", 0.0)
        rows.append(row)
    columns = ["model / index", "P@1 all", "P@5 all"] + [f"{g} {m}" for g in GROUPS for m in ("P@1", "R@5")]
    groups = results["trained, unseen labels added"]["groups"]
    summary = ", ".join(
        f"{g}: {int(groups[g]['labels'])} labels / {int(groups[g]['queries'])} test docs" for g in GROUPS
    )
    print(
        f"\n{machine()}\n{summary}; training {train_seconds / 60:.1f} min ({steps} steps), add_labels "
        f"{add_seconds:.1f} s, equal to an index built from scratch: {same}\n"
    )
    print(markdown_table(rows, columns))
    if args.output:
        write_json(
            args.output,
            {
                "args": vars(args),
                "machine": machine(),
                "results": results,
                "steps": steps,
                "train_seconds": train_seconds,
                "add_seconds": add_seconds,
                "same_as_scratch": same,
                "total_seconds": time.perf_counter() - start,
            },
        )
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
