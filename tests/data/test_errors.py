"""Malformed input: one case per error; the ValueError names the file, the line and the field."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.data import read_bow, read_csv, read_lf, read_pecos, read_sparse, read_wiki500k
from dexml_hf.errors import DataError


def _jl(*records) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in records)


def _q(i=0, ids=(0,), **extra):
    return {
        "uid": f"q{i}",
        "title": f"t{i}",
        "content": "c",
        "target_ind": list(ids),
        "target_rel": [1.0] * len(ids),
        **extra,
    }


LABELS = _jl(*[{"uid": str(i), "title": f"l{i}", "content": ""} for i in range(3)])
GOOD_Q = _jl(_q(0, (0, 1)), _q(1, (2,)), _q(2, ()))


def _lf(trn=GOOD_Q, tst=GOOD_Q, lbl=LABELS, **extra):
    return {"lbl.json.gz": lbl, "trn.json.gz": trn, "tst.json.gz": tst, **extra}


def _sparse(trn=b"2 3\n0:1 2:0.5\n1:1\n", tst=b"1 3\n0:1\n"):
    return {"trn_X_Y.txt": trn, "tst_X_Y.txt": tst}


def _bow(train=b"2 4 3\n0,2 1:0.5 3:1\n1 0:2\n", test=b"1 4 3\n 2:1\n"):
    return {"train.txt": train, "test.txt": test}


CSV_HEAD = b"title,content,tags\n"

# (case id, reader, files, file named in the message, line, field or None, message fragment)
CASES = [
    (
        "lf-bad-json",
        read_lf,
        _lf(trn=_jl(_q(0), b'{"uid": "q1", "title": ', _q(2))),
        "trn.json.gz",
        2,
        None,
        "invalid JSON",
    ),
    ("lf-not-object", read_lf, _lf(tst=_jl(_q(0), b"[1, 2]")), "tst.json.gz", 2, None, "expected a JSON object"),
    (
        "lf-missing-title",
        read_lf,
        _lf(trn=_jl(_q(0), _q(1), {"uid": "x", "target_ind": [0]})),
        "trn.json.gz",
        3,
        "title",
        "missing",
    ),
    (
        "lf-missing-target",
        read_lf,
        _lf(tst=_jl(_q(0), {"uid": "x", "title": "y"})),
        "tst.json.gz",
        2,
        "target_ind",
        "missing",
    ),
    (
        "lf-id-out-of-range",
        read_lf,
        _lf(trn=_jl(_q(0), _q(1, (1, 3)))),
        "trn.json.gz",
        2,
        "target_ind",
        "out of range",
    ),
    ("lf-negative-id", read_lf, _lf(trn=_jl(_q(0, (-1,)))), "trn.json.gz", 1, "target_ind", "out of range"),
    (
        "lf-non-numeric-id",
        read_lf,
        _lf(trn=_jl(_q(0), {**_q(1), "target_ind": ["a"]})),
        "trn.json.gz",
        2,
        "target_ind",
        "list of integers",
    ),
    (
        "lf-rel-length",
        read_lf,
        _lf(trn=_jl({**_q(0, (0, 1)), "target_rel": [1.0]})),
        "trn.json.gz",
        1,
        "target_rel",
        "1 values for 2 label ids",
    ),
    (
        "lf-rel-non-numeric",
        read_lf,
        _lf(trn=_jl(_q(0), {**_q(1), "target_rel": ["x"]})),
        "trn.json.gz",
        2,
        "target_rel",
        "list of numbers",
    ),
    (
        "lf-title-not-string",
        read_lf,
        _lf(lbl=_jl({"uid": "0", "title": 5})),
        "lbl.json.gz",
        1,
        "title",
        "expected a string",
    ),
    (
        "lf-non-utf8",
        read_lf,
        _lf(trn=_jl(_q(0)) + b'{"uid": "q1", "title": "caf\xe9", "target_ind": [0]}\n'),
        "trn.json.gz",
        2,
        None,
        "UTF-8",
    ),
    (
        "lf-filter-ragged",
        read_lf,
        _lf(**{"filter_labels_test.txt": b"0 1\n1 2 3\n"}),
        "filter_labels_test.txt",
        2,
        None,
        "expected 2 fields",
    ),
    (
        "lf-filter-non-numeric",
        read_lf,
        _lf(**{"filter_labels_test.txt": b"0 x\n"}),
        "filter_labels_test.txt",
        1,
        "label_idx",
        "expected an integer",
    ),
    (
        "lf-filter-range",
        read_lf,
        _lf(**{"filter_labels_train.txt": b"0 1\n5 0\n"}),
        "filter_labels_train.txt",
        2,
        "query_idx",
        "out of range",
    ),
    (
        "wiki-missing-target",
        read_wiki500k,
        {
            "Yf.txt": b"a->A\nb->B\nc->C\n",
            "trn.raw.json.gz": GOOD_Q,
            "tst.raw.json.gz": _jl({"uid": "1", "title": "t"}),
        },
        "tst.raw.json.gz",
        1,
        "target_ind",
        "missing",
    ),
    ("sparse-header-fields", read_sparse, _sparse(trn=b"2\n0:1\n1:1\n"), "trn_X_Y.txt", 1, "header", "expected 2"),
    (
        "sparse-header-non-numeric",
        read_sparse,
        _sparse(tst=b"1 L\n0:1\n"),
        "tst_X_Y.txt",
        1,
        "header L",
        "expected an integer",
    ),
    (
        "sparse-too-few-lines",
        read_sparse,
        _sparse(trn=b"3 3\n0:1\n1:1\n"),
        "trn_X_Y.txt",
        1,
        "header N",
        "announces 3 points, the file has 2",
    ),
    ("sparse-too-many-lines", read_sparse, _sparse(trn=b"1 3\n0:1\n1:1\n"), "trn_X_Y.txt", 3, None, "more points"),
    ("sparse-id-range", read_sparse, _sparse(trn=b"2 3\n0:1\n3:1\n"), "trn_X_Y.txt", 3, "label", "out of range"),
    (
        "sparse-non-numeric-value",
        read_sparse,
        _sparse(trn=b"2 3\n0:abc\n1:1\n"),
        "trn_X_Y.txt",
        2,
        "value",
        "expected a number",
    ),
    ("sparse-no-colon", read_sparse, _sparse(tst=b"1 3\n0 1\n"), "tst_X_Y.txt", 2, "label", "expected 'idx:val'"),
    (
        "sparse-label-count-differs",
        read_sparse,
        _sparse(tst=b"1 4\n0:1\n"),
        "tst_X_Y.txt",
        1,
        "header L",
        "another split has 3",
    ),
    ("sparse-non-utf8", read_sparse, _sparse(trn=b"2 3\n0:1\n\xff\n"), "trn_X_Y.txt", 3, None, "UTF-8"),
    ("bow-header", read_bow, _bow(train=b"2 4\n0 1:1\n1 1:1\n"), "train.txt", 1, "header", "expected 3"),
    (
        "bow-non-numeric-label",
        read_bow,
        _bow(train=b"2 4 3\n0,a 1:0.5\n1 0:2\n"),
        "train.txt",
        2,
        "label",
        "expected an integer",
    ),
    ("bow-label-range", read_bow, _bow(test=b"1 4 3\n7 1:1\n"), "test.txt", 2, "label", "out of range"),
    ("bow-feature-range", read_bow, _bow(train=b"2 4 3\n0 9:0.5\n1 0:2\n"), "train.txt", 2, "feature", "out of range"),
    (
        "bow-feature-value",
        read_bow,
        _bow(train=b"2 4 3\n0 1:x\n1 0:2\n"),
        "train.txt",
        2,
        "feature value",
        "expected a number",
    ),
    ("csv-missing-column", read_csv, {"d.csv": b"title,content\na,b\n"}, "d.csv", 1, "tags", "missing column"),
    (
        "csv-ragged",
        read_csv,
        {"d.csv": CSV_HEAD + b'a,b,"x, y"\nc,d\n'},
        "d.csv",
        3,
        None,
        "2 fields, the header has 3",
    ),
    (
        "csv-ragged-after-multiline",
        read_csv,
        {"d.csv": CSV_HEAD + b'a,"b\nb2",x\nc,d,e,f\n'},
        "d.csv",
        4,
        None,
        "4 fields",
    ),
    ("csv-non-utf8", read_csv, {"d.csv": CSV_HEAD + b"a,b,x\nc,\xe9t\xe9,y\n"}, "d.csv", 3, None, "UTF-8"),
    (
        "csv-bad-split",
        read_csv,
        {"d.csv": b"title,content,tags,split\na,b,x,train\nc,d,y,dev\n"},
        "d.csv",
        3,
        "split",
        "expected train/test/validation",
    ),
]


def _write(folder, files):
    folder.mkdir()
    for name, data in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".gz"):
            with gzip.open(path, "wb") as f:
                f.write(data)
        else:
            path.write_bytes(data)


@pytest.mark.parametrize("case,reader,files,fname,line,field,fragment", CASES, ids=[c[0] for c in CASES])
def test_malformed_input(tmp_path, case, reader, files, fname, line, field, fragment):
    folder = tmp_path / "src"
    _write(folder, files)
    with pytest.raises(ValueError) as info:
        reader(folder / fname if fname.endswith(".csv") else folder)
    message = str(info.value)
    assert fname in message, message
    assert f"line {line}" in message.split(":")[0] + message, message
    assert re.search(rf"\b{fname}, line {line}\b", message), message
    if field is not None:
        assert f"field {field!r}" in message, message
    assert fragment in message, message


def test_good_inputs_of_the_table_read(tmp_path):
    """The baselines the table corrupts are themselves valid (so each case fails for its own reason)."""
    for i, (reader, files) in enumerate([(read_lf, _lf()), (read_sparse, _sparse()), (read_bow, _bow())]):
        _write(tmp_path / f"ok{i}", files)
        ds = reader(tmp_path / f"ok{i}")
        assert ds.num_queries("train") in (2, 3)
    ds = read_bow(tmp_path / "ok2")
    np.testing.assert_array_equal(ds.label_matrices["train"].toarray(), [[1, 0, 1], [0, 1, 0]])
    np.testing.assert_array_equal(ds.label_matrices["test"].toarray(), [[0, 0, 0]])


def test_pecos_shape_mismatch(tmp_path):
    folder = tmp_path / "pecos"
    (folder / "raw").mkdir(parents=True)
    (folder / "raw" / "Y.txt").write_text("a\nb\n", encoding="utf-8")
    for stem in ("trn", "tst"):
        (folder / "raw" / f"{stem}_X.txt").write_text("x\ny\nz\n", encoding="utf-8")
        sp.save_npz(folder / f"Y.{stem}.npz", sp.csr_matrix(np.ones((2, 2))))
    with pytest.raises(ValueError, match=r"Y\.trn\.npz, field 'shape': \(2, 2\) does not match 3 lines in trn_X\.txt"):
        read_pecos(folder)


def test_missing_files_are_named(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="lbl.json.gz"):
        read_lf(tmp_path / "empty")
