"""Model cards: rendered substrings, valid model-index metadata, no secrets, recipe cards in model_cards/."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from huggingface_hub.repocard import metadata_load

from dexml_hf.model_card import (
    DEXML_CITATION,
    TEMPLATE_PATH,
    DEXMLModelCardData,
    format_metrics_table,
    render_recipe_card,
)
from dexml_hf.training_args import DEXMLTrainingArguments

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate_configs" not in p.parts)
METRICS = {
    "precision@1": 0.5,
    "precision@3": 0.25,
    "precision@5": 0.2,
    "ndcg@1": 0.5,
    "ndcg@3": 0.4,
    "ndcg@5": 0.45,
    "psp@1": 0.3,
    "psp@3": 0.2,
    "psp@5": 0.25,
    "recall@100": 0.875,
}


def test_template_ships_inside_the_package():
    assert TEMPLATE_PATH.is_file() and TEMPLATE_PATH.parent.name == "templates"
    assert TEMPLATE_PATH.parent.parent.name == "dexml_hf"


def test_metrics_table_hand_values():
    table = format_metrics_table({"precision@1": 0.5, "recall@100": 0.875}, baseline={"precision@1": 0.125})
    lines = table.splitlines()
    assert lines[0] == "| model | P@1 | R@100 |"
    assert lines[2] == "| untrained | 12.50 |  |"
    assert lines[3] == "| **this model** | 50.00 | 87.50 |"


def test_card_renders_metrics_loss_and_model_index(tmp_path):
    secret = "hf_notInAnyCard987"
    args = DEXMLTrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, negatives="all", hub_token=secret)
    card = DEXMLModelCardData(
        model_id="me/dexml-test",
        base_model="distilbert-base-uncased",
        dataset_name="eurlex-4k",
        dataset_id="me/eurlex-4k",
        num_labels=3956,
        loss_name="DecoupledSoftmaxLoss",
        loss_config={"scale": 20.0},
        negatives="all",
        metrics=METRICS,
    )
    card.set_hyperparameters(args)
    assert card.hyperparameters["learning_rate"] == 1e-3 and card.hyperparameters["negatives"] == "all"
    assert "hub_token" not in card.hyperparameters and "output_dir" not in card.hyperparameters
    assert "weight_decay" not in card.hyperparameters  # a default value is not listed
    text = card.render()
    assert secret not in text
    for needle in [
        "| **this model** | 50.00 | 25.00 | 20.00 | 50.00 | 40.00 | 45.00 | 30.00 | 20.00 | 25.00 | 87.50 |",
        "`DecoupledSoftmaxLoss`",
        '"scale": 20.0',
        DEXML_CITATION.splitlines()[0],
        "LabelIndex.load",
        'snapshot_download("me/dexml-test")',
        "`learning_rate`: `0.001`",
        "Sentence Transformers:",
        "3,956 labels",
    ]:
        assert needle in text, needle
    path = tmp_path / "README.md"
    path.write_text(text)
    meta = metadata_load(path)
    assert meta["base_model"] == "distilbert-base-uncased" and meta["datasets"] == ["me/eurlex-4k"]
    loaded = ModelCard(text)
    results = {r.metric_type: r for r in loaded.data.eval_results}
    assert set(results) == {key.replace("@", "_at_") for key in METRICS}
    assert results["precision_at_1"].metric_value == 0.5 and results["precision_at_1"].dataset_type == "me/eurlex-4k"
    assert results["recall_at_100"].metric_name == "R@100" and results["psp_at_5"].dataset_split == "test"


def test_loss_object_fills_name_config_and_citation(tiny_model):
    from dexml_hf.losses import SoftTopKLoss

    card = DEXMLModelCardData()
    card.set_loss(SoftTopKLoss(tiny_model, scale=10.0, k=5))
    assert card.loss_name == "SoftTopKLoss" and card.loss_config["scale"] == 10.0
    assert any("gupta2024" in c for c in card.citations.values())
    assert "SoftTopKLoss" in card.render() and "loss:SoftTopKLoss" in card.tags


def test_synthetic_card_says_so():
    text = DEXMLModelCardData(dataset_name="synthetic", dataset_is_synthetic=True, metrics=METRICS).render()
    assert "trained on the *synthetic* dataset" in text


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.relative_to(ROOT / "recipes").as_posix())
def test_recipe_cards_rendered_into_model_cards(recipe):
    text = render_recipe_card(recipe)
    name = recipe.relative_to(ROOT / "recipes").as_posix()
    assert f"--config recipes/{name}" in text
    assert "model-index" not in text and "Not yet measured" in text
    gpu_recipe = recipe.stem != "quickstart" and "cpu" not in recipe.stem.split("-")
    assert ("accelerate launch" in text) == gpu_recipe  # a CPU recipe's card never tells users to launch 4 GPUs
    rendered = (
        ROOT
        / "model_cards"
        / f"{recipe.parent.name if recipe.parent.name != 'recipes' else 'quickstart'}-{recipe.stem}.md"
    )
    if recipe.stem == "quickstart":
        rendered = ROOT / "model_cards" / "quickstart.md"
    assert rendered.is_file(), f"render it: dexml-hf card --recipe recipes/{name} --output {rendered}"
    body = rendered.read_text()
    if "model-index:" in body:  # a real run's card (quickstart, movielens): its metrics are in the header and table
        assert "| **this model** |" in body and "Not yet measured" not in body
        assert f"--config recipes/{name}" in body or recipe.stem == "quickstart"
    else:
        assert f"--config recipes/{name}" in body and "Not yet measured" in body


def test_card_shows_the_saved_approximate_index_and_its_recall(tiny_model_path, tiny_model, tmp_path):
    """A model folder whose label_index/ has a tuned approximate index: its card (rendered from
    ``label_index.json``'s "approximate" entry) names the kind, codes, parameters, recall@k and tuning queries."""
    import json

    from dexml_hf.cli import main
    from dexml_hf.index import LabelIndex

    pytest.importorskip("faiss")
    folder = tmp_path / "model"
    tiny_model.save(str(folder))
    (tmp_path / "labels.txt").write_text("".join(f"topic {i} word{i % 7}\n" for i in range(120)))
    (tmp_path / "q.txt").write_text("".join(f"about word{i % 7} and topic {i}\n" for i in range(30)))
    argv = ["index", "build", "--model", str(folder), "--labels", str(tmp_path / "labels.txt")]
    argv += ["--output", str(folder / "label_index"), "--approximate", "ivf", "--codes", "sq8"]
    argv += ["--ann_params", "nlist=8", "--target_recall", "0.9", "--tune_k", "5", "--tune_queries"]
    assert main([*argv, str(tmp_path / "q.txt")]) == 0
    entry = json.loads((folder / "label_index" / "label_index.json").read_text())["approximate"]
    recall = entry["recall"]

    card = DEXMLModelCardData(approximate_search=entry)
    text = card.render()
    assert "### Approximate search" in text and "faiss `ivf`, `sq8`" in text
    assert f"the top {entry['params']['rerank']}·k candidates re-ranked exactly" in text  # the tuned depth
    assert f"nlist=8, nprobe={entry['params']['nprobe']}" in text
    assert f"recall@5 against exact search: **{recall['recall']:.4f}** (target\n0.9) on 30 tuning queries" in text
    # the same from the loaded index (what DEXMLTrainer.save_model does with its label index)
    card = DEXMLModelCardData()
    card.set_label_index(LabelIndex.load(folder / "label_index"))
    assert card.render() == text
    assert "Approximate search" not in DEXMLModelCardData().render()  # exact index: no such section


def test_trainer_save_model_card_tells_of_its_label_index_approximate_index(tiny_model, tmp_path):
    from dexml_hf.index import LabelIndex
    from dexml_hf.trainer import DEXMLTrainer
    from tests.trainer.test_trainer import _args, make_xmc

    pytest.importorskip("faiss")
    xmc = make_xmc(num_labels=60)
    trainer = DEXMLTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=xmc)
    trainer.label_index = LabelIndex.from_texts(tiny_model, xmc.label_texts(), label_ids=list(xmc.labels["uid"]))
    queries = trainer.label_index.encode_queries(tiny_model, xmc.query_texts("test"))
    trainer.label_index.build_approximate("hnsw", target_recall=0.95, tune_queries=queries, tune_k=10, M=8)
    trainer.save_model()
    readme = (Path(trainer.args.output_dir) / "README.md").read_text()
    recall = trainer.label_index.approximate.recall
    assert "faiss `hnsw`, `flat`" in readme and f"**{recall['recall']:.4f}**" in readme
    assert f"on {len(queries)} tuning queries" in readme
    assert LabelIndex.load(Path(trainer.args.output_dir) / "label_index").approximate.recall == recall
