"""XMC ranking metrics (P@k, nDCG@k, R@k, MRR@k, PSP@k, PSnDCG@k) as a Hugging Face ``evaluate`` metric.

A thin wrapper over ``dexml_hf.evaluation.metrics.xmc_metrics`` so the numbers are identical.
"""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
import scipy.sparse as sp

from dexml_hf.citation import DEXML_CITATION
from dexml_hf.evaluation.metrics import xmc_metrics

_CITATION = DEXML_CITATION

_DESCRIPTION = """\
Ranking metrics of extreme multi-label classification as defined by pyxclib / napkinxc: precision@k,
nDCG@k, recall@k, MRR@k and, given inverse propensities, propensity-scored precision and nDCG. Points
without true labels score 0 in P/nDCG/R/MRR and add nothing to the propensity-scored ratios.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of int): the ranked top-k label ids of each point, best first (-1 = no prediction).
    references (list of list of int): the true label ids of each point.
    k (int or list of int, optional): cut-offs, default [1, 3, 5].
    inv_propensity (list of float, optional): inverse propensity of every label (enables psp@k and psndcg@k).
    num_labels (int, optional): number of labels; inferred from the ids and propensities when omitted.
Returns:
    dict with precision@k, ndcg@k, recall@k, mrr@k (also recall/mrr at 10, 20, 50, 100 when the rankings are
    that long), and psp@k, psndcg@k when propensities are given. All in [0, 1].
Examples:
    >>> metric = evaluate.load(xmc_metric_path())
    >>> metric.compute(predictions=[[2, 0, 1]], references=[[0]], k=[1, 3])["precision@3"]
    0.3333333333333333
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class XmcMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                }
            ),
        )

    def _compute(self, predictions, references, k=(1, 3, 5), inv_propensity=None, num_labels=None):
        ks = [k] if isinstance(k, (int, np.integer)) else list(k)
        width = max([len(p) for p in predictions] + [max(ks)])
        topk = np.full((len(predictions), width), -1, dtype=np.int64)
        for i, p in enumerate(predictions):
            topk[i, : len(p)] = p
        rows = np.repeat(np.arange(len(references)), [len(r) for r in references])
        cols = np.asarray([c for r in references for c in r], dtype=np.int64)
        if num_labels is None:
            candidates = [int(topk.max()) + 1 if topk.size else 0, int(cols.max()) + 1 if cols.size else 0]
            if inv_propensity is not None:
                candidates.append(len(inv_propensity))
            num_labels = max(candidates)
        truth = sp.csr_matrix((np.ones(len(cols)), (rows, cols)), shape=(len(references), num_labels))
        weights = None if inv_propensity is None else np.asarray(inv_propensity, dtype=np.float64)
        return xmc_metrics(topk, truth, ks=ks, inv_propensity=weights)
