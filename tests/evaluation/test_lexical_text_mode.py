"""The lexical neighbours' own text mode (``lexical_text_mode``: e.g. the documents' full texts beside embedded titles):
the rows are fitted on that mode's training texts, validation, test evaluation and predict compare that mode's
query texts, it is saved with the memory, and a search that would compare the wrong texts is refused. Every fused
ranking is checked against ``LabelIndex.search`` given the right texts by hand, and against the titles' (which must
differ, so an ignored mode fails)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import scipy.sparse as sp

pytest.importorskip("sklearn")

from dexml_hf.evaluation import xmc_metrics  # noqa: E402
from dexml_hf.index import LabelIndex  # noqa: E402
from dexml_hf.lexical import LexicalNeighbours  # noqa: E402

MODE = "title_content"


def _with_content():
    """The synthetic set with a content column that names each query's labels (its titles do not): the lexical
    term of ``title_content`` then finds neighbours that the titles' would not."""
    from dexml_hf.data.dataset import XMCDataset, text_table
    from dexml_hf.data.synthetic import generate_synthetic_xmc

    base = generate_synthetic_xmc(num_labels=40, num_train=160, num_test=40, num_validation=40, seed=0)
    queries = {}
    for split in base.splits:
        y = sp.csr_matrix(base.label_matrices[split])
        content = [
            " ".join(f"code{j} group{j % 7}" for j in y.indices[y.indptr[i] : y.indptr[i + 1]])
            for i in range(y.shape[0])
        ]
        table = base.queries[split]
        queries[split] = text_table(uid=table["uid"], title=table["title"], content=content)
    return XMCDataset(queries=queries, labels=base.labels, label_matrices=base.label_matrices, name="synthetic")


@pytest.fixture(scope="module")
def xmc():
    return _with_content()


def _force_both_terms(memory):
    """λ 0.5 and β 0.7 whatever validation chose on this tiny set, so both terms move the ranking."""
    memory.set_params(lam=0.5)
    memory.set_lexical_params(weight=0.7)


def test_tuning_fits_and_validates_on_the_mode_and_saves_it(tiny_model, xmc, tmp_path, monkeypatch):
    import dexml_hf.retrieval as retrieval

    seen = {}
    real = retrieval.grid_search

    def spy(*args, **kwargs):
        seen["texts"] = kwargs.get("query_texts")
        return real(*args, **kwargs)

    monkeypatch.setattr(retrieval, "grid_search", spy)
    index = LabelIndex.from_texts(tiny_model, xmc.label_texts())
    memory = retrieval.tune_retrieval(tiny_model, index, xmc, lexical=True, lexical_text_mode=MODE)
    assert seen["texts"] == xmc.query_texts("validation", MODE) != xmc.query_texts("validation", "title")
    full = LexicalNeighbours.fit(xmc.query_texts("train", MODE))
    assert memory.lexical.text_mode == MODE and memory.lexical.vectorizer.vocabulary_ == full.vectorizer.vocabulary_
    assert (memory.lexical.matrix != full.matrix).nnz == 0
    assert "code0" not in LexicalNeighbours.fit(xmc.query_texts("train", "title")).vectorizer.vocabulary_
    _force_both_terms(memory)
    assert memory.lexical_text_mode == MODE
    memory.set_lexical_params(weight=0.0)
    assert memory.lexical_text_mode is None  # no lexical term: searches take no texts of that mode
    memory.set_lexical_params(weight=0.7)
    index.save(tmp_path / "idx")
    config = json.loads((tmp_path / "idx" / "label_index.json").read_text())
    assert config["memory"]["lexical"]["text_mode"] == MODE
    loaded = LabelIndex.load(tmp_path / "idx")
    assert loaded.memory.lexical_text_mode == MODE
    assert loaded.memory.select(np.arange(10)).lexical.text_mode == MODE
    same = retrieval.tune_retrieval(tiny_model, index, xmc, lexical=True, lexical_text_mode="title")
    assert same.lexical.text_mode is None  # the embedded texts themselves: no second text to ask for
    with pytest.raises(ValueError, match="needs lexical=True"):
        retrieval.tune_retrieval(tiny_model, index, xmc, lexical_text_mode=MODE)


def test_evaluator_compares_the_modes_texts_and_refuses_without_them(tiny_model, xmc):
    from dexml_hf.evaluation import XMCEvaluator
    from dexml_hf.retrieval import tune_retrieval

    index = LabelIndex.from_texts(tiny_model, xmc.label_texts())
    tune_retrieval(tiny_model, index, xmc, lexical=True, lexical_text_mode=MODE)
    _force_both_terms(index.memory)
    q = index.encode_queries(tiny_model, xmc.query_texts("test"))
    _, expected = index.search(q, 100, texts=xmc.query_texts("test", MODE))
    _, titles = index.search(q, 100, texts=xmc.query_texts("test", "title"))
    assert not np.array_equal(expected, titles)
    evaluator = XMCEvaluator.from_xmc_dataset(xmc, "test", index=index, lexical_query_mode=MODE)
    assert np.array_equal(evaluator.compute_topk(tiny_model)[1], expected)
    with pytest.raises(ValueError, match="'title_content' texts"):
        XMCEvaluator.from_xmc_dataset(xmc, "test", index=index).compute_topk(tiny_model)
    with pytest.raises(ValueError, match="lexical_queries"):
        XMCEvaluator(["a", "b"], xmc.label_texts(), sp.csr_matrix((2, xmc.num_labels)), lexical_queries=["a"])


def test_trainer_option_tunes_and_tests_on_the_mode(tiny_model, xmc, tmp_path):
    """``retrieval_lexical_text_mode`` through DEXMLTrainer: the memory's rows are of that mode, and the test
    metrics the trainer reports are those of the search given that mode's test texts."""
    from dexml_hf.trainer import DEXMLTrainer
    from dexml_hf.training_args import DEXMLTrainingArguments

    args = DEXMLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, max_steps=2,
                                  report_to="none", save_strategy="no", use_cpu=True, test_split="test",
                                  retrieval_memory=True, retrieval_lexical=True, retrieval_lexical_text_mode=MODE,
                                  retrieval_guard="none")  # fmt: skip
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=xmc)
    trainer.train()
    index = trainer.label_index
    memory = index.memory
    assert memory.lexical.text_mode == MODE and len(memory.lexical) == xmc.num_queries("train")
    assert memory.uses_lexical, "the content names the labels: validation must choose the lexical term"
    q = index.encode_queries(trainer.model, xmc.query_texts("test"))
    truth, ip = xmc.label_matrices["test"], xmc.inv_propensity()
    _, ids = index.search(q, 100, texts=xmc.query_texts("test", MODE))
    expected = xmc_metrics(ids, truth, ks=(1, 3, 5), inv_propensity=ip)
    for key in ("precision@1", "precision@5", "psp@5"):
        assert trainer.test_metrics[key] == pytest.approx(expected[key], abs=1e-9)
    trainer.save_model()
    assert f"`{MODE}` texts" in " ".join((tmp_path / "out" / "README.md").read_text().split())


def test_cli_memory_evaluate_and_predict_use_the_mode(tiny_model_path, xmc, tmp_path, capsys, caplog):
    from dexml_hf.cli import main
    from dexml_hf.data import save_to_folder
    from dexml_hf.factory import load_model
    from dexml_hf.predict import Corpus

    save_to_folder(xmc, tmp_path / "ds")
    ds, out = str(tmp_path / "ds"), tmp_path / "idx"
    argv = ["memory", "--model", str(tiny_model_path), "--dataset", ds, "--output", str(out), "--lexical"]
    assert main([*argv, "--lexical_text_mode", MODE]) == 0
    assert '"lexical_text_mode": "title_content"' in capsys.readouterr().out
    index = LabelIndex.load(out)
    assert index.memory.lexical.text_mode == MODE
    _force_both_terms(index.memory)
    index.save(out)
    model = load_model(str(tiny_model_path))
    q = index.encode_queries(model, xmc.query_texts("test"))
    _, ids = index.search(q, 100, texts=xmc.query_texts("test", MODE))

    ev = ["evaluate", "--model", str(tiny_model_path), "--dataset", ds, "--index", str(out), "--no_plot"]
    assert main([*ev, "--output_dir", str(tmp_path / "ev")]) == 0
    assert "(lexical texts: title_content)" in capsys.readouterr().out
    report = json.loads((tmp_path / "ev" / "eval_test.json").read_text())
    assert report["retrieval"]["lexical_text_mode"] == MODE
    expected = xmc_metrics(ids, xmc.label_matrices["test"], ks=(1, 3, 5), inv_propensity=xmc.inv_propensity())
    for key in ("precision@1", "precision@5", "psp@5"):
        assert report["metrics"][key] == pytest.approx(expected[key], abs=1e-9)

    pred = ["predict", "--model", str(tiny_model_path), "--index", str(out), "--k", "5", "--input", ds]
    assert main([*pred, "--output", str(tmp_path / "p.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [r["label_ids"] for r in rows] == ids[:, :5].tolist()
    # rows of the corpus: the dataset's own uids in order, each title beside its full text
    triples = list(Corpus(ds).rows_with_lexical_texts(MODE))
    assert [t[2] for t in triples] == xmc.query_texts("test", MODE) and [t[0] for t in triples] == xmc.query_texts(
        "test"
    )

    (tmp_path / "docs.txt").write_text("\n".join(xmc.query_texts("test", MODE)[:3]) + "\n")
    caplog.set_level(logging.WARNING)
    assert main([*pred[:-2], "--input", str(tmp_path / "docs.txt"), "--output", str(tmp_path / "t.jsonl")]) == 0
    assert "serve both the embedding and the lexical term" in caplog.text


def test_options_are_refused_when_they_cannot_work(tmp_path):
    from dexml_hf.cli import main
    from dexml_hf.errors import UsageError
    from dexml_hf.training_args import DEXMLTrainingArguments

    base = dict(
        output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True, test_split="test", retrieval_memory=True
    )
    with pytest.raises(UsageError, match="needs retrieval_lexical"):
        DEXMLTrainingArguments(**base, retrieval_lexical_text_mode=MODE)
    with pytest.raises(UsageError, match="is unknown"):
        DEXMLTrainingArguments(**base, retrieval_lexical=True, retrieval_lexical_text_mode="abstract")
    argv = ["memory", "--model", "m", "--dataset", "d", "--output", str(tmp_path / "x")]
    assert main([*argv, "--lexical_text_mode", MODE]) == 2 and not (tmp_path / "x").exists()
    assert main([*argv, "--lexical", "--lexical_text_mode", "abstract"]) == 2
