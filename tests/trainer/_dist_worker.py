"""One rank of the 2-process CPU check in ``test_distributed.py`` (launched by ``torchrun``, gloo backend).

Each rank takes its half of a fixed global batch, wraps the model in ``DistributedDataParallel`` and computes the
loss exactly as ``DEXMLTrainer`` does in the given mode ('all': the two-pass all-label loss with the labels sharded
across ranks; 'in_batch': the decoupled softmax with the batch gathered across ranks). After ``backward`` DDP has
averaged the gradients; rank 0 saves the loss of every rank and those gradients for the test to compare with one
process on the whole batch.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import scipy.sparse as sp
import torch

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()
SCALE = 20.0
LABEL_CHUNK_SIZE = 4  # 23 labels -> 6 chunks, dealt 3 + 3 to two ranks (the last one short)


def problem(num_labels: int = 23, batch: int = 8, seed: int = 0):
    """A fixed global batch: label texts, query texts, the (batch x labels) matrix, one sampled positive a query.

    Some queries share a sampled positive label, so the in-batch mode's dedupe and masking are exercised too.
    """
    rng = np.random.default_rng(seed)
    labels = [" ".join(rng.choice(WORDS, size=3)) + f" {i}" for i in range(num_labels)]
    queries = [" ".join(rng.choice(WORDS, size=6)) for _ in range(batch)]
    dense = np.zeros((batch, num_labels), dtype=np.float32)
    for i in range(batch):
        dense[i, rng.choice(num_labels, size=1 + i % 3, replace=False)] = 1.0
    dense[batch - 1, 0] = dense[0, 0] = 1.0  # a label positive for a query of each rank's half
    matrix = sp.csr_matrix(dense)
    sampled = np.array([rng.choice(matrix[i].indices) for i in range(batch)])
    sampled[0] = sampled[batch - 1] = 0
    return labels, queries, matrix, sampled


def rank_loss(model, module, mode: str, rank: int, world: int):
    """This rank's loss on its half of the global batch, computed as DEXMLTrainer.compute_loss does."""
    from dexml_hf.losses import DecoupledSoftmaxLoss
    from dexml_hf.negatives.all_labels import AllLabelsLoss

    labels, queries, matrix, sampled = problem()
    half = len(queries) // world
    rows = slice(rank * half, (rank + 1) * half)
    if mode in ("all", "all_minibatch"):
        engine = AllLabelsLoss(
            model,
            labels,
            module.preprocess,
            scale=SCALE,
            label_chunk_size=LABEL_CHUNK_SIZE,
            ddp_grad_factor=float(world),
            normalize=True,
            mini_batch_size=2 if mode == "all_minibatch" else None,
        )
        return engine(engine._features(queries[rows]), torch.as_tensor(sampled[rows]), matrix[rows])
    loss = DecoupledSoftmaxLoss(model, scale=SCALE, label_matrix=matrix, gather_across_devices=world > 1)
    query_ids = np.arange(len(queries))[rows]
    features = [module.preprocess(queries[rows]), module.preprocess([labels[i] for i in sampled[rows]])]
    label_column = torch.as_tensor(np.stack([query_ids, sampled[rows]], axis=1))
    return loss(features, label_column)


def main() -> None:
    import torch.distributed as dist
    from sentence_transformers import SentenceTransformer
    from torch.nn.parallel import DistributedDataParallel

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--modes", default="all,in_batch", help="comma-separated negatives modes to run in turn")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    module = SentenceTransformer(args.model, device="cpu")
    module.eval()  # no dropout: one process and two must see the same network
    # The BERT pooler is never used by mean pooling: freeze it so DDP can run with find_unused_parameters=False.
    # (find_unused_parameters=True, the HF Trainer's default for a SentenceTransformer, fails in this torch/ST pair
    # with "marked as ready twice" on a plain single forward/backward; see the report of issue 6.)
    for name, param in module.named_parameters():
        if ".pooler." in name:
            param.requires_grad_(False)
    model = DistributedDataParallel(module, find_unused_parameters=False)
    results = {}
    for mode in args.modes.split(","):
        module.zero_grad(set_to_none=True)
        loss = rank_loss(model, module, mode, rank, world)
        loss.backward()
        losses = [torch.zeros(()) for _ in range(world)]
        dist.all_gather(losses, loss.detach().reshape(()))
        grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
        results[mode] = {"losses": [float(x) for x in losses], "grads": grads, "world": world}
    if rank == 0:
        torch.save(results, args.out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
