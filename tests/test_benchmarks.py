"""Every benchmark script runs in ``--quick`` mode and prints a markdown table, so none of them can rot.

Slow (each script trains or times something for a minute or more): run with ``pytest tests/test_benchmarks.py -m slow``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, SHARED_DATA

BENCHMARKS = PROJECT_ROOT / "benchmarks"
#: The scripts the README and RESULTS.md quote; any other script in benchmarks/ is run as well.
EXPECTED = ("accuracy", "throughput", "memory", "retrieval", "data_loading", "eurlex_negatives", "movielens", "ann")
HELPERS = {"common"}  # importable helpers, not scripts
NEEDS_DATA = {
    "accuracy",
    "ann",
    "ann_eurlex",
    "data_loading",
    "eurlex_negatives",
    "eurlex_rae",
    "eval_length",
    "fusion_tail",
    "lexical_scale",
    "movielens",
    "predict_throughput",
    "zero_shot",
}
TIMEOUT_S = 1800  # quick modes take minutes on 2 idle cores; the shared machine can be several times slower

TABLE = re.compile(r"^\|.*\|[ \t]*\n\|[ \t]*:?-{3,}:?[ \t]*\|", re.MULTILINE)


def _scripts() -> list[str]:
    found = {p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_") and p.stem not in HELPERS}
    return sorted(set(EXPECTED) | found)


def _extra_args(name: str, tmp_path: Path) -> list[str]:
    """Keep the scripts' result files out of the checkout where a script lets us say where they go."""
    if name in (
        "accuracy",
        "ann",
        "ann_eurlex",
        "cached_step",
        "eurlex_rae",
        "eval_length",
        "fusion_tail",
        "lexical_scale",
        "predict_throughput",
        "zero_shot",
    ):
        return ["--output", str(tmp_path / f"{name}_quick.json")]
    return []


def test_table_pattern_matches_a_markdown_table_only():
    table = "text\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    assert TABLE.search(table)
    assert not TABLE.search("| a | b |\n| 1 | 2 |\n")  # no separator row
    assert not TABLE.search("no table here\n---\n")


@pytest.mark.slow
@pytest.mark.parametrize("name", _scripts())
def test_benchmark_quick_mode_runs_and_prints_a_table(name, tmp_path):
    script = BENCHMARKS / f"{name}.py"
    if not script.is_file():
        pytest.skip(f"benchmarks/{name}.py does not exist (yet)")
    if name in NEEDS_DATA and not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent: benchmarks/{name}.py reads the shared real data")
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", *_extra_args(name, tmp_path)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    tail = f"\n--- stdout (tail) ---\n{proc.stdout[-3000:]}\n--- stderr (tail) ---\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"benchmarks/{name}.py --quick exited with {proc.returncode}{tail}"
    assert TABLE.search(proc.stdout), f"benchmarks/{name}.py --quick printed no markdown table{tail}"
    if name == "accuracy":
        import json

        report = json.loads((tmp_path / "accuracy_quick.json").read_text())
        results = report["datasets"]["cooking"]["results"]
        assert [r["method"] for r in results] == ["untrained", "tfidf_omikuji", "mnrl", "decoupled"]
        for r in results:
            m = r["metrics"]
            # 603 labels: a random ranking gets P@1 ~ 0.4%; every method here is far above chance.
            assert 0.2 < m["precision@1"] <= 1.0, (r["method"], m)
            assert 0.0 < m["psp@5"] <= 1.0 and m["recall@100"] >= m["recall@5"], (r["method"], m)
    if name == "eurlex_rae":
        import json

        report = json.loads((tmp_path / "eurlex_rae_quick.json").read_text())
        methods = [r["method"] for r in report["rows"]]
        assert methods == [
            "tfidf_omikuji",
            "dual encoder",
            "dual encoder + retrieval",
            "dual encoder + label texts",
            "dual encoder + label texts + retrieval",
        ]
        assert report["sizes"] == {"train": 2000, "test": 500, "validation": 500}
        for r in report["rows"]:  # 4,271 labels: chance P@1 is ~0.1 %; every row is far above it
            assert 20.0 < r["P@1"] <= 100.0 and r["time (s)"] > 0, r
        for part in ("de", "aug"):  # λ, k, T were chosen on validation, and λ = 1 (no memory) was a candidate
            d = report["details"][part]
            assert 0 < d["lam"] <= 1 and d["validation"]["n_queries"] == 500
            assert d["validation"]["value"] >= d["validation"]["dual_encoder_value"]
    if name == "ann":
        import json

        report = json.loads((tmp_path / "ann_quick.json").read_text())
        rows = {r["method"]: r for r in report["results"]}
        assert list(rows) == ["exact", "hnsw (flat)", "ivf (flat)"]
        assert rows["exact"]["recall@100"] == 1.0
        for method in ("hnsw (flat)", "ivf (flat)"):  # tuned for recall@100 >= 0.99 on the validation titles
            r = rows[method]
            assert 0.97 <= r["recall@100"] <= 1.0 and 0.95 <= r["recall@10"] <= 1.0, r
            assert r["tuned_recall@100"] >= 0.99 and r["qps"] > 0 and r["build_s"] > 0, r


def test_gpu_smoke_cpu_mode_trains_resumes_and_searches(tmp_path):
    """``gpu_smoke.py`` is prepared for a CUDA machine (bf16, fp16); its fp32 CPU mode runs here, on the mode whose
    checkpoint holds a device-bound state (the label cache). The slow test above runs every mode."""
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_smoke.py"), "--device", "cpu", "--quick", "--modes", "all_cached"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TOKENIZERS_PARALLELISM": "false"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| all_cached")]
    assert len(rows) == 1 and rows[0].startswith("| all_cached | fp32 | cpu |"), proc.stdout
    assert "| 2 → 4 | 0 |" in rows[0] and rows[0].endswith("| OK |"), rows[0]  # resumed at 2, ended exactly
