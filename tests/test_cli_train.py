"""`dexml-hf train` end to end through ``dexml_hf.cli.main``, and the synthetic default data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from dexml_hf.cli import main
from dexml_hf.data.synthetic import _TOPICS, generate_synthetic_tables, generate_synthetic_xmc
from dexml_hf.evaluation import xmc_metrics

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- synthetic data
def test_synthetic_data_is_xmc_shaped_and_seeded():
    t = generate_synthetic_tables(num_labels=300, num_train=3000, num_test=100, seed=3)
    texts, y = t["splits"]["train"]
    assert y.shape == (3000, 300)
    labels_per_query = np.diff(y.indptr)
    assert labels_per_query.min() >= 1 and labels_per_query.mean() > 1.5  # several labels per query
    freq = np.sort(np.asarray(y.sum(0)).ravel())[::-1]
    assert freq[0] > 10 * np.median(freq)  # power law: a head far above the median label
    assert freq[: len(freq) // 10].sum() > 0.4 * freq.sum()  # top 10% of labels hold a big share
    assert len(set(t["label_titles"])) == 300  # distinct label texts
    # Label texts relate to query texts: most queries share a word with, or draw words from, their labels' topics.
    topic_words = [set(words.split()) for words in _TOPICS.values()]
    related = 0
    for text, row in zip(texts[:500], range(500)):
        words = set(text.split())
        label_ids = y.indices[y.indptr[row] : y.indptr[row + 1]]
        related += all(words & topic_words[t["label_topics"][j]] for j in label_ids)
    assert related == 500
    again = generate_synthetic_tables(num_labels=300, num_train=3000, num_test=100, seed=3)
    assert again["splits"]["train"][0] == texts and (again["splits"]["train"][1] != y).nnz == 0
    other = generate_synthetic_tables(num_labels=300, num_train=3000, num_test=100, seed=4)
    assert other["splits"]["train"][0] != texts


def test_synthetic_xmc_dataset():
    ds = generate_synthetic_xmc(num_labels=50, num_train=100, num_test=20, num_validation=10, seed=1)
    assert ds.num_labels == 50 and ds.num_queries("train") == 100 and ds.num_queries("validation") == 10
    assert ds.name == "synthetic"
    with pytest.raises(ValueError, match="num_labels"):
        generate_synthetic_tables(num_labels=1)


# ---------------------------------------------------------------------------------------------- the CLI
def _tiny_recipe(tmp_path: Path, model_path: Path, **extra) -> Path:
    recipe = {
        "model_name_or_path": str(model_path),
        "dataset": "synthetic",
        "synthetic_num_labels": 120,
        "synthetic_num_train": 320,
        "synthetic_num_test": 100,
        "max_seq_length": 24,
        "evaluate_untrained": True,
        "per_device_train_batch_size": 32,
        "learning_rate": "1e-3",
        "num_train_epochs": 3,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 5,
        "temperature": 0.05,
        "negatives": "in_batch",
        "output_dir": str(tmp_path / "from-recipe"),
        **extra,
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_cli_trains_evaluates_saves(tmp_path, tiny_model_path, capsys):
    recipe = _tiny_recipe(tmp_path, tiny_model_path)
    out = tmp_path / "model"
    # Overrides on the command line win over the recipe (output_dir, seed).
    rc = main(["train", "--config", str(recipe), "--output_dir", str(out), "--seed", "7"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| untrained |" in printed and "| **this model** |" in printed and "P@1" in printed
    assert not (tmp_path / "from-recipe").exists()
    for name in (
        "modules.json",
        "README.md",
        "label_index/label_index.json",
        "eval_results.json",
        "train_config.yaml",
    ):
        assert (out / name).exists(), name
    results = json.loads((out / "eval_results.json").read_text())
    trained, untrained = results["metrics"], results["untrained_metrics"]
    assert set(trained) >= {"precision@1", "precision@5", "ndcg@3", "psp@5", "recall@100"}
    # A random tiny BERT knows nothing; three epochs of decoupled-softmax training must clearly help.
    assert trained["precision@1"] > untrained["precision@1"] + 0.1
    assert yaml.safe_load((out / "train_config.yaml").read_text())["seed"] == 7
    card = (out / "README.md").read_text()
    assert "gupta2024dualencoders" in card and "| **this model** |" in card and "synthetic" in card

    # The saved model + label index reproduce the printed evaluation's top-k.
    from sentence_transformers import SentenceTransformer

    from dexml_hf.index import LabelIndex

    model = SentenceTransformer(str(out))
    index = LabelIndex.load(out / "label_index")
    tables = generate_synthetic_tables(num_labels=120, num_train=320, num_test=100, seed=0)
    assert f"queries = [{tables['splits']['test'][0][0]!r}]" in card  # the usage snippet asks a real test query
    data = generate_synthetic_xmc(num_labels=120, num_train=320, num_test=100, seed=0)
    _, ids = index.search(index.encode_queries(model, data.query_texts("test")), k=100)
    recomputed = xmc_metrics(ids, data.label_matrices["test"], ks=(1, 3, 5), inv_propensity=data.inv_propensity())
    for key in ("precision@1", "precision@5", "ndcg@3", "psp@5", "recall@100"):
        assert recomputed[key] == pytest.approx(trained[key], abs=1e-9), key


def test_cli_bad_option_is_a_clear_error(tmp_path, capsys):
    assert main(["train", "--no_such_flag", "1"]) == 2
    err = capsys.readouterr().err
    assert "no_such_flag" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["train", "--gradient_accumulation_steps", "0"]) == 2
    err = capsys.readouterr().err
    assert "gradient_accumulation_steps" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_accelerate_launch_cpu_config(tmp_path, tiny_model_path):
    """The same command under `accelerate launch` with the CPU config (one process)."""
    recipe = _tiny_recipe(tmp_path, tiny_model_path, num_train_epochs=1, evaluate_untrained=False)
    out = tmp_path / "accel"
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file",
        str(ROOT / "recipes" / "accelerate_configs" / "cpu.yaml"),
        "-m", "dexml_hf.cli", "train", "--config", str(recipe), "--output_dir", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| **this model** |" in proc.stdout and (out / "label_index" / "label_index.json").exists()


def _popularity_precision_at_5(folder: Path) -> float:
    """P@5 of ranking movies by their number of >= 4 ratings in u1.base, seen movies removed (plain Python)."""
    base = [tuple(map(int, line.split())) for line in (folder / "u1.base").read_text().splitlines()]
    test = [tuple(map(int, line.split())) for line in (folder / "u1.test").read_text().splitlines()]
    likes: dict[int, int] = {}
    seen: dict[int, set] = {}
    for user, item, rating, _ in base:
        seen.setdefault(user, set()).add(item)
        if rating >= 4:
            likes[item] = likes.get(item, 0) + 1
    ranking = sorted(likes, key=lambda item: (-likes[item], item))
    liked_test: dict[int, set] = {}
    for user, item, rating, _ in test:
        if rating >= 4:
            liked_test.setdefault(user, set()).add(item)
    hits = []
    for user, truth in liked_test.items():
        top = [item for item in ranking if item not in seen.get(user, set())][:5]
        hits.append(len(truth & set(top)) / 5)
    return sum(hits) / len(hits)


@pytest.mark.slow
def test_movielens_recipe_beats_popularity(tmp_path, shared_data):
    """The MovieLens recipe, as shipped, on CPU: its P@5 on u1.test beats the most-liked-movies baseline."""
    folder = shared_data / "movielens-100k"
    popularity = _popularity_precision_at_5(folder)
    out = tmp_path / "movielens"
    recipe = ROOT / "recipes" / "movielens" / "cpu.yaml"
    assert main(["train", "--config", str(recipe), "--dataset", str(folder), "--output_dir", str(out)]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert popularity == pytest.approx(0.2557, abs=5e-4)  # the figure quoted in benchmarks/RESULTS.md
    assert results["metrics"]["precision@5"] > popularity
    assert results["untrained_metrics"]["precision@5"] < popularity


def test_dry_run_prints_the_effective_settings_without_loading(capsys, tmp_path):
    """`--dry_run true` on a paper recipe: the settings a run would use, overrides included, and nothing written
    (the recipe's model and data do not even exist here)."""
    code = main(
        [
            "train",
            "--config",
            str(ROOT / "recipes" / "eurlex-4k" / "distilbert.yaml"),
            "--dry_run",
            "true",
            "--max_length",
            "16",
            "--learning_rate",
            "3e-5",
            "--output_dir",
            str(tmp_path / "out"),
        ]
    )
    assert code == 0
    rows = dict(line.split(None, 1) for line in capsys.readouterr().out.strip().splitlines())
    recipe = yaml.safe_load((ROOT / "recipes" / "eurlex-4k" / "distilbert.yaml").read_text())
    assert rows["model"] == recipe["model_name_or_path"]
    assert rows["world_size"] == "1" and rows["global_batch_size"] == str(recipe["per_device_train_batch_size"])
    assert float(rows["learning_rate"]) == 3e-5 and float(rows["effective_learning_rate"]) == 3e-5
    assert rows["max_length"] == "16"
    assert rows["negatives"] == recipe["negatives"]
    assert rows["selection"].startswith("precision@1 on ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("mode", ["in_batch", "all"])
def test_cli_soft_topk_num_pos_reaches_the_loss(tmp_path, tiny_model_path, mode):
    """`--topk_k num_pos` from the command line trains soft top-k with k = each query's positives (no cap)."""
    recipe = _tiny_recipe(tmp_path, tiny_model_path, num_train_epochs=1, evaluate_untrained=False)
    out = tmp_path / "model"
    argv = ["train", "--config", str(recipe), "--output_dir", str(out), "--loss", "soft_topk"]
    assert main([*argv, "--topk_k", "num_pos", "--negatives", mode, "--max_steps", "2"]) == 0
    card = (out / "README.md").read_text()
    assert "SoftTopKLoss" in card and '"k": "num_pos"' in card and '"max_positives": null' in card
