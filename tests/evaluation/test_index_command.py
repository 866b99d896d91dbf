"""``dexml-hf index build|add|update|remove`` through ``cli.main(argv)``, against the Python API."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dexml_hf.cli import main
from dexml_hf.index import LabelIndex

LABELS = ["python", "rust programming", "sql databases", "linear algebra", "cooking pasta"]
QUERIES = ["how do I borrow in rust", "join two tables", "boil spaghetti"]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_build_add_update_remove_equal_the_python_api(tiny_model_path, tiny_model, tmp_path, capsys):
    labels = _jsonl(tmp_path / "labels.jsonl", [{"id": f"L{i}", "text": t} for i, t in enumerate(LABELS)])
    idx = tmp_path / "idx"
    assert (
        main(["index", "build", "--model", str(tiny_model_path), "--labels", str(labels), "--output", str(idx)]) == 0
    )
    assert "5 labels" in capsys.readouterr().out
    expected = LabelIndex.from_texts(tiny_model, LABELS, label_ids=[f"L{i}" for i in range(5)])

    (tmp_path / "new.tsv").write_text("N0\tbaking bread\nN1\tcalculus\n")
    assert (
        main(
            [
                "index",
                "add",
                "--model",
                str(tiny_model_path),
                "--index",
                str(idx),
                "--labels",
                str(tmp_path / "new.tsv"),
            ]
        )
        == 0
    )
    expected.add_labels(tiny_model, ["baking bread", "calculus"], ["N0", "N1"])
    (tmp_path / "changed.tsv").write_text("L4\tbaking pizza\n")
    argv = ["index", "update", "--model", str(tiny_model_path), "--index", str(idx), "--labels"]
    assert main([*argv, str(tmp_path / "changed.tsv")]) == 0
    expected.update_labels(tiny_model, ["baking pizza"], ["L4"])
    out = tmp_path / "smaller"
    assert main(["index", "remove", "--index", str(idx), "--ids", "L1, N0", "--output", str(out)]) == 0
    assert "removed 2 labels" in capsys.readouterr().out
    assert len(LabelIndex.load(idx)) == 7  # --output: the source index is left as it was
    expected.remove_labels(["L1", "N0"])

    got = LabelIndex.load(out)
    assert list(got.label_ids) == ["L0", "L2", "L3", "L4", "N1"] and list(got.texts) == list(expected.texts)
    q = expected.encode_queries(tiny_model, QUERIES)
    (s1, i1), (s2, i2) = got.search(q, 5), expected.search(q, 5)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_build_from_a_dataset_and_integer_ids(tiny_model_path, tiny_model, tmp_path):
    synthetic = pytest.importorskip("dexml_hf.data.synthetic")
    from dexml_hf.data import save_to_folder

    ds = synthetic.generate_synthetic_xmc(num_labels=12, num_train=30, num_test=5, seed=0)
    save_to_folder(ds, tmp_path / "ds-index-cmd")
    idx = tmp_path / "idx"
    argv = [
        "index",
        "build",
        "--model",
        str(tiny_model_path),
        "--dataset",
        str(tmp_path / "ds-index-cmd"),
        "--output",
        str(idx),
    ]
    assert main(argv) == 0
    index = LabelIndex.load(idx)
    assert list(index.label_ids) == list(ds.labels["uid"]) and list(index.texts) == list(ds.label_texts())
    plain = tmp_path / "plain"
    (tmp_path / "t.txt").write_text("alpha\nbeta\ngamma\n")
    assert (
        main(
            [
                "index",
                "build",
                "--model",
                str(tiny_model_path),
                "--labels",
                str(tmp_path / "t.txt"),
                "--output",
                str(plain),
            ]
        )
        == 0
    )
    assert main(["index", "remove", "--index", str(plain), "--ids", "1"]) == 0  # no ids: positions
    assert LabelIndex.load(plain).texts == ["alpha", "gamma"]


def test_errors_are_one_line(tiny_model_path, tmp_path, capsys):
    labels = _jsonl(tmp_path / "l.jsonl", [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}])
    idx = tmp_path / "idx"
    assert (
        main(["index", "build", "--model", str(tiny_model_path), "--labels", str(labels), "--output", str(idx)]) == 0
    )
    capsys.readouterr()
    model = ["--model", str(tiny_model_path)]
    (tmp_path / "bad.jsonl").write_text('{"id": "c", "text": "z"}\n{"id": "d"}\n')
    cases = [
        (["remove", "--index", str(idx), "--ids", "zz"], 2, "unknown label id"),
        (["add", *model, "--index", str(idx), "--labels", str(labels)], 2, "'a' is already in the index"),
        (["shrink", "--index", str(idx)], 2, "invalid choice: 'shrink'"),
        (["build", *model, "--output", str(idx)], 2, "one of --labels / --dataset"),
        (["remove", "--ids", "a"], 2, "needs --index"),
        (["add", *model, "--index", str(idx), "--labels", str(tmp_path / "bad.jsonl")], 1, "bad.jsonl, line 2"),
    ]
    for argv, code, message in cases:
        assert main(["index", *argv]) == code, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert list(LabelIndex.load(idx).label_ids) == ["a", "b"]
