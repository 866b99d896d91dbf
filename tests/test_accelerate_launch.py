"""`accelerate launch` with 2 CPU processes through `dexml-hf train`: really data-parallel, one printer, one saver.

The first step's logged loss of the 2-process run (per-device batch 4) equals one process on the global batch of 8
for 'in_batch' and 'all' (dropout off, a plain seeded shuffle: accelerate deals whole sampler batches round-robin,
so the ranks' first batches are the halves of the 1-process first batch). A 2-process launch the Trainer would not
run data-parallel is refused instead of training two independent models.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests._models import build_tiny_bert
from tests._ports import free_port

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory, minilm_path) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("bert"), str(minilm_path), pooler=True, dropout=0.0)


def _recipe(tmp_path: Path, model: Path, mode: str) -> Path:
    path = tmp_path / f"{mode}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(model),
                "dataset": "synthetic",
                "synthetic_num_labels": 60,
                "synthetic_num_train": 64,
                "synthetic_num_test": 20,
                "max_seq_length": 16,
                "negatives": mode,
                "label_chunk_size": 16,
                "avoid_duplicate_labels_in_batch": False,
                "learning_rate": "1e-3",
                "max_steps": 1,
                "logging_steps": 1,
                "save_strategy": "steps",
                "save_steps": 1,
                "report_to": "none",
                "use_cpu": True,
                "seed": 4,
            }
        )
    )
    return path


def _first_loss(out: Path) -> float:
    state = json.loads((out / "checkpoint-1" / "trainer_state.json").read_text())
    return next(row["loss"] for row in state["log_history"] if "loss" in row)


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["in_batch", "all"])
def test_accelerate_two_cpu_processes_equal_one_process_on_the_global_batch(tmp_path, no_dropout_bert, mode):
    recipe = _recipe(tmp_path, no_dropout_bert, mode)
    one = tmp_path / "one"
    cli = [sys.executable, "-m", "dexml_hf.cli", "train", "--config", str(recipe)]
    subprocess.run([*cli, "--output_dir", str(one), "--per_device_train_batch_size", "8"], env=_env(), check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    two = tmp_path / "two"
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
        "--main_process_port", str(free_port()), "-m", "dexml_hf.cli", "train", "--config", str(recipe),
        "--output_dir", str(two), "--per_device_train_batch_size", "4", "--ddp_backend", "gloo",
    ]  # fmt: skip
    proc = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "world_size=2" in proc.stderr and "global_batch_size=8" in proc.stderr
    assert proc.stdout.count("| **this model** |") == 1  # only the main process prints the table
    assert proc.stdout.count("saved model") == 1
    assert _first_loss(two) == pytest.approx(_first_loss(one), rel=1e-5)


@pytest.mark.slow
def test_unsynchronised_launch_is_refused(tmp_path, no_dropout_bert):
    """torchrun processes that the Trainer would run as N independent models (no CPU flag on a CPU machine)."""
    recipe = _recipe(tmp_path, no_dropout_bert, "in_batch")
    text = recipe.read_text().replace("use_cpu: true", "use_cpu: false")
    recipe.write_text(text)
    launch = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG),
        "--main_process_port", str(free_port()), "-m", "dexml_hf.cli", "train", "--config", str(recipe),
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    proc = subprocess.run(launch, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "independent unsynchronised models" in proc.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()
