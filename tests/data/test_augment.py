"""Label-text augmentation: every added row has exactly the hand-computed positives and relevances."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.data import XMCDataset
from dexml_hf.data.augment import augment_with_label_texts

LABELS = ["agriculture", "fisheries", "oceans", "tax law", "space"]  # "space" (4) never occurs in train


def _table(texts, prefix):
    return datasets.Dataset.from_dict(
        {
            "uid": [f"{prefix}{i}" for i in range(len(texts))],
            "title": texts,
            "content": [f"c{i}" for i in range(len(texts))],
        }
    )


def _xmc():
    # train: q0 {0, 1}, q1 {0, 1, 2}, q2 {1, 2}, q3 {0}, q4 {3} (relevance 2: binarised for counting)
    rows = [0, 0, 1, 1, 1, 2, 2, 3, 4]
    cols = [0, 1, 0, 1, 2, 1, 2, 0, 3]
    vals = [1, 1, 1, 1, 1, 1, 1, 1, 2]
    train = sp.csr_matrix((vals, (rows, cols)), shape=(5, 5))
    test = sp.csr_matrix(([1, 1], ([0, 1], [4, 2])), shape=(2, 5))
    return XMCDataset(
        {"train": _table([f"doc {i}" for i in range(5)], "t"), "test": _table(["a", "b"], "s")},
        _table(LABELS, "L"),
        {"train": train, "test": test},
        filters={"test": np.array([[0, 1]])},
        name="toy",
    )


# Co-occurrence counts by hand (queries sharing both labels) and train frequencies:
#   C[0,1] = 2 (q0, q1), C[0,2] = 1 (q1), C[1,2] = 2 (q1, q2); label 3 co-occurs with nothing; freq = 3, 3, 2, 1, 0.
# P(m | l) = C[l, m] / freq[l]:
#   label 0: 1 -> 2/3, 2 -> 1/3;  label 1: 0 -> 2/3, 2 -> 2/3 (tie: lower id first);  label 2: 1 -> 2/2, 0 -> 1/2.
EXPECTED = {
    0: {0: {0: 1.0}, 1: {0: 1.0, 1: 2 / 3}, 2: {0: 1.0, 1: 2 / 3, 2: 1 / 3}},
    1: {0: {1: 1.0}, 1: {1: 1.0, 0: 2 / 3}, 2: {1: 1.0, 0: 2 / 3, 2: 2 / 3}},
    2: {0: {2: 1.0}, 1: {2: 1.0, 1: 1.0}, 2: {2: 1.0, 1: 1.0, 0: 1 / 2}},
    3: {0: {3: 1.0}, 1: {3: 1.0}, 2: {3: 1.0}},
    4: {0: {4: 1.0}, 1: {4: 1.0}, 2: {4: 1.0}},
}


def _row(matrix, i) -> dict[int, float]:
    lo, hi = matrix.indptr[i], matrix.indptr[i + 1]
    return {int(c): float(v) for c, v in zip(matrix.indices[lo:hi], matrix.data[lo:hi])}


@pytest.mark.parametrize("top", [0, 1, 2, 10])
def test_augmentation_rows_have_exactly_the_expected_positives(top):
    xmc = _xmc()
    aug = augment_with_label_texts(xmc, cooccurrence_top=top)
    train = aug.label_matrices["train"]
    assert train.shape == (10, 5)
    assert (train[:5] != xmc.label_matrices["train"]).nnz == 0  # the original queries, unchanged and first
    for label in range(5):
        got = _row(train, 5 + label)
        want = EXPECTED[label][min(top, 2)]
        assert got.keys() == want.keys(), (top, label, got)
        for col, value in want.items():
            assert got[col] == pytest.approx(value, rel=1e-6), (top, label, col)
    added = aug.queries["train"].select(range(5, 10))
    assert added["title"] == LABELS and added["uid"] == [f"label:L{i}" for i in range(5)]
    assert added["content"] == [""] * 5
    assert aug.queries["train"].select(range(5))["title"] == [f"doc {i}" for i in range(5)]


def test_other_splits_filters_and_original_are_untouched():
    xmc = _xmc()
    before = xmc.label_matrices["train"].copy()
    aug = augment_with_label_texts(xmc, cooccurrence_top=1)
    assert (xmc.label_matrices["train"] != before).nnz == 0 and xmc.num_queries("train") == 5
    assert (aug.label_matrices["test"] != xmc.label_matrices["test"]).nnz == 0
    assert aug.queries["test"]["title"] == ["a", "b"]
    np.testing.assert_array_equal(aug.filters["test"], [[0, 1]])
    assert aug.name == "toy" and aug.num_labels == 5


def test_unseen_labels_can_be_left_out_and_title_alt_text():
    aug = augment_with_label_texts(_xmc(), cooccurrence_top=1, include_unseen=False, label_text_mode="title_alt")
    assert aug.num_queries("train") == 9  # label 4 never occurs in train
    assert aug.queries["train"]["uid"][5:] == ["label:L0", "label:L1", "label:L2", "label:L3"]
    assert aug.queries["train"]["title"][5] == "agriculture; c0"
    assert _row(aug.label_matrices["train"], 8) == {3: 1.0}


def test_relevance_sampling_draws_the_weighted_positives():
    aug = augment_with_label_texts(_xmc(), cooccurrence_top=2)
    draws = np.array(
        [aug.sample_positives("train", epoch, seed=0, sampling="relevance")[1][5] for epoch in range(3000)]
    )
    share = np.bincount(draws, minlength=5) / len(draws)  # row of label 0: weights 1, 2/3, 1/3 -> 1/2, 1/3, 1/6
    np.testing.assert_allclose(share[:3], [1 / 2, 1 / 3, 1 / 6], atol=0.03)
    view = aug.training_view(epoch=0, sampling="relevance")
    assert len(view) == 10 and view["query"][5:] == LABELS


def test_bad_arguments():
    with pytest.raises(ValueError, match="cooccurrence_top"):
        augment_with_label_texts(_xmc(), cooccurrence_top=-1)
    with pytest.raises(ValueError, match="label_text_mode"):
        augment_with_label_texts(_xmc(), label_text_mode="nope")
    with pytest.raises(ValueError, match="query_text_mode"):
        augment_with_label_texts(_xmc(), query_text_mode="nope")


@pytest.mark.parametrize("mode", ["title", "content", "title_content", "wikipedia"])
def test_label_rows_are_read_as_the_label_text_in_every_query_mode(mode):
    """The added rows' query text, as training reads it in ``mode``, is the label text (not an empty string or a
    doubled title), while the original queries keep their own text in that mode."""
    from dexml_hf.data.dataset import wikipedia_text

    toy = _xmc()
    labels = _table(["Agriculture & Food", "fisheries", "oceans", "tax law", "space"], "L")  # wikipedia rewrites
    xmc = XMCDataset(toy.queries, labels, toy.label_matrices, filters=toy.filters, name="toy")
    aug = augment_with_label_texts(xmc, query_text_mode=mode, label_text_mode="title")
    texts = aug.query_texts("train", mode)
    assert texts[:5] == xmc.query_texts("train", mode)
    labels = xmc.label_texts("title")
    assert texts[5:] == ([wikipedia_text(t) for t in labels] if mode == "wikipedia" else labels)
    assert all(t.strip() for t in texts[5:])
    view = aug.training_view(epoch=0, query_text=mode)
    assert view["query"][5:] == texts[5:]
