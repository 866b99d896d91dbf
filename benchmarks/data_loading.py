"""Load time and peak memory of EURLEX57K: LF raw (json.gz) vs the Hub layout (local folder, parquet).

Each load runs in a fresh subprocess (so memory is that load's own and nothing is shared in-process);
"first" Hub-layout load converts parquet into the ``datasets`` Arrow cache, "second" reuses it
(memory-mapped). LF raw has no cache: every load parses the JSON lines again (the OS page cache is
warm after the first run either way). Prints a markdown table.

    python benchmarks/data_loading.py [--quick] [--data ../shared/data/eurlex57k]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
from dexml_hf.data import load_xmc_dataset, read_lf
import datasets, pyarrow, scipy.sparse  # imports are not part of the load
datasets.disable_progress_bars()

def status(key):  # VmHWM (peak RSS) is per address space, unlike ru_maxrss which survives exec from the parent
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
except OSError:
    pass
kind, path, cache = sys.argv[1:4]
base = status("VmRSS")
t = time.perf_counter()
ds = read_lf(path) if kind == "lf" else load_xmc_dataset(path, cache_dir=cache)
n = sum(m.nnz for m in ds.label_matrices.values())  # touch the result
elapsed = time.perf_counter() - t
print(json.dumps({"seconds": elapsed, "peak_delta_mib": status("VmHWM") - base, "rss_after_mib": status("VmRSS") - base,
                  "nnz": n}))
"""


def _load(kind: str, path: Path, cache: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, kind, str(path), str(cache)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "eurlex57k"))
    parser.add_argument("--quick", action="store_true", help="one repetition instead of three")
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    sys.path.insert(0, str(ROOT))
    from dexml_hf.data import read_lf

    work = Path(tempfile.mkdtemp(prefix="dexml-bench-"))
    try:
        import datasets

        datasets.disable_progress_bars()
        read_lf(args.data).save_to_folder(work / "hub")
        rows = {}
        for rep in range(repeats):
            cache = work / f"cache{rep}"  # a fresh cache per repetition, so "first" is really first
            for label, kind, path in [
                ("LF raw (json.gz), first", "lf", Path(args.data)),
                ("LF raw (json.gz), second", "lf", Path(args.data)),
                ("Hub layout (parquet), first", "hub", work / "hub"),
                ("Hub layout (parquet), second", "hub", work / "hub"),
            ]:
                rows.setdefault(label, []).append(_load(kind, path, cache))
        nnz = {r["nnz"] for runs in rows.values() for r in runs}
        assert len(nnz) == 1, f"loads disagree on the number of positives: {nnz}"
        med = {
            k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_delta_mib", "rss_after_mib")}
            for k, v in rows.items()
        }
        ref = med["LF raw (json.gz), second"]["seconds"]
        print(f"EURLEX57K ({nnz.pop()} positives over 3 splits), median of {repeats} run(s), fresh process per load\n")
        print(
            "| source | load time (s) | peak RSS added by the load (MiB) | RSS held after (MiB) | speed-up vs LF raw (second) |"
        )
        print("|---|---|---|---|---|")
        for label, m in med.items():
            print(
                f"| {label} | {m['seconds']:.3f} | {m['peak_delta_mib']:.0f} | {m['rss_after_mib']:.0f} "
                f"| {ref / m['seconds']:.1f}x |"
            )
        ratio = ref / med["Hub layout (parquet), second"]["seconds"]
        print(f"\nHub layout second load is {ratio:.1f}x faster than LF raw (target >= 5x).")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
