"""Checkpoints: nothing unpickled, an incomplete checkpoint never used, the negatives state required, and the CLI
resuming a killed run exactly."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dexml_hf.checkpoints import CHECKPOINT_COMPLETE, NEGATIVES_STATE
from dexml_hf.errors import DataError
from dexml_hf.trainer import DEXMLTrainer
from tests.trainer.test_trainer import _args, make_xmc

ROOT = Path(__file__).resolve().parents[2]


class _Payload:
    """Unpickling this runs ``touch <path>``: the proof that a checkpoint file was unpickled."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _trained_checkpoints(model, tmp_path, **kw):
    args = _args(
        tmp_path,
        negatives="hard",
        num_hard_negatives=1,
        shortlist_size=4,
        max_steps=4,
        save_strategy="steps",
        save_steps=2,
        **kw,
    )
    DEXMLTrainer(model=model, args=args, train_dataset=make_xmc()).train()
    return Path(args.output_dir)


def test_checkpoint_files_are_never_unpickled(tiny_model, tmp_path):
    out = _trained_checkpoints(tiny_model, tmp_path)
    checkpoint = out / "checkpoint-2"
    proof = tmp_path / "pwned"
    pickled = [p for p in checkpoint.iterdir() if p.suffix in (".pt", ".pth", ".bin")]
    assert pickled  # optimizer, scheduler, rng state, training args: all replaced by a crafted pickle
    for path in pickled:
        path.write_bytes(pickle.dumps(_Payload(proof)))
    assert {p.name for p in checkpoint.iterdir()} >= {f"{NEGATIVES_STATE}.json", f"{NEGATIVES_STATE}.safetensors"}
    trainer = DEXMLTrainer(
        model=tiny_model,
        args=_args(tmp_path, negatives="hard", num_hard_negatives=1, shortlist_size=4, max_steps=4),
        train_dataset=make_xmc(),
    )
    with pytest.raises(Exception):  # noqa: B017 - torch refuses the pickle (weights_only); any error is fine
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert not proof.exists(), "a pickle from the checkpoint was executed"


def test_incomplete_checkpoint_is_skipped_and_missing_state_refused(tiny_model, tmp_path, caplog):
    out = _trained_checkpoints(tiny_model, tmp_path)
    (out / "checkpoint-4" / CHECKPOINT_COMPLETE).unlink()  # as if killed while writing checkpoint-4
    args = _args(tmp_path, negatives="hard", num_hard_negatives=1, shortlist_size=4, max_steps=4)
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=make_xmc())
    assert trainer._checkpoint_to_resume(True) == str(out / "checkpoint-2")
    with pytest.raises(DataError, match="checkpoint-4.*not a complete"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-4"))
    (out / "checkpoint-2" / f"{NEGATIVES_STATE}.json").unlink()
    with pytest.raises(DataError, match="checkpoint-2.*negatives state"):
        trainer.train(resume_from_checkpoint=True)
    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(DataError, match="no complete checkpoint"):
        trainer.train(resume_from_checkpoint=True)


def _cli(recipe: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dexml_hf.cli", "train", "--config", str(recipe), "--output_dir", str(out), *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
def test_cli_resume_after_kill_matches_uninterrupted_run(tmp_path, tiny_model_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_model_path),
                "dataset": "synthetic",
                "synthetic_num_labels": 120,
                "synthetic_num_train": 640,
                "synthetic_num_test": 60,
                "max_seq_length": 24,
                "per_device_train_batch_size": 16,
                "learning_rate": "1e-3",
                "max_steps": 60,
                "negatives": "all_cached",
                "label_refresh_steps": 7,
                "save_strategy": "steps",
                "save_steps": 10,
                "report_to": "none",
                "seed": 3,
            }
        )
    )
    reference = tmp_path / "reference"
    subprocess.run(_cli(recipe, reference), env=_env(), check=True, capture_output=True, timeout=900)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(recipe, killed), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while not (killed / "checkpoint-20").exists():  # killed as soon as its second checkpoint is being written
        assert proc.poll() is None and time.time() < deadline, "the run ended before its second checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "eval_results.json").exists()  # it really stopped mid-training
    half_written = not (killed / "checkpoint-20" / CHECKPOINT_COMPLETE).exists()

    resumed = subprocess.run(
        _cli(recipe, killed, "--resume_from_checkpoint", "true"),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    if half_written:  # the resume skipped the half checkpoint and said so
        assert "skipping" in resumed.stderr and "checkpoint-20" in resumed.stderr
    expected, got = load_file(reference / "model.safetensors"), load_file(killed / "model.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=1e-5, atol=1e-6, msg=name)
    metrics = [json.loads((d / "eval_results.json").read_text())["metrics"] for d in (reference, killed)]
    assert metrics[0] == pytest.approx(metrics[1], abs=1e-6)
