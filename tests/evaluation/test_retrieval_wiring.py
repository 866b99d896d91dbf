"""Label-text augmentation and the retrieval memory through DEXMLTrainer, ``dexml-hf predict`` and ``evaluate``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dexml_hf.cli import main
from dexml_hf.errors import UsageError
from dexml_hf.index import LabelIndex
from dexml_hf.trainer import DEXMLTrainer
from dexml_hf.training_args import DEXMLTrainingArguments


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=16,
        max_steps=3,
        learning_rate=5e-3,
        report_to="none",
        save_strategy="no",
        seed=1,
        use_cpu=True,
        test_split="test",
    )
    base.update(kw)
    return DEXMLTrainingArguments(**base)


@pytest.fixture()
def synthetic():
    from dexml_hf.data.synthetic import generate_synthetic_xmc

    return generate_synthetic_xmc(num_labels=40, num_train=120, num_test=30, num_validation=30, seed=0)


def test_options_are_validated(tmp_path):
    with pytest.raises(UsageError, match="needs augment_with_label_texts"):
        _args(tmp_path, label_cooccurrence_top=3)
    with pytest.raises(UsageError, match="retrieval_metric"):
        _args(tmp_path, retrieval_metric="p@1")
    with pytest.raises(UsageError, match="retrieval_guard_margin"):
        _args(tmp_path, retrieval_guard_margin=-0.5)
    with pytest.raises(UsageError, match="needs test_split"):
        _args(tmp_path, retrieval_memory=True, test_split=None)


@pytest.mark.parametrize("negatives", ["in_batch", "all_cached"])
def test_trainer_trains_on_label_rows_and_evaluates_on_the_original(tiny_model, synthetic, tmp_path, negatives):
    args = _args(tmp_path, augment_with_label_texts=True, label_cooccurrence_top=2, negatives=negatives)
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=synthetic)
    assert trainer.xmc.num_queries("train") == 120 + 40 and trainer.source_xmc is synthetic
    assert trainer.train_matrix.shape == (160, 40) and trainer.model.model_card_data.num_train_queries == 120
    view = trainer.training_view(0)
    assert set(synthetic.label_texts()) <= set(view["query"])  # the label texts are training queries
    trainer.train()
    assert trainer.test_metrics is not None and "psp@5" in trainer.test_metrics


def test_memory_is_tuned_saved_and_used_by_predict_and_evaluate(tiny_model, synthetic, tmp_path, capsys):
    args = _args(tmp_path, retrieval_memory=True, retrieval_metric="precision@1+psp@5", retrieval_guard_margin=0.5)
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=synthetic)
    trainer.train()
    memory = trainer.label_index.memory
    assert memory is not None and len(memory) == 120 and memory.tuning["split"] == "validation"
    assert memory.tuning["metric"] == "precision@1+psp@5"  # the trainer's criterion reached the tuning
    assert memory.tuning["guard"] == "psp@1" and memory.tuning["guard_margin"] == 0.5
    assert trainer.dual_encoder_metrics is not None
    trainer.save_model()
    out = tmp_path / "out"
    results = json.loads((out / "eval_results.json").read_text())
    assert results["retrieval"]["lam"] == memory.lam and "dual_encoder_metrics" in results
    loaded = LabelIndex.load(out / "label_index")
    assert loaded.memory is not None and loaded.memory.k == memory.k
    card = " ".join((out / "README.md").read_text().split())
    assert "validation psp@1 cleared the dual encoder's own by 0.5 standard errors" in card

    texts = synthetic.query_texts("test")[:3]
    capsys.readouterr()  # the training logs
    argv = ["predict", "--model", str(out), "--index", str(out / "label_index"), "--k", "3", "--json", "true"]
    assert main([*argv, *texts]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    expected = loaded.search_texts(trainer.model, texts, k=3)
    for line, exp in zip(lines, expected):
        assert [h["id"] for h in line["labels"]] == [h["id"] for h in exp]
        assert [h["score"] for h in line["labels"]] == pytest.approx([h["score"] for h in exp], abs=1e-6)

    from dexml_hf.data import save_to_folder

    save_to_folder(synthetic, tmp_path / "ds")
    report_dir = tmp_path / "eval"
    argv = ["evaluate", "--model", str(out), "--dataset", str(tmp_path / "ds"), "--output_dir", str(report_dir)]
    assert main([*argv, "--index", str(out / "label_index"), "--no_plot"]) == 0
    assert "retrieval-augmented ranking" in capsys.readouterr().out
    report = json.loads((report_dir / "eval_test.json").read_text())
    assert report["retrieval"]["lam"] == memory.lam
    q = loaded.encode_queries(trainer.model, synthetic.query_texts("test"))
    from dexml_hf.evaluation import xmc_metrics

    _, ids = loaded.search(q, k=100)
    expected = xmc_metrics(
        ids, synthetic.label_matrices["test"], ks=(1, 3, 5), inv_propensity=synthetic.inv_propensity()
    )
    for key in ("precision@1", "precision@5", "psp@5"):
        assert report["metrics"][key] == pytest.approx(expected[key], abs=1e-9)
    np.testing.assert_allclose(results["metrics"]["precision@1"], expected["precision@1"], atol=1e-9)


def test_memory_command_tunes_on_validation_and_saves(tiny_model, tiny_model_path, synthetic, tmp_path, capsys):
    """`dexml-hf memory` for an existing model: the same memory and choice as tune_retrieval on the same data."""
    from dexml_hf.data import save_to_folder
    from dexml_hf.retrieval import tune_retrieval

    save_to_folder(synthetic, tmp_path / "ds")
    out = tmp_path / "idx"
    argv = ["memory", "--model", str(tiny_model_path), "--dataset", str(tmp_path / "ds"), "--output", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "retrieval memory of 120 queries" in captured.out
    assert "Batches" in captured.err and "choosing λ, k, T" in captured.err  # the long steps show progress
    saved = LabelIndex.load(out)
    expected_index = LabelIndex.from_texts(tiny_model, synthetic.label_texts())
    expected = tune_retrieval(
        tiny_model, expected_index, synthetic, holdout=24, inv_propensity=synthetic.inv_propensity()
    )
    assert saved.memory.tuning["split"] == "validation"  # chosen on validation, not test
    assert (saved.memory.lam, saved.memory.k, saved.memory.temperature) == (
        expected.lam,
        expected.k,
        expected.temperature,
    )
    assert main(["memory", "--model", str(tiny_model_path), "--dataset", str(tmp_path / "ds")]) == 2
    # a combined criterion reaches the tuning (stored with the memory); a malformed one is one CLI error
    assert main([*argv, "--metric", "precision@1+psp@5"]) == 0
    assert LabelIndex.load(out).memory.tuning["metric"] == "precision@1+psp@5"
    assert main([*argv, "--metric", "precision@1+psp5"]) == 2
    assert "--metric" in capsys.readouterr().err
    assert LabelIndex.load(out).memory.tuning["guard_margin"] == 2.0  # the default
    assert main([*argv, "--guard_margin", "0.25"]) == 0
    assert LabelIndex.load(out).memory.tuning["guard_margin"] == 0.25
    assert main([*argv, "--guard_margin", "-1"]) == 2
    assert "--guard_margin" in capsys.readouterr().err


def test_memory_command_dtype_reaches_the_memory_embeddings(tiny_model_path, synthetic, tmp_path):
    """`dexml-hf memory --dtype bfloat16`: label and memory embeddings are those of the hand-cast bf16 encoder."""
    import torch
    from sentence_transformers import SentenceTransformer

    from dexml_hf.data import save_to_folder
    from dexml_hf.encoding import encode_texts

    save_to_folder(synthetic, tmp_path / "ds")
    out = tmp_path / "idx"
    argv = ["memory", "--model", str(tiny_model_path), "--dataset", str(tmp_path / "ds"), "--output", str(out)]
    assert main([*argv, "--dtype", "bfloat16"]) == 0
    bf16 = SentenceTransformer(str(tiny_model_path), device="cpu").to(torch.bfloat16)
    want = encode_texts(bf16, synthetic.label_texts(), "label").numpy()
    np.testing.assert_allclose(np.asarray(LabelIndex.load(out).embeddings, dtype=np.float32), want, atol=1e-6)
