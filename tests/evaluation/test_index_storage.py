"""The index folder on disk: labels in a memory-mapped Arrow file (old JSON folders still load), one atomic save
(a kill leaves the old index or the new one; a killed save's leftovers go at the next save), the permissions of
a normal file, and the index inside a model repo on the (loopback) Hub."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from dexml_hf.cli import main
from dexml_hf.errors import DataError, UsageError
from dexml_hf.index import LabelIndex
from dexml_hf.io import ArrowColumn

ROOT = Path(__file__).resolve().parents[2]
LABELS = ["python", "rust programming", "sql databases", "linear algebra", "cooking pasta", "tax law", "gardening"]


def _index(seed=0, n=7):
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=1)
    return LabelIndex(emb, label_ids=[f"L{i}" for i in range(n)], texts=[f"label {seed}-{i}" for i in range(n)])


def _same(a: LabelIndex, b: LabelIndex):
    assert list(a.label_ids) == list(b.label_ids) and list(a.texts) == list(b.texts)
    assert torch.equal(a.embeddings, b.embeddings)


def test_a_folder_of_the_old_json_format_still_loads(tmp_path):
    from safetensors.torch import save_file

    emb = torch.nn.functional.normalize(torch.randn(7, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    old = tmp_path / "old"
    old.mkdir()
    save_file({"embeddings": emb}, str(old / "embeddings.safetensors"))
    config = {
        "format_version": 2,
        "n_labels": 7,
        "dim": 8,
        "dtype": "float32",
        "normalized": True,
        "model_name": "m",
        "query_prompt_name": None,
        "label_prompt_name": None,
        "label_ids": list(range(10, 17)),
        "texts": LABELS,
        "memory": None,
    }
    (old / "label_index.json").write_text(json.dumps(config))
    index = LabelIndex.load(old)
    assert index.texts == LABELS and index.label_ids == list(range(10, 17)) and index.normalized
    q = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    expected = np.argsort(-(torch.nn.functional.normalize(q, dim=1) @ emb.T).numpy(), axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(index.search(q, 4)[1], expected)
    index.save(old)  # rewritten in the new format, in place
    assert "texts" not in json.loads((old / "label_index.json").read_text())
    again = LabelIndex.load(old)
    assert isinstance(again.texts, ArrowColumn) and again.texts == LABELS and again.label_ids == list(range(10, 17))


def test_a_damaged_labels_file_is_named(tmp_path):
    folder = _index().save(tmp_path / "idx")
    (folder / "labels.feather").write_bytes(b"not arrow")
    with pytest.raises(DataError, match="labels.feather: not a readable Arrow IPC file"):
        LabelIndex.load(folder)


def _saved_with_memory(tmp_path):
    from dexml_hf.retrieval import RetrievalMemory

    g = torch.Generator().manual_seed(2)
    labels = torch.nn.functional.normalize(torch.randn(7, 8, generator=g), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=1)
    memory = RetrievalMemory(queries, np.eye(5, 7, dtype=np.float32), lam=0.5, k=2, temperature=0.1)
    return LabelIndex(labels, normalized=True, memory=memory).save(tmp_path / "idx")


def _edit_config(folder: Path, edit) -> None:
    config = json.loads((folder / "label_index.json").read_text())
    edit(config)
    (folder / "label_index.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c: c["memory"].pop("n_queries"), "'n_queries' is missing"),
        (lambda c: c["memory"].pop("lam"), "'lam' is missing"),
        (lambda c: c["memory"].update(k="3"), "'k' must be int"),
        (lambda c: c["memory"].update(temperature=True), "'temperature' must be int or float"),
        (lambda c: c.update(n_labels=7.0), "'n_labels' must be int"),
        (lambda c: c.update(memory=[1]), "'memory' must be dict"),
    ],
)
def test_a_malformed_config_field_is_named(tmp_path, edit, needle):
    folder = _saved_with_memory(tmp_path)
    _edit_config(folder, edit)
    with pytest.raises(DataError, match=needle) as err:
        LabelIndex.load(folder)
    assert "label_index.json" in str(err.value)


@pytest.mark.parametrize(
    "entry,field,name", [(None, "labels_file", "labels.feather"), ("memory", "file", "memory.safetensors")]
)
@pytest.mark.parametrize("escape", ["../outside", "{outside}", "sub/{name}", ".."])
def test_file_names_in_the_config_cannot_leave_the_folder(tmp_path, entry, field, name, escape):
    """A downloaded folder's config must not make the loader read a file elsewhere, even one that exists."""
    folder = _saved_with_memory(tmp_path)
    outside = tmp_path / "outside"
    (folder / name).rename(outside)
    (folder / "sub").mkdir()
    (folder / "sub" / name).symlink_to(outside)
    value = escape.format(outside=outside, name=name)
    _edit_config(folder, lambda c: (c[entry] if entry else c).update({field: value}))
    with pytest.raises(DataError, match=f"'{field}'.*must be the name of a file inside"):
        LabelIndex.load(folder)


def test_labels_are_memory_mapped_not_read_into_the_heap(tmp_path):
    n = 200_000
    texts = [f"a fairly long label text number {i:08d} for the arrow file" for i in range(n)]
    LabelIndex(torch.zeros(n, 2, dtype=torch.float16), label_ids=list(range(n)), texts=texts, dtype="float16").save(
        tmp_path / "big"
    )
    size = (tmp_path / "big" / "labels.feather").stat().st_size
    assert size > 12_000_000
    before = pa.total_allocated_bytes()
    index = LabelIndex.load(tmp_path / "big")
    assert pa.total_allocated_bytes() - before < size / 20  # the column buffers are the file's pages
    assert index.texts[123_456] == texts[123_456] and index.label_ids[-1] == n - 1 and len(index.texts) == n
    assert index.texts[5:8] == texts[5:8]


def test_files_get_the_permissions_of_a_normal_file(tmp_path):
    for umask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        old = os.umask(umask)
        try:
            folder = _index().save(tmp_path / f"idx{umask:o}")
        finally:
            os.umask(old)
        assert (folder.stat().st_mode & 0o777) == dir_mode
        files = list(folder.iterdir())
        assert {f.name for f in files} == {"embeddings.safetensors", "labels.feather", "label_index.json"}
        assert all((f.stat().st_mode & 0o777) == file_mode for f in files), [oct(f.stat().st_mode) for f in files]


def test_save_replaces_an_index_and_refuses_other_folders(tmp_path, monkeypatch):
    target = tmp_path / "idx"
    _index(0).save(target)
    _index(1, n=5).save(target)
    _same(LabelIndex.load(target), _index(1, n=5))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError, match="did not write; refusing"):
        _index().save(other)
    assert (other / "notes.txt").read_text() == "keep me" and len(list(tmp_path.iterdir())) == 2

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("dexml_hf.index.write_arrow_columns", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _index(2).save(target)
    _same(LabelIndex.load(target), _index(1, n=5))  # the old index, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx", "mine"]  # no temp folder left


_KILLED_SAVE = r"""
import sys, time, torch
from pathlib import Path
import dexml_hf.io as io
from dexml_hf.index import LabelIndex

target, moment = sys.argv[1], sys.argv[2]
emb = torch.nn.functional.normalize(torch.randn(5, 8, generator=torch.Generator().manual_seed(1)), dim=1)
new = LabelIndex(emb, label_ids=[f"L{i}" for i in range(5)], texts=[f"label 1-{i}" for i in range(5)])

def stall(*args, **kwargs):
    Path(target + ".stalled").write_text("x")
    time.sleep(60)

if moment == "before_swap":
    io._fix_permissions = stall  # the last step before the rename
else:
    io.shutil.rmtree = stall  # right after the swap, before the old folder is deleted
new.save(target)
"""


@pytest.mark.parametrize("moment", ["before_swap", "after_swap"])
def test_a_killed_save_leaves_the_old_or_the_new_index_and_the_next_save_cleans_up(tmp_path, moment):
    target = tmp_path / "idx"
    _index(0).save(target)
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SAVE, str(target), moment],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.time() + 120
        while not Path(f"{target}.stalled").exists():
            assert proc.poll() is None and time.time() < deadline, "the child save never reached the kill point"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    Path(f"{target}.stalled").unlink()
    _same(LabelIndex.load(target), _index(0) if moment == "before_swap" else _index(1, n=5))
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".idx.dexml_hf-")]
    assert len(leftovers) == 1  # the killed save's temp folder (or the swapped-out old index)
    decoy = tmp_path / ".idx.dexml_hf-tmp-not-ours"
    decoy.mkdir()
    _index(2).save(target)
    assert not leftovers[0].exists() and decoy.exists()  # only folders named like ours, of a dead process
    _same(LabelIndex.load(target), _index(2))


def test_the_index_inside_a_model_repo_loads_by_subfolder(tmp_path, hub_repo_id, hf_cache):
    from huggingface_hub import HfApi

    index = _index(3)
    HfApi().create_repo(hub_repo_id)
    HfApi().upload_file(path_or_fileobj=b"not an index file", path_in_repo="model.safetensors", repo_id=hub_repo_id)
    index.push_to_hub(hub_repo_id, path_in_repo="label_index")
    for loaded in (
        LabelIndex.load(hub_repo_id, subfolder="label_index"),
        LabelIndex.load(f"{hub_repo_id}/label_index"),
    ):
        _same(loaded, index)
    downloaded = {p.name for p in hf_cache.rglob("*") if p.is_file() and "snapshots" in p.parts}
    assert downloaded == {"embeddings.safetensors", "labels.feather", "label_index.json"}
    with pytest.raises(FileNotFoundError, match="folder 'nope'"):
        LabelIndex.load(hub_repo_id, subfolder="nope")
    with pytest.raises(FileNotFoundError, match="neither a LabelIndex folder nor a Hub repo"):
        LabelIndex.load("dexml-tests/no-such-repo-x1/label_index")


def test_evaluate_index_from_a_model_repo_subfolder(tiny_model_path, tiny_model, tmp_path, hub_repo_id, hf_cache):
    synthetic = pytest.importorskip("dexml_hf.data.synthetic")
    from dexml_hf.data import save_to_folder

    ds = synthetic.generate_synthetic_xmc(num_labels=30, num_train=60, num_test=20, seed=0)
    save_to_folder(ds, tmp_path / "ds-index-hub")
    index = LabelIndex.from_texts(tiny_model, ds.label_texts(), label_ids=ds.labels["uid"])
    index.push_to_hub(hub_repo_id, path_in_repo="label_index")
    argv = [
        "evaluate",
        "--model",
        str(tiny_model_path),
        "--dataset",
        str(tmp_path / "ds-index-hub"),
        "--plot",
        "false",
    ]
    assert main([*argv, "--output_dir", str(tmp_path / "a")]) == 0
    assert main([*argv, "--output_dir", str(tmp_path / "b"), "--index", f"{hub_repo_id}/label_index"]) == 0
    plain = json.loads((tmp_path / "a" / "eval_test.json").read_text())["metrics"]
    via_hub = json.loads((tmp_path / "b" / "eval_test.json").read_text())["metrics"]
    assert plain.keys() == via_hub.keys() and all(via_hub[k] == pytest.approx(plain[k], abs=1e-6) for k in plain)
    assert any(hf_cache.rglob("label_index/labels.feather"))
    groups = json.loads((tmp_path / "b" / "eval_test.json").read_text())["label_groups"]
    freq = np.bincount(ds.label_matrices["train"].indices, minlength=30)
    test = ds.label_matrices["test"].tocsc()
    for name, member in (("frequent", freq > 50), ("few", (freq > 0) & (freq <= 50)), ("zero", freq == 0)):
        has = np.asarray(test[:, np.flatnonzero(member)].sum(axis=1)).ravel() > 0
        assert groups[name]["labels"] == member.sum() and groups[name]["queries"] == has.sum()
