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


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"id": "a", "text": "x"}\n\n\n{"id": "b"}\n', "l.jsonl, line 4, field 'text'"),
        ('\n{"id": "a", "text": "x"}\n\n{"text": "y"}\n', "l.jsonl, line 4, field 'id': every label needs"),
        (
            '\n\n{"id": 1.5, "text": "x"}\n',
            "l.jsonl, line 3, field 'id': a label id is a string or an integer, got float",
        ),
        ('{"id": [1], "text": "x"}\n', "l.jsonl, line 1, field 'id': a label id is a string or an integer, got list"),
        ('{"id": null, "text": "x"}\n', "l.jsonl, line 1, field 'id': a label id is a string or an integer, got null"),
        (
            '\n{"id": true, "text": "x"}\n',
            "l.jsonl, line 2, field 'id': a label id is a string or an integer, got bool",
        ),
        ('\n\n\n{"id": "a", "text": \n', "l.jsonl, line 4: not valid JSON"),
    ],
)
def test_label_file_errors_name_the_real_line_and_field(tmp_path, content, message):
    from dexml_hf.commands.index import read_label_file
    from dexml_hf.errors import DataError

    (tmp_path / "l.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_label_file(tmp_path / "l.jsonl")
    assert message in str(err.value), str(err.value)


def test_label_file_ids_of_str_and_int_are_kept(tmp_path):
    from dexml_hf.commands.index import read_label_file

    (tmp_path / "l.jsonl").write_text('\n{"id": 7, "text": "x"}\n{"id": "b", "text": "y"}\n', encoding="utf-8")
    assert read_label_file(tmp_path / "l.jsonl") == (["x", "y"], [7, "b"])
    (tmp_path / "l.tsv").write_text("\n\nk1\tone\nbroken\n", encoding="utf-8")
    from dexml_hf.errors import DataError

    with pytest.raises(DataError, match=r"l\.tsv, line 4: expected id<TAB>text"):
        read_label_file(tmp_path / "l.tsv")


# ---- --approximate ---------------------------------------------------------------------------------------------


def _recall(approx_ids, exact_ids) -> float:
    """Mean fraction of each query's exact top-k found by the approximate top-k (computed here, not by dexml_hf)."""
    return float(np.mean([len(set(a) & set(e)) / len(e) for a, e in zip(approx_ids.tolist(), exact_ids.tolist())]))


@pytest.fixture
def ann_dataset(tmp_path):
    synthetic = pytest.importorskip("dexml_hf.data.synthetic")
    pytest.importorskip("faiss")
    from dexml_hf.data import save_to_folder

    ds = synthetic.generate_synthetic_xmc(num_labels=400, num_train=20, num_test=10, num_validation=60, seed=0)
    save_to_folder(ds, tmp_path / "ds-ann")
    return ds, tmp_path / "ds-ann"


@pytest.mark.parametrize(
    ("kind", "extra", "tuned", "mode"),
    [("ivf", ["--ann_params", "nlist=20"], "nprobe", "title"), ("hnsw", [], "efSearch", "wikipedia")],
)
def test_build_approximate_reaches_the_target_recall_measured_independently(
    tiny_model_path, tiny_model, tmp_path, ann_dataset, capsys, kind, extra, tuned, mode
):
    ds, folder = ann_dataset
    idx = tmp_path / "idx"
    argv = ["index", "build", "--model", str(tiny_model_path), "--dataset", str(folder), "--output", str(idx)]
    target = 0.9
    opts = ["--approximate", kind, *extra, "--target_recall", str(target), "--tune_k", "10", "--query_text_mode", mode]
    assert main([*argv, *opts]) == 0
    out = capsys.readouterr().out
    assert (idx / "approximate" / "index.faiss").is_file()
    saved = json.loads((idx / "label_index.json").read_text())["approximate"]
    assert saved["kind"] == kind and saved["recall"]["n_queries"] == 60 and saved["recall"]["k"] == 10
    assert f"recall@10 {saved['recall']['recall']:.4f}" in out

    index = LabelIndex.load(idx)
    exact = LabelIndex.load(idx, load_approximate=False)
    assert index.approximate is not None and exact.approximate is None
    assert index.approximate.params[tuned] == saved["recall"][tuned] == saved["params"][tuned]
    q = exact.encode_queries(tiny_model, ds.query_texts("validation", mode))  # the tuning queries: validation split
    recall = _recall(index.search(q, 10)[1], exact.search(q, 10)[1])
    assert recall >= target
    assert recall == pytest.approx(saved["recall"]["recall"], abs=1e-9)
    if kind == "ivf":  # tuned below an exhaustive scan: the saved search is approximate, not exact
        assert saved["params"]["nprobe"] < 20


def test_build_approximate_with_label_file_tune_queries_and_a_sample(tiny_model_path, tmp_path, ann_dataset, capsys):
    ds, _ = ann_dataset
    (tmp_path / "labels.txt").write_text("\n".join(ds.label_texts()) + "\n")
    (tmp_path / "q.txt").write_text("\n".join(ds.query_texts("train")) + "\n")
    idx = tmp_path / "idx"
    argv = ["index", "build", "--model", str(tiny_model_path), "--labels", str(tmp_path / "labels.txt")]
    opts = ["--approximate", "ivf", "--codes", "sq8", "--ann_params", "nlist=16, nprobe=2", "--output", str(idx)]
    tune = ["--target_recall", "0.8", "--tune_k", "5", "--tune_queries", str(tmp_path / "q.txt")]
    assert main([*argv, *opts, *tune, "--tune_max_queries", "7"]) == 0
    saved = json.loads((idx / "label_index.json").read_text())["approximate"]
    assert saved["codes"] == "sq8" and saved["params"]["nlist"] == 16 and saved["reranks"]
    assert saved["recall"]["n_queries"] == 7 and saved["recall"]["recall"] >= 0.8
    assert saved["params"]["rerank"] <= 4  # tuned from sq8's default depth down
    # a re-ranking depth from the command line is kept when nothing is tuned
    assert main([*argv, *opts[:-4], "--ann_params", "nlist=16,nprobe=2,rerank=7", "--output", str(idx)]) == 0
    saved = json.loads((idx / "label_index.json").read_text())["approximate"]
    assert saved["params"]["rerank"] == 7 and LabelIndex.load(idx).approximate.params["rerank"] == 7
    # no --target_recall: built with the given parameters, nothing measured
    assert main([*argv, "--approximate", "hnsw", "--ann_params", "M=8,efSearch=40", "--output", str(idx)]) == 0
    assert "recall not measured" in capsys.readouterr().out
    saved = json.loads((idx / "label_index.json").read_text())["approximate"]
    assert saved["params"]["M"] == 8 and saved["params"]["efSearch"] == 40 and saved["recall"] is None


def test_add_update_remove_keep_the_saved_approximate_index(tiny_model_path, tmp_path, ann_dataset):
    _, folder = ann_dataset
    idx = tmp_path / "idx"
    argv = ["index", "build", "--model", str(tiny_model_path), "--dataset", str(folder), "--output", str(idx)]
    assert main([*argv, "--approximate", "hnsw", "--target_recall", "0.9", "--tune_k", "10"]) == 0
    (tmp_path / "new.tsv").write_text("9001\tbaking bread\n9002\tcalculus\n")
    model = ["--model", str(tiny_model_path)]
    assert main(["index", "add", *model, "--index", str(idx), "--labels", str(tmp_path / "new.tsv")]) == 0
    index = LabelIndex.load(idx)
    assert len(index.approximate) == len(index) == 402
    before = index.embeddings[401].clone()
    (tmp_path / "changed.tsv").write_text("9002\tintegral calculus\n")
    assert main(["index", "update", *model, "--index", str(idx), "--labels", str(tmp_path / "changed.tsv")]) == 0
    index = LabelIndex.load(idx)
    assert len(index.approximate) == len(index) == 402 and index.approximate.recall["measured_before_label_changes"]
    assert not np.allclose(before.numpy(), index.embeddings[401].numpy())  # 9002 was re-embedded ...
    query = index.embeddings[401:402]
    scores, ids = index.approximate.search(query, 1)  # ... and the approximate index holds the new vector
    assert ids[0, 0] == 401 and abs(scores[0, 0] - float(query[0] @ query[0])) < 1e-4
    assert main(["index", "remove", "--index", str(idx), "--ids", "9001"]) == 0
    index = LabelIndex.load(idx)
    assert len(index.approximate) == len(index) == 401 and index.approximate.kind == "hnsw"
    assert index.approximate.recall["measured_before_label_changes"] is True
    assert "9001" not in [str(i) for i in index.label_ids]
    _, ids = index.search(index.embeddings, len(index))  # every label as a query, every place: never 9001
    returned = {str(index.label_ids[i]) for i in np.unique(ids[ids >= 0])}
    assert "9001" not in returned and "9002" in returned


def test_approximate_option_errors_are_one_line(tiny_model_path, tmp_path, capsys):
    pytest.importorskip("faiss")
    labels = _jsonl(tmp_path / "l.jsonl", [{"id": f"L{i}", "text": t} for i, t in enumerate(LABELS)])
    base = ["build", "--model", str(tiny_model_path), "--labels", str(labels), "--output", str(tmp_path / "idx")]
    cases = [
        ([*base, "--approximate", "ivf", "--ann_params", "nlist=2,foo=3"], "unknown key 'foo'"),
        ([*base, "--approximate", "ivf", "--ann_params", "nlist=two"], "nlist='two' is not a positive integer"),
        ([*base, "--approximate", "ivf", "--ann_params", "nlist"], "'nlist' is not key=value"),
        ([*base, "--approximate", "hnsw", "--ann_params", "nlist=2"], "nlist does not apply to --approximate hnsw"),
        ([*base, "--approximate", "hnsw", "--ann_params", "rerank=3"], "rerank does not apply to --approximate hnsw"),
        ([*base, "--approximate", "ivf", "--codes", "pq", "--ann_params", "nlist=2,pq_m=5"], "pq_m=5 must divide"),
        ([*base, "--approximate", "annoy"], "invalid choice: 'annoy'"),
        ([*base, "--codes", "sq8"], "--codes needs --approximate"),
        ([*base, "--approximate", "hnsw", "--target_recall", "0.9"], "needs --tune_queries"),
        ([*base, "--approximate", "hnsw", "--tune_k", "5"], "--tune_k needs --target_recall"),
        ([*base, "--approximate", "hnsw", "--query_text_mode", "content"], "--query_text_mode is the text of"),
        ([*base, "--approximate", "hnsw", "--target_recall", "1.5"], "--target_recall must be in (0, 1]"),
        (["add", "--index", str(tmp_path), "--approximate", "hnsw"], "--approximate is an option of index build"),
    ]
    for argv, message in cases:
        assert main(["index", *argv]) == 2, argv
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "it/s]" not in line]
        assert len(err) == 1 and message in err[0], err  # one line (beside the label embedding's progress bar)
    assert not (tmp_path / "idx").exists()


def test_approximate_without_faiss_is_refused_before_any_work(tiny_model_path, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    labels = _jsonl(tmp_path / "l.jsonl", [{"id": "a", "text": "x"}])
    argv = [
        "index",
        "build",
        "--model",
        str(tiny_model_path),
        "--labels",
        str(labels),
        "--output",
        str(tmp_path / "i"),
    ]
    assert main([*argv, "--approximate", "hnsw"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--approximate: approximate search needs faiss" in err[0]
    assert not (tmp_path / "i").exists()


def test_add_and_update_dtype_reach_the_new_label_rows(tiny_model_path, tmp_path):
    """`index add|update --dtype bfloat16`: the rows they write are those of the hand-cast bf16 encoder."""
    import torch
    from sentence_transformers import SentenceTransformer

    from dexml_hf.encoding import encode_texts

    labels = _jsonl(tmp_path / "labels.jsonl", [{"id": f"L{i}", "text": t} for i, t in enumerate(LABELS)])
    idx = tmp_path / "idx"
    model = ["--model", str(tiny_model_path)]
    assert main(["index", "build", *model, "--labels", str(labels), "--output", str(idx)]) == 0
    (tmp_path / "new.tsv").write_text("N0\tbaking bread\nN1\tcalculus\n")
    (tmp_path / "changed.tsv").write_text("L4\tbaking pizza\n")
    bf16_flag = ["--dtype", "bfloat16"]
    assert main(["index", "add", *model, "--index", str(idx), "--labels", str(tmp_path / "new.tsv"), *bf16_flag]) == 0
    argv = ["index", "update", *model, "--index", str(idx), "--labels", str(tmp_path / "changed.tsv"), *bf16_flag]
    assert main(argv) == 0

    fp32 = SentenceTransformer(str(tiny_model_path), device="cpu")
    bf16 = SentenceTransformer(str(tiny_model_path), device="cpu").to(torch.bfloat16)
    texts = ["baking bread", "calculus", "baking pizza"]
    want = encode_texts(bf16, texts, "label").numpy()
    got = np.asarray(LabelIndex.load(idx).embeddings, dtype=np.float32)[[5, 6, 4]]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(got, encode_texts(fp32, texts, "label").numpy(), atol=1e-4)  # --dtype was not ignored
