"""Two gloo ranks run the all-label engine under DDP with an encoder that has a registered buffer and an uneven label
split; ``test_distributed.py`` compares them with one process and checks that a NaN on one rank raises on both.

Run as ``python -m tests.losses._all_labels_buffers_worker OUT_DIR``. 23 labels in chunks of 8 are 3 chunks: rank 0
embeds two, rank 1 one, and with ``mini_batch_size=3`` they make 6 and 3 encoder calls. A DDP wrapper with buffers
broadcasts them in a forward (after a synchronised one), so chunk passes through the wrapper could leave the ranks
with unmatched collectives. The process group has a short timeout so that a hang fails instead of waiting
30 minutes; each rank writes what it saw (losses, gradients, or the error it raised) to ``rank{r}.pt``.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from tests.losses._all_labels_ddp_worker import BATCH, TableEncoder, problem
from tests.losses._ddp_worker import free_port

WORLD = 2
STEPS = 2
CHUNK, MINI = 8, 3
DDP_SETTINGS = {"default": {}, "find_unused_parameters": {"find_unused_parameters": True}}
OBJECTIVES = {"decoupled_softmax": {}, "soft_topk": {"k": 2}}
NAN_LABEL = 9  # in chunk [8, 16), which rank 1 embeds
NAN_QUERY_RANK = 1


class BufferEncoder(TableEncoder):
    """The table encoder plus a registered buffer in its forward (as rotary frequencies or BatchNorm statistics)."""

    def __init__(self, nan_label: int | None = None):
        super().__init__()
        self.register_buffer("shift", torch.linspace(-0.5, 0.5, 5))
        if nan_label is not None:
            self.table = self.table.clone()
            self.table[nan_label, 0] = float("nan")

    def forward(self, features):
        return {"sentence_embedding": self.linear(features["x"]) + self.shift}


def step(model, module, objective, rows, world, query_nan=False):
    from dexml_hf.negatives.all_labels import AllLabelsLoss

    labels, queries, matrix, sampled = problem()
    engine = AllLabelsLoss(
        model,
        labels,
        module.preprocess,
        scale=4.0,
        label_chunk_size=CHUNK,
        mini_batch_size=MINI,
        loss=objective,
        normalize=True,
        ddp_grad_factor=float(world),
        **OBJECTIVES[objective],
    )
    module.zero_grad(set_to_none=True)
    features = module.preprocess([queries[i] for i in rows])
    if query_nan:
        features["x"] = features["x"].clone()
        features["x"][1, 0] = float("nan")
    loss = engine(features, torch.as_tensor(sampled[rows]), matrix[rows])
    loss.backward()
    return loss.detach(), {n: p.grad.detach().clone() for n, p in module.named_parameters()}


def _error(fn) -> dict:
    try:
        fn()
    except Exception as exc:  # the test checks the type: FloatingPointError on every rank
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": None, "message": ""}


def worker(rank, port, out_dir):
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=30),
    )
    rows = np.arange(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    results = {}
    for setting, kwargs in DDP_SETTINGS.items():
        for objective in OBJECTIVES:
            module = BufferEncoder()
            model = nn.parallel.DistributedDataParallel(module, **kwargs)
            assert model.will_sync_module_buffers()  # the buffer is really broadcast by this wrapper
            steps = []
            for _ in range(STEPS):
                loss, grads = step(model, module, objective, rows, WORLD)
                losses = [torch.zeros(()) for _ in range(WORLD)]
                dist.all_gather(losses, loss.reshape(()))
                steps.append({"losses": torch.stack(losses), **grads})
            results[(setting, objective)] = steps
    # a NaN on one rank only: a label embedded by rank 1, then a query of rank 1
    module = BufferEncoder(nan_label=NAN_LABEL)
    model = nn.parallel.DistributedDataParallel(module)
    results["nan_label"] = _error(lambda: step(model, module, "decoupled_softmax", rows, WORLD))
    module = BufferEncoder()
    model = nn.parallel.DistributedDataParallel(module)
    query_nan = rank == NAN_QUERY_RANK
    results["nan_query"] = _error(lambda: step(model, module, "decoupled_softmax", rows, WORLD, query_nan))
    static = nn.parallel.DistributedDataParallel(BufferEncoder(), static_graph=True)
    results["static_graph"] = _error(lambda: step(static, static.module, "decoupled_softmax", rows, WORLD))
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def single_process():
    results = {}
    for objective in OBJECTIVES:
        module = BufferEncoder()
        loss, grads = step(module, module, objective, np.arange(BATCH), 1)
        results[objective] = {"loss": loss, **grads}
    return results


if __name__ == "__main__":
    out = Path(sys.argv[1])
    mp.spawn(worker, args=(free_port(), str(out)), nprocs=WORLD, join=True)
    torch.save(single_process(), out / "single.pt")
