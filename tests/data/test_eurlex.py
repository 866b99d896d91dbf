"""The real EURLEX57K (LF raw layout in ../shared/data): counts, label matrix, Hub layout round trips."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from dexml_hf.data import load_xmc_dataset, read_lf, read_xmc
from tests.data._helpers import assert_same, make_dataset

SPLIT_FILES = {"train": "trn", "validation": "val", "test": "tst"}


@pytest.fixture(scope="module")
def eurlex(shared_data):
    return read_lf(shared_data / "eurlex57k")


def test_counts_match_stats_json(eurlex, shared_data):
    stats = json.loads((shared_data / "eurlex57k" / "stats.json").read_text())
    assert eurlex.num_labels == stats["labels"] == 4271
    for split, stem in SPLIT_FILES.items():
        matrix = eurlex.label_matrices[split]
        assert eurlex.num_queries(split) == matrix.shape[0] == stats[stem]["points"]
        assert round(matrix.nnz / matrix.shape[0], 2) == stats[stem]["avg_labels"]
    summary = eurlex.summary()
    assert summary["labels_unseen_in_train"] == 163  # as ../shared/data/README.md states
    assert eurlex.family == "generic" and eurlex.name == "eurlex57k"


@pytest.mark.parametrize("split", ["train", "test"])
def test_label_matrix_matches_independent_parse(eurlex, shared_data, split):
    triples, uids, titles = set(), [], []
    with gzip.open(shared_data / "eurlex57k" / f"{SPLIT_FILES[split]}.json.gz", "rt", encoding="utf-8") as f:
        for row, line in enumerate(f):
            record = json.loads(line)
            uids.append(record["uid"])
            titles.append(record["title"])
            rel = record.get("target_rel") or [1.0] * len(record["target_ind"])
            triples.update((row, int(c), float(r)) for c, r in zip(record["target_ind"], rel))
    coo = eurlex.label_matrices[split].tocoo()
    got = set(zip(coo.row.tolist(), coo.col.tolist(), coo.data.astype(float).tolist()))
    assert got == triples
    assert list(eurlex.queries[split]["uid"]) == uids
    assert eurlex.query_texts(split, "title") == titles


def test_label_texts_match_lbl_file(eurlex, shared_data):
    with gzip.open(shared_data / "eurlex57k" / "lbl.json.gz", "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert eurlex.label_texts("title") == [r["title"] for r in records]
    assert eurlex.label_texts("title_alt")[1] == "State trading; State-trading countries"


def test_training_view_on_eurlex(eurlex):
    view = eurlex.training_view(epoch=2, seed=5, query_text="title_content", max_chars=300)
    labels = np.asarray(view["label"])
    assert len(view) == 45000
    matrix = eurlex.label_matrices["train"]
    assert (np.asarray(matrix[labels[:, 0], labels[:, 1]]).ravel() > 0).all()
    assert max(len(t) for t in view["query"][:1000]) <= 300


def test_hub_layout_folder_round_trip(eurlex, tmp_path):
    eurlex.save_to_folder(tmp_path / "eurlex")
    back = read_xmc(tmp_path / "eurlex", cache_dir=str(tmp_path / "cache"))
    assert_same(eurlex, back)


def test_push_small_dataset_with_filters_to_hub(hub_repo_id, tmp_path):
    ds = make_dataset(seed=9, name="LF-AmazonTitles-tiny")
    ds.push_to_hub(hub_repo_id)
    back = load_xmc_dataset(hub_repo_id, cache_dir=str(tmp_path / "cache"))
    assert_same(ds, back)
    assert back.family == "amazon"


def test_push_eurlex_to_hub_and_load_back(eurlex, hub_repo_id, tmp_path):
    eurlex.push_to_hub(hub_repo_id)
    back = load_xmc_dataset(hub_repo_id, cache_dir=str(tmp_path / "cache"))
    assert_same(eurlex, back)
    # the loaded query tables are memory-mapped Arrow from the datasets cache, not in-memory copies
    assert back.queries["train"].cache_files
