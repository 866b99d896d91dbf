"""Hard-negative mining sharded over 2 CPU processes (torchrun, gloo) equals one process mining every query.

Each rank embeds only its contiguous block of the queries (counted through ``model.encode``) and every rank ends
with the same full shortlists, exactly those of :func:`mine_shortlists` in one process; the same through
``DEXMLTrainer``'s epoch start, which passes its rank and world size.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests._ports import free_port
from tests.trainer import _mining_worker as worker

WORKER = Path(worker.__file__)


@pytest.fixture(scope="module")
def two_ranks(tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("mining")
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
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parents[2])}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [load_file(str(out / f"rank{r}.safetensors")) for r in range(2)]


@pytest.mark.parametrize("name", list(worker.problems()))
def test_two_ranks_mine_what_one_process_mines(two_ranks, tiny_model, name):
    problem = worker.problems()[name]
    expected = worker.mine(tiny_model, problem)
    n, num_labels = problem["matrix"].shape
    assert expected.shape == (n, 5) and (expected >= 0).all()
    for rank in range(2):
        np.testing.assert_array_equal(two_ranks[rank][f"{name}.shortlists"], expected, err_msg=f"rank {rank}")
    # each rank embedded every label once and only its block of the queries: ceil(n / 2), then the rest
    block = -(-n // 2)
    assert [list(two_ranks[r][f"{name}.encoded"]) for r in range(2)] == [
        [num_labels, block],
        [num_labels, n - block] if n > block else [num_labels, 0],
    ]


def test_the_trainer_mines_its_block_on_each_rank(two_ranks, tiny_model, tmp_path):
    expected = worker.trainer_shortlists(tiny_model, str(tmp_path))
    assert expected.shape == (21, 5)
    for rank in range(2):
        np.testing.assert_array_equal(two_ranks[rank]["trainer.shortlists"], expected, err_msg=f"rank {rank}")
    # 30 label texts, then 11 and 10 of the 21 training queries (encode_texts may split nothing further)
    assert [list(two_ranks[r]["trainer.encoded"]) for r in range(2)] == [[30, 11], [30, 10]]
