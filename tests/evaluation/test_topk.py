"""Chunked exact top-k against brute force over the full score matrix (ties included) and against faiss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dexml_hf.evaluation.topk import available_memory_bytes, chunked_topk, default_chunk_sizes


def _reference(queries, labels, k, exclude=None):
    """Full n × L scores; ties by lower label id = first k of a stable descending sort."""
    scores = queries.float() @ labels.float().T
    if exclude is not None:
        for r, c in exclude:
            scores[r, c] = float("-inf")
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return scores.gather(1, order), order


def _tied_problem(seed, n=37, n_labels=101, d=4):
    """Small integer embeddings: many exactly equal scores, including across chunk boundaries."""
    g = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (n, d), generator=g).float()
    labels = torch.randint(-1, 2, (n_labels, d), generator=g).float()
    return queries, labels


@pytest.mark.parametrize("label_chunk", [1, 7, 20, 32, 64, 101, 1000])  # L = 101: 1 and 101 divide it
@pytest.mark.parametrize("query_chunk", [5, 37])
@pytest.mark.parametrize("k", [1, 10, 25])
def test_chunked_equals_full_sort_with_ties(label_chunk, query_chunk, k):
    queries, labels = _tied_problem(0)
    ref_scores, ref_ids = _reference(queries, labels, k)
    scores, ids = chunked_topk(queries, labels, k, query_chunk=query_chunk, label_chunk=label_chunk)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=0)
    assert torch.equal(ids, ref_ids)
    # The scores are exactly torch.topk's on the full matrix (its ids may order ties differently).
    torch.testing.assert_close(scores, torch.topk(queries @ labels.T, k, dim=1).values, rtol=0, atol=0)


def test_ties_really_occur_in_the_tied_problem():
    queries, labels = _tied_problem(0)
    scores = queries @ labels.T
    kth = torch.sort(scores, dim=1, descending=True).values[:, 9]
    assert ((scores == kth[:, None]).sum(dim=1) > 1).all()  # every row has a tie straddling place 10


def test_random_floats_equal_torch_topk_ids():
    g = torch.Generator().manual_seed(1)
    queries, labels = torch.randn(50, 16, generator=g), torch.randn(333, 16, generator=g)
    scores, ids = chunked_topk(queries, labels, 30, query_chunk=16, label_chunk=64)
    ref_scores, ref_ids = torch.topk(queries @ labels.T, 30, dim=1)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores)


@pytest.mark.parametrize("label_chunk", [8, 50])
def test_exclude_pairs_and_padding(label_chunk):
    queries, labels = _tied_problem(2, n=6, n_labels=50)
    rng = np.random.default_rng(0)
    pairs = np.stack([rng.integers(0, 6, 40), rng.integers(0, 50, 40)], axis=1)
    ref_scores, ref_ids = _reference(queries, labels, 12, exclude=pairs.tolist())
    scores, ids = chunked_topk(queries, labels, 12, exclude=pairs, label_chunk=label_chunk)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=0)
    excluded = set(map(tuple, pairs.tolist()))
    assert not any((r, c) in excluded for r in range(6) for c in ids[r].tolist())
    # A row left with fewer than k labels is padded with id -1 and score -inf.
    all_of_row0 = np.stack([np.zeros(48, dtype=int), np.arange(48)], axis=1)
    scores, ids = chunked_topk(queries, labels, 5, exclude=all_of_row0, label_chunk=label_chunk)
    assert sorted(ids[0].tolist()[:2]) == [48, 49]
    assert ids[0].tolist()[2:] == [-1, -1, -1] and torch.isneginf(scores[0, 2:]).all()


def test_fp16_labels_are_scored_in_fp32():
    g = torch.Generator().manual_seed(3)
    queries, labels = torch.randn(20, 8, generator=g), torch.randn(90, 8, generator=g).half()
    scores, ids = chunked_topk(queries, labels, 7, label_chunk=13)
    ref_scores, ref_ids = _reference(queries, labels.float(), 7)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores)


def test_default_chunks_bounded_by_memory():
    assert available_memory_bytes() > 0
    q, lab = default_chunk_sizes(10_000, 1_000_000, 100)
    assert q * lab * 4 <= 512 * 2**20 and q >= 1 and lab >= 200
    assert default_chunk_sizes(3, 10, 5) == (3, 10)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="must be"):
        chunked_topk(torch.zeros(3, 4), torch.zeros(5, 3), 2)
    with pytest.raises(ValueError, match="out of range"):
        chunked_topk(torch.zeros(3, 4), torch.zeros(5, 4), 2, exclude=np.array([[3, 0]]))


def test_faiss_gives_the_same_ids():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    queries = rng.standard_normal((64, 24)).astype(np.float32)
    labels = rng.standard_normal((700, 24)).astype(np.float32)
    index = faiss.IndexFlatIP(24)
    index.add(labels)
    f_scores, f_ids = index.search(queries, 20)
    scores, ids = chunked_topk(torch.from_numpy(queries), torch.from_numpy(labels), 20, label_chunk=128)
    np.testing.assert_array_equal(ids.numpy(), f_ids)
    np.testing.assert_allclose(scores.numpy(), f_scores, rtol=1e-5, atol=1e-5)


def test_larger_problem_exercises_group_pruning_with_ties():
    """Many blocks after the first: the group-maximum pruning path, with ties between blocks."""
    queries, labels = _tied_problem(5, n=64, n_labels=3000, d=6)
    ref_scores, ref_ids = _reference(queries, labels, 40)
    scores, ids = chunked_topk(queries, labels, 40, query_chunk=30, label_chunk=256)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=0)


def test_few_queries_over_fp16_labels_never_copy_more_than_the_budget_to_fp32():
    """With 2 queries the score block alone would allow every label in one block; the fp32 copy of an fp16 label
    block must fit the budget too (the 10M-label warm-up search made a 15 GB copy)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestFloat32(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32:
                    self.largest = max(self.largest, t.numel() * 4)
            return out

    g = torch.Generator().manual_seed(3)
    labels = torch.randn(5_000, 64, generator=g).half()
    queries = torch.randn(2, 64, generator=g)
    budget = 64 * 1024  # bytes: 256 labels × 64 dims in fp32
    assert 5_000 * 64 * 4 > budget * 10
    _, l_chunk = default_chunk_sizes(2, 5_000, 10, memory_budget=budget, dim=64)
    assert l_chunk * 64 * 4 <= budget
    with LargestFloat32() as mode:
        scores, ids = chunked_topk(queries, labels, 10, memory_budget=budget)
    assert mode.largest <= budget
    ref_scores, ref_ids = _reference(queries, labels.float(), 10)
    assert torch.equal(ids, ref_ids)
    torch.testing.assert_close(scores, ref_scores)
    _, unbounded = default_chunk_sizes(2, 5_000, 10, memory_budget=budget)
    assert unbounded * 64 * 4 > budget  # without dim only the score block counts: the test can fail
