"""Cost of the retrieval memory's lexical neighbours as the memory grows: fit time, neighbours per second, peak RSS.

Beside it, the same similarity blocks computed as scipy's sparse × sparse product (the first implementation, no
top-k) in the same run. The memory is EURLEX57K's training titles repeated (with a copy number appended, so every row is a distinct text)
up to each size, the queries its first validation titles; the neighbour search is exact (``dexml_hf.lexical``),
``max_block`` similarities at a time, so its memory stays bounded while its time grows with the memory's size.

    python benchmarks/lexical_scale.py --sizes 45000,180000,640000 --queries 2000 --output benchmarks/results/lexical_scale.json
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, markdown_table, quiet_libraries, write_json  # noqa: E402


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="memories of 2,000 and 8,000 rows, 200 queries")
    parser.add_argument("--data", default=str(SHARED_DATA / "eurlex57k"))
    parser.add_argument("--sizes", default="45000,180000,640000", help="memory sizes (rows), comma-separated")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries = "2000,8000", 200
    quiet_libraries()

    from dexml_hf.data import load_xmc_dataset
    from dexml_hf.lexical import LexicalNeighbours

    xmc = load_xmc_dataset(args.data)
    base = xmc.query_texts("train", "title")
    queries = xmc.query_texts("validation", "title")[: args.queries]
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        texts = [base[i % len(base)] + (f" copy{i // len(base)}" if i >= len(base) else "") for i in range(size)]
        start = time.perf_counter()
        lexical = LexicalNeighbours.fit(texts)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        sims, _ = lexical.neighbours(queries, args.k)
        search_s = time.perf_counter() - start
        # side by side: the same similarity blocks as scipy's sparse x sparse product (the first implementation)
        rows_t = lexical.matrix.T.tocsc()
        chunk = max(1, (1 << 25) // max(size, lexical.num_terms))
        start = time.perf_counter()
        for c0 in range(0, len(queries), chunk):
            (lexical.transform(queries[c0 : c0 + chunk]) @ rows_t).toarray()
        scipy_s = time.perf_counter() - start
        rows.append(
            {
                "memory rows": size,
                "terms": lexical.num_terms,
                "fit s": round(fit_s, 1),
                "queries/s": round(len(queries) / search_s, 1),
                "scipy sparse×sparse blocks alone, queries/s": round(len(queries) / scipy_s, 1),
                "mean top-1 cosine": round(float(sims[:, 0][sims[:, 0] > -1].mean()), 3),
                "peak RSS MB": round(_rss_mb()),
            }
        )
        print(rows[-1], flush=True)
    print(markdown_table(rows, list(rows[0])))
    if args.output:
        write_json(args.output, {"machine": machine(), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
