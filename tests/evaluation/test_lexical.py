"""Lexical neighbours of the retrieval memory (TF-IDF cosine over the training queries' words), against
brute-force references: the neighbours, the mixed neighbour term, the fused ranking, the second tuning stage,
saving and loading, and the CLI / trainer options that switch it on."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

pytest.importorskip("sklearn")

from dexml_hf.evaluation import xmc_metrics  # noqa: E402
from dexml_hf.index import LabelIndex  # noqa: E402
from dexml_hf.lexical import LEXICAL_FILE, LEXICAL_TERMS_FILE, LexicalNeighbours  # noqa: E402
from dexml_hf.retrieval import RetrievalMemory, grid_search  # noqa: E402

WORDS = "tax income rust borrow join table pasta sauce court appeal fishery quota".split()


def _texts(rng, n, length=4):
    return [" ".join(rng.choice(WORDS, size=length)) for _ in range(n)]


def _unit(a):
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _bruteforce_neighbours(lexical, texts, k):
    """Dense cosine of the fitted vectoriser's rows, stable sort (ties to the lower row), zero overlap dropped."""
    sims = (lexical.transform(texts) @ lexical.matrix.T).toarray()
    out = []
    for row in sims:
        order = [j for j in np.argsort(-row, kind="stable") if row[j] > 0][:k]
        out.append(order + [-1] * (k - len(order)))
    return np.array(out), sims


def test_tfidf_cosine_by_hand():
    """Sublinear tf, smoothed idf, l2 rows, unigrams and bigrams: one cosine computed by hand."""
    texts = ["income tax", "tax tax court", "pasta sauce"]
    lexical = LexicalNeighbours.fit(texts, min_df=1)
    n = 3

    def idf(df):
        return math.log((1 + n) / (1 + df)) + 1

    # "income tax" -> income, tax, "income tax" (each tf 1); "tax tax court" -> tax (tf 2), court, "tax tax", "tax court"
    q = {"income": idf(1), "tax": idf(2), "income tax": idf(1)}
    d = {"tax": (1 + math.log(2)) * idf(2), "court": idf(1), "tax tax": idf(1), "tax court": idf(1)}
    cos = q["tax"] * d["tax"] / (np.linalg.norm(list(q.values())) * np.linalg.norm(list(d.values())))
    sims, rows = lexical.neighbours(["income tax"], 3)
    assert rows[0].tolist() == [0, 1, -1]  # "pasta sauce" shares no term: never a neighbour
    assert sims[0, 0] == pytest.approx(1.0, abs=1e-6) and sims[0, 1] == pytest.approx(cos, rel=1e-5)
    assert sims[0, 2] == -np.inf


@pytest.mark.parametrize("max_block", [7, 1 << 20])
def test_neighbours_equal_bruteforce_with_chunks_ties_and_exclusions(max_block):
    rng = np.random.default_rng(3)
    memory_texts = _texts(rng, 60, 3) + ["tax income"] * 3  # exact duplicates: ties go to the lower row
    lexical = LexicalNeighbours.fit(memory_texts, min_df=1)
    queries = _texts(rng, 17, 2) + ["income tax", "zzz unknown words"]
    ref, dense = _bruteforce_neighbours(lexical, queries, 8)
    sims, rows = lexical.neighbours(queries, 8, max_block=max_block)
    np.testing.assert_array_equal(rows, ref)
    valid = ref >= 0
    np.testing.assert_allclose(sims[valid], np.take_along_axis(dense, np.maximum(ref, 0), 1)[valid], rtol=1e-6)
    assert (rows[-1] == -1).all() and np.isneginf(sims[-1]).all()  # no shared word: no neighbour at all
    # excluded (query, row) pairs are never neighbours; the next ones move up
    exclude = sp.csr_matrix((np.ones(len(queries)), (np.arange(len(queries)), np.maximum(ref[:, 0], 0))),
                            shape=(len(queries), len(memory_texts)))  # fmt: skip
    _, rows_ex = lexical.neighbours(queries, 8, exclude=exclude, max_block=max_block)
    for i in range(len(queries)):
        if ref[i, 0] >= 0:
            assert ref[i, 0] not in rows_ex[i] and rows_ex[i, 0] == ref[i, 1]


def _fused_reference(q, labels, mem, y, texts, lexical, lam, k, t, beta, kl, tl, gamma=0.0):
    """Dense: R = (1 − β)·R_dense + β·R_lexical (softmax votes), λ_q gate, fused = λ_q·s + (1 − λ_q)·R."""
    ref_rows, dense = _bruteforce_neighbours(lexical, texts, kl)
    q = _unit(q)
    out = []
    for i, qi in enumerate(q):
        s, sims = labels @ qi, mem @ qi
        nn = np.argsort(-sims, kind="stable")[:k]
        w = np.exp(sims[nn] / t)
        r = ((w / w.sum())[:, None] * y[nn]).sum(axis=0)
        ln = ref_rows[i][ref_rows[i] >= 0]
        r_lex = np.zeros(y.shape[1])
        if len(ln):
            wl = np.exp(dense[i, ln] / tl)
            r_lex = ((wl / wl.sum())[:, None] * y[ln]).sum(axis=0)
        r = (1 - beta) * r + beta * r_lex
        lq = 1 - (1 - lam) * r.max() ** gamma if gamma else lam
        out.append(np.argsort(-(lq * s + (1 - lq) * r), kind="stable"))
    return np.array(out)


def _problem(seed=7, n_mem=120, n_q=30, n_labels=12):
    rng = np.random.default_rng(seed)
    labels, mem, q = (
        _unit(rng.normal(size=(n_labels, 6))),
        _unit(rng.normal(size=(n_mem, 6))),
        rng.normal(size=(n_q, 6)),
    )
    y = (rng.random((n_mem, n_labels)) < 0.15).astype(float)
    return rng, labels, mem, q, y


def test_fused_search_with_lexical_term_equals_the_dense_reference():
    rng, labels, mem, q, y = _problem()
    mem_texts, q_texts = _texts(rng, len(mem)), _texts(rng, len(q), 3)
    lexical = LexicalNeighbours.fit(mem_texts, min_df=1)
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y), lam=0.5, k=7,
                             temperature=0.1, agreement=2.0, lexical=lexical, lexical_weight=0.6, lexical_k=5,
                             lexical_temperature=0.05)  # fmt: skip
    index = LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True, memory=memory)
    qt = torch.tensor(q, dtype=torch.float32)
    _, ids = index.search(qt, k=6, texts=q_texts)
    ref = _fused_reference(q, labels, mem, y, q_texts, lexical, 0.5, 7, 0.1, 0.6, 5, 0.05, gamma=2.0)
    np.testing.assert_array_equal(ids, ref[:, :6])
    chunked = LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True, memory=memory)
    from dexml_hf.retrieval import search_with_memory

    np.testing.assert_array_equal(
        search_with_memory(chunked, memory, chunked._prepare_queries(qt), 6, query_chunk=4, texts=q_texts)[1], ids
    )
    # the lexical term really acts, and a search without the texts is refused, not silently dense
    memory.set_lexical_params(weight=0.0)
    assert not np.array_equal(index.search(qt, k=6)[1], ids)
    memory.set_lexical_params(weight=0.6)
    with pytest.raises(ValueError, match="pass the query texts"):
        index.search(qt, k=6)
    with pytest.raises(ValueError, match="3 query texts for 30"):
        index.search(qt, k=6, texts=q_texts[:3])
    with pytest.raises(ValueError, match="lexical_weight must be in"):
        memory.set_lexical_params(weight=1.0)
    with pytest.raises(ValueError, match="needs a memory built with lexical"):
        RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y), lexical_weight=0.3)


def test_removed_labels_never_come_back_through_the_lexical_term():
    rng, labels, mem, q, y = _problem(seed=2)
    mem_texts = _texts(rng, len(mem))
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y), lam=0.3, k=5,
                             lexical=LexicalNeighbours.fit(mem_texts, min_df=1), lexical_weight=0.9)  # fmt: skip
    index = LabelIndex(torch.tensor(labels, dtype=torch.float32), label_ids=[f"L{i}" for i in range(12)],
                       normalized=True, memory=memory)  # fmt: skip
    q_texts = mem_texts[:30]  # queries equal to memory texts: their own neighbours' labels get the lexical vote
    _, before = index.search(torch.tensor(q, dtype=torch.float32), k=3, texts=q_texts)
    frequent = int(np.bincount(before[:, 0]).argmax())
    index.remove_labels([f"L{frequent}"])
    _, after = index.search(torch.tensor(q, dtype=torch.float32), k=len(index), texts=q_texts)
    assert f"L{frequent}" not in {index.label_ids[i] for i in after.ravel() if i >= 0}


def test_second_tuning_stage_picks_the_best_lexical_point_and_only_when_it_pays():
    """Embeddings carry no signal, words do: the lexical stage must win, at the point a brute force finds best."""
    rng = np.random.default_rng(0)
    n_labels, n_mem, n_q = 8, 160, 60
    topic = rng.integers(0, n_labels, size=n_mem + n_q)
    vocab = [[f"w{c}x{j}" for j in range(5)] for c in range(n_labels)]
    texts = [" ".join(rng.choice(vocab[c], size=3)) for c in topic]
    y = np.zeros((n_mem, n_labels))
    y[np.arange(n_mem), topic[:n_mem]] = 1
    truth = sp.csr_matrix((np.ones(n_q), (np.arange(n_q), topic[n_mem:])), shape=(n_q, n_labels))
    labels, mem, q = (
        _unit(rng.normal(size=(n_labels, 6))),
        _unit(rng.normal(size=(n_mem, 6))),
        rng.normal(size=(n_q, 6)),
    )
    lexical = LexicalNeighbours.fit(texts[:n_mem], min_df=1)
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y), lexical=lexical)
    index = LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True)
    grid = {"lam": (0.5, 0.8, 1.0), "k": (3, 10), "temperature": (0.1,), "agreement": (0.0,)}
    lex_grid = {"lexical_weight": (0.4, 0.8), "lexical_k": (3, 6), "lexical_temperature": (0.1,)}
    qt = torch.tensor(q, dtype=torch.float32)
    dense_only = grid_search(index, memory, qt, truth, "precision@1", grid)
    result = grid_search(
        index, memory, qt, truth, "precision@1", grid, query_texts=texts[n_mem:], lexical_grid=lex_grid
    )
    assert dense_only.lexical_weight == 0.0 and len(result.grid) == len(dense_only.grid) + 2 * 2 * 2
    assert result.lexical_weight > 0 and result.value > dense_only.value + 0.3
    for point in result.grid:  # every stage-2 value from the dense reference
        if "lexical_weight" in point:
            ids = _fused_reference(q, labels, mem, y, texts[n_mem:], lexical, point["lam"], point["k"],
                                   point["temperature"], point["lexical_weight"], point["lexical_k"], 0.1)  # fmt: skip
            assert point["precision@1"] == pytest.approx(xmc_metrics(ids[:, :1], truth, (1,))["precision@1"])
    best = max(result.grid, key=lambda p: p["precision@1"])
    assert result.value == pytest.approx(best["precision@1"])


def test_save_load_push_load_identical_fused_predictions(tmp_path, hub_repo_id, hf_cache):
    rng, labels, mem, q, y = _problem(seed=4)
    mem_texts, q_texts = _texts(rng, len(mem)), _texts(rng, len(q), 3)
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y), lam=0.4, k=6,
                             lexical=LexicalNeighbours.fit(mem_texts, min_df=1), lexical_weight=0.5, lexical_k=4)  # fmt: skip
    index = LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True, memory=memory)
    qt = torch.tensor(q, dtype=torch.float32)
    expected = index.search(qt, k=5, texts=q_texts)
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / LEXICAL_FILE).is_file() and (tmp_path / "idx" / LEXICAL_TERMS_FILE).is_file()
    assert not list((tmp_path / "idx").rglob("*.pkl")) and not list((tmp_path / "idx").rglob("*.joblib"))
    meta = json.loads((tmp_path / "idx" / "label_index.json").read_text())["memory"]
    assert meta["lexical_weight"] == 0.5 and meta["lexical_k"] == 4 and meta["lexical"]["kind"] == "tfidf"
    for source in (tmp_path / "idx", None):
        if source is None:
            LabelIndex.load(tmp_path / "idx").push_to_hub(hub_repo_id)
            source = hub_repo_id
        loaded = LabelIndex.load(source)
        assert loaded.memory.lexical is not None and loaded.memory.lexical_weight == 0.5
        for a, b in zip(expected, loaded.search(qt, k=5, texts=q_texts)):
            np.testing.assert_array_equal(a, b)
    # a memory saved without lexical rows into the same folder leaves no stale lexical files behind
    index.memory.set_lexical_params(weight=0.0)
    index.memory.lexical = None
    index.save(tmp_path / "idx")
    assert not (tmp_path / "idx" / LEXICAL_FILE).exists() and LabelIndex.load(tmp_path / "idx").memory.lexical is None


def test_damaged_lexical_files_are_clear_errors(tmp_path):
    from dexml_hf.errors import DataError

    rng, labels, mem, q, y = _problem(seed=5)
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y),
                             lexical=LexicalNeighbours.fit(_texts(rng, len(mem)), min_df=1), lexical_weight=0.5)  # fmt: skip
    LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True, memory=memory).save(tmp_path / "idx")
    config = tmp_path / "idx" / "label_index.json"
    good = json.loads(config.read_text())
    for change, message in [
        (lambda m: m["lexical"].update(n_terms=m["lexical"]["n_terms"] + 1), "terms"),
        (lambda m: m["lexical"].update(kind="bm25"), "'kind'"),
        (lambda m: m["lexical"].update(file="../x.safetensors"), "must be the name of a file inside"),
        (lambda m: m["lexical"].update(ngram_range=[2, 1]), "ngram_range"),
        (lambda m: m.update(lexical_weight=1.5), "lexical_weight must be in"),
    ]:
        meta = json.loads(json.dumps(good))
        change(meta["memory"])
        config.write_text(json.dumps(meta))
        with pytest.raises((DataError, ValueError), match=message):
            LabelIndex.load(tmp_path / "idx")
    config.write_text(json.dumps(good))
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(tmp_path / "idx" / LEXICAL_FILE))
    original = dict(tensors)
    tensors["idf"] = np.full_like(tensors["idf"], np.nan)
    save_file(tensors, str(tmp_path / "idx" / LEXICAL_FILE))
    with pytest.raises(DataError, match="idf values must be finite"):
        LabelIndex.load(tmp_path / "idx")
    save_file(original, str(tmp_path / "idx" / LEXICAL_FILE))
    (tmp_path / "idx" / LEXICAL_TERMS_FILE).write_bytes(b"not arrow")
    with pytest.raises(DataError, match=LEXICAL_TERMS_FILE):
        LabelIndex.load(tmp_path / "idx")


def _synthetic():
    from dexml_hf.data.synthetic import generate_synthetic_xmc

    return generate_synthetic_xmc(num_labels=40, num_train=120, num_test=30, num_validation=30, seed=0)


def test_tuning_without_validation_keeps_the_held_out_rows_out_of_the_lexical_neighbours(tiny_model, monkeypatch):
    """No validation split: the memory the grid searches holds neither the embeddings nor the TF-IDF rows of the
    held-out slice (a held-out query would otherwise find its own text at cosine 1), the slice's texts are its
    queries, and the returned memory holds every training query."""
    import dexml_hf.retrieval as retrieval
    from dexml_hf.data.synthetic import generate_synthetic_xmc

    synthetic = generate_synthetic_xmc(num_labels=40, num_train=120, num_test=30, seed=0)
    seen = {}
    real = retrieval.grid_search

    def spy(index, memory, queries, truth, *args, **kwargs):
        seen.update(memory=memory, texts=kwargs.get("query_texts"))
        return real(index, memory, queries, truth, *args, **kwargs)

    monkeypatch.setattr(retrieval, "grid_search", spy)
    index = LabelIndex.from_texts(tiny_model, synthetic.label_texts())
    memory = retrieval.tune_retrieval(tiny_model, index, synthetic, holdout=24, lexical=True)
    assert memory.tuning["split"].startswith("train slice") and len(memory.lexical) == 120
    assert any("lexical_weight" in p for p in memory.tuning["grid"])
    tuning_memory, held_texts = seen["memory"], seen["texts"]
    assert len(tuning_memory.lexical) == len(tuning_memory) == 96 and len(held_texts) <= 24
    # each held-out text's rows are absent from the tuning memory's lexical rows (compared as TF-IDF vectors)
    held = memory.lexical.transform(held_texts)
    train_rows = {tuple(r.indices) for r in tuning_memory.lexical.matrix}
    assert all(tuple(r.indices) not in train_rows or r.nnz == 0 for r in held)


def test_memory_command_switches_it_on(tiny_model_path, tmp_path, capsys):
    """`dexml-hf memory --lexical`: the saved memory has lexical rows and its share was searched on validation (the
    grid holds lexical points); without the flag it has none."""
    from dexml_hf.cli import main
    from dexml_hf.data import save_to_folder

    synthetic = _synthetic()
    save_to_folder(synthetic, tmp_path / "ds")
    out = tmp_path / "idx"
    argv = ["memory", "--model", str(tiny_model_path), "--dataset", str(tmp_path / "ds"), "--output", str(out)]
    assert main(argv) == 0
    assert LabelIndex.load(out).memory.lexical is None
    assert main([*argv, "--lexical"]) == 0
    saved = LabelIndex.load(out).memory
    assert saved.lexical is not None and len(saved.lexical) == synthetic.num_queries("train")
    assert any("lexical_weight" in point for point in saved.tuning["grid"])
    assert "choosing the lexical share" in capsys.readouterr().err


def test_trainer_option_and_evaluate_predict_use_the_lexical_term(tiny_model, tmp_path, capsys):
    """`retrieval_lexical: true` through DEXMLTrainer; `evaluate --index` and `predict` then rank with the lexical
    term (equal to LabelIndex.search with the texts, different from the dense-only memory)."""
    from dexml_hf.cli import main
    from dexml_hf.data import save_to_folder
    from dexml_hf.trainer import DEXMLTrainer
    from dexml_hf.training_args import DEXMLTrainingArguments

    synthetic = _synthetic()
    args = DEXMLTrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, max_steps=2,
                                  report_to="none", save_strategy="no", use_cpu=True, test_split="test",
                                  retrieval_memory=True, retrieval_lexical=True)  # fmt: skip
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=synthetic)
    trainer.train()
    memory = trainer.label_index.memory
    assert memory.lexical is not None and any("lexical_weight" in p for p in memory.tuning["grid"])
    tuned = (memory.lexical_weight, memory.lexical_k) if memory.lam < 1 else (0.0, None)
    memory.set_params(lam=0.5)  # make both terms count, whatever validation chose on this tiny set
    memory.set_lexical_params(weight=0.7)
    trainer.save_model()
    out = tmp_path / "out"
    assert "lexical_weight" in json.loads((out / "eval_results.json").read_text())["retrieval"]
    card = " ".join((out / "README.md").read_text().split())
    described = f"β = {tuned[0]} of the neighbour term taken from the {tuned[1]} training queries nearest by TF-IDF"
    assert (described in card) if tuned[0] else ("TF-IDF" not in card)  # the card shows what was chosen
    trainer.label_index.save(out / "label_index")
    loaded = LabelIndex.load(out / "label_index")
    texts = synthetic.query_texts("test")
    q = loaded.encode_queries(trainer.model, texts)
    _, ids = loaded.search(q, k=100, texts=texts)
    loaded.memory.set_lexical_params(weight=0.0)
    assert not np.array_equal(loaded.search(q, k=100)[1], ids)

    save_to_folder(synthetic, tmp_path / "ds")
    argv = ["evaluate", "--model", str(out), "--dataset", str(tmp_path / "ds"), "--output_dir", str(tmp_path / "ev")]
    assert main([*argv, "--index", str(out / "label_index"), "--no_plot"]) == 0
    report = json.loads((tmp_path / "ev" / "eval_test.json").read_text())
    assert report["retrieval"]["lexical_weight"] == 0.7 and "lexical_weight=0.7" in capsys.readouterr().out
    expected = xmc_metrics(
        ids, synthetic.label_matrices["test"], ks=(1, 3, 5), inv_propensity=synthetic.inv_propensity()
    )
    for key in ("precision@1", "precision@5", "psp@5"):
        assert report["metrics"][key] == pytest.approx(expected[key], abs=1e-9)
    capsys.readouterr()
    assert main(["predict", "--model", str(out), "--index", str(out / "label_index"), "--k", "3", "--json", "true",
                 *texts[:2]]) == 0  # fmt: skip
    lines = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    loaded.memory.set_lexical_params(weight=0.7)
    expected_hits = loaded.search_texts(trainer.model, texts[:2], k=3)  # needs the texts: it passes them
    assert [[h["id"] for h in line["labels"]] for line in lines] == [[h["id"] for h in e] for e in expected_hits]


def test_options_are_refused_when_they_cannot_work(tmp_path, monkeypatch):
    from dexml_hf.errors import UsageError
    from dexml_hf.training_args import DEXMLTrainingArguments

    base = dict(output_dir=str(tmp_path / "o"), report_to="none", use_cpu=True, test_split="test")
    with pytest.raises(UsageError, match="needs retrieval_memory"):
        DEXMLTrainingArguments(**base, retrieval_lexical=True)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a))
    with pytest.raises(UsageError, match="needs scikit-learn"):
        DEXMLTrainingArguments(**base, retrieval_memory=True, retrieval_lexical=True)
    from dexml_hf.cli import main

    argv = ["memory", "--model", "m", "--dataset", "d", "--output", str(tmp_path / "x"), "--lexical"]
    assert main(argv) == 2 and not (tmp_path / "x").exists()
