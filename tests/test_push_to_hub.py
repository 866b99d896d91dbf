"""Train with push_to_hub through the loopback Hub; a fresh process reproduces the top-k from the repo id."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from dexml_hf.cli import main

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import json, sys
import numpy as np
from huggingface_hub import snapshot_download
from sentence_transformers import SentenceTransformer
from dexml_hf.data.synthetic import generate_synthetic_tables
from dexml_hf.index import LabelIndex

repo_id, out = sys.argv[1], sys.argv[2]
path = snapshot_download(repo_id)
model = SentenceTransformer(path)
index = LabelIndex.load(f"{path}/label_index")
texts = generate_synthetic_tables(num_labels=120, num_train=300, num_test=80, seed=5)["splits"]["test"][0]
_, ids = index.search(index.encode_queries(model, texts), k=100)
np.save(out, ids)
"""


def _every_byte_lacks(secret: str, folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_push_to_hub_then_load_by_repo_id(tmp_path, tiny_model_path, hub_repo_id, hub_server, monkeypatch):
    recipe = tmp_path / "push.yaml"
    recipe.write_text(
        yaml.safe_dump(
            {
                "model_name_or_path": str(tiny_model_path),
                "dataset": "synthetic",
                "synthetic_num_labels": 120,
                "synthetic_num_train": 300,
                "synthetic_num_test": 80,
                "synthetic_seed": 5,
                "max_seq_length": 24,
                "per_device_train_batch_size": 32,
                "learning_rate": "1e-3",
                "num_train_epochs": 2,
                "save_strategy": "steps",
                "save_steps": 5,
                "report_to": "none",
                "push_to_hub": True,
                "hub_strategy": "every_save",  # checkpoints (and training_args.bin) are pushed while training
                "hub_model_id": hub_repo_id,
            }
        )
    )
    out = tmp_path / "model"
    secret = os.environ["HF_TOKEN"]
    monkeypatch.delenv("HF_TOKEN")  # the loopback Hub refuses writes without it: only --hub_token authenticates
    assert main(["train", "--config", str(recipe), "--output_dir", str(out), "--hub_token", secret]) == 0
    assert "HF_TOKEN" not in os.environ  # lent to the Hub client during checkpoint pushes only

    from huggingface_hub import HfApi, ModelCard, snapshot_download

    monkeypatch.setenv("HF_TOKEN", secret)
    files = set(HfApi().list_repo_files(hub_repo_id))
    assert {"modules.json", "README.md", "label_index/label_index.json", "label_index/embeddings.safetensors"} <= files
    assert "training_args.bin" in files  # pushed with the checkpoints: it must not hold the token
    pushed = Path(snapshot_download(hub_repo_id, cache_dir=tmp_path / "dl"))
    _every_byte_lacks(secret, pushed)
    _every_byte_lacks(secret, out)

    # A fresh process, by repo id only, gets the top-k of the saved model and index.
    from sentence_transformers import SentenceTransformer

    from dexml_hf.data.synthetic import generate_synthetic_tables
    from dexml_hf.index import LabelIndex

    index = LabelIndex.load(out / "label_index")
    texts = generate_synthetic_tables(num_labels=120, num_train=300, num_test=80, seed=5)["splits"]["test"][0]
    _, local_ids = index.search(index.encode_queries(SentenceTransformer(str(out)), texts), k=100)
    child_out = tmp_path / "child_topk.npy"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, hub_repo_id, str(child_out)],
        cwd=ROOT,
        env={**os.environ, "HF_HOME": str(tmp_path / "hf_home")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    np.testing.assert_array_equal(np.load(child_out), local_ids)

    # The card on the Hub: metric table, the loss citation, valid model-index; never the token.
    card = ModelCard.load(hub_repo_id)
    text = str(card)
    assert "| **this model** |" in text and "P@1" in text and "R@100" in text
    assert "gupta2024dualencoders" in text and "github.com/dexml" not in text
    metrics = json.loads((out / "eval_results.json").read_text())["metrics"]
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["precision_at_1"] == round(metrics["precision@1"], 6)
    assert {"precision_at_3", "precision_at_5", "ndcg_at_5", "psp_at_5", "recall_at_100"} <= set(results)
    assert card.data.eval_results[0].dataset_name == "synthetic"


def test_trainer_push_to_hub_from_python(tmp_path, tiny_model, hub_repo_id, hub_server):
    """The library path: DEXMLTrainer(...).train() then trainer.push_to_hub() publishes what the CLI does."""
    from huggingface_hub import HfApi, ModelCard

    from dexml_hf import DEXMLTrainer, DEXMLTrainingArguments
    from dexml_hf.data.synthetic import generate_synthetic_xmc

    xmc = generate_synthetic_xmc(num_labels=60, num_train=128, num_test=40, seed=2)
    args = DEXMLTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=32,
        max_steps=2,
        save_strategy="no",
        report_to="none",
        test_split="test",
        hub_model_id=hub_repo_id,
    )
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=xmc)
    trainer.train()
    trainer.push_to_hub()
    files = set(HfApi().list_repo_files(hub_repo_id))
    assert {"README.md", "label_index/label_index.json", "label_index/embeddings.safetensors"} <= files
    assert "eval_results.json" in files
    card = ModelCard.load(hub_repo_id)
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["precision_at_1"] == round(trainer.test_metrics["precision@1"], 6)
    assert "DEXML dual encoder" in str(card) and "`DecoupledSoftmaxLoss`" in str(card)
