"""Metrics against napkinxc (an independent implementation) and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.evaluation.metrics import (
    PROPENSITY_PRESETS,
    hits_matrix,
    inv_propensity,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    psndcg_at_k,
    psp_at_k,
    recall_at_k,
    xmc_metrics,
)

nxc = pytest.importorskip("napkinxc.metrics", reason="napkinxc is in the dev extra")


def _random_problem(seed: int, n: int = 300, n_labels: int = 60, k: int = 12, zero_rows: int = 25):
    """Random truth (some rows empty) and random rankings (distinct ids a row, some padded with -1)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 9, size=n)
    counts[rng.choice(n, zero_rows, replace=False)] = 0
    rows, cols = [], []
    for i, c in enumerate(counts):
        # Skewed label popularity, so propensities vary.
        chosen = rng.choice(
            n_labels, c, replace=False, p=np.arange(n_labels, 0, -1) / np.arange(n_labels, 0, -1).sum()
        )
        rows += [i] * c
        cols += chosen.tolist()
    truth = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n_labels))
    # Rank by noisy scores that favour true labels, so rankings hold hits at varied places.
    scores = rng.random((n, n_labels)) + truth.toarray() * rng.random((n, 1)) * 1.5
    topk = np.argsort(-scores, axis=1)[:, :k]
    topk[rng.choice(n, 10, replace=False), -3:] = -1  # short rankings
    return topk, truth


def _lists(topk):
    return [[int(x) for x in row if x >= 0] for row in topk]


def _napkin_truth(truth):
    return [truth[i].indices.tolist() for i in range(truth.shape[0])]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_standard_metrics_match_napkinxc(seed, k):
    topk, truth = _random_problem(seed)
    y_true, y_pred = _napkin_truth(truth), _lists(topk)
    assert precision_at_k(topk, truth, k) == pytest.approx(nxc.precision_at_k(y_true, y_pred, k=k)[-1], abs=1e-6)
    assert recall_at_k(topk, truth, k) == pytest.approx(nxc.recall_at_k(y_true, y_pred, k=k)[-1], abs=1e-6)
    assert ndcg_at_k(topk, truth, k) == pytest.approx(nxc.ndcg_at_k(y_true, y_pred, k=k)[-1], abs=1e-6)


@pytest.mark.parametrize("family", sorted(PROPENSITY_PRESETS))
@pytest.mark.parametrize("k", [1, 3, 5, 10])
def test_propensity_metrics_match_napkinxc(family, k):
    topk, truth = _random_problem(7)
    # Propensities from a separate "train" matrix, as in practice.
    train_topk, train = _random_problem(8, n=500)
    a, b = PROPENSITY_PRESETS[family]
    weights = inv_propensity(np.asarray(train.sum(axis=0)).ravel(), train.shape[0], family=family)
    expected_w = nxc.Jain_et_al_inverse_propensity(train, A=a, B=b)
    np.testing.assert_allclose(weights, expected_w, rtol=1e-12)
    y_true, y_pred = _napkin_truth(truth), _lists(topk)
    assert psp_at_k(topk, truth, weights, k) == pytest.approx(
        nxc.psprecision_at_k(y_true, y_pred, weights, k=k)[-1], abs=1e-6
    )
    assert psndcg_at_k(topk, truth, weights, k) == pytest.approx(
        nxc.psndcg_at_k(y_true, y_pred, weights, k=k)[-1], abs=1e-6
    )


def test_inv_propensity_explicit_a_b_override_family():
    freq = np.array([0, 1, 10, 1000])
    got = inv_propensity(freq, 5000, A=0.6, B=2.6, family="generic")
    c = (math.log(5000) - 1) * (2.6 + 1) ** 0.6
    np.testing.assert_allclose(got, 1 + c * (freq + 2.6) ** -0.6)
    with pytest.raises(ValueError, match="family"):
        inv_propensity(freq, 10, family="nope")


def _mrr_reference(topk, truth, k):
    total = 0.0
    for i, row in enumerate(topk):
        true = set(truth[i].indices.tolist())
        for r, x in enumerate(row[:k]):
            if x in true:
                total += 1 / (r + 1)
                break
    return total / len(topk)


@pytest.mark.parametrize("k", [1, 4, 12])
def test_mrr_matches_bruteforce(k):
    topk, truth = _random_problem(3)
    assert mrr_at_k(topk, truth, k) == pytest.approx(_mrr_reference(topk, truth, k), abs=1e-12)


def test_hand_computed_example_and_zero_positive_rule():
    # Row 0: truth {0, 2}; ranking [2, 1, 0]. Row 1: no positives. Row 2: truth {1}; ranking [3, -1, -1].
    truth = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 0, 0, 0], [0, 1, 0, 0]]))
    topk = np.array([[2, 1, 0], [0, 1, 2], [3, -1, -1]])
    assert precision_at_k(topk, truth, 1) == pytest.approx((1 + 0 + 0) / 3)
    assert precision_at_k(topk, truth, 3) == pytest.approx((2 / 3) / 3)
    assert recall_at_k(topk, truth, 3) == pytest.approx(1 / 3)
    ndcg3_row0 = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert ndcg_at_k(topk, truth, 3) == pytest.approx(ndcg3_row0 / 3)
    assert mrr_at_k(topk, truth, 3) == pytest.approx(1 / 3)
    w = np.array([1.0, 4.0, 2.0, 8.0])
    # PSP@1: hits weight 2 (row 0); best: row 0 -> 2, row 2 -> 4; empty row adds nothing.
    assert psp_at_k(topk, truth, w, 1) == pytest.approx(2 / 6)
    # PSP@3: hits 2 + 1 = 3; best row 0: 2 + 1, row 2: 4.
    assert psp_at_k(topk, truth, w, 3) == pytest.approx(3 / 7)
    np.testing.assert_array_equal(hits_matrix(topk, truth), [[1, 0, 1], [0, 0, 0], [0, 0, 0]])


def test_xmc_metrics_keys_ranges_and_agreement():
    topk, truth = _random_problem(5, k=100, n_labels=150)
    w = inv_propensity(np.asarray(truth.sum(axis=0)).ravel(), truth.shape[0])
    out = xmc_metrics(topk, truth, ks=(1, 3, 5), inv_propensity=w)
    for k in (1, 3, 5):
        assert out[f"precision@{k}"] == pytest.approx(precision_at_k(topk, truth, k))
        assert out[f"ndcg@{k}"] == pytest.approx(ndcg_at_k(topk, truth, k))
        assert out[f"psp@{k}"] == pytest.approx(psp_at_k(topk, truth, w, k))
        assert out[f"psndcg@{k}"] == pytest.approx(psndcg_at_k(topk, truth, w, k))
    for k in (1, 3, 5, 10, 20, 50, 100):
        assert out[f"recall@{k}"] == pytest.approx(recall_at_k(topk, truth, k))
        assert out[f"mrr@{k}"] == pytest.approx(mrr_at_k(topk, truth, k))
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in out.values())
    narrow = xmc_metrics(topk[:, :5], truth)
    assert "recall@10" not in narrow and "psp@1" not in narrow
    with pytest.raises(ValueError, match="columns"):
        xmc_metrics(topk[:, :3], truth, ks=(1, 5))


def test_bad_inputs_raise_clear_errors():
    truth = sp.csr_matrix(np.eye(3))
    with pytest.raises(ValueError, match="rows"):
        precision_at_k(np.zeros((2, 1), dtype=int), truth, 1)
    with pytest.raises(ValueError, match="label id 5"):
        precision_at_k(np.array([[5], [0], [1]]), truth, 1)
    with pytest.raises(ValueError, match="integer"):
        precision_at_k(np.zeros((3, 1)), truth, 1)
    with pytest.raises(ValueError, match="inv_propensity"):
        psp_at_k(np.zeros((3, 1), dtype=int), truth, np.ones(2), 1)
