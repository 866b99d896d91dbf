"""Every format round-trips (write -> read -> equal to what the format keeps); CLI convert; atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.cli import main
from dexml_hf.data import (
    XMCDataset,
    detect_format,
    load_xmc_dataset,
    read_bow,
    read_csv,
    read_lf,
    read_pecos,
    read_sparse,
    read_wiki500k,
    text_table,
    write_bow,
    write_csv,
    write_lf,
    write_pecos,
    write_sparse,
    write_wiki500k,
)
from tests.data._helpers import assert_same, make_dataset


def _index_uids(n):
    return [str(i) for i in range(n)]


def _projected(ds: XMCDataset, *, queries, labels, binary=False, filters=True, family=None, name=None):
    """What a lossy format keeps of ``ds``, built independently of the readers."""
    qs = {}
    for split in ds.splits:
        t = ds.queries[split].to_dict()
        n = len(t["uid"])
        if queries == "full":
            qs[split] = text_table(**t)
        elif queries == "joined":
            joined = [f"{a} {b}".strip() if b else a for a, b in zip(t["title"], t["content"])]
            qs[split] = text_table(uid=_index_uids(n), title=joined)
        else:
            qs[split] = text_table(uid=_index_uids(n), n=n)
    lt = ds.labels.to_dict()
    if labels == "full":
        lab = text_table(**lt)
    elif labels == "names":
        lab = text_table(uid=lt["uid"], title=lt["title"])
    elif labels == "texts":
        lab = text_table(uid=_index_uids(len(lt["uid"])), title=lt["title"])
    else:
        lab = text_table(uid=_index_uids(len(lt["uid"])), title=_index_uids(len(lt["uid"])))
    mats = {}
    for split, m in ds.label_matrices.items():
        m = m.copy()
        if binary:
            m.data[:] = 1.0
        mats[split] = m
    return XMCDataset(qs, lab, mats, ds.filters if filters else {}, family=family or ds.family, name=name or ds.name)


CASES = [
    ("lf", write_lf, read_lf, dict(queries="full", labels="full")),
    (
        "wiki500k",
        write_wiki500k,
        read_wiki500k,
        dict(queries="full", labels="names", filters=False, family="wikipedia"),
    ),
    ("pecos", write_pecos, read_pecos, dict(queries="joined", labels="texts", filters=False)),
    ("sparse", write_sparse, read_sparse, dict(queries="none", labels="ids", filters=False)),
    ("bow", write_bow, read_bow, dict(queries="none", labels="ids", filters=False, binary=True)),
]


@pytest.mark.parametrize("fmt,writer,reader,keeps", CASES, ids=[c[0] for c in CASES])
def test_round_trip(tmp_path, fmt, writer, reader, keeps):
    ds = make_dataset(seed=1)
    out = tmp_path / "ds"
    writer(ds, out)
    assert detect_format(out) == fmt
    back = reader(out, name="tiny")
    assert_same(_projected(ds, **keeps), back)
    # and a second trip is exact
    writer(back, tmp_path / "again")
    assert_same(back, reader(tmp_path / "again", name="tiny"))


def test_round_trip_hub_folder(tmp_path):
    ds = make_dataset(seed=2)
    ds.save_to_folder(tmp_path / "hub")
    assert detect_format(tmp_path / "hub") == "hub"
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == [
        ".dexml_hf_dataset.json",
        "README.md",
        "filters",
        "labels",
        "queries",
        "xmc.json",
    ]
    back = load_xmc_dataset(tmp_path / "hub", cache_dir=str(tmp_path / "cache"))
    assert_same(ds, back)


def test_same_named_local_folders_are_not_confused(tmp_path, monkeypatch):
    # datasets keys a local folder's cache by base name + mtimes: two folders "ds" written in one second collided
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    small, large = make_dataset(seed=3, n_labels=12), make_dataset(seed=4, n_labels=40)
    small.save_to_folder(tmp_path / "a" / "ds")
    large.save_to_folder(tmp_path / "b" / "ds")
    assert_same(small, load_xmc_dataset(tmp_path / "a" / "ds"))
    assert_same(large, load_xmc_dataset(tmp_path / "b" / "ds"))


def test_round_trip_csv(tmp_path):
    ds = make_dataset(seed=3, relevance=False, tag_names=True, filters=False, sizes=(("train", 30), ("test", 10)))
    # csv keeps only tags that occur: drop the label never used anywhere, if any, from the expectation
    used = np.flatnonzero(sum(np.bincount(m.indices, minlength=ds.num_labels) for m in ds.label_matrices.values()))
    expected = XMCDataset(
        ds.queries,
        text_table(uid=[ds.labels["title"][i] for i in used], title=[ds.labels["title"][i] for i in used]),
        {s: m[:, used] for s, m in ds.label_matrices.items()},
        name="data",
    )
    write_csv(ds, tmp_path / "data.csv")
    assert detect_format(tmp_path / "data.csv") == "csv"
    back = read_csv(tmp_path / "data.csv")
    assert_same(expected, back)


def test_csv_split_is_seeded_and_complete(tmp_path):
    path = tmp_path / "q.csv"
    rows = ["title,content,tags"] + [f'q{i},"body, {i}\nsecond line","t{i % 3}, t{i % 5}"' for i in range(50)]
    rows.append("no tags,body,")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    a = read_csv(path, seed=7, test_fraction=0.3)
    b = read_csv(path, seed=7, test_fraction=0.3)
    c = read_csv(path, seed=8, test_fraction=0.3)
    assert list(a.queries["test"]["uid"]) == list(b.queries["test"]["uid"]) != list(c.queries["test"]["uid"])
    assert (a.num_queries("train"), a.num_queries("test")) == (36, 15)
    assert sorted(list(a.queries["train"]["uid"]) + list(a.queries["test"]["uid"]), key=int) == [
        str(i) for i in range(51)
    ]
    assert a.label_texts() == sorted({f"t{i}" for i in range(5)})
    # row 3 (uid "3") has tags t0, t3; multi-line content survives
    split = "train" if "3" in a.queries["train"]["uid"] else "test"
    row = list(a.queries[split]["uid"]).index("3")
    m = a.label_matrices[split]
    assert [a.label_texts()[j] for j in m.indices[m.indptr[row] : m.indptr[row + 1]]] == ["t0", "t3"]
    assert a.queries[split]["content"][row] == "body, 3\nsecond line"
    assert (
        a.summary()["splits"]["train"]["queries_without_labels"]
        + a.summary()["splits"]["test"]["queries_without_labels"]
        == 1
    )


def test_stackexchange_csv(shared_data):
    ds = read_csv(shared_data / "stackexchange" / "cooking.csv", seed=0, test_fraction=0.2)
    assert ds.num_queries("train") + ds.num_queries("test") == 2000
    assert ds.num_queries("test") == 400
    # independent count of distinct tags with the csv module
    import csv

    with open(shared_data / "stackexchange" / "cooking.csv", encoding="utf-8", newline="") as f:
        tags = {t.strip() for r in csv.DictReader(f) for t in r["tags"].split(",") if t.strip()}
    assert ds.num_labels == len(tags)


def test_labels_kept_and_reported(tmp_path):
    ds = make_dataset(seed=4)
    s = ds.summary()
    assert s["labels_unseen_in_train"] >= 1  # the generator never puts the last label in train
    assert s["splits"]["train"]["queries_without_labels"] == len(range(3, 30, 7))
    write_lf(ds, tmp_path / "lf")
    back = read_lf(tmp_path / "lf")
    assert back.num_labels == ds.num_labels and back.num_queries("train") == 30


def test_duplicate_ids_keep_max_relevance_and_zero_dropped(tmp_path):
    folder = tmp_path / "lf"
    folder.mkdir()
    import gzip
    import json

    with gzip.open(folder / "lbl.json.gz", "wt") as f:
        for i in range(4):
            f.write(json.dumps({"uid": str(i), "title": f"l{i}"}) + "\n")
    for stem in ("trn", "tst"):
        with gzip.open(folder / f"{stem}.json.gz", "wt") as f:
            f.write(json.dumps({"uid": "a", "title": "x", "target_ind": [2, 0, 2], "target_rel": [1, 3, 5]}) + "\n")
            f.write(json.dumps({"uid": "b", "title": "y", "target_ind": [1, 3], "target_rel": [0, 2]}) + "\n")
            f.write(json.dumps({"uid": "c", "title": "z", "target_ind": [3]}) + "\n")
    ds = read_lf(folder)
    dense = ds.label_matrices["train"].toarray()
    np.testing.assert_array_equal(dense, [[3, 0, 5, 0], [0, 0, 0, 2], [0, 0, 0, 1]])
    assert list(ds.queries["train"]["content"]) == ["", "", ""]


def test_writer_failure_leaves_nothing(tmp_path):
    ds = make_dataset(seed=6)
    ds.label_matrices["test"] = sp.csr_matrix((1, 1))  # corrupt after construction: writing breaks midway
    with pytest.raises(Exception):  # noqa: B017 - any failure will do, the point is what is left on disk
        write_lf(ds, tmp_path / "lf")
    assert list(tmp_path.iterdir()) == []  # no DST, no temp folder (the CLI/convert cases: test_convert.py)


def test_column_mapping_for_target_ind_datasets(tmp_path):
    """A foreign parquet repo (AmazonCat-13K style: text + target_ind/target_rel, no labels config)."""
    import datasets

    folder = tmp_path / "foreign"
    (folder / "data").mkdir(parents=True)
    rows = {
        "train": {"text": ["a", "b", "c"], "target_ind": [[0, 4], [], [2]], "target_rel": [[1.0, 2.0], [], [1.0]]},
        "test": {"text": ["d"], "target_ind": [[3]], "target_rel": [[1.0]]},
    }
    for split, cols in rows.items():
        datasets.Dataset.from_dict(cols).to_parquet(str(folder / "data" / f"{split}-00000-of-00001.parquet"))
    ds = load_xmc_dataset(
        folder,
        queries_config=None,
        labels_config=None,
        columns={"title": "text", "label_ids": "target_ind", "label_rel": "target_rel"},
        cache_dir=str(tmp_path / "cache"),
        name="AmazonCat-13K",
    )
    assert ds.family == "amazon" and ds.num_labels == 5
    assert ds.query_texts("train") == ["a", "b", "c"]
    assert ds.label_texts() == ["0", "1", "2", "3", "4"]
    np.testing.assert_array_equal(ds.label_matrices["train"].toarray(), [[1, 0, 0, 0, 2], [0] * 5, [0, 0, 1, 0, 0]])


def test_cli_convert_push_to_hub(tmp_path, hub_repo_id):
    ds = make_dataset(seed=12, name="LF-Wikipedia-tiny")
    write_lf(ds, tmp_path / "lf")
    argv = ["convert", str(tmp_path / "lf"), str(tmp_path / "out"), "--name", "LF-Wikipedia-tiny"]
    assert main([*argv, "--push_to_hub", hub_repo_id]) == 0
    back = load_xmc_dataset(hub_repo_id, cache_dir=str(tmp_path / "cache"))
    assert back.family == "wikipedia"
    assert_same(ds, back)
