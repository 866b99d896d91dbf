"""``convert_dataset`` / ``dexml-hf convert``: destination checked first, overwrite only of marked folders, writes
atomic (a kill -9 leaves DST absent or complete), stale temp folders of killed runs cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dexml_hf.cli import main
from dexml_hf.data import convert_dataset, load_xmc_dataset, write_lf
from dexml_hf.data._utils import MARKER_FILE
from dexml_hf.errors import DataError, UsageError
from tests.data._helpers import assert_same, make_dataset

ROOT = Path(__file__).resolve().parents[2]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def lf_src(tmp_path) -> Path:
    write_lf(make_dataset(seed=5), tmp_path / "lf")
    return tmp_path / "lf"


def test_convert_writes_a_marked_dataset_that_loads_back(tmp_path, lf_src):
    ds = convert_dataset(lf_src, tmp_path / "out", name="tiny")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lf", "out"]  # no temp folder left
    marker = json.loads((tmp_path / "out" / MARKER_FILE).read_text(encoding="utf-8"))
    assert marker["format"] == "hub" and "pid" not in marker
    assert_same(make_dataset(seed=5), ds)
    assert_same(ds, load_xmc_dataset(tmp_path / "out", cache_dir=str(tmp_path / "cache")))


@pytest.mark.parametrize("output_format", ["lf", "wiki500k", "pecos", "sparse", "bow", "csv"])
def test_every_writer_marks_its_folder_and_overwrites_only_its_own(tmp_path, lf_src, output_format):
    convert_dataset(lf_src, tmp_path / "out", output_format=output_format)
    assert json.loads((tmp_path / "out" / MARKER_FILE).read_text(encoding="utf-8"))["format"] == output_format
    with pytest.raises(UsageError, match="already exists"):
        convert_dataset(lf_src, tmp_path / "out", output_format=output_format)
    convert_dataset(lf_src, tmp_path / "out", output_format="hub", overwrite=True)
    assert json.loads((tmp_path / "out" / MARKER_FILE).read_text(encoding="utf-8"))["format"] == "hub"


def test_overwrite_refuses_a_folder_without_the_marker(tmp_path, lf_src):
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me", encoding="utf-8")
    (mine / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = _tree(mine)
    with pytest.raises(UsageError, match=r"refusing to overwrite .*mine.*not a dataset written by dexml_hf"):
        convert_dataset(lf_src, mine, overwrite=True)
    assert _tree(mine) == before


def test_overwrite_refuses_a_file(tmp_path, lf_src):
    (tmp_path / "file").write_text("x", encoding="utf-8")
    with pytest.raises(UsageError, match="it is a file"):
        convert_dataset(lf_src, tmp_path / "file", overwrite=True)
    assert (tmp_path / "file").read_text(encoding="utf-8") == "x"


@pytest.mark.parametrize("where", ["dot", "root", "home", "parent_of_src", "src_itself", "marked_parent_of_src"])
def test_forbidden_destinations_are_refused_before_reading(tmp_path, monkeypatch, where):
    work = tmp_path / "work"
    src = work / "data" / "lf"
    write_lf(make_dataset(seed=5), src)
    (work / "keep.txt").write_text("keep", encoding="utf-8")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(work))  # Path.home() is the folder holding the source
    if where == "marked_parent_of_src":  # even a folder the package wrote is refused when it holds the source
        (work / "data" / MARKER_FILE).write_text(json.dumps({"kind": "dexml_hf.dataset"}), encoding="utf-8")
    dst = {
        "dot": ".",
        "root": "/",
        "home": "~",
        "parent_of_src": str(work / "data"),
        "src_itself": str(src),
        "marked_parent_of_src": str(work / "data"),
    }[where]
    before = _tree(work)
    with pytest.raises(UsageError, match="refusing to write"):
        convert_dataset(src, dst, overwrite=True)
    assert _tree(work) == before


def test_destination_is_checked_before_the_source_is_read(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "trn_X_Y.txt").write_text("1 2\n0:-1\n", encoding="utf-8")  # would raise DataError if read
    (bad / "tst_X_Y.txt").write_text("1 2\n0:1\n", encoding="utf-8")
    (tmp_path / "out").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        convert_dataset(bad, tmp_path / "out")
    with pytest.raises(DataError, match="trn_X_Y.txt, line 2"):
        convert_dataset(bad, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_symlink_destination_is_refused(tmp_path, lf_src):
    convert_dataset(lf_src, tmp_path / "real")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UsageError, match="symbolic link"):
        convert_dataset(lf_src, tmp_path / "link", overwrite=True)
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / MARKER_FILE).is_file()


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _temp(folder: Path, name: str, marker: dict | None) -> Path:
    path = folder / name
    (path / "queries").mkdir(parents=True)
    (path / "queries" / "part.parquet").write_bytes(b"partial")
    if marker is not None:
        (path / MARKER_FILE).write_text(json.dumps({"kind": "dexml_hf.dataset", **marker}), encoding="utf-8")
    return path


def test_stale_temp_folders_of_killed_runs_are_cleaned_only_when_ours(tmp_path, lf_src):
    import socket

    host = socket.gethostname()
    stale = _temp(tmp_path, ".out.tmp-abc123", {"pid": _dead_pid(), "host": host})
    stale_old = _temp(tmp_path, ".out.old-1f2e3d4c", {"format": "hub"})  # interrupted swap: finished, no pid
    live = _temp(tmp_path, ".out.tmp-live01", {"pid": os.getpid(), "host": host})  # a writer still running
    unmarked = _temp(tmp_path, ".out.tmp-zzz999", None)  # same naming but not ours
    other_name = _temp(tmp_path, ".other.tmp-abc123", {"pid": _dead_pid(), "host": host})  # another DST's
    foreign_marker = _temp(tmp_path, ".out.tmp-qqq111", {"pid": _dead_pid(), "host": host})
    (foreign_marker / MARKER_FILE).write_text(json.dumps({"kind": "something-else"}), encoding="utf-8")
    convert_dataset(lf_src, tmp_path / "out")
    assert not stale.exists() and not stale_old.exists()
    for kept in (live, unmarked, other_name, foreign_marker):
        assert (kept / "queries" / "part.parquet").read_bytes() == b"partial", kept
    assert (tmp_path / "out" / MARKER_FILE).is_file()


def test_cli_convert(tmp_path, lf_src, capsys):
    argv = ["convert", str(lf_src), str(tmp_path / "out"), "--name", "tiny"]
    assert main(argv) == 0
    assert "labels_unseen_in_train" in capsys.readouterr().out
    assert_same(make_dataset(seed=5), load_xmc_dataset(tmp_path / "out", cache_dir=str(tmp_path / "cache")))
    capsys.readouterr()  # the load's progress bars
    # user errors: one line on stderr, exit status 2 (usage) / 1 (data), no traceback, DST untouched
    before = _tree(tmp_path / "out")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "trn_X_Y.txt").write_text("1 2\n0:-1\n", encoding="utf-8")
    (tmp_path / "bad" / "tst_X_Y.txt").write_text("1 2\n0:1\n", encoding="utf-8")
    assert main(["convert", str(tmp_path / "bad"), str(tmp_path / "bad_out")]) == 1
    err = capsys.readouterr().err
    assert "trn_X_Y.txt, line 2, field 'value'" in err and "Traceback" not in err
    assert not (tmp_path / "bad_out").exists()
    assert _tree(tmp_path / "out") == before


_WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {root!r})
    from dexml_hf.data import convert_dataset
    convert_dataset({src!r}, {dst!r}, output_format="lf", overwrite=True)
    print("done", flush=True)
    """
)


@pytest.mark.parametrize("dst_state", ["absent", "complete"])
def test_kill_9_during_convert_leaves_dst_absent_or_complete(tmp_path, dst_state):
    """A real subprocess killed by SIGKILL mid-write (its temp folder is filling); then a rerun cleans up, completes."""
    write_lf(make_dataset(seed=11, sizes=(("train", 12000), ("test", 3000)), filters=False), tmp_path / "src")
    expected = load_xmc_dataset(tmp_path / "src")
    dst = tmp_path / "dst"
    if dst_state == "complete":  # the kill hits while a complete DST is being replaced (--overwrite)
        convert_dataset(tmp_path / "src", dst, output_format="lf")
    code = _WRITER.format(root=str(ROOT), src=str(tmp_path / "src"), dst=str(dst))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if any((t / "lbl.json.gz").exists() for t in tmp_path.glob(".dst.tmp-*")):  # mid-write
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"the writer ended before it could be killed: {proc.communicate()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".dst.tmp-*")), "the kill should have left the temp folder behind"
    if dst_state == "absent":
        assert not dst.exists()
    else:
        assert_same(expected, load_xmc_dataset(dst), check_meta=False)
    # a rerun removes the killed run's temp folder and writes a complete DST
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
    assert not list(tmp_path.glob(".dst.tmp-*")) and not list(tmp_path.glob(".dst.old-*"))
    assert_same(expected, load_xmc_dataset(dst), check_meta=False)
