"""The agreement gate (a per-query λ) and the PSP@1 guard of the retrieval tuning, against dense references."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dexml_hf.evaluation import xmc_metrics
from dexml_hf.index import LabelIndex
from dexml_hf.retrieval import RetrievalMemory, grid_search, query_weights


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _gated_reference(q, labels, mem, y, lam, k, t, gamma):
    """Dense: neighbour term R, a = max_l R, λ_q = 1 − (1 − λ)·a^γ, fused = λ_q·s + (1 − λ_q)·R; stable sort."""
    q = _unit(q)
    ids = []
    for qi in q:
        s, sims = labels @ qi, mem @ qi
        nn = np.argsort(-sims, kind="stable")[:k]
        w = np.exp(sims[nn] / t)
        w /= w.sum()
        r = (w[:, None] * y[nn]).sum(axis=0)
        lq = 1 - (1 - lam) * r.max() ** gamma
        ids.append(np.argsort(-(lq * s + (1 - lq) * r), kind="stable"))
    return np.array(ids)


def test_query_weights_by_hand():
    term = sp.csr_matrix(np.array([[0.25, 0.75, 0.0], [0.0, 0.0, 0.0], [0.5, 0.5, 0.0]]))
    np.testing.assert_allclose(query_weights(term, 0.6, 2.0), [1 - 0.4 * 0.75**2, 1.0, 1 - 0.4 * 0.25])
    assert query_weights(term, 0.6, 0.0) == 0.6


def test_gated_search_equals_the_dense_reference():
    rng = np.random.default_rng(11)
    labels, mem, q = _unit(rng.normal(size=(40, 6))), _unit(rng.normal(size=(150, 6))), rng.normal(size=(25, 6))
    y = (rng.random((150, 40)) < 0.08).astype(float)
    labels = torch.tensor(labels, dtype=torch.float32)
    mem_t = torch.tensor(mem, dtype=torch.float32)
    memory = RetrievalMemory(mem_t, sp.csr_matrix(y), lam=0.4, k=9, temperature=0.1, agreement=3.0)
    index = LabelIndex(labels, normalized=True, memory=memory)
    ref = _gated_reference(q, labels.double().numpy(), mem_t.double().numpy(), y, 0.4, 9, 0.1, 3.0)
    _, ids = index.search(torch.tensor(q, dtype=torch.float32), k=8)
    np.testing.assert_array_equal(ids, ref[:, :8])
    memory.set_params(agreement=0.0)  # the gate really acts: without it the ranking differs
    _, plain = index.search(torch.tensor(q, dtype=torch.float32), k=8)
    assert not np.array_equal(plain, ids)


def test_guard_keeps_only_points_that_do_not_lower_psp1():
    rng = np.random.default_rng(5)
    labels, mem, q = _unit(rng.normal(size=(15, 5))), _unit(rng.normal(size=(60, 5))), rng.normal(size=(40, 5))
    y_mem = (rng.random((60, 15)) < 0.3).astype(float)
    truth = sp.csr_matrix((rng.random((40, 15)) < 0.25).astype(float))
    inv_p = 1.0 + 4.0 * rng.random(15)
    index = LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True)
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y_mem))
    grid = {"lam": (0.2, 0.5, 0.8, 1.0), "k": (3, 10), "temperature": (0.05, 0.5), "agreement": (0.0, 2.0)}
    qt = torch.tensor(q, dtype=torch.float32)
    free = grid_search(index, memory, qt, truth, "precision@1", grid, inv_p)
    guarded = grid_search(index, memory, qt, truth, "precision@1", grid, inv_p, guard="psp@1", guard_margin=0)
    base = xmc_metrics(_gated_reference(q, labels, mem, y_mem, 1.0, 3, 0.05, 0.0)[:, :5], truth, (1,), inv_p)
    for point in guarded.grid:  # eligibility from the dense reference's rankings
        lam, k, t, g = point["lam"], point["k"] or 3, point["temperature"] or 0.05, point["agreement"] or 0.0
        m = xmc_metrics(_gated_reference(q, labels, mem, y_mem, lam, k, t, g)[:, :5], truth, (1,), inv_p)
        assert point["eligible"] == (m["psp@1"] >= base["psp@1"] - 1e-12)
    chosen = next(p for p in guarded.grid if (p["lam"], p["k"] or memory.k) == (guarded.lam, guarded.k))
    assert chosen["eligible"]
    assert any(not p["eligible"] for p in guarded.grid)  # the guard had something to refuse
    best_eligible = max(p["precision@1"] for p in guarded.grid if p["eligible"])
    assert guarded.value == best_eligible <= free.value


def test_metric_contributions_by_hand():
    from dexml_hf.evaluation import metric_contributions

    truth = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=float))
    topk = np.array([[2, 1], [0, 1], [3, 2]])
    w = np.array([1.0, 2.0, 4.0, 8.0])
    parts = metric_contributions(topk, truth, (1, 2), w)
    np.testing.assert_allclose(parts["precision@1"], [1 / 3, 0, 0])
    np.testing.assert_allclose(parts["precision@2"], [1 / 6, 1 / 6, 0])
    # PSP@1: gains 4 / 0 / 0 over the best achievable Σ (4 + 2 + 0) = 6
    np.testing.assert_allclose(parts["psp@1"], [4 / 6, 0, 0])
    # PSP@2: gains 4 / 2 / 0 over (4 + 1) + 2
    np.testing.assert_allclose(parts["psp@2"], [4 / 7, 2 / 7, 0])
    np.testing.assert_allclose(parts["mrr@2"], [1 / 3, 1 / 6, 0])
    metrics = xmc_metrics(topk, truth, (1, 2), w)
    assert set(metrics) == set(parts)
    for name, c in parts.items():
        assert metrics[name] == float(c.sum())


def test_guard_margin_is_a_paired_test_on_per_query_psp():
    """Eligibility with a margin: Σ d_i ≥ z·√n·std(d) over per-query PSP@1 differences computed from dense rankings."""
    rng = np.random.default_rng(8)
    labels, mem, q = _unit(rng.normal(size=(15, 5))), _unit(rng.normal(size=(80, 5))), rng.normal(size=(60, 5))
    y_mem = (rng.random((80, 15)) < 0.3).astype(float)
    truth_d = (rng.random((60, 15)) < 0.25).astype(float)
    truth = sp.csr_matrix(truth_d)
    inv_p = 1.0 + 4.0 * rng.random(15)
    index = LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True)
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y_mem))
    grid = {"lam": (0.3, 0.6, 0.9, 1.0), "k": (3, 10), "temperature": (0.05, 0.5), "agreement": (0.0, 1.0, 4.0)}
    qt = torch.tensor(q, dtype=torch.float32)
    best = np.sort(truth_d * inv_p, axis=1)[:, -1].sum()  # PSP@1's denominator: each query's best true label

    def psp1_rows(lam, k, t, g):
        top = _gated_reference(q, labels, mem, y_mem, lam, k, t, g)[:, 0]
        return truth_d[np.arange(len(q)), top] * inv_p[top] / best

    base = psp1_rows(1.0, 3, 0.05, 0.0)
    seen = set()
    for margin in (0.0, 0.5, 2.0):
        result = grid_search(index, memory, qt, truth, "precision@1", grid, inv_p, guard="psp@1", guard_margin=margin)
        assert result.guard_margin == margin
        for point in result.grid:
            if point["lam"] == 1.0:
                assert point["eligible"]
                continue
            d = psp1_rows(point["lam"], point["k"], point["temperature"], point["agreement"]) - base
            expected = d.sum() >= margin * np.sqrt(len(d)) * d.std(ddof=1) - 1e-12
            assert point["eligible"] == expected
            seen.add((margin, expected))
        best_eligible = max(p["precision@1"] for p in result.grid if p["eligible"])
        assert result.value == best_eligible
    assert (0.0, True) in seen and (2.0, False) in seen  # the margin changed what was allowed
    n_ok = [
        sum(
            p["eligible"]
            for p in grid_search(
                index, memory, qt, truth, "precision@1", grid, inv_p, guard="psp@1", guard_margin=m
            ).grid
        )
        for m in (0.0, 2.0)
    ]
    assert n_ok[0] > n_ok[1]


def test_guard_margin_refused_when_negative():
    index = LabelIndex(torch.eye(3), normalized=True)
    memory = RetrievalMemory(torch.eye(3), sp.identity(3, format="csr"))
    with pytest.raises(ValueError, match="guard_margin"):
        grid_search(index, memory, torch.eye(3), sp.identity(3, format="csr"), guard="precision@1", guard_margin=-1)
