"""Two gloo ranks on loopback run the all-label engine (labels sharded round-robin by chunk) on their half of a fixed
batch and save loss and gradients; ``test_distributed.py`` compares them with one process on the whole batch.

Run as ``python -m tests.losses._all_labels_ddp_worker OUT_DIR``. The "texts" are row numbers of a fixed feature
table embedded by a linear map, so the check is about the engine's collectives, not about a transformer.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.losses._ddp_worker import free_port

WORLD = 2
NUM_LABELS, BATCH = 23, 8
OBJECTIVES = {
    "decoupled_softmax": {},
    "softmax": {},
    "soft_topk": {"k": 3},
    "soft_topk_num_pos": {"k": "num_pos"},
    "soft_topk_capped": {"k": 2, "max_positives": 1},
}


class TableEncoder(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.table = torch.randn(NUM_LABELS + BATCH, 6, generator=torch.Generator().manual_seed(3))
        self.linear = nn.Linear(6, 5)

    def preprocess(self, texts):
        return {"x": self.table[torch.tensor([int(t) for t in texts])]}

    def forward(self, features):
        return {"sentence_embedding": self.linear(features["x"])}


def problem():
    rng = np.random.default_rng(0)
    dense = np.zeros((BATCH, NUM_LABELS), dtype=np.float32)
    for i in range(BATCH):
        dense[i, rng.choice(NUM_LABELS, size=1 + i % 3, replace=False)] = 1.0
    matrix = sp.csr_matrix(dense)
    sampled = np.array([rng.choice(matrix[i].indices) for i in range(BATCH)])
    labels = [str(i) for i in range(NUM_LABELS)]
    queries = [str(NUM_LABELS + i) for i in range(BATCH)]
    return labels, queries, matrix, sampled


def step(model, module, name, rows, world):
    from dexml_hf.negatives.all_labels import AllLabelsLoss

    labels, queries, matrix, sampled = problem()
    kwargs = OBJECTIVES[name]
    objective = "soft_topk" if name.startswith("soft_topk") else name
    engine = AllLabelsLoss(
        model,
        labels,
        module.preprocess,
        scale=4.0,
        label_chunk_size=4,
        loss=objective,
        normalize=True,
        ddp_grad_factor=float(world),
        **kwargs,
    )
    module.zero_grad(set_to_none=True)
    loss = engine(module.preprocess([queries[i] for i in rows]), torch.as_tensor(sampled[rows]), matrix[rows])
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def worker(rank, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    module = TableEncoder()
    model = nn.parallel.DistributedDataParallel(module)
    rows = np.arange(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    results = {}
    for name in OBJECTIVES:
        loss, grads = step(model, module, name, rows, WORLD)
        losses = [torch.zeros(()) for _ in range(WORLD)]
        dist.all_gather(losses, loss.reshape(()))
        results[name] = {"losses": torch.stack(losses), **grads}
    if rank == 0:
        torch.save(results, Path(out_dir) / "ddp.pt")
    dist.barrier()
    dist.destroy_process_group()


def single_process():
    module = TableEncoder()
    results = {}
    for name in OBJECTIVES:
        loss, grads = step(module, module, name, np.arange(BATCH), 1)
        results[name] = {"loss": loss, **grads}
    return results


if __name__ == "__main__":
    out = Path(sys.argv[1])
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    torch.save(single_process(), out / "single.pt")
