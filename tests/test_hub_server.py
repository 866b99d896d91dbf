"""Round trips through the loopback Hub with the unchanged ``huggingface_hub`` client (and ST / datasets on top)."""

from __future__ import annotations

import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)


@pytest.fixture()
def no_unhandled_routes(hub_server):
    """Fail the test if the client hit a route the loopback Hub does not implement."""
    before, errors_before = len(hub_server.unhandled), len(hub_server.errors)
    yield
    assert hub_server.unhandled[before:] == []
    assert hub_server.errors[errors_before:] == []


def _files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_client_points_at_the_loopback_hub(hub_server):
    import huggingface_hub.constants as constants

    assert hub_server.endpoint.startswith("http://127.0.0.1:")
    assert constants.ENDPOINT == hub_server.endpoint
    assert constants.HF_HUB_DISABLE_XET  # large files must take the LFS route the server implements
    before = len(hub_server.requests)
    assert HfApi().whoami()["name"] == hub_server.user
    assert ("GET", "/api/whoami-v2") in hub_server.requests[before:]
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong").whoami()
    assert err.value.response.status_code == 401


def test_create_repo_conflict_and_auth(hub_server, hub_repo_id, no_unhandled_routes):
    api = HfApi()
    url = api.create_repo(hub_repo_id)
    assert url.repo_id == hub_repo_id and url.endpoint == hub_server.endpoint
    with pytest.raises(HfHubHTTPError) as err:
        api.create_repo(hub_repo_id)
    assert err.value.response.status_code == 409
    assert api.create_repo(hub_repo_id, exist_ok=True).repo_id == hub_repo_id
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token="hf_wrong").create_repo(hub_repo_id + "-other")
    assert err.value.response.status_code == 401
    with pytest.raises(HfHubHTTPError) as err:
        HfApi(token=False).upload_file(path_or_fileobj=b"x", path_in_repo="x.txt", repo_id=hub_repo_id)
    assert err.value.response.status_code == 401

    # Same name as a dataset: another repo type, so no conflict.
    api.create_repo(hub_repo_id, repo_type="dataset")
    info = api.dataset_info(hub_repo_id)
    assert info.id == hub_repo_id and len(info.sha) == 40
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(hub_repo_id + "-missing")


def test_upload_folder_then_snapshot_download_is_identical(
    hub_server, hub_repo_id, tmp_path, hf_cache, monkeypatch, no_unhandled_routes
):
    monkeypatch.setattr(hub_server, "lfs_threshold", 256 * 1024)  # so a plain-text file also goes through LFS
    rng = np.random.default_rng(0)
    folder = tmp_path / "upload"
    (folder / "sub" / "deep").mkdir(parents=True)
    (folder / "README.md").write_text("# tiny\n")
    (folder / "sub" / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "deep" / "weights.safetensors").write_bytes(rng.bytes(300_000))  # LFS by .gitattributes
    (folder / "big.txt").write_bytes(b"0123456789" * 40_000)  # LFS by size
    (folder / "empty.txt").write_bytes(b"")
    expected = _files_under(folder)

    api = HfApi()
    api.create_repo(hub_repo_id)
    api.upload_folder(folder_path=folder, repo_id=hub_repo_id, commit_message="add files")

    assert hub_server.lfs_files(hub_repo_id) == {"sub/deep/weights.safetensors", "big.txt"}
    assert {hashlib.sha256(expected[p]).hexdigest() for p in ("sub/deep/weights.safetensors", "big.txt")} <= set(
        hub_server.lfs_uploads
    )
    stored = hub_server.repo_files(hub_repo_id)
    assert {k: v for k, v in stored.items() if k != ".gitattributes"} == expected

    local = Path(snapshot_download(hub_repo_id, cache_dir=hf_cache / "snap"))
    downloaded = _files_under(local)
    assert downloaded.pop(".gitattributes").startswith(b"*.7z filter=lfs")
    assert downloaded == expected

    assert sorted(api.list_repo_files(hub_repo_id)) == sorted([".gitattributes", *expected])
    top = {(f.path, type(f).__name__) for f in api.list_repo_tree(hub_repo_id)}
    assert top == {
        (".gitattributes", "RepoFile"),
        ("README.md", "RepoFile"),
        ("big.txt", "RepoFile"),
        ("empty.txt", "RepoFile"),
        ("sub", "RepoFolder"),
    }
    sub = {f.path for f in api.list_repo_tree(hub_repo_id, path_in_repo="sub", recursive=True)}
    assert sub == {"sub/config.json", "sub/deep", "sub/deep/weights.safetensors"}
    weights = next(f for f in api.list_repo_tree(hub_repo_id, "sub/deep") if f.path.endswith("safetensors"))
    assert weights.lfs.sha256 == hashlib.sha256(expected["sub/deep/weights.safetensors"]).hexdigest()
    assert weights.size == 300_000
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(hub_repo_id, path_in_repo="no/such/folder"))
    infos = api.get_paths_info(hub_repo_id, ["README.md", "sub", "missing.txt"])
    assert [(i.path, type(i).__name__) for i in infos] == [("README.md", "RepoFile"), ("sub", "RepoFolder")]

    # Range requests (what HfFileSystem uses for random access) return exactly the asked bytes.
    url = f"{hub_server.endpoint}/{hub_repo_id}/resolve/main/big.txt"
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=5-14"})) as response:
        assert response.status == 206 and response.read() == expected["big.txt"][5:15]


def test_missing_files_and_old_revisions(hub_server, hub_repo_id, hf_cache, no_unhandled_routes):
    api = HfApi()
    api.create_repo(hub_repo_id)
    v1 = api.upload_file(path_or_fileobj=b"version one", path_in_repo="data/file.txt", repo_id=hub_repo_id).oid
    api.upload_file(path_or_fileobj=b"other", path_in_repo="keep.txt", repo_id=hub_repo_id)
    v3 = api.create_commit(
        hub_repo_id,
        operations=[
            CommitOperationAdd("data/file.txt", b"version two"),
            CommitOperationDelete("keep.txt"),
        ],
        commit_message="v3",
    ).oid
    api.delete_folder("data", repo_id=hub_repo_id)

    def fetch(filename, revision=None):
        return Path(hf_hub_download(hub_repo_id, filename, revision=revision, cache_dir=hf_cache / "dl")).read_bytes()

    assert fetch("data/file.txt", revision=v1) == b"version one"
    assert fetch("data/file.txt", revision=v3) == b"version two"
    assert api.model_info(hub_repo_id, revision=v1).sha == v1
    assert [c.title for c in api.list_repo_commits(hub_repo_id)][-1] == "initial commit"
    with pytest.raises(EntryNotFoundError):
        fetch("data/file.txt")  # deleted with its folder on main
    with pytest.raises(EntryNotFoundError):
        fetch("keep.txt", revision=v3)
    with pytest.raises(EntryNotFoundError):
        fetch("never-existed.bin")
    with pytest.raises(RevisionNotFoundError):
        fetch("data/file.txt", revision="no-such-branch")
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(hub_repo_id + "-missing", "x.txt", cache_dir=hf_cache / "dl")

    # A stale parent commit is refused with 412, as datasets' push_to_hub expects.
    with pytest.raises(HfHubHTTPError) as err:
        api.create_commit(
            hub_repo_id, operations=[CommitOperationAdd("late.txt", b"x")], commit_message="late", parent_commit=v1
        )
    assert err.value.response.status_code == 412


def test_sentence_transformer_push_to_hub_and_load(tiny_model, hub_server, hub_repo_id, hf_cache, no_unhandled_routes):
    import torch
    from sentence_transformers import SentenceTransformer

    texts = ["extreme multi-label classification", "a dual encoder", "labels as text"]
    expected = tiny_model.encode(texts, convert_to_numpy=True)
    tiny_model.push_to_hub(hub_repo_id)
    assert "model.safetensors" in hub_server.lfs_files(hub_repo_id)

    before = len(hub_server.requests)
    loaded = SentenceTransformer(hub_repo_id, cache_folder=str(hf_cache / "st"), device="cpu")
    resolved = [path for method, path in hub_server.requests[before:] if "/resolve/" in path and method == "GET"]
    assert any(path.endswith("/model.safetensors") for path in resolved)  # really downloaded, not reused
    np.testing.assert_allclose(loaded.encode(texts, convert_to_numpy=True), expected, rtol=1e-5, atol=1e-6)
    original_state, loaded_state = tiny_model.state_dict(), loaded.state_dict()
    assert original_state.keys() == loaded_state.keys()
    assert all(torch.equal(original_state[k], loaded_state[k]) for k in original_state)


def test_dataset_dict_push_to_hub_and_load_dataset(hub_server, hub_repo_id, hf_cache, no_unhandled_routes):
    from datasets import Dataset, DatasetDict, load_dataset

    data = DatasetDict(
        {
            "train": Dataset.from_dict({"text": ["a", "b", "c"], "labels": [[0, 3], [], [7]]}),
            "test": Dataset.from_dict({"text": ["d", "e"], "labels": [[1], [2, 5, 9]]}),
        }
    )
    data.push_to_hub(hub_repo_id)
    assert any(path.endswith(".parquet") for path in hub_server.lfs_files(hub_repo_id, repo_type="dataset"))

    loaded = load_dataset(hub_repo_id, cache_dir=str(hf_cache / "datasets"))
    assert set(loaded) == {"train", "test"}
    for split in data:
        assert loaded[split].features == data[split].features
        assert loaded[split].to_dict() == data[split].to_dict()


def test_hub_server_is_thread_safe(hub_server, hub_repo_id, no_unhandled_routes):
    """Parallel commits to one branch all land (each sees the previous head), none is lost."""
    from concurrent.futures import ThreadPoolExecutor

    api = HfApi()
    api.create_repo(hub_repo_id)
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda i: api.upload_file(
                    path_or_fileobj=os.urandom(64), path_in_repo=f"f{i}.bin", repo_id=hub_repo_id
                ),
                range(16),
            )
        )
    assert set(api.list_repo_files(hub_repo_id)) == {".gitattributes"} | {f"f{i}.bin" for i in range(16)}
    assert len(api.list_repo_commits(hub_repo_id)) == 17
