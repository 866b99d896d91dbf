"""One rank of the 2-process hard-negative mining check in ``test_mining_distributed.py`` (torchrun, gloo).

Each rank calls :func:`~dexml_hf.negatives.hard_negatives.mine_shortlists` with its rank and the world size on the
problems of :func:`problems`, then ``DEXMLTrainer`` mines its epoch-0 shortlists; each rank writes what it got, and how many query texts it embedded, to ``<out>/rank<r>``
(safetensors). The test compares every rank's shortlists with one process mining the whole set.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def problems() -> dict[str, dict]:
    """Query / label texts and label matrices: an odd query count (the last block short), faiss, and one query
    for two ranks (an empty block)."""
    rng = np.random.default_rng(0)
    labels = [" ".join(rng.choice(WORDS, size=3)) + f" {i}" for i in range(17)]

    def queries(n):
        texts = [" ".join(rng.choice(WORDS, size=5)) for _ in range(n)]
        dense = np.zeros((n, len(labels)), dtype=np.float32)
        for i in range(n):
            dense[i, rng.choice(len(labels), size=1 + i % 3, replace=False)] = 1.0
        return texts, sp.csr_matrix(dense)

    out = {}
    for name, n, faiss in (("odd", 23, False), ("faiss", 23, True), ("one", 1, False)):
        texts, matrix = queries(n)
        out[name] = {"queries": texts, "labels": labels, "matrix": matrix, "use_faiss": faiss}
    return out


def mine(model, problem: dict, process_index: int = 0, num_processes: int = 1) -> np.ndarray:
    from dexml_hf.negatives.hard_negatives import mine_shortlists

    return mine_shortlists(
        model,
        problem["queries"],
        problem["labels"],
        problem["matrix"],
        shortlist_size=5,
        batch_size=4,
        label_chunk_size=6,
        use_faiss=problem["use_faiss"],
        process_index=process_index,
        num_processes=num_processes,
    )


def trainer_shortlists(model, output_dir: str) -> np.ndarray:
    """The shortlists ``DEXMLTrainer`` mines at the start of epoch 0 (under torchrun: with its rank and world)."""
    from dexml_hf.trainer import DEXMLTrainer
    from tests.trainer.test_trainer import _args, make_xmc

    args = _args(Path(output_dir), negatives="hard", num_hard_negatives=1, shortlist_size=5, encode_batch_size=4)
    trainer = DEXMLTrainer(model=model, args=args, train_dataset=make_xmc(num_train=21))
    trainer._begin_epoch(0)
    return trainer._shortlists


def main() -> None:
    import torch.distributed as dist
    from safetensors.numpy import save_file
    from sentence_transformers import SentenceTransformer

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = SentenceTransformer(args.model, device="cpu")
    encoded: list[int] = []
    encode = model.encode

    def counting_encode(sentences, *a, **kw):
        encoded.append(len(sentences))
        return encode(sentences, *a, **kw)

    model.encode = counting_encode
    arrays = {}
    for name, problem in problems().items():
        encoded.clear()
        arrays[f"{name}.shortlists"] = mine(model, problem, rank, world)
        # label texts first, then this rank's queries (encode_texts skips empty lists)
        arrays[f"{name}.encoded"] = np.asarray(encoded + [0] * (2 - len(encoded)), dtype=np.int64)
    encoded.clear()
    arrays["trainer.shortlists"] = trainer_shortlists(model, str(Path(args.out) / f"run{rank}"))
    arrays["trainer.encoded"] = np.asarray(encoded, dtype=np.int64)
    save_file(arrays, str(Path(args.out) / f"rank{rank}.safetensors"))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
