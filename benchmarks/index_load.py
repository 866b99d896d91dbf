"""LabelIndex load time and memory: label ids and texts in the JSON (format 2) vs the memory-mapped Arrow file
(format 3), side by side on the same index.

Each load runs in a fresh subprocess that reports its wall time and the growth of its resident set (VmRSS of
``/proc/self/status`` ``RssAnon``, the process's own heap, before and after ``LabelIndex.load``; memory-mapped file
pages are page cache the kernel can drop, not counted; the embeddings themselves are ``L × d`` fp16). The
labels are synthetic texts of ~60 characters with string ids.

    python benchmarks/index_load.py            # 1M and 10M labels, 384 dims
    python benchmarks/index_load.py --quick    # 200k labels, 64 dims
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = r"""
import json, sys, time
def rss(field="RssAnon:"):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import pyarrow, safetensors.torch  # imported before measuring: their code is not the index's memory
from dexml_hf.index import LabelIndex
before = rss()
start = time.perf_counter()
index = LabelIndex.load(sys.argv[1])
first = index.texts[len(index) // 2]
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_growth": rss() - before, "n": len(index), "emb_bytes": index.embeddings.numel() * 2}))
"""


def _write(folder: Path, n: int, dim: int, old_format: bool) -> None:
    import numpy as np
    import torch

    from dexml_hf.index import LabelIndex

    words = ["river", "stone", "cloud", "engine", "violin", "harbor", "orbit", "pepper", "signal", "maple"]
    texts = [
        f"{words[i % 10]} {words[(i // 10) % 10]} {words[(i // 100) % 10]} synthetic label number {i}"
        for i in range(n)
    ]
    ids = [f"uid-{i:09d}" for i in range(n)]
    rng = np.random.default_rng(0)
    emb = torch.empty((n, dim), dtype=torch.float16)  # filled in blocks: 10M x 384 in fp32 would not fit in 24 GB
    for start in range(0, n, 1_000_000):
        stop = min(n, start + 1_000_000)
        emb[start:stop] = torch.from_numpy(rng.standard_normal((stop - start, dim), dtype=np.float32))
    index = LabelIndex(emb, label_ids=ids, texts=texts, dtype="float16", normalized=True)
    index.save(folder)
    if old_format:  # what format 2 wrote: ids and texts inside label_index.json
        config = json.loads((folder / "label_index.json").read_text())
        config.update(format_version=2, label_ids=ids, texts=texts)
        for key in ("labels_file", "label_columns", "approximate"):
            config.pop(key)
        (folder / "label_index.json").write_text(json.dumps(config))
        (folder / "labels.feather").unlink()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", default=None, help="comma-separated label counts")
    parser.add_argument("--dim", type=int, default=None)
    args = parser.parse_args()
    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else ([200_000] if args.quick else [1_000_000, 10_000_000])
    )
    dim = args.dim or (64 if args.quick else 384)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            for old in (True, False):
                folder = Path(tmp) / f"{n}-{'json' if old else 'arrow'}"
                _write(folder, n, dim, old)
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, str(folder)], capture_output=True, text=True, check=True
                )
                m = json.loads(out.stdout.strip().splitlines()[-1])
                rows.append((n, "JSON (format 2)" if old else "Arrow, memory-mapped (format 3)", m))
    print("| labels | dims | labels stored as | load s | heap (RssAnon) growth MiB | of which embeddings MiB |")
    print("|---|---|---|---|---|---|")
    for n, name, m in rows:
        print(
            f"| {n:,} | {dim} | {name} | {m['seconds']:.2f} | {m['rss_growth'] / 2**20:.0f} | {m['emb_bytes'] / 2**20:.0f} |"
        )


if __name__ == "__main__":
    main()
