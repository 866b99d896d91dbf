"""``gather_across_devices=True`` on 2 gloo ranks equals one process on the concatenated batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def _run_worker(out_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "tests.losses._ddp_worker", str(out_dir)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_two_ranks_equal_one_process(tmp_path):
    proc = _run_worker(tmp_path)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        # gloo's teardown once aborted a rank at exit on a loaded CI machine; that is the transport, not the
        # loss: run the whole comparison again once (the numbers below are still checked in full)
        proc = _run_worker(tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(tmp_path / "ddp.pt")
    single = torch.load(tmp_path / "single.pt")
    assert set(ddp) == {"decoupled", "pal", "topk", "mnrl_semantics"}
    for name, expected in single.items():
        got = ddp[name]
        assert set(got) == set(expected), name
        assert expected["loss"].item() > 0
        for key, value in expected.items():
            # loss: mean of the ranks' losses; grads: what DDP left on rank 0 after averaging
            torch.testing.assert_close(got[key], value, rtol=1e-5, atol=1e-5, msg=f"{name}: {key}")


def test_all_label_engine_on_two_ranks_equals_one_process(tmp_path):
    """Labels sharded over 2 gloo ranks (chunks dealt round-robin): the decoupled, PAL and exact soft top-k losses
    (bisection sums and the implicit-gradient sums all-reduced) equal one process on the whole batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "tests.losses._all_labels_ddp_worker", str(tmp_path)]
    proc = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        proc = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp, single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert (
        set(ddp)
        == set(single)
        == {
            "decoupled_softmax",
            "softmax",
            "soft_topk",
            "soft_topk_num_pos",
            "soft_topk_capped",
        }
    )
    for name, expected in single.items():
        got = ddp[name]
        assert expected["loss"].item() > 0.01, name
        # every rank returns the loss of the global batch
        torch.testing.assert_close(got["losses"], expected["loss"].repeat(2), rtol=1e-5, atol=1e-6, msg=name)
        for key, value in expected.items():
            if key != "loss":
                torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=f"{name}: {key}")


def test_all_label_engine_with_buffers_and_uneven_chunks_under_ddp(tmp_path):
    """An encoder with a registered buffer (DDP broadcasts it) and 3 label chunks over 2 ranks (6 and 3 encoder calls):
    with the default DDP settings and with ``find_unused_parameters=True`` (the Trainer's for a SentenceTransformer),
    two steps give the 1-process loss and gradients; ``static_graph=True`` is refused. A NaN embedding on one rank only raises FloatingPointError on both ranks (the
    group's 30 s timeout turns a hang into a different error)."""
    from tests.losses import _all_labels_buffers_worker as worker

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "tests.losses._all_labels_buffers_worker", str(tmp_path)]
    proc = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=150)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        proc = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(worker.WORLD)]
    single = torch.load(tmp_path / "single.pt")
    for setting in worker.DDP_SETTINGS:
        for objective, expected in single.items():
            steps = ranks[0][(setting, objective)]
            assert len(steps) == worker.STEPS
            assert expected["loss"].item() > 0.01
            for got in steps:
                msg = f"{setting} {objective}"
                torch.testing.assert_close(got["losses"], expected["loss"].repeat(2), rtol=1e-5, atol=1e-6, msg=msg)
                for key, value in expected.items():
                    if key != "loss":  # what DDP left on rank 0 after averaging
                        torch.testing.assert_close(got[key], value, rtol=1e-4, atol=1e-6, msg=f"{msg}: {key}")
    label = [r["nan_label"] for r in ranks]
    assert [e["type"] for e in label] == ["FloatingPointError"] * 2, label
    assert "label ids [9]" in label[1]["message"]  # the rank that embedded it names it
    assert "label id 9, embedded by another process" in label[0]["message"]
    query = [r["nan_query"] for r in ranks]
    assert [e["type"] for e in query] == ["FloatingPointError"] * 2, query
    row = worker.NAN_QUERY_RANK * worker.BATCH // worker.WORLD + 1  # row 1 of rank 1 in the global batch
    assert all(f"query embeddings (batch rows [{row}])" in e["message"] for e in query), query
    static = [r["static_graph"] for r in ranks]  # refused before any pass, on every rank
    assert [e["type"] for e in static] == ["ValueError"] * 2 and "static_graph=True" in static[0]["message"], static
