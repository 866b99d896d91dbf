"""The shipped ``evaluate`` metric loads offline and gives exactly ``xmc_metrics``."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.evaluation import inv_propensity, xmc_metrics
from dexml_hf.evaluation.xmc_metric import xmc_metric_path


def test_evaluate_metric_equals_xmc_metrics(tmp_path, monkeypatch):
    evaluate = pytest.importorskip("evaluate")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rng = np.random.default_rng(0)
    n, n_labels = 40, 30
    truth_lists = [sorted(rng.choice(n_labels, rng.integers(0, 5), replace=False).tolist()) for _ in range(n)]
    topk = np.stack([rng.permutation(n_labels)[:12] for _ in range(n)])
    rows = np.repeat(np.arange(n), [len(t) for t in truth_lists])
    truth = sp.csr_matrix((np.ones(len(rows)), (rows, np.concatenate(truth_lists))), shape=(n, n_labels))
    w = inv_propensity(rng.integers(0, 50, n_labels), 500, family="amazon")

    metric = evaluate.load(xmc_metric_path(), cache_dir=str(tmp_path))
    got = metric.compute(predictions=topk.tolist(), references=truth_lists, k=[1, 3, 5], inv_propensity=w.tolist())
    expected = xmc_metrics(topk, truth, ks=(1, 3, 5), inv_propensity=w)
    assert set(got) == set(expected) and "recall@10" in got and "psndcg@5" in got
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12)
    single = metric.compute(predictions=[[2, 0, 1]], references=[[0]], k=3)
    assert single["precision@3"] == pytest.approx(1 / 3) and single["mrr@3"] == pytest.approx(1 / 2)
