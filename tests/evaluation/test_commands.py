"""``dexml-hf evaluate`` and ``dexml-hf predict`` through ``cli.main(argv)``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dexml_hf.cli import main
from dexml_hf.evaluation import XMCEvaluator, bucket_metrics, frequency_buckets


@pytest.fixture()
def small_dataset(tmp_path):
    synthetic = pytest.importorskip("dexml_hf.data.synthetic")
    from dexml_hf.data import save_to_folder

    ds = synthetic.generate_synthetic_xmc(num_labels=40, num_train=120, num_test=30, seed=0)
    save_to_folder(ds, tmp_path / "ds")
    return ds, tmp_path / "ds"


def test_evaluate_command_writes_report_and_plot(tiny_model_path, tiny_model, small_dataset, tmp_path, capsys):
    ds, folder = small_dataset
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(tiny_model_path), "--dataset", str(folder), "--output_dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| P@1 |" in printed and "| PSP@1 |" in printed and "| R@10 |" in printed
    report = json.loads((out / "eval_test.json").read_text())
    assert (out / "eval_test.png").stat().st_size > 1000
    expected = XMCEvaluator.from_xmc_dataset(ds, split="test", name="")(tiny_model)
    assert report["num_queries"] == 30 and report["num_labels"] == 40
    for key, value in expected.items():
        assert report["metrics"][key] == pytest.approx(value, abs=1e-9)
    # Bucket contributions add up to the overall metric.
    for key in ("precision@1", "precision@5", "psp@3"):
        assert sum(b[key] for b in report["buckets"].values()) == pytest.approx(report["metrics"][key], abs=1e-9)
    assert sum(b["labels"] for b in report["buckets"].values()) == 40


def test_frequency_buckets_split_the_mass_in_thirds():
    freq = np.array([30, 0, 10, 10, 10, 5, 5, 5, 5, 5, 5])  # total 90
    buckets = frequency_buckets(freq)
    assert buckets.tolist() == [0, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    topk = np.array([[0, 2], [5, -1]])
    import scipy.sparse as sp

    truth = sp.csr_matrix(([1, 1, 1], ([0, 0, 1], [0, 2, 5])), shape=(2, 11))
    out = bucket_metrics(topk, truth, buckets, ks=(1, 2))
    assert out["head"]["precision@1"] == pytest.approx(0.5) and out["tail"]["precision@1"] == pytest.approx(0.5)
    assert out["torso"]["precision@2"] == pytest.approx(0.25)


def test_predict_command_prints_top_labels(tiny_model_path, tiny_model, tmp_path, capsys):
    from dexml_hf.index import LabelIndex

    labels = ["python lists", "sql joins", "rust lifetimes", "baking bread"]
    index = LabelIndex.from_texts(tiny_model, labels)
    index.save(tmp_path / "idx")
    texts = ["reverse a python list", "inner join two tables"]
    argv = ["predict", "--model", str(tiny_model_path), "--index", str(tmp_path / "idx"), "--k", "2", "--json", "true"]
    assert main([*argv, *texts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    expected = index.search_texts(tiny_model, texts, k=2)
    assert [line["text"] for line in lines] == texts
    for line, exp in zip(lines, expected):
        assert [h["text"] for h in line["labels"]] == [h["text"] for h in exp]
    assert main(argv[:-2] + texts[:1]) == 0
    table = capsys.readouterr().out
    assert table.startswith("reverse a python list\n   1. ") and expected[0][0]["text"] in table
