"""Issue 14, data and convert: each bad input, built by hand in ``tmp_path``, gives a ``DataError`` that names the
file (and line / field where there is one), and ``convert_dataset`` leaves nothing behind (no DST, no temp)."""

from __future__ import annotations

import gzip
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.data import convert_dataset, load_xmc_dataset, read_csv, read_wiki500k, write_csv, write_lf
from dexml_hf.errors import DataError
from tests.data._helpers import assert_same, make_dataset


def _gz(records) -> bytes:
    return gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode(), mtime=0)


def _lf_files() -> dict[str, bytes]:
    return {
        "lbl.json.gz": _gz([{"uid": "a", "title": "A"}, {"uid": "b", "title": "B"}]),
        "trn.json.gz": _gz([{"uid": f"t{i}", "title": f"q{i}", "target_ind": [i % 2]} for i in range(50)]),
        "tst.json.gz": _gz([{"uid": "s0", "title": "s", "target_ind": [1]}]),
    }


def _npz_bytes(indptr, indices, data, shape, fmt="csr") -> bytes:
    """A ``save_npz``-shaped archive with arbitrary (possibly corrupt) arrays, built without scipy's checks."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        indptr=np.asarray(indptr, dtype=np.int32),
        indices=np.asarray(indices, dtype=np.int32),
        data=np.asarray(data, dtype=np.float32),
        shape=np.asarray(shape),
        format=np.asarray(fmt.encode()),
    )
    return buffer.getvalue()


def _pecos_files(trn_npz: bytes) -> dict[str, bytes]:
    good = io.BytesIO()
    sp.save_npz(good, sp.csr_matrix(np.array([[1.0, 0.0]], dtype=np.float32)))
    return {
        "raw/Y.txt": b"label a\nlabel b\n",
        "raw/trn_X.txt": b"x0\nx1\nx2\n",
        "raw/tst_X.txt": b"y0\n",
        "Y.trn.npz": trn_npz,
        "Y.tst.npz": good.getvalue(),
    }


def _sparse_files(trn: str, extra: dict[str, bytes] | None = None) -> dict[str, bytes]:
    return {"trn_X_Y.txt": trn.encode(), "tst_X_Y.txt": b"1 3\n0:1\n", **(extra or {})}


def _wiki_files(names: bytes) -> dict[str, bytes]:
    return {
        "Yf.txt": names,
        "trn.raw.json.gz": _gz([{"uid": "0", "title": "q", "target_ind": [0]}]),
        "tst.raw.json.gz": _gz([{"uid": "1", "title": "r", "target_ind": [1]}]),
    }


# case id -> (files, named file, line or None, field or None, message fragment)
CASES = {
    "pecos_indptr_not_monotonic": (
        _pecos_files(_npz_bytes([0, 2, 1, 3], [0, 1, 0], [1, 1, 1], (3, 2))),
        "Y.trn.npz",
        None,
        "indptr",
        "not monotonic",
    ),
    "pecos_indptr_inconsistent": (
        _pecos_files(_npz_bytes([0, 1, 2, 9], [0, 1, 0], [1, 1, 1], (3, 2))),
        "Y.trn.npz",
        None,
        "indptr",
        "ends at 9",
    ),
    "pecos_indptr_wrong_length": (
        _pecos_files(_npz_bytes([0, 1, 3], [0, 1, 0], [1, 1, 1], (3, 2))),
        "Y.trn.npz",
        None,
        "indptr",
        "expected rows + 1 = 4",
    ),
    "pecos_label_id_out_of_range": (
        _pecos_files(_npz_bytes([0, 1, 2, 3], [0, 1, 7], [1, 1, 1], (3, 2))),
        "Y.trn.npz",
        None,
        "indices",
        "row 2: label id 7 out of range [0, 2)",
    ),
    "pecos_negative_label_id": (
        _pecos_files(_npz_bytes([0, 1, 2, 3], [0, -1, 1], [1, 1, 1], (3, 2))),
        "Y.trn.npz",
        None,
        "indices",
        "row 1: label id -1",
    ),
    "pecos_nan_relevance": (
        _pecos_files(_npz_bytes([0, 1, 2, 3], [0, 1, 0], [1, np.nan, 1], (3, 2))),
        "Y.trn.npz",
        None,
        "data",
        "row 1: relevance nan",
    ),
    "pecos_negative_relevance": (
        _pecos_files(_npz_bytes([0, 1, 2, 3], [0, 1, 0], [1, 1, -2], (3, 2))),
        "Y.trn.npz",
        None,
        "data",
        "row 2: relevance -2.0",
    ),
    "pecos_shape_vs_text_files": (
        _pecos_files(_npz_bytes([0, 1, 2], [0, 1], [1, 1], (2, 2))),
        "Y.trn.npz",
        None,
        "shape",
        "3 lines in trn_X.txt",
    ),
    "pecos_absurd_shape": (
        _pecos_files(_npz_bytes([0, 1, 2, 3], [0, 1, 0], [1, 1, 1], (3, 99999999999))),
        "Y.trn.npz",
        None,
        "shape",
        "99999999999",
    ),
    "pecos_not_csr": (
        _pecos_files(_npz_bytes([0, 1, 2], [0, 1, 0], [1, 1, 1], (3, 2), fmt="csc")),
        "Y.trn.npz",
        None,
        "format",
        "expected a CSR",
    ),
    "pecos_not_an_npz": (_pecos_files(b"not a zip file"), "Y.trn.npz", None, None, "not a scipy sparse .npz"),
    "lf_truncated_gzip": (
        {**_lf_files(), "trn.json.gz": _lf_files()["trn.json.gz"][:-30]},
        "trn.json.gz",
        None,
        None,
        "truncated gzip",
    ),
    "lf_labels_not_gzip": (
        {**_lf_files(), "lbl.json.gz": b'{"uid": "a", "title": "A"}\n'},
        "lbl.json.gz",
        None,
        None,
        "not a valid gzip file",
    ),
    "sparse_negative_relevance": (_sparse_files("2 3\n0:1\n0:-1 2:1\n"), "trn_X_Y.txt", 3, "value", "-1.0"),
    "sparse_absurd_label_count": (_sparse_files("2 99999999999\n0:1\n1:1\n"), "trn_X_Y.txt", 1, "header L", "ids"),
    "sparse_label_count_vs_names": (
        _sparse_files("2 3\n0:1\n1:1\n", {"Yf.txt": b"0->a\n1->b\n"}),
        "trn_X_Y.txt",
        1,
        "header L",
        "Yf.txt names 2",
    ),
    "bow_absurd_label_count": (
        {"train.txt": b"1 4 99999999999\n0 1:1\n", "test.txt": b"1 4 3\n0 1:1\n"},
        "train.txt",
        1,
        "header L",
        "ids",
    ),
    "wiki500k_blank_line_inside_names": (_wiki_files(b"0->a\n\n2->c\n"), "Yf.txt", 2, None, "blank line"),
}


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_named_and_leaves_nothing(tmp_path, case):
    files, fname, line, field, fragment = CASES[case]
    src = tmp_path / "src"
    _write(src, files)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DataError) as info:
        convert_dataset(src, tmp_path / "out")
    message = str(info.value)
    assert fname in message, message
    if line is not None:
        assert re.search(rf"\b{re.escape(fname)}, line {line}\b", message), message
    if field is not None:
        assert f"field {field!r}" in message, message
    assert fragment in message, message
    # nothing written: no DST, no temp folder, the source untouched
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # the reader alone says the same
    with pytest.raises(DataError, match=re.escape(fname)):
        load_xmc_dataset(src)


def test_the_valid_baselines_read(tmp_path):
    """The inputs the table corrupts are valid before corruption, so each case fails for its own reason."""
    good = io.BytesIO()
    sp.save_npz(good, sp.csr_matrix(np.array([[1, 0], [0, 2], [1, 1]], dtype=np.float32)))
    for i, (files, fmt) in enumerate(
        [
            (_pecos_files(good.getvalue()), "pecos"),
            (_lf_files(), "lf"),
            (_sparse_files("2 3\n0:1\n0:0.5 2:1\n", {"Yf.txt": b"0->a\n1->b\n2->c\n"}), "sparse"),
            ({"train.txt": b"1 4 3\n0,2 1:1\n", "test.txt": b"1 4 3\n0 1:1\n"}, "bow"),
            (_wiki_files(b"0->a\n1->b\n"), "wiki500k"),
        ]
    ):
        _write(tmp_path / str(i), files)
        ds = load_xmc_dataset(tmp_path / str(i), format=fmt)
        assert ds.num_queries("train") >= 1
    pecos = load_xmc_dataset(tmp_path / "0")
    np.testing.assert_array_equal(pecos.label_matrices["train"].toarray(), [[1, 0], [0, 2], [1, 1]])
    sparse = load_xmc_dataset(tmp_path / "2")
    assert sparse.label_texts() == ["a", "b", "c"]
    np.testing.assert_array_equal(sparse.label_matrices["train"].toarray(), [[1, 0, 0], [0.5, 0, 1]])


@pytest.mark.parametrize("tail", [b"\n", b"\n\n", b"\n \n"])
def test_wiki500k_trailing_blank_lines_add_no_label(tmp_path, tail):
    _write(tmp_path, _wiki_files(b"0->Anarchism\n1->Autism" + tail))
    ds = read_wiki500k(tmp_path)
    assert ds.num_labels == 2
    assert ds.label_texts() == ["Anarchism", "Autism"]


@pytest.mark.parametrize("how", ["split_column", "test_fraction_0"])
def test_csv_with_only_train_rows_converts_and_loads_back_equal(tmp_path, how):
    rows = [("q1", "python, numpy"), ("q2", "numpy"), ("q3", "rust")]
    if how == "split_column":
        text = "title,content,tags,split\n" + "".join(f'{t},,"{g}",train\n' for t, g in rows)
        kwargs = {}
    else:
        text = "title,content,tags\n" + "".join(f'{t},,"{g}"\n' for t, g in rows)
        kwargs = {"test_fraction": 0.0}
    (tmp_path / "tags.csv").write_text(text, encoding="utf-8")
    ds = convert_dataset(tmp_path / "tags.csv", tmp_path / "hub", **kwargs)
    assert ds.splits == ["train"]  # no empty test split is made
    np.testing.assert_array_equal(ds.label_matrices["train"].toarray(), [[1, 1, 0], [1, 0, 0], [0, 0, 1]])
    assert ds.label_texts() == ["numpy", "python", "rust"]
    assert_same(ds, load_xmc_dataset(tmp_path / "hub", cache_dir=str(tmp_path / "cache")))
    # and through the csv writer (a folder) and back
    write_csv(ds, tmp_path / "csv_out")
    assert_same(ds, read_csv(tmp_path / "csv_out", name=ds.name), check_meta=False)


def test_csv_without_train_rows_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text('title,tags,split\nq,"a",test\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"t\.csv.*field 'split'.*no train rows"):
        convert_dataset(tmp_path / "t.csv", tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv"]


def test_hub_writer_refuses_an_empty_split_before_writing(tmp_path):
    ds = make_dataset(seed=4, sizes=(("train", 10), ("test", 0)), filters=False)
    with pytest.raises(DataError, match="'test'.*no queries"):
        ds.save_to_folder(tmp_path / "hub")
    assert list(tmp_path.iterdir()) == []


def _hub_folder(tmp_path: Path) -> Path:
    ds = make_dataset(seed=8, filters=True)
    ds.save_to_folder(tmp_path / "hub")
    return tmp_path / "hub"


@pytest.mark.parametrize(
    "remove,named",
    [
        ("queries/test-00000-of-00001.parquet", "queries/test-*.parquet"),
        ("queries/train-00000-of-00001.parquet", "queries/train-*.parquet"),
        ("labels", "labels/train-*.parquet"),
        ("labels/train-00000-of-00001.parquet", "labels/train-*.parquet"),
        ("README.md", "README.md"),
        ("filters", "filters/*.parquet"),
    ],
)
def test_hub_folder_missing_piece_is_named(tmp_path, remove, named):
    import shutil

    folder = _hub_folder(tmp_path)
    target = folder / remove
    assert target.exists(), sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(DataError) as info:
        load_xmc_dataset(folder, cache_dir=str(tmp_path / "cache"))
    assert str(folder) in str(info.value) and named in str(info.value), str(info.value)


def test_hub_folder_missing_shard_is_named(tmp_path):
    folder = _hub_folder(tmp_path)
    shard = folder / "queries" / "train-00000-of-00001.parquet"
    shard.rename(folder / "queries" / "train-00001-of-00002.parquet")  # shard 0 of 2 is missing
    with pytest.raises(DataError, match=r"missing queries/train-00000-of-00002\.parquet"):
        load_xmc_dataset(folder, cache_dir=str(tmp_path / "cache"))


def test_hub_folder_with_corrupt_metadata_is_named(tmp_path):
    folder = _hub_folder(tmp_path)
    (folder / "xmc.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match=r"xmc\.json.*not valid JSON"):
        load_xmc_dataset(folder, cache_dir=str(tmp_path / "cache"))


def test_lf_write_then_truncate_names_the_file(tmp_path):
    """A real LF folder written by the package, then cut short as an interrupted download would."""
    write_lf(make_dataset(seed=9), tmp_path / "lf")
    data = (tmp_path / "lf" / "tst.json.gz").read_bytes()
    (tmp_path / "lf" / "tst.json.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"tst\.json\.gz: truncated gzip"):
        load_xmc_dataset(tmp_path / "lf")
