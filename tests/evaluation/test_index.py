"""LabelIndex: encoding follows the model, search is exact, save/load and the Hub round trip keep predictions."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch

from dexml_hf.index import LabelIndex, encode_texts, prompt_name_for, resolve_normalize

LABELS = ["python", "rust programming", "sql databases", "linear algebra", "cooking pasta", "tax law", "gardening"]
QUERIES = ["how do I borrow in rust", "join two tables", "boil spaghetti"]


def test_from_texts_matches_bruteforce_and_model_normalisation(tiny_model):
    assert resolve_normalize(tiny_model) is True  # the tiny model's similarity is cosine
    index = LabelIndex.from_texts(tiny_model, LABELS, label_ids=[f"L{i}" for i in range(7)], batch_size=3)
    assert index.normalized and len(index) == 7 and index.dim == 32
    raw = tiny_model.encode(LABELS, convert_to_tensor=True)
    torch.testing.assert_close(index.embeddings, torch.nn.functional.normalize(raw, dim=1), atol=1e-5, rtol=1e-5)
    q = tiny_model.encode(QUERIES, convert_to_tensor=True)
    scores, ids = index.search(q, k=4)
    full = torch.nn.functional.normalize(q, dim=1) @ index.embeddings.T
    np.testing.assert_array_equal(ids, torch.topk(full, 4).indices.numpy())
    np.testing.assert_allclose(scores, torch.topk(full, 4).values.numpy(), atol=1e-5)


def test_dot_models_are_not_normalised_and_prompts_come_from_the_model(tiny_model):
    tiny_model.similarity_fn_name = "dot"
    assert resolve_normalize(tiny_model) is False
    assert prompt_name_for(tiny_model, "query") is None
    tiny_model.prompts = {"query": "query: ", "label": "label: "}
    emb = encode_texts(tiny_model, ["rust"], "label")
    expected = tiny_model.encode(["label: rust"], convert_to_tensor=True)
    torch.testing.assert_close(emb, expected, atol=1e-5, rtol=1e-5)
    index = LabelIndex.from_texts(tiny_model, LABELS)
    assert not index.normalized and index.label_prompt_name == "label" and index.query_prompt_name == "query"


def test_search_texts_and_exclude(tiny_model):
    index = LabelIndex.from_texts(tiny_model, LABELS, label_ids=[f"L{i}" for i in range(7)])
    res = index.search_texts(tiny_model, QUERIES, k=3)
    assert len(res) == 3 and all(len(r) == 3 for r in res)
    top = res[0][0]
    assert top["text"] == LABELS[top["id"]] and top["label_id"] == f"L{top['id']}"
    excluded = index.search_texts(tiny_model, QUERIES[:1], k=3, exclude=np.array([[0, top["id"]]]))
    assert top["id"] not in [r["id"] for r in excluded[0]]


def test_save_load_same_predictions_fp32_and_fp16(tiny_model, tmp_path):
    q = tiny_model.encode(QUERIES, convert_to_tensor=True)
    for dtype in ("float32", "float16"):
        index = LabelIndex.from_texts(tiny_model, LABELS, dtype=dtype)
        index.save(tmp_path / dtype)
        meta = json.loads((tmp_path / dtype / "label_index.json").read_text())
        assert meta["dtype"] == dtype and meta["normalized"] is True and "texts" not in meta
        table = pa.ipc.open_file(tmp_path / dtype / "labels.feather").read_all()  # texts live in Arrow now
        assert table.column("text").to_pylist() == LABELS and table.column_names == ["text"]
        loaded = LabelIndex.load(tmp_path / dtype)
        assert loaded.embeddings.dtype == index.embeddings.dtype
        torch.testing.assert_close(loaded.embeddings, index.embeddings, rtol=0, atol=0)
        for a, b in zip(index.search(q, 5), loaded.search(q, 5)):
            np.testing.assert_array_equal(a, b)


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved LabelIndex"):
        LabelIndex.load(tmp_path)
    with pytest.raises(ValueError, match="texts has 1 entries"):
        LabelIndex(torch.zeros(2, 3), texts=["a"])
    (tmp_path / "x").mkdir()
    LabelIndex(torch.randn(2, 3)).save(tmp_path / "x")
    (tmp_path / "x" / "label_index.json").write_text("{bad json")
    with pytest.raises(ValueError, match="line 1"):
        LabelIndex.load(tmp_path / "x")


def test_faiss_backend_same_ids():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((500, 16)).astype(np.float32)
    q = rng.standard_normal((40, 16)).astype(np.float32)
    exact = LabelIndex(emb)
    flat = LabelIndex(emb, backend="faiss")
    pairs = np.stack([np.arange(40), exact.search(q, 1)[1][:, 0]], axis=1)  # exclude each query's best label
    for exclude in (None, pairs):
        s1, i1 = exact.search(q, 10, exclude=exclude)
        s2, i2 = flat.search(q, 10, exclude=exclude)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, atol=1e-5)


def test_push_to_hub_and_load_back(tiny_model, hub_repo_id, tmp_path):
    index = LabelIndex.from_texts(tiny_model, LABELS, label_ids=list(range(100, 107)))
    index.push_to_hub(hub_repo_id)
    loaded = LabelIndex.load(hub_repo_id)
    assert loaded.texts == LABELS and loaded.label_ids == list(range(100, 107))
    q = tiny_model.encode(QUERIES, convert_to_tensor=True)
    for a, b in zip(index.search(q, 4), loaded.search(q, 4)):
        np.testing.assert_array_equal(a, b)
