"""``XMCDataset.carve_validation`` and ``DataArguments.num_val_points``: validation queries taken out of train.

Expectations come from the hand-built dataset itself: every query keeps its uid, text, label row and filter pairs
wherever it lands, so each carved split is checked against the original rows looked up by uid.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.data import XMCDataset, text_table
from dexml_hf.errors import UsageError
from dexml_hf.script_args import DataArguments

N_TRAIN, N_LABELS = 12, 5


def _tiny(validation: bool = False) -> XMCDataset:
    """Train query i: uid q<i>, title "query i", labels {i % 5, (i + 2) % 5} with relevances i + 1 and 0.5."""
    dense = np.zeros((N_TRAIN, N_LABELS), dtype=np.float32)
    for i in range(N_TRAIN):
        dense[i, i % N_LABELS] = i + 1
        dense[i, (i + 2) % N_LABELS] = 0.5
    dense[5] = 0  # a query without labels travels too
    train = text_table(uid=[f"q{i}" for i in range(N_TRAIN)], title=[f"query {i}" for i in range(N_TRAIN)])
    test = text_table(uid=["t0", "t1"], title=["test 0", "test 1"])
    labels = text_table(uid=[f"L{j}" for j in range(N_LABELS)], title=[f"label {j}" for j in range(N_LABELS)])
    queries = {"train": train, "test": test}
    matrices = {"train": sp.csr_matrix(dense), "test": sp.csr_matrix(np.eye(2, N_LABELS, dtype=np.float32))}
    filters = {"train": np.array([[0, 1], [3, 4], [7, 0], [11, 2], [3, 3]]), "test": np.array([[1, 0]])}
    if validation:
        queries["validation"] = text_table(uid=["v0"], title=["val 0"])
        matrices["validation"] = sp.csr_matrix(np.ones((1, N_LABELS), dtype=np.float32))
    return XMCDataset(queries, labels, matrices, filters, name="tiny")


def _uids(ds: XMCDataset, split: str) -> list[str]:
    return list(ds.queries[split]["uid"])


def test_validation_is_disjoint_from_train_and_covers_it():
    ds = _tiny()
    carved = ds.carve_validation(4, seed=0)
    train, val = _uids(carved, "train"), _uids(carved, "validation")
    assert len(val) == 4 and len(train) == N_TRAIN - 4
    assert not set(train) & set(val)
    assert sorted(train + val, key=lambda u: int(u[1:])) == _uids(ds, "train")
    # both keep the original order
    assert train == sorted(train, key=lambda u: int(u[1:])) and val == sorted(val, key=lambda u: int(u[1:]))
    assert carved.splits == ["train", "test", "validation"]
    assert (carved.name, carved.family, carved.num_labels) == ("tiny", ds.family, N_LABELS)
    assert carved.queries["test"] is ds.queries["test"] and carved.labels is ds.labels


def test_rows_texts_and_filters_follow_their_queries():
    ds = _tiny()
    original_rows = ds.label_matrices["train"].toarray()
    carved = ds.carve_validation(5, seed=3)
    moved_pairs = 0
    for split in ("train", "validation"):
        dense = carved.label_matrices[split].toarray()
        assert dense.shape == (carved.num_queries(split), N_LABELS)
        pairs = carved.filters.get(split, np.zeros((0, 2), dtype=np.int64))
        for new_idx, (uid, title) in enumerate(zip(carved.queries[split]["uid"], carved.queries[split]["title"])):
            old = int(uid[1:])
            assert title == f"query {old}"
            np.testing.assert_array_equal(dense[new_idx], original_rows[old])
            expected = sorted(c for r, c in ds.filters["train"].tolist() if r == old)
            assert sorted(c for r, c in pairs.tolist() if r == new_idx) == expected, (split, uid)
        moved_pairs += len(pairs)
    assert moved_pairs == len(ds.filters["train"])
    np.testing.assert_array_equal(carved.filters["test"], ds.filters["test"])


def test_seeded():
    ds = _tiny()
    first = _uids(ds.carve_validation(4, seed=7), "validation")
    assert _uids(ds.carve_validation(4, seed=7), "validation") == first
    assert _uids(ds.carve_validation(4, seed=8), "validation") != first  # another seed, another split
    assert len({tuple(_uids(ds.carve_validation(4, seed=s), "validation")) for s in range(8)}) >= 6


def test_training_view_and_propensities_after_carving():
    ds = _tiny()
    carved = ds.carve_validation(4, seed=1)
    view = carved.training_view(epoch=0, seed=0)
    train_titles = set(carved.queries["train"]["title"])
    assert set(view["query"]) <= train_titles and not set(view["query"]) & set(carved.queries["validation"]["title"])
    ids = np.asarray(view["label"])
    assert ids[:, 0].max() < carved.num_queries("train")
    # propensities still count the carved queries: those of the full train set
    np.testing.assert_allclose(carved.inv_propensity(), ds.inv_propensity(), rtol=1e-12)
    assert carved.propensity_splits == ("train", "validation")
    assert carved.head("train", 3).propensity_splits == ("train", "validation")  # a later head() keeps that


@pytest.mark.parametrize("bad", [0, -1, N_TRAIN, N_TRAIN + 5, 2.5, True])
def test_bad_sizes_are_refused(bad):
    with pytest.raises(UsageError, match="num_val_points"):
        _tiny().carve_validation(bad)


def test_existing_validation_split_is_refused():
    with pytest.raises(UsageError, match="validation split already"):
        _tiny(validation=True).carve_validation(2)


def test_data_arguments_carve_before_max_train_samples():
    common = {"dataset": "synthetic", "synthetic_num_train": 120, "synthetic_num_test": 20, "synthetic_num_labels": 30}
    carved = DataArguments(**common, num_val_points=30, validation_seed=4).load(splits=("test", "validation"))
    assert carved.num_queries("validation") == 30 and carved.num_queries("train") == 90
    plain = DataArguments(**common).load(splits=("test",))
    assert "validation" not in plain.splits
    all_train = set(plain.queries["train"]["uid"])
    val = set(carved.queries["validation"]["uid"])
    assert val <= all_train and not val & set(carved.queries["train"]["uid"])
    # max_train_samples cuts train after carving: the same validation queries
    quick = DataArguments(**common, num_val_points=30, validation_seed=4, max_train_samples=10).load(
        splits=("test", "validation")
    )
    assert set(quick.queries["validation"]["uid"]) == val and quick.num_queries("train") == 10
    other = DataArguments(**common, num_val_points=30, validation_seed=5).load(splits=("validation",))
    assert set(other.queries["validation"]["uid"]) != val
    with pytest.raises(UsageError, match="num_val_points"):
        DataArguments(num_val_points=0)
    with pytest.raises(UsageError, match="num_val_points=120"):
        DataArguments(**common, num_val_points=120).load()


def test_data_arguments_keep_an_existing_validation_split(tmp_path, caplog):
    folder = tmp_path / "tiny-hub"
    _tiny(validation=True).save(folder, format="hub")
    with caplog.at_level(logging.WARNING, logger="dexml_hf.script_args"):
        ds = DataArguments(dataset=str(folder), num_val_points=3).load(splits=("validation",))
    assert _uids(ds, "validation") == ["v0"] and ds.num_queries("train") == N_TRAIN
    assert "num_val_points=3 is ignored" in caplog.text
