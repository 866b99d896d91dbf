"""Search where the model runs: memory-budgeted chunks give the unchunked answer (ties included), and the device
option reaches the index and its retrieval memory. CUDA itself runs only where a GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dexml_hf.evaluation.topk import chunked_topk, default_chunk_sizes, labels_for_device
from dexml_hf.index import LabelIndex
from dexml_hf.retrieval import RetrievalMemory


def _numpy_reference(queries, labels, k):
    """Every score in float64 (exact for small integers), ties to the lower id: a stable sort of −score."""
    scores = np.asarray(queries, dtype=np.float64) @ np.asarray(labels, dtype=np.float64).T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


def _tied(seed=0, n=29, n_labels=97, d=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, d), generator=g).float(), torch.randint(-1, 2, (n_labels, d), generator=g).float()


@pytest.mark.parametrize("budget", [4, 100, 640, 5000, 10**9])
@pytest.mark.parametrize("k", [1, 7, 40])
def test_tiny_budgets_give_the_unchunked_answer_and_the_numpy_one(budget, k):
    queries, labels = _tied()
    q_chunk, l_chunk = default_chunk_sizes(len(queries), len(labels), k, memory_budget=budget)
    if budget <= 640:
        assert q_chunk * min(l_chunk, 32) * 4 <= max(budget, 128) and (q_chunk < len(queries) or l_chunk < 97)
    scores, ids = chunked_topk(queries, labels, k, memory_budget=budget)
    whole = chunked_topk(queries, labels, k, query_chunk=len(queries), label_chunk=len(labels))
    ref_scores, ref_ids = _numpy_reference(queries, labels, k)
    assert torch.equal(ids, whole[1]) and torch.equal(scores, whole[0])
    np.testing.assert_array_equal(ids.numpy(), ref_ids)
    np.testing.assert_array_equal(scores.numpy(), ref_scores.astype(np.float32))
    kth = np.sort(queries.numpy() @ labels.numpy().T, axis=1)[:, ::-1][:, k - 1]
    assert ((queries.numpy() @ labels.numpy().T == kth[:, None]).sum(axis=1) > 1).any()  # ties at place k exist


def _same(a, b):
    """Same ids; scores equal to fp32 rounding (a different block shape may sum a dot product in another order)."""
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=2e-6)


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_device_and_budget_reach_the_index_and_the_memory(device):
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((300, 16)).astype(np.float32)
    q = rng.standard_normal((25, 16)).astype(np.float32)
    plain = LabelIndex(emb, normalized=True)
    on = LabelIndex(emb, normalized=True, device=device, memory_budget=2048)
    assert on.device == torch.device("cpu") and isinstance(on.device, torch.device)
    _same(plain.search(q, 12), on.search(q, 12))
    memory_emb = rng.standard_normal((80, 16)).astype(np.float32)
    memory_emb /= np.linalg.norm(memory_emb, axis=1, keepdims=True)
    y = sp.random(80, 300, density=0.03, random_state=1, format="csr")
    memory = RetrievalMemory(memory_emb, y, lam=0.5, k=6)
    on.to(device, memory_budget=1024).attach_memory(memory)
    assert memory.device == torch.device("cpu") and memory.memory_budget == 1024
    reference = LabelIndex(emb, normalized=True, memory=RetrievalMemory(memory_emb, y, lam=0.5, k=6))
    _same(reference.search(q, 12), on.search(q, 12))
    assert labels_for_device(on.embeddings, device) is on.embeddings  # the CPU search copies nothing


def test_from_texts_searches_on_the_models_device(tiny_model):
    index = LabelIndex.from_texts(tiny_model, ["a", "b", "c"])
    assert index.device == tiny_model.device
    assert LabelIndex.from_texts(tiny_model, ["a"], device=torch.device("cpu")).device.type == "cpu"
    assert LabelIndex(torch.zeros(2, 3)).device == torch.device("cpu")
    with pytest.raises(ValueError, match="memory_budget"):
        LabelIndex(torch.zeros(2, 3), memory_budget=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("budget", [None, 4096, 50_000])  # 4096: labels streamed chunk by chunk
def test_cuda_search_equals_the_cpu_search(budget):
    queries, labels = _tied(1, n=64, n_labels=3000, d=8)
    cpu = LabelIndex(labels, memory_budget=budget)
    gpu = LabelIndex(labels, device="cuda", memory_budget=budget)
    for a, b in zip(cpu.search(queries, 25), gpu.search(queries, 25)):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(0)
    floats = rng.standard_normal((2000, 64)).astype(np.float32)
    q = rng.standard_normal((100, 64)).astype(np.float32)
    s_cpu, i_cpu = LabelIndex(floats).search(q, 50)
    s_gpu, i_gpu = LabelIndex(floats, device="cuda", memory_budget=budget).search(q, 50)
    np.testing.assert_allclose(s_cpu, s_gpu, atol=1e-5)
    assert (i_cpu == i_gpu).mean() > 0.999
