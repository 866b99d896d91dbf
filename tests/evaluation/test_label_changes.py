"""Labels that change without retraining: add / remove / update against an index built from scratch on the same
labels (ids, scores, the memory's neighbour term), removed labels never returned, bad ids refused."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dexml_hf.errors import UsageError
from dexml_hf.index import LabelIndex
from dexml_hf.retrieval import RetrievalMemory

LABELS = ["python", "rust programming", "sql databases", "linear algebra", "cooking pasta", "tax law", "gardening"]
IDS = [f"L{i}" for i in range(len(LABELS))]
NEW = ["baking bread", "calculus", "go concurrency"]
NEW_IDS = ["N0", "N1", "N2"]
TRAIN = ["pip install", "cargo build", "select from where", "matrix inverse", "al dente", "vat refund", "tomatoes"]
QUERIES = ["how do I borrow in rust", "join two tables", "boil spaghetti", "derivative of x squared", "sourdough"]


def _train_matrix(n_labels):
    """Training query i has label i and label (i + 1) % 7: every label is in some neighbour's row."""
    rows = np.repeat(np.arange(7), 2)
    cols = np.stack([np.arange(7), (np.arange(7) + 1) % 7], axis=1).ravel()
    return sp.csr_matrix((np.ones(14), (rows, cols)), shape=(7, n_labels))


def _memory(model, matrix):
    from dexml_hf.encoding import encode_texts

    return RetrievalMemory(encode_texts(model, TRAIN, "query"), matrix, lam=0.3, k=3, temperature=0.1)


def _assert_same(a, b, model):
    assert list(a.label_ids) == list(b.label_ids) and list(a.texts) == list(b.texts)
    q = a.encode_queries(model, QUERIES)
    for use_memory in (True, False):
        (s1, i1), (s2, i2) = a.search(q, len(a), use_memory=use_memory), b.search(q, len(b), use_memory=use_memory)
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-5)
    if a.memory is not None:
        t1 = a.memory.neighbour_term(*a.memory.neighbours(q))
        t2 = b.memory.neighbour_term(*b.memory.neighbours(q))
        assert t1.shape == t2.shape and abs(t1 - t2).max() < 1e-9


def test_add_save_load_equals_an_index_built_from_scratch(tiny_model, tmp_path):
    index = LabelIndex.from_texts(tiny_model, LABELS, label_ids=IDS, memory=_memory(tiny_model, _train_matrix(7)))
    positions = index.add_labels(tiny_model, NEW, NEW_IDS)
    assert positions.tolist() == [7, 8, 9] and len(index) == 10
    index.save(tmp_path / "idx")
    loaded = LabelIndex.load(tmp_path / "idx")
    # from scratch: all ten labels, the memory's label matrix over them (no training query has a new label)
    matrix = sp.hstack([_train_matrix(7), sp.csr_matrix((7, 3))], format="csr")
    scratch = LabelIndex.from_texts(
        tiny_model, LABELS + NEW, label_ids=IDS + NEW_IDS, memory=_memory(tiny_model, matrix)
    )
    _assert_same(loaded, scratch, tiny_model)
    q = index.encode_queries(tiny_model, NEW)  # a new label is predicted by the encoder at once
    assert index.search(q, 1, use_memory=False)[1][:, 0].tolist() == [7, 8, 9]


def test_removed_labels_never_come_back_by_either_term(tiny_model, tmp_path):
    index = LabelIndex.from_texts(tiny_model, LABELS, label_ids=IDS, memory=_memory(tiny_model, _train_matrix(7)))
    q = index.encode_queries(tiny_model, TRAIN)  # each train text's own row is its nearest neighbour
    term = index.memory.neighbour_term(*index.memory.neighbours(q))
    gone = ["L2", "L5"]
    assert all(term[:, IDS.index(g)].nnz for g in gone)  # before: both reach queries through the neighbour term
    removed = index.remove_labels(gone)
    assert removed.tolist() == [2, 5] and len(index) == 5 and index.memory.num_labels == 5
    index.save(tmp_path / "idx")
    for idx in (index, LabelIndex.load(tmp_path / "idx")):
        for use_memory in (True, False):
            _, ids = idx.search(q, len(idx), use_memory=use_memory)
            returned = {idx.label_ids[i] for i in ids.ravel() if i >= 0}
            assert returned == set(IDS) - set(gone)
    keep = [0, 1, 3, 4, 6]
    scratch = LabelIndex.from_texts(
        tiny_model,
        [LABELS[i] for i in keep],
        label_ids=[IDS[i] for i in keep],
        memory=_memory(tiny_model, _train_matrix(7)[:, keep]),
    )
    _assert_same(LabelIndex.load(tmp_path / "idx"), scratch, tiny_model)


def test_update_re_embeds_in_place(tiny_model):
    index = LabelIndex.from_texts(tiny_model, LABELS, label_ids=IDS, memory=_memory(tiny_model, _train_matrix(7)))
    before = index.memory.label_matrix.copy()
    assert index.update_labels(tiny_model, ["bread baking"], ["L4"]).tolist() == [4]
    scratch = LabelIndex.from_texts(
        tiny_model,
        [*LABELS[:4], "bread baking", *LABELS[5:]],
        label_ids=IDS,
        memory=_memory(tiny_model, _train_matrix(7)),
    )
    _assert_same(index, scratch, tiny_model)
    assert (index.memory.label_matrix != before).nnz == 0


@pytest.mark.parametrize("source", ["tensor", "array", "loaded"])
def test_update_writes_the_index_rows_never_the_callers_or_the_files(tiny_model, tmp_path, source):
    """A table the caller gave (or a saved file's) is copied once; the index's own copy is then written in place."""
    from dexml_hf.encoding import encode_texts, resolve_normalize

    normalized = resolve_normalize(tiny_model, None)
    given = encode_texts(tiny_model, LABELS, "label", normalize=normalized)
    before = given.clone()
    table = given.numpy() if source == "array" else given
    index = LabelIndex(table, label_ids=IDS, texts=LABELS, normalized=normalized)
    if source == "loaded":
        index = LabelIndex.load(index.save(tmp_path / "idx"))
    index.update_labels(tiny_model, ["bread baking"], ["L4"])
    table = index.embeddings.data_ptr()
    index.update_labels(tiny_model, ["rye baking"], ["L6"])
    assert index.embeddings.data_ptr() == table  # the second update copies nothing
    assert torch.equal(given, before)
    if source == "loaded":
        assert LabelIndex.load(tmp_path / "idx").texts == LABELS
    scratch = LabelIndex.from_texts(tiny_model, [*LABELS[:4], "bread baking", LABELS[5], "rye baking"], label_ids=IDS)
    _assert_same(index, scratch, tiny_model)
    torch.testing.assert_close(index.embeddings, scratch.embeddings, rtol=0, atol=1e-6)


def test_loaded_arrow_columns_can_change_too(tiny_model, tmp_path):
    LabelIndex.from_texts(tiny_model, LABELS, label_ids=list(range(100, 107))).save(tmp_path / "idx")
    index = LabelIndex.load(tmp_path / "idx")
    index.add_labels(tiny_model, NEW[:1], [200])
    index.remove_labels([101, 103])
    assert list(index.label_ids) == [100, 102, 104, 105, 106, 200]
    assert list(index.texts) == [LABELS[0], LABELS[2], *LABELS[4:], NEW[0]]
    with pytest.raises(UsageError, match="do not match"):
        index.add_labels(tiny_model, ["x"], ["not-an-int"])


def test_bad_ids_are_refused_and_nothing_changes(tiny_model):
    index = LabelIndex.from_texts(tiny_model, LABELS, label_ids=IDS, memory=_memory(tiny_model, _train_matrix(7)))
    cases = [
        (lambda: index.add_labels(tiny_model, ["x", "y"], ["N0", "N0"]), "'N0' is given twice"),
        (lambda: index.add_labels(tiny_model, ["x"], ["L3"]), "'L3' is already in the index"),
        (lambda: index.add_labels(tiny_model, ["x"]), "give one id per text"),
        (lambda: index.remove_labels(["L1", "nope"]), "unknown label id.*'nope'"),
        (lambda: index.remove_labels(["L1", "L1"]), "'L1' is given twice"),
        (lambda: index.remove_labels(IDS), "empty index"),
        (lambda: index.update_labels(tiny_model, ["a", "b"], ["L1"]), "2 texts for 1 ids"),
        (lambda: index.update_labels(tiny_model, ["a"], ["zz"]), "unknown label id"),
    ]
    for call, message in cases:
        with pytest.raises(UsageError, match=message):
            call()
        assert list(index.label_ids) == IDS and len(index) == 7 and index.memory.num_labels == 7
    plain = LabelIndex.from_texts(tiny_model, LABELS)  # no label ids: labels are positions
    with pytest.raises(UsageError, match="no label ids"):
        plain.add_labels(tiny_model, ["x"], ["N9"])
    with pytest.raises(UsageError, match="positions 0 to 6"):
        plain.remove_labels([7])
    plain.remove_labels([0])
    assert plain.texts == LABELS[1:]


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_label_changes_reach_the_approximate_index(tiny_model, tmp_path, kind):
    """With an approximate index attached, add / remove / update give what an exact index on the same labels gives
    (a tiny set: the approximate search is exhaustive here), saved and loaded with its folder."""
    pytest.importorskip("faiss")
    params = {"nlist": 2, "nprobe": 2} if kind == "ivf" else {"efSearch": 64}
    index = LabelIndex.from_texts(tiny_model, LABELS, label_ids=IDS)
    index.build_approximate(kind, **params)
    index.add_labels(tiny_model, NEW, NEW_IDS)
    index.remove_labels(["L1", "N1"])
    index.update_labels(tiny_model, ["sourdough baking"], ["N0"])
    index.save(tmp_path / "idx")
    loaded = LabelIndex.load(tmp_path / "idx")
    assert loaded.approximate is not None and loaded.approximate.kind == kind
    exact = LabelIndex.from_texts(
        tiny_model,
        [t for t, i in zip(LABELS, IDS) if i != "L1"] + ["sourdough baking", "go concurrency"],
        label_ids=[i for i in IDS if i != "L1"] + ["N0", "N2"],
    )
    q = exact.encode_queries(tiny_model, QUERIES + NEW)
    for candidate in (index, loaded):
        scores, ids = candidate.search(q, len(exact))
        s2, i2 = exact.search(q, len(exact))
        np.testing.assert_array_equal(ids, i2)
        np.testing.assert_allclose(scores, s2, atol=1e-5)
    assert list(loaded.label_ids) == list(exact.label_ids)
