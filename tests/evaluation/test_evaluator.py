"""XMCEvaluator: numbers equal a brute-force pipeline; works inside SentenceTransformerTrainer for model selection."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dexml_hf.evaluation import XMCEvaluator, inv_propensity, xmc_metrics

WORDS = ["apple", "river", "engine", "violin", "planet", "garden", "bridge", "winter", "copper", "forest", "castle"]
LABELS = [f"{a} {b}" for a, b in zip(WORDS, WORDS[1:] + WORDS[:1])]  # 11 labels


def _problem(n=24, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols, queries = [], [], []
    for i in range(n):
        true = rng.choice(len(LABELS), rng.integers(1, 4), replace=False) if i % 7 else np.array([], dtype=int)
        words = [w for t in true for w in LABELS[t].split()[:1]] + [WORDS[rng.integers(len(WORDS))]]
        queries.append(" ".join(words) + f" question {i}")
        rows += [i] * len(true)
        cols += true.tolist()
    truth = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, len(LABELS)))
    return queries, truth


def test_evaluator_equals_bruteforce_pipeline(tiny_model, tmp_path):
    queries, truth = _problem()
    filters = np.array([[0, 3], [1, 0], [5, 2], [5, 7]])
    w = inv_propensity(np.asarray(truth.sum(0)).ravel(), truth.shape[0])
    evaluator = XMCEvaluator(queries, LABELS, truth, filters=filters, inv_propensity=w, ks=(1, 3, 5), name="toy")
    out = evaluator(tiny_model, output_path=str(tmp_path), epoch=1, steps=10)

    # Independent pipeline: full score matrix of normalised embeddings, filters to -inf, stable sort.
    qe = torch.nn.functional.normalize(tiny_model.encode(queries, convert_to_tensor=True), dim=1)
    le = torch.nn.functional.normalize(tiny_model.encode(LABELS, convert_to_tensor=True), dim=1)
    scores = qe @ le.T
    scores[filters[:, 0], filters[:, 1]] = float("-inf")
    topk = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :11].numpy()
    expected = xmc_metrics(topk, truth, ks=(1, 3, 5), inv_propensity=w)

    assert set(out) == {f"toy_{key}" for key in expected}
    for key, value in expected.items():
        assert out[f"toy_{key}"] == pytest.approx(value, abs=1e-9)
    assert evaluator.primary_metric == "toy_precision@1" and evaluator.greater_is_better
    assert evaluator.metrics == out
    csv_lines = (tmp_path / "XMC_evaluation_toy_results.csv").read_text().splitlines()
    assert csv_lines[0].startswith("epoch,steps,precision@1") and csv_lines[1].startswith("1,10,")
    assert tiny_model.model_card_data.eval_results_dict[evaluator] == out


def test_evaluator_validates_shapes():
    queries, truth = _problem()
    with pytest.raises(ValueError, match="truth has shape"):
        XMCEvaluator(queries[:-1], LABELS, truth)
    with pytest.raises(ValueError, match="inv_propensity"):
        XMCEvaluator(queries, LABELS, truth, inv_propensity=np.ones(3))


def _xmc(queries, truth):
    from dexml_hf.data import XMCDataset, text_table

    tables = {split: text_table(title=queries) for split in ("train", "test")}
    return XMCDataset(
        tables,
        text_table(title=LABELS),
        {"train": truth, "test": truth},
        filters={"test": np.array([[0, 1], [2, 2], [12, 3]])},
        name="fake",
    )


def test_from_xmc_dataset_uses_split_filters_and_propensities(tiny_model):
    queries, truth = _problem()
    ev = XMCEvaluator.from_xmc_dataset(_xmc(queries, truth), split="test", max_queries=10)
    assert ev.name == "fake" and len(ev.queries) == 10 and ev.truth.shape == (10, 11)
    np.testing.assert_array_equal(ev.filters, [[0, 1], [2, 2]])  # the pair of query 12 left with the query
    np.testing.assert_allclose(ev.inv_propensity, inv_propensity(np.asarray(truth.sum(0)).ravel(), len(queries)))
    out = ev(tiny_model)
    assert "fake_psp@5" in out and "fake_recall@10" in out
    with pytest.raises(ValueError, match="no split"):
        XMCEvaluator.from_xmc_dataset(_xmc(queries, truth), split="validation")


def test_trainer_logs_metric_and_loads_best_checkpoint(tiny_model, tmp_path):
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    queries, truth = _problem(n=30, seed=1)
    pairs = [(queries[i], LABELS[j]) for i, j in zip(*truth.nonzero())]
    train = Dataset.from_dict({"anchor": [p[0] for p in pairs], "positive": [p[1] for p in pairs]})
    evaluator = XMCEvaluator(queries, LABELS, truth, name="xmc", ks=(1, 3))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=8,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
        metric_for_best_model="xmc_precision@1",
        greater_is_better=True,
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        seed=0,
    )
    trainer = SentenceTransformerTrainer(
        model=tiny_model,
        args=args,
        train_dataset=train,
        loss=MultipleNegativesRankingLoss(tiny_model),
        evaluator=evaluator,
    )
    trainer.train()
    logged = [(h["step"], h["eval_xmc_precision@1"]) for h in trainer.state.log_history if "eval_xmc_precision@1" in h]
    assert [step for step, _ in logged] == [2, 4, 6, 8]
    best_step, best_value = max(logged, key=lambda sv: (sv[1], -sv[0]))  # first step reaching the maximum
    assert trainer.state.best_metric == pytest.approx(best_value)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{best_step}")
    # The model in hand after training is the best checkpoint: evaluating it again gives the best value.
    assert evaluator(trainer.model)["xmc_precision@1"] == pytest.approx(best_value)
