"""One registry, one dispatcher: every format is read through ``load_xmc_dataset``; unknown options are refused;
``XMCDataset.head``; the propensity table and computation have one home (``evaluation.metrics``)."""

from __future__ import annotations

import numpy as np
import pytest

from dexml_hf.data import (
    FAMILIES,
    FORMATS,
    XMCDataset,
    available_formats,
    detect_format,
    get_format,
    load_xmc_dataset,
    read_lf,
    read_xmc,
    register_format,
    write_lf,
)
from dexml_hf.errors import DataError, UsageError
from dexml_hf.evaluation import metrics
from tests.data._helpers import assert_same, make_dataset

WRITABLE = ["hub", "lf", "wiki500k", "pecos", "sparse", "bow", "csv"]


def test_every_format_is_registered_with_reader_writer_and_detector():
    assert set(FORMATS) >= {"lf", "wiki500k", "pecos", "sparse", "bow", "csv", "movielens", "hub", "synthetic"}
    for name in FORMATS:
        spec = get_format(name)
        assert spec.name == name and callable(spec.reader)
        assert (spec.writer is not None) == (name in WRITABLE), name
        assert (spec.detector is not None) == (name != "synthetic"), name


@pytest.mark.parametrize("fmt", WRITABLE)
def test_dispatcher_reads_what_each_writer_wrote(tmp_path, fmt):
    """``load_xmc_dataset(path)`` detects the format and equals the format's own reader."""
    ds = make_dataset(seed=2, relevance=fmt != "bow", tag_names=fmt == "csv", filters=fmt in ("lf", "hub"))
    ds.save(tmp_path / "out", format=fmt)
    assert detect_format(tmp_path / "out") == fmt
    kwargs = {"cache_dir": str(tmp_path / "cache")} if fmt == "hub" else {}
    auto = load_xmc_dataset(tmp_path / "out", **kwargs)
    direct = get_format(fmt).reader(tmp_path / "out", **kwargs)
    assert_same(auto, direct)
    assert_same(auto, read_xmc(tmp_path / "out", format=fmt, **kwargs))


def test_dispatcher_loads_an_lf_raw_folder(tmp_path):
    """The case issue 13 reported: this used to fail with "BuilderConfig 'queries' not found"."""
    ds = make_dataset(seed=3)
    write_lf(ds, tmp_path / "LF-Tiny")
    loaded = load_xmc_dataset(str(tmp_path / "LF-Tiny"), name="tiny")
    assert_same(ds, loaded)
    assert_same(read_lf(tmp_path / "LF-Tiny", name="tiny"), loaded)


def test_dispatcher_synthetic_and_hub_id(tmp_path, hub_repo_id):
    synthetic = load_xmc_dataset("synthetic", num_labels=30, num_train=40, num_test=10)
    assert (synthetic.num_labels, synthetic.num_queries("train"), synthetic.num_queries("test")) == (30, 40, 10)
    ds = make_dataset(seed=6)
    ds.push_to_hub(hub_repo_id)
    assert_same(ds, load_xmc_dataset(hub_repo_id, cache_dir=str(tmp_path / "cache")))
    with pytest.raises(DataError, match="no such dataset repo"):
        load_xmc_dataset(hub_repo_id + "-missing", cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize(
    "fmt,kwargs,bad",
    [
        ("lf", {"seed": 1}, "seed"),
        ("lf", {"name": "x", "test_fraction": 0.5}, "test_fraction"),
        ("csv", {"columns": {}}, "columns"),
        ("hub", {"max_titles": 3}, "max_titles"),
        ("sparse", {"cache_dir": "/tmp"}, "cache_dir"),
    ],
)
def test_unknown_reader_options_are_refused(tmp_path, fmt, kwargs, bad):
    ds = make_dataset(seed=1, tag_names=True, relevance=False, filters=False)
    ds.save(tmp_path / "src", format=fmt)
    with pytest.raises(UsageError) as info:
        load_xmc_dataset(tmp_path / "src", **kwargs)
    assert f"format {fmt!r}" in str(info.value) and repr(bad) in str(info.value)


def test_unknown_options_refused_for_movielens_and_synthetic(shared_data):
    with pytest.raises(UsageError, match=r"format 'synthetic'.*'name'"):
        load_xmc_dataset("synthetic", name="x")
    with pytest.raises(UsageError, match=r"format 'movielens'.*'test_fraction'"):
        load_xmc_dataset(shared_data / "movielens-100k", test_fraction=0.1)


def test_dispatcher_errors(tmp_path):
    with pytest.raises(UsageError, match="unknown dataset format 'nope'"):
        load_xmc_dataset(tmp_path, format="nope")
    with pytest.raises(DataError, match="no such file or folder"):
        load_xmc_dataset(str(tmp_path / "missing" / "data.csv"))
    with pytest.raises(DataError, match="no known XMC layout"):
        load_xmc_dataset(tmp_path)
    write_lf(make_dataset(seed=1), tmp_path / "lf")
    with pytest.raises(UsageError, match="revision='main' applies to Hub datasets"):
        load_xmc_dataset(tmp_path / "lf", revision="main")
    with pytest.raises(UsageError, match="can be read but not written"):
        make_dataset(seed=1).save(tmp_path / "x", format="movielens")


def test_user_registered_format(tmp_path):
    seen = {}

    def reader(path, name=None):
        seen["path"] = path
        return make_dataset(seed=1, name=name or "mine")

    register_format("my-format", reader, None, lambda p: (p / "MINE").is_file())
    try:
        (tmp_path / "MINE").touch()
        assert "my-format" in available_formats()
        assert load_xmc_dataset(tmp_path, format="my-format", name="n").name == "n"
        assert load_xmc_dataset(tmp_path).name == "mine" and seen["path"] == tmp_path
    finally:
        from dexml_hf.data import registry

        registry._REGISTRY.pop("my-format")


# ---------------------------------------------------------------------------------------------- head
def test_head_cuts_queries_matrix_rows_and_filters_alike():
    ds = make_dataset(seed=7, sizes=(("train", 30), ("test", 10)))
    ds.filters["test"] = np.array([[0, 1], [2, 5], [4, 0], [9, 0]])
    cut = ds.head("test", 4)
    assert cut.num_queries("test") == 4 and cut.num_queries("train") == 30
    assert cut.queries["test"].to_dict() == ds.queries["test"].select(range(4)).to_dict()
    np.testing.assert_array_equal(cut.label_matrices["test"].toarray(), ds.label_matrices["test"].toarray()[:4])
    np.testing.assert_array_equal(cut.filters["test"], [[0, 1], [2, 5]])
    np.testing.assert_array_equal(cut.filters["train"], ds.filters["train"])
    assert cut.labels is ds.labels and cut.queries["train"] is ds.queries["train"]
    assert (cut.name, cut.family) == (ds.name, ds.family)
    assert ds.num_queries("test") == 10  # the original is untouched
    assert ds.head("test", None) is ds and ds.head("test", 10) is ds and ds.head("test", 99) is ds
    empty = ds.head("test", 0)
    assert empty.num_queries("test") == 0 and "test" not in empty.filters
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        ds.head("test", -1)
    with pytest.raises(ValueError, match="no split 'dev'"):
        ds.head("dev", 3)


# ---------------------------------------------------------------------------------------------- one home
def test_propensity_has_one_table_and_one_formula():
    assert FAMILIES is metrics.PROPENSITY_PRESETS
    for family in ("generic", "amazon", "wikipedia"):
        ds = make_dataset(seed=2, name=f"x-{family}")
        ds = XMCDataset(ds.queries, ds.labels, ds.label_matrices, ds.filters, family=family)
        freq = np.bincount(ds.label_matrices["train"].indices, minlength=ds.num_labels)
        expected = metrics.inv_propensity(freq, ds.num_queries("train"), family=family)
        np.testing.assert_array_equal(ds.inv_propensity(), expected)
        np.testing.assert_array_equal(
            ds.inv_propensity(A=0.3, B=2.0), metrics.inv_propensity(freq, ds.num_queries("train"), A=0.3, B=2.0)
        )
