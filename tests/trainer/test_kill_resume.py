"""A run killed with SIGKILL after a checkpoint and resumed ends exactly where an uninterrupted run ends.

Each run is its own process (``_resume_worker.py``): the uninterrupted reference, the run the test kills once a
checkpoint is complete (it is slowed after that step so the kill lands mid-training), and the resumed run. Weights,
final metrics and the losses logged after the checkpoint must match the reference: sampler order, the per-epoch
positive draw, mined hard-negative shortlists and the label-embedding cache all survive the restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dexml_hf.checkpoints import CHECKPOINT_COMPLETE
from tests.trainer import _resume_worker

WORKER = Path(_resume_worker.__file__)
ROOT = WORKER.parents[2]
KILL_AFTER = 8  # the checkpoint we wait for (save_steps=4): inside epoch 1, after the first mining


def _cmd(model, out_dir, mode, result, *extra):
    return [
        sys.executable,
        str(WORKER),
        "--model",
        str(model),
        "--output-dir",
        str(out_dir),
        "--mode",
        mode,
        "--result",
        str(result),
        *extra,
    ]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


def _run(cmd):
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


def _load(result: Path):
    return json.loads(result.read_text()), torch.load(str(result) + ".pt", weights_only=False)["weights"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hard", "all_cached"])
def test_sigkill_then_resume_matches_uninterrupted(tiny_model_path, tmp_path, mode):
    _run(_cmd(tiny_model_path, tmp_path / "ref", mode, tmp_path / "ref.json"))

    killed_dir = tmp_path / "killed"
    checkpoint = killed_dir / f"checkpoint-{KILL_AFTER}"
    cmd = _cmd(tiny_model_path, killed_dir, mode, tmp_path / "never.json", "--pause-after", str(KILL_AFTER))
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (checkpoint / CHECKPOINT_COMPLETE).is_file():  # written last
        assert proc.poll() is None, f"the run ended before checkpoint-{KILL_AFTER}: {proc.stderr.read()[-3000:]}"
        assert time.time() < deadline, "no checkpoint in time"
        time.sleep(0.2)
    time.sleep(0.5)  # let the step finish writing; the run now sleeps 1 s a step, far from its end
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "never.json").exists()

    _run(_cmd(tiny_model_path, killed_dir, mode, tmp_path / "resumed.json", "--resume", str(checkpoint)))

    (ref, ref_w), (res, res_w) = _load(tmp_path / "ref.json"), _load(tmp_path / "resumed.json")
    assert res["global_step"] == ref["global_step"] == 18
    assert (ref["steps_run"], res["steps_run"]) == (18, 18 - KILL_AFTER)  # the second run did resume
    after = {s: v for s, v in ref["losses"].items() if int(s) > KILL_AFTER}
    assert after and {s: res["losses"][s] for s in after} == pytest.approx(after, rel=1e-5, abs=1e-7)
    assert set(res_w) == set(ref_w)
    for name in ref_w:
        torch.testing.assert_close(res_w[name], ref_w[name], rtol=1e-5, atol=1e-6, msg=name)
    metrics = {k: v for k, v in ref["metrics"].items() if "precision" in k or "ndcg" in k or "psp" in k}
    assert metrics, ref["metrics"]
    assert {k: res["metrics"][k] for k in metrics} == pytest.approx(metrics, abs=1e-6)
