"""P@k on EURLEX57K test with an approximate label index against the exact one (side by side, one run).

The bundled all-MiniLM-L6-v2 (no training: the comparison is between searches over the same embeddings) embeds the
4,271 label titles and the test titles; the exact :class:`~dexml_hf.index.LabelIndex` search is compared with HNSW,
IVF and IVF over fast-scan PQ codes built by :meth:`LabelIndex.build_approximate`, tuned for recall@100 ≥
``--target-recall`` on the validation titles (never on test). Reports P@1/3/5, nDCG@5, PSP@5, R@100 and the largest absolute difference to exact.

    python benchmarks/ann_eurlex.py                 # all 6,000 test / 1,000 validation titles
    python benchmarks/ann_eurlex.py --quick         # 500 test / 200 validation titles
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, markdown_table, quiet_libraries, write_json  # noqa: E402

METRICS = (
    ("P@1", "precision@1"),
    ("P@3", "precision@3"),
    ("P@5", "precision@5"),
    ("nDCG@5", "ndcg@5"),
    ("PSP@5", "psp@5"),
    ("R@100", "recall@100"),
)
#: name -> (kind, build options); "ivf-pq": faiss fast-scan over residual PQ192x4 codes, re-ranked exactly
METHODS = {
    "hnsw": ("hnsw", {}),
    "ivf": ("ivf", {"nlist": 64}),
    "ivf-pq": ("ivf", {"codes": "pq", "nlist": 64, "pq_m": 192, "pq_nbits": 4}),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="500 test / 200 validation titles")
    parser.add_argument("--data", default=str(SHARED_DATA / "eurlex57k"))
    parser.add_argument("--max-test", type=int, default=None)
    parser.add_argument("--max-val", type=int, default=1000)
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.max_test, args.max_val = 500, 200
    quiet_libraries()

    from sentence_transformers import SentenceTransformer

    from dexml_hf.data import read_xmc
    from dexml_hf.evaluation import xmc_metrics
    from dexml_hf.factory import resolve_model_path
    from dexml_hf.index import LabelIndex

    folder = Path(args.data)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing (the shared EURLEX57K data)")
    xmc = read_xmc(folder, name="EURLEX57K").head("test", args.max_test).head("validation", args.max_val)
    model = SentenceTransformer(resolve_model_path("bundled:all-MiniLM-L6-v2"), device="cpu")
    model.max_seq_length = 128
    index = LabelIndex.from_texts(model, xmc.label_texts("title"), batch_size=128)
    test_q = index.encode_queries(model, xmc.query_texts("test", "title"), batch_size=128)
    val_q = index.encode_queries(model, xmc.query_texts("validation", "title"), batch_size=128)
    truth, inv_p, exclude = xmc.label_matrices["test"], xmc.inv_propensity(), xmc.filters.get("test")

    rows, results = [], {}
    for method in ("exact", *METHODS):
        built = 0.0
        if method == "exact":
            index.approximate = None
        else:
            t0 = time.perf_counter()
            kind, options = METHODS[method]
            index.build_approximate(kind, target_recall=args.target_recall, tune_queries=val_q, **options)
            built = time.perf_counter() - t0
        t0 = time.perf_counter()
        _, ids = index.search(test_q, k=100, exclude=exclude)
        seconds = time.perf_counter() - t0
        metrics = xmc_metrics(ids, truth, ks=(1, 3, 5), inv_propensity=inv_p)
        results[method] = {"metrics": metrics, "search_s": seconds, "build_s": built}
        row = {"search": method, **{label: 100 * metrics[key] for label, key in METRICS}}
        if method != "exact":
            approx = index.approximate
            shown = {k: v for k, v in approx.params.items() if k != "rerank" or approx.reranks}
            row["setting"] = ", ".join(f"{k}={v}" for k, v in shown.items())
            row["tuned recall@100 (val)"] = approx.recall["recall"] if approx.recall else None
            diff = max(abs(100 * metrics[key] - 100 * results["exact"]["metrics"][key]) for _, key in METRICS)
            row["max |Δ| vs exact"] = diff
            results[method].update(setting=row["setting"], max_abs_diff=diff, recall=approx.recall)
        rows.append(row)
    columns = ["search", "setting", *(label for label, _ in METRICS), "tuned recall@100 (val)", "max |Δ| vs exact"]
    print(f"\n{machine()}\nEURLEX57K test ({len(test_q)} titles, {len(index)} labels), bundled all-MiniLM-L6-v2\n")
    print(markdown_table(rows, columns, floatfmt=".3f"))
    if args.output:
        write_json(args.output, {"args": vars(args), "machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
