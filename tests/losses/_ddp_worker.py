"""Two gloo ranks on loopback train one step with ``gather_across_devices=True`` and save loss and gradients.

Run as ``python -m tests.losses._ddp_worker OUT_DIR``; ``test_distributed.py`` compares the result with one process
on the concatenated batch.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

WORLD = 2
DIM_IN, DIM_OUT = 6, 5


class LinearEncoder(nn.Module):
    """Stands in for a SentenceTransformer: feature dict in, ``sentence_embedding`` out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(DIM_IN, DIM_OUT)

    def forward(self, features):
        return {"sentence_embedding": self.linear(features["x"])}


def global_batch():
    """8 rows: query ids repeat across ranks, label ids repeat across ranks and columns."""
    g = torch.Generator().manual_seed(1)
    queries = torch.randn(8, DIM_IN, generator=g)
    positives = torch.randn(8, DIM_IN, generator=g)
    negatives = torch.randn(8, DIM_IN, generator=g)
    labels = torch.tensor(
        [[0, 1, 7], [1, 2, 8], [2, 3, 1], [3, 4, 9], [0, 5, 2], [4, 1, 6], [5, 6, 3], [6, 0, 4]]
    )  # [query_id, positive_id, negative_id]
    matrix = sp.csr_matrix(
        (np.ones(10), ([0, 0, 1, 2, 3, 4, 5, 6, 1, 3], [1, 5, 2, 3, 4, 1, 6, 0, 8, 2])), shape=(7, 10)
    )
    # label texts must embed identically wherever they appear, as real label texts would
    table = torch.randn(10, DIM_IN, generator=g)
    positives = table[labels[:, 1]]
    negatives = table[labels[:, 2]]
    return queries, positives, negatives, labels, matrix


def make_losses(model, matrix, gather):
    from dexml_hf.losses import DecoupledSoftmaxLoss, SoftmaxLoss, SoftTopKLoss

    return {
        "decoupled": DecoupledSoftmaxLoss(model, label_matrix=matrix, gather_across_devices=gather),
        "pal": SoftmaxLoss(model, label_matrix=matrix, gather_across_devices=gather),
        "topk": SoftTopKLoss(model, label_matrix=matrix, gather_across_devices=gather, k=3),
        "mnrl_semantics": DecoupledSoftmaxLoss(model, gather_across_devices=gather),
    }


def run_step(loss_fn, model, rows, queries, positives, negatives, labels, with_labels):
    model.zero_grad()
    features = [{"x": queries[rows]}, {"x": positives[rows]}, {"x": negatives[rows]}]
    loss = loss_fn(features, labels[rows] if with_labels else None)
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    model = nn.parallel.DistributedDataParallel(LinearEncoder())
    queries, positives, negatives, labels, matrix = global_batch()
    rows = torch.arange(rank * 4, (rank + 1) * 4)
    results = {}
    for name, loss_fn in make_losses(model, matrix, gather=True).items():
        loss, grads = run_step(loss_fn, model, rows, queries, positives, negatives, labels, name != "mnrl_semantics")
        dist.all_reduce(loss)
        results[name] = {"loss": loss / WORLD, **{k: v for k, v in grads.items()}}
    if rank == 0:
        torch.save(results, Path(out_dir) / "ddp.pt")
    dist.barrier()  # no rank tears gloo down while the other still has collectives in flight
    dist.destroy_process_group()


def single_process():
    model = LinearEncoder()
    queries, positives, negatives, labels, matrix = global_batch()
    results = {}
    for name, loss_fn in make_losses(model, matrix, gather=False).items():
        # columns are column-major over the global batch, exactly as the gathered ranks see them
        loss, grads = run_step(
            loss_fn, model, torch.arange(8), queries, positives, negatives, labels, name != "mnrl_semantics"
        )
        results[name] = {"loss": loss, **{f"module.{k}": v for k, v in grads.items()}}
    return results


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    out = Path(sys.argv[1])
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    torch.save(single_process(), out / "single.pt")
