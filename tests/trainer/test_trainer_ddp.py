"""The full ``DEXMLTrainer.train()`` on 2 CPU processes (torchrun, gloo) equals 1 process on the same global batch.

``_trainer_ddp_worker.py`` runs 3 optimizer steps of the real Trainer (accelerate wraps the model in DDP and deals
the batches to the ranks) in the 'in_batch' and 'all' modes, per-device batch 4, on a tiny BERT that keeps its
(unused) pooler like real checkpoints. Here the same code runs in one process with batch 8. Accelerate deals whole
sampler batches round-robin, so with a plain seeded shuffle (``avoid_duplicate_labels_in_batch=False``) the two
ranks' step-k batches are exactly the halves of the 1-process step-k batch, in order; with dropout off both runs
compute the same global loss and the same averaged gradients. AdamW divides by sqrt(v) and so amplifies the float
rounding of the gradient reductions, hence a tolerance on the parameters (well under 1% of the update) while the
logged losses agree to float precision.

Run twice: with the Trainer's default DDP settings (``find_unused_parameters=True`` for a SentenceTransformer) and
with ``ddp_find_unused_parameters=False``, where the trainer must freeze the unused pooler first.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests._ports import free_port
from tests.trainer import _trainer_ddp_worker as worker

WORKER = Path(worker.__file__)
ROOT = WORKER.parents[2]
PER_DEVICE = 4
STEPS = 3


@pytest.fixture(scope="module")
def pooler_bert_path(tmp_path_factory, minilm_path) -> Path:
    return worker.build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-pooler"), str(minilm_path))


@pytest.fixture(scope="module")
def single_process(pooler_bert_path, tmp_path_factory):
    """The reference: the same trainer in this process with the global batch (2 x 4) on one device."""
    out = tmp_path_factory.mktemp("one")
    return {
        mode: worker.train_once(str(pooler_bert_path), mode, str(out / mode), 2 * PER_DEVICE, STEPS)
        for mode in worker.MODES
    }


def _torchrun(model_path: Path, out: Path, *extra: str) -> None:
    """The worker on 2 gloo processes (per-device batch PER_DEVICE), writing under ``out``."""
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
        str(model_path),
        "--per-device-batch",
        str(PER_DEVICE),
        "--output-dir",
        str(out / "runs"),
        "--out",
        str(out / "result.pt"),
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"


# the default setting is what users get (~20 s); the find_unused_parameters=False variant adds ~12 s: slow
@pytest.fixture(scope="module", params=["default", pytest.param("false", marks=pytest.mark.slow)])
def two_processes(request, pooler_bert_path, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"two-{request.param}")
    _torchrun(
        pooler_bert_path,
        out,
        "--steps",
        str(STEPS),
        "--ddp-find-unused-parameters",
        request.param,
    )
    return request.param, torch.load(out / "result.pt", weights_only=False)


@pytest.mark.parametrize("mode", worker.MODES)
def test_two_process_trainer_matches_one_process(two_processes, single_process, pooler_bert_path, mode):
    setting, results = two_processes
    two, one = results[mode], single_process[mode]
    assert two["world"] == 2 and one["world"] == 1
    assert two["wrapper"] == "DistributedDataParallel"
    assert "0.model.embeddings.position_ids" in two["buffers"]  # an encoder with registered buffers
    assert two["find_unused_parameters"] is (setting == "default")
    pooler = ["0.model.pooler.dense.bias", "0.model.pooler.dense.weight"]
    assert two["frozen"] == (pooler if setting == "false" else [])

    # same global batches -> the same loss at every step (the logged loss is the mean over ranks)
    assert len(two["losses"]) == len(one["losses"]) == STEPS
    assert two["losses"] == pytest.approx(one["losses"], rel=2e-6, abs=1e-6)

    from sentence_transformers import SentenceTransformer

    start = {n: p.detach() for n, p in SentenceTransformer(str(pooler_bert_path), device="cpu").named_parameters()}
    moved = [n for n in start if not torch.equal(start[n], one["params"][n])]
    assert len(moved) >= len(start) - 2, f"only {len(moved)} of {len(start)} tensors changed"
    for name in pooler:  # never in the loss's graph: no gradient, no update, in either run
        assert torch.equal(two["params"][name], start[name]) and torch.equal(one["params"][name], start[name])
    for name, reference in one["params"].items():
        if name.endswith("attention.self.key.bias"):
            # its gradient is 0 in exact arithmetic (b adds q·b to every score of a query, which the softmax
            # cancels): AdamW turns the rounding noise of either run into steps of about the learning rate
            continue
        update = (reference - start[name]).abs().max()
        torch.testing.assert_close(
            two["params"][name], reference, rtol=0, atol=max(1e-6, 1e-2 * float(update)), msg=name
        )


def test_test_evaluation_runs_on_every_process(pooler_bert_path, tmp_path):
    """``test_split`` with ``evaluate_untrained`` under a 6 s collective timeout, each evaluation taking 20 s longer: a
    process left out of the untrained evaluation (rank 0 only, as before) times out in the first training step. Every
    process evaluates the same weights, so both report the same metrics, and the untrained ones equal one process's."""
    delay = 20.0
    _torchrun(pooler_bert_path, tmp_path, "--steps", "2", "--eval-delay", str(delay))
    ranks = [torch.load(f"{tmp_path / 'result.pt'}.rank{r}", weights_only=True) for r in range(2)]
    one = worker.evaluate_once(str(pooler_bert_path), str(tmp_path / "one"), 2 * PER_DEVICE, 2, delay=0.0)
    assert ranks[0]["baseline"] == ranks[1]["baseline"] == one["baseline"]
    assert ranks[0]["test"] == ranks[1]["test"]
    assert ranks[0]["test"] == pytest.approx(one["test"], abs=1e-6)
    assert set(one["test"]) >= {"precision@1", "psp@5"}
