"""Approximate vs exact label search at N labels × 384 dims: recall@10/@100, queries/s, build time, peak memory.

Embeddings come from the bundled encoder (``bundled:all-MiniLM-L6-v2``, 384 dims, cosine), not from a Gaussian.
Embedding millions of texts on a few CPUs takes hours, so the N label vectors are *derived* from real ones:

1. base texts: EURLEX57K label names, their alternative names (split on ``;``) and word 2–3-grams of the training
   document titles, de-duplicated, shuffled with a fixed seed, the first ``--base-texts`` encoded (as labels);
2. label ``i`` = normalise(Σ_j w_j · e_{b_j} + σ · g / √d): 2 or 3 base embeddings ``e_b`` chosen uniformly,
   weights ``w ~ Dirichlet(1)``, ``g`` standard normal, ``σ = --noise`` (0.1): unit vectors that stay on the
   encoder's manifold (its anisotropy, its clusters of related terms) rather than filling the sphere;
3. queries: real test-document titles (evaluated) and validation titles (for tuning ``efSearch`` / ``nprobe``
   to ``--target-recall`` at k = 100), encoded as queries; none is a base text.

Each method runs in its own subprocess over the same saved arrays, so its peak RSS (``ru_maxrss``, which includes
the label embeddings it holds) is its own: ``exact`` is :meth:`LabelIndex.search` (chunked torch matmul); ``hnsw``
and ``ivf`` are :meth:`LabelIndex.build_approximate` (:mod:`dexml_hf.ann`, faiss) tuned on the validation titles.
Recall is measured against the exact ids of the same run.

    python benchmarks/ann.py --quick                      # 30,000 labels, 2,000 base texts, 200 queries
    python benchmarks/ann.py --labels 1000000             # the 1M goal: recall@100 >= 0.99 at >= 20x exact
    python benchmarks/ann.py --labels 10000000 --dtype float16 --methods exact,ivf --codes sq8   # the 10M run
    python benchmarks/ann.py --labels 1000000 --methods exact,ivf --codes pq --pq-m 192 --pq-nbits 4  # fast-scan: the best 1M point

Memory at 10M × 384 (estimate): label embeddings 15.4 GB fp32 / 7.7 GB fp16; HNSW (M = 32) over SQ8 codes
3.8 GB + ~2.7 GB of links, IVF-SQ8 3.8 GB + 80 MB of ids; so ``--dtype float16 --codes sq8`` keeps every child
under ~15 GB. The parent writes the N vectors to a temporary ``.npy`` in chunks and never holds them all.
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, SHARED_DATA, machine, markdown_table, quiet_libraries, write_json  # noqa: E402

sys.path.insert(0, str(ROOT))
EURLEX = SHARED_DATA / "eurlex57k"


def _status_mb(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process in MiB. ``VmHWM`` starts afresh at exec, unlike
    ``ru_maxrss``, which Linux carries over from the parent that spawned the child."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


def _read_jsonl(name: str) -> list[dict]:
    with gzip.open(EURLEX / name, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def base_texts(count: int, seed: int) -> list[str]:
    """Distinct label-like texts: label names, alternative names, word 2–3-grams of training titles."""
    texts: dict[str, None] = {}
    for row in _read_jsonl("lbl.json.gz"):
        texts[row["title"].strip()] = None
        for alt in (row.get("content") or "").split(";"):
            if alt.strip():
                texts[alt.strip()] = None
    for row in _read_jsonl("trn.json.gz"):
        words = row["title"].split()
        for n in (2, 3):
            for i in range(len(words) - n + 1):
                texts[" ".join(words[i : i + n])] = None
    pool = [t for t in texts if t]
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:count]]


def window_texts(count: int, seed: int, words: int = 5) -> list[str]:
    """``count`` distinct real texts: non-overlapping ``words``-word windows of the EURLEX57K training documents'
    bodies (label-length phrases of legal text), de-duplicated, in a seeded random order."""
    texts: dict[str, None] = {}
    for row in _read_jsonl("trn.json.gz"):
        body = (row.get("content") or "").split()
        for i in range(0, len(body) - words + 1, words):
            texts[" ".join(body[i : i + words])] = None
    pool = list(texts)
    if len(pool) < count:
        sys.exit(f"--labels {count:,}: only {len(pool):,} distinct {words}-word windows in the training bodies")
    order = np.random.default_rng(seed).permutation(len(pool))[:count]
    return [pool[i] for i in order]


def encode_windows(args, work: Path, model) -> float:
    """Every label a real text encoded by the bundled encoder (``--label-source windows``), written to labels.npy
    in blocks; bf16 autocast on CPU (2.2× fp32 on this machine's AVX512-BF16 cores; cosine to fp32 1.0000)."""
    import torch
    from tqdm.auto import tqdm

    from dexml_hf.index import encode_texts

    texts = window_texts(args.labels, args.seed)
    dtype = np.float16 if args.dtype == "float16" else np.float32
    out = np.lib.format.open_memmap(work / "labels.npy", mode="w+", dtype=dtype, shape=(args.labels, 384))
    start, block = time.perf_counter(), 20_000
    for s in tqdm(range(0, len(texts), block), desc="encoding label texts", unit="block"):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            v = encode_texts(model, texts[s : s + block], "label", batch_size=256).float().numpy()
        out[s : s + len(v)] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(dtype)
    out.flush()
    del out
    return time.perf_counter() - start


def prepare(args, work: Path) -> dict:
    """Encode the real texts once and write labels.npy (N × 384), queries.npy, tune.npy into ``work``."""
    import torch

    from dexml_hf.factory import load_model
    from dexml_hf.index import encode_texts

    torch.set_num_threads(args.threads or torch.get_num_threads())
    rng = np.random.default_rng(args.seed + 1)
    stamp = {k: getattr(args, k) for k in ("base_texts", "queries", "tune_queries", "seed")}
    encoded = work / "encoded.npz"
    made = work / "encoded_with.json"
    if args.label_source == "windows":
        model = load_model("bundled:all-MiniLM-L6-v2", max_seq_length=64)
        encode_s = encode_windows(args, work, model)
        test = [r["title"] for r in _read_jsonl("tst.json.gz")]
        val = [r["title"] for r in _read_jsonl("val.json.gz")]
        queries = [test[i] for i in rng.choice(len(test), size=args.queries, replace=False)]
        tune = [val[i] for i in rng.choice(len(val), size=args.tune_queries, replace=False)]
        np.save(work / "queries.npy", encode_texts(model, queries, "query", batch_size=128).numpy())
        np.save(work / "tune.npy", encode_texts(model, tune, "query", batch_size=128).numpy())
        return {"base_texts": args.labels, "encode_s": encode_s}
    if encoded.is_file() and made.is_file() and json.loads(made.read_text())["args"] == stamp:
        arrays = np.load(encoded)  # the same texts encoded by an earlier run: reuse (N and noise may differ)
        base, encode_s = arrays["base"], json.loads(made.read_text())["encode_s"]
        np.save(work / "queries.npy", arrays["queries"])
        np.save(work / "tune.npy", arrays["tune"])
    else:
        model = load_model("bundled:all-MiniLM-L6-v2", max_seq_length=64)
        start = time.perf_counter()
        base = encode_texts(
            model, base_texts(args.base_texts, args.seed), "label", batch_size=128, show_progress_bar=True
        ).numpy()
        test = [r["title"] for r in _read_jsonl("tst.json.gz")]
        val = [r["title"] for r in _read_jsonl("val.json.gz")]
        queries = [test[i] for i in rng.choice(len(test), size=args.queries, replace=False)]
        tune = [val[i] for i in rng.choice(len(val), size=args.tune_queries, replace=False)]
        q = encode_texts(model, queries, "query", batch_size=128).numpy()
        t = encode_texts(model, tune, "query", batch_size=128).numpy()
        encode_s = time.perf_counter() - start
        np.save(work / "queries.npy", q)
        np.save(work / "tune.npy", t)
        np.savez(encoded, base=base, queries=q, tune=t)
        made.write_text(json.dumps({"args": stamp, "encode_s": encode_s}))
    rng = np.random.default_rng(args.seed + 2)  # the derived labels' own stream
    dtype = np.float16 if args.dtype == "float16" else np.float32
    out = np.lib.format.open_memmap(work / "labels.npy", mode="w+", dtype=dtype, shape=(args.labels, base.shape[1]))
    chunk = 200_000
    for s in range(0, args.labels, chunk):
        n = min(chunk, args.labels - s)
        parts = rng.integers(2, 4, size=n)  # 2 or 3 base embeddings per label
        picks = rng.integers(0, len(base), size=(n, 3))
        weights = rng.dirichlet(np.ones(3), size=n).astype(np.float32)
        weights[parts == 2, 2] = 0.0
        weights /= weights.sum(axis=1, keepdims=True)
        v = np.einsum("nk,nkd->nd", weights, base[picks])
        v += args.noise / np.sqrt(base.shape[1]) * rng.standard_normal(v.shape, dtype=np.float32)
        out[s : s + n] = (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(dtype)
    out.flush()
    del out
    return {"base_texts": len(base), "encode_s": encode_s}


def child(method: str, work: Path, args) -> dict:
    """One method in a fresh process: load the labels, build, search the queries; write ids and figures."""
    import torch

    from dexml_hf.index import LabelIndex

    if args.threads:
        torch.set_num_threads(args.threads)
    import faiss

    faiss.omp_set_num_threads(torch.get_num_threads())
    labels = np.load(work / "labels.npy")  # into memory: the index's own copy, counted in its peak RSS
    queries, tune = np.load(work / "queries.npy"), np.load(work / "tune.npy")
    rss_loaded = _status_mb("VmRSS")
    start = time.perf_counter()
    index = LabelIndex(torch.from_numpy(labels), normalized=True, dtype=args.dtype)
    del labels
    info: dict = {}
    if method != "exact":
        params = {"M": args.M, "efConstruction": args.ef_construction} if method == "hnsw" else {}
        if method == "ivf" and args.nlist:
            params["nlist"] = args.nlist
        if args.codes == "pq":
            params.update(pq_m=args.pq_m, pq_nbits=args.pq_nbits)
        if args.rerank:
            params["rerank"] = args.rerank
        ann = index.build_approximate(
            method, codes=args.codes, target_recall=args.target_recall, tune_queries=tune, tune_k=args.tune_k, **params
        )
        info = {"params": ann.params, f"tuned_recall@{args.tune_k}": ann.recall["recall"], "codes": args.codes}
    build_s = time.perf_counter() - start
    rss_built = _status_mb("VmRSS")
    index.search(queries[:10], 100)  # warm-up (thread pools, first allocations)
    start = time.perf_counter()
    _, ids = index.search(queries, 100)
    search_s = time.perf_counter() - start
    np.save(work / f"ids_{method}.npy", ids)
    return {
        "method": method,
        "build_s": build_s,
        "search_s": search_s,
        "qps": len(queries) / search_s,
        "index_mb": rss_built - rss_loaded,
        "peak_rss_mb": _status_mb("VmHWM"),
        "threads": torch.get_num_threads(),
        **info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="30,000 labels from 2,000 base texts, 200 queries")
    parser.add_argument("--labels", type=int, default=None, help="N (default 1,000,000; quick 30,000)")
    parser.add_argument("--base-texts", type=int, default=None, help="real texts encoded (default 20,000)")
    parser.add_argument("--queries", type=int, default=None, help="test titles searched (default 1,000)")
    parser.add_argument("--tune-queries", type=int, default=None, help="validation titles for tuning (500)")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument(
        "--label-source",
        default="derived",
        choices=["derived", "windows"],
        help="derived: mixtures of --base-texts encoded texts (fast); windows: every label a real encoded text "
        "(5-word windows of the training bodies; ~25 min a million on 2 cores with --bf16)",
    )
    parser.add_argument("--bf16", action="store_true", help="windows: encode under CPU bf16 autocast")
    parser.add_argument("--methods", default="exact,hnsw,ivf")
    parser.add_argument("--codes", default="flat", help="faiss codes of hnsw/ivf: flat, fp16, sq8, pq")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"], help="label embeddings")
    parser.add_argument("--M", type=int, default=32)
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default 4·√N)")
    parser.add_argument("--pq-m", type=int, default=96, help="--codes pq: sub-quantisers (must divide 384)")
    parser.add_argument("--pq-nbits", type=int, default=4, help="--codes pq: bits a code (4: fast-scan in IVF)")
    parser.add_argument("--rerank", type=int, default=None, help="candidates per result re-scored exactly")
    parser.add_argument("--target-recall", type=float, default=0.99)
    parser.add_argument(
        "--tune-k", type=int, default=100, help="the recall@k the tuning targets (10 for the 10M goal)"
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="JSON file of the results")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--work", default=None, help="folder for the generated arrays, kept and reused (default: a temporary one)"
    )
    args = parser.parse_args()
    quick = args.quick
    args.labels = args.labels or (30_000 if quick else 1_000_000)
    args.base_texts = args.base_texts or (2_000 if quick else 20_000)
    args.queries = args.queries or (200 if quick else 1_000)
    args.tune_queries = args.tune_queries or (200 if quick else 500)
    if args.child:
        print(json.dumps(child(args.child, Path(args.work), args)))
        return
    if not EURLEX.is_dir():
        sys.exit(f"{EURLEX} is absent: this benchmark encodes real EURLEX57K texts")
    quiet_libraries()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "exact" not in methods:
        methods = ["exact", *methods]  # recall needs the exact ids of this run
    bad = sorted(set(methods) - {"exact", "hnsw", "ivf"})
    if bad:
        sys.exit(f"--methods: unknown {bad}; choose from exact, hnsw, ivf")
    with tempfile.TemporaryDirectory(prefix="dexml-ann-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        stamp = {
            k: getattr(args, k)
            for k in (
                "labels",
                "base_texts",
                "queries",
                "tune_queries",
                "noise",
                "dtype",
                "seed",
                "label_source",
                "bf16",
            )
        }
        made = work / "made_with.json"
        if made.is_file() and json.loads(made.read_text())["args"] == stamp:
            prep = json.loads(made.read_text())["prepare"]  # the same arrays: reuse them
        else:
            prep = prepare(args, work)
            made.write_text(json.dumps({"args": stamp, "prepare": prep}))
        passthrough = [a for a in sys.argv[1:] if a not in ("--quick",)]
        rows = []
        for method in methods:
            cmd = [sys.executable, __file__, *passthrough, "--work", str(work), "--child", method]
            cmd += ["--labels", str(args.labels), "--queries", str(args.queries)]
            cmd += ["--tune-queries", str(args.tune_queries), "--base-texts", str(args.base_texts)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"{method} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        from dexml_hf.ann import recall_at_k

        exact_ids = np.load(work / "ids_exact.npy")
        exact = rows[0]
        for row in rows:
            ids = np.load(work / f"ids_{row['method']}.npy")
            row["recall@10"] = recall_at_k(ids, exact_ids, 10)
            row["recall@100"] = recall_at_k(ids, exact_ids, 100)
            row["speed-up"] = row["qps"] / exact["qps"]
            p = row.get("params") or {}
            row["setting"] = ", ".join(f"{k}={v}" for k, v in p.items()) or "–"
            if row["method"] != "exact":
                row["method"] = f"{row['method']} ({row['codes']})"
    source = (
        f"each an encoded 5-word window of the EURLEX57K training bodies{' (bf16 autocast)' if args.bf16 else ''}"
        if args.label_source == "windows"
        else f"from {prep['base_texts']:,} encoded EURLEX57K texts (noise {args.noise})"
    )
    print(
        f"\n{args.labels:,} labels × 384 dims ({args.dtype}) {source}, {args.queries:,} test-title queries, top-100; tuned for recall@{args.tune_k} ≥ "
        f"{args.target_recall} on {args.tune_queries} validation titles. {machine()}\n"
    )
    columns = [
        "method",
        "setting",
        "recall@10",
        "recall@100",
        "qps",
        "speed-up",
        "build_s",
        "index_mb",
        "peak_rss_mb",
    ]
    table = [
        {
            **row,
            **{key: f"{row[key]:,.0f}" for key in ("qps", "index_mb", "peak_rss_mb")},
            "build_s": f"{row['build_s']:.1f}",
            "speed-up": f"{row['speed-up']:.1f}×",
        }
        for row in rows
    ]
    print(markdown_table(table, columns, floatfmt=".4f"))
    if args.output:
        write_json(args.output, {"args": vars(args), "prepare": prep, "machine": machine(), "results": rows})


if __name__ == "__main__":
    main()
