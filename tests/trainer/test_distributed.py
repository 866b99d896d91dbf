"""Two CPU processes (torchrun, gloo) give the loss and the gradients of one process on the same global batch.

The worker (``_dist_worker.py``) splits a fixed batch of 8 queries in halves, one a rank, under
``DistributedDataParallel``; 'all' shards the label chunks across ranks and combines the logsumexps, 'in_batch'
gathers the batch's embeddings with gradients. Here one process computes the reference on the whole batch: a
brute-force decoupled softmax over the full score matrix written out in the test ('all') and the in-batch loss on
all 8 rows ('in_batch'), and the DDP-averaged gradients must match its gradients.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._ports import free_port
from tests.trainer import _dist_worker as worker

WORKER = Path(worker.__file__)


@pytest.fixture(scope="module")
def two_process_run(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "result.pt"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        str(WORKER),
        "--model",
        str(tiny_model_path),
        "--modes",
        "all,all_minibatch,in_batch",
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[2])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return torch.load(out, weights_only=False)


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _brute_force_all_labels(model):
    """Decoupled softmax of every query against every label, from the full B x L score matrix (DESIGN.md §1)."""
    labels, queries, matrix, sampled = worker.problem()
    q = torch.nn.functional.normalize(model(model.preprocess(queries))["sentence_embedding"], dim=-1)
    e = torch.nn.functional.normalize(model(model.preprocess(labels))["sentence_embedding"], dim=-1)
    scores = worker.SCALE * q @ e.T
    positives = torch.as_tensor(matrix.toarray() > 0)
    positives[torch.arange(len(queries)), torch.as_tensor(sampled)] = True
    per_query = []
    for b in range(len(queries)):
        neg_lse = torch.logsumexp(scores[b][~positives[b]], dim=0)
        s_pos = scores[b][positives[b]]
        # -log(e^s_p / (e^s_p + sum_n e^s_n)) = log(1 + e^(lse_neg - s_p))
        per_query.append(torch.nn.functional.softplus(neg_lse - s_pos).mean())
    return torch.stack(per_query).mean()


def _single_process(tiny_model, mode):
    tiny_model.eval()
    for name, param in tiny_model.named_parameters():
        param.requires_grad_(".pooler." not in name)  # as the worker does (never used by mean pooling)
    tiny_model.zero_grad(set_to_none=True)
    if mode.startswith("all"):
        loss = _brute_force_all_labels(tiny_model)
    else:
        loss = worker.rank_loss(tiny_model, tiny_model, "in_batch", rank=0, world=1)
    loss.backward()
    return float(loss), _grads(tiny_model)


@pytest.mark.parametrize("mode", ["all", "all_minibatch", "in_batch"])
def test_two_processes_match_one(two_process_run, tiny_model, mode):
    result = two_process_run[mode]
    assert result["world"] == 2
    loss, grads = _single_process(tiny_model, mode)
    # the Trainer logs the mean of the ranks' losses
    assert sum(result["losses"]) / 2 == pytest.approx(loss, rel=1e-5, abs=1e-6)
    if mode.startswith("all"):  # every rank holds the global loss (the denominators were combined exactly)
        assert result["losses"] == pytest.approx([loss, loss], rel=1e-5, abs=1e-6)
    assert set(result["grads"]) == set(grads)
    unit = max(float(g.abs().max()) for g in grads.values())
    assert unit > 0
    for name, reference in grads.items():
        torch.testing.assert_close(result["grads"][name], reference, atol=1e-5 * unit, rtol=1e-4, msg=name)
