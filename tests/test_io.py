"""dexml_hf.io: stale temp folders of atomic_folder are removed only when this host's writer is gone."""

import os
import socket
import subprocess
import sys
import uuid

from dexml_hf.io import atomic_folder, remove_stale_temp_folders


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def _temp(parent, host, pid, kind="tmp"):
    folder = parent / f".idx.dexml_hf-{kind}-{host}-{pid}-{uuid.uuid4().hex}"
    folder.mkdir()
    (folder / "part").write_text("x")
    return folder


def test_only_this_hosts_temp_folders_of_dead_writers_are_removed(tmp_path):
    host = socket.gethostname()
    dead = _dead_pid()
    stale = _temp(tmp_path, host, dead)
    stale_old = _temp(tmp_path, host, dead, kind="old")
    live = _temp(tmp_path, host, os.getpid())
    other_host = _temp(tmp_path, f"not-{host}", dead)  # its pid means nothing here: left alone
    no_host = tmp_path / f".idx.dexml_hf-tmp-{dead}-{uuid.uuid4().hex}"  # a name without a host: left alone
    no_host.mkdir()
    assert sorted(remove_stale_temp_folders(tmp_path / "idx")) == sorted([stale, stale_old])
    assert not stale.exists() and not stale_old.exists()
    assert live.is_dir() and other_host.is_dir() and no_host.is_dir()


def test_atomic_folder_names_its_temp_folder_with_host_and_pid(tmp_path):
    with atomic_folder(tmp_path / "idx") as tmp:
        assert tmp.name.startswith(f".idx.dexml_hf-tmp-{socket.gethostname()}-{os.getpid()}-")
        (tmp / "f").write_text("y")
        assert remove_stale_temp_folders(tmp_path / "idx") == []  # a live writer's own folder stays
    assert (tmp_path / "idx" / "f").read_text() == "y"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
