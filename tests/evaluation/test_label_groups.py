"""The LMTC breakdown (frequent > 50 training documents, few 1-50, zero-shot 0) against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.evaluation import label_group_metrics


def test_each_group_ranks_its_own_labels_over_its_own_queries():
    freq = np.array([51, 50, 1, 0])  # frequent {0}, few {1, 2} (50 is still few), zero {3}
    truth = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 1, 1, 0], [0, 0, 1, 0]]))
    topk = np.array([[3, 1, 0], [0, 2, 3], [1, 3, -1]])
    out = label_group_metrics(topk, truth, freq, ks=(1, 3))
    # frequent: only query 0 has label 0; its ranking cut to {0} is [0]
    assert out["frequent"] == pytest.approx(
        {
            "labels": 1,
            "queries": 1,
            "precision@1": 1,
            "recall@1": 1,
            "ndcg@1": 1,
            "precision@3": 1 / 3,
            "recall@3": 1,
            "ndcg@3": 1,
        }
    )
    # few: query 1 (truth {1, 2}, ranking cut to [2]) and query 2 (truth {2}, ranking cut to [1])
    ndcg3_q1 = 1 / (1 + 1 / math.log2(3))
    assert out["few"] == pytest.approx(
        {
            "labels": 2,
            "queries": 2,
            "precision@1": 0.5,
            "recall@1": 0.25,
            "ndcg@1": 0.5,
            "precision@3": 1 / 6,
            "recall@3": 0.25,
            "ndcg@3": ndcg3_q1 / 2,
        }
    )
    # zero-shot: query 0 only (query 1 ranks label 3 but has no zero-shot label, so it does not count)
    assert out["zero"]["queries"] == 1 and out["zero"]["precision@1"] == 1 and out["zero"]["recall@3"] == 1
    empty = label_group_metrics(topk, truth, np.array([100, 100, 100, 100]), ks=(1,))
    assert empty["zero"] == {"labels": 0, "queries": 0} and empty["frequent"]["queries"] == 3
    with pytest.raises(ValueError, match="3 entries for 4 labels"):
        label_group_metrics(topk, truth, freq[:3])
