"""Retrieval-augmented prediction: the fused score against hand computations and a brute-force numpy reference,
persistence (save / load / loopback Hub), and the choice of λ, k, T on validation data only."""

from __future__ import annotations

import json
import math

import datasets
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dexml_hf.data import XMCDataset
from dexml_hf.evaluation import XMCEvaluator, xmc_metrics
from dexml_hf.index import LabelIndex
from dexml_hf.retrieval import RetrievalMemory, grid_search, tune_retrieval


def _unit(rows) -> np.ndarray:
    a = np.asarray(rows, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def reference_fused(q, labels, memory, y, lam, k, temperature, exclude=()):
    """Dense numpy reference, one query at a time: every label's fused score, then a stable descending sort.
    Queries are L2-normalised (as a cosine index does); label and memory embeddings are used as given."""
    q, labels, memory = _unit(q), np.asarray(labels, dtype=np.float64), np.asarray(memory, dtype=np.float64)
    y = (np.asarray(y) != 0).astype(np.float64)
    out_scores, out_ids = [], []
    for i, qi in enumerate(q):
        s = labels @ qi
        sims = memory @ qi
        nn = np.argsort(-sims, kind="stable")[:k]
        w = np.exp(sims[nn] / temperature)
        w /= w.sum()
        fused = lam * s + (1 - lam) * (w[:, None] * y[nn]).sum(axis=0)
        for row, col in exclude:
            if row == i:
                fused[col] = -np.inf
        order = np.argsort(-fused, kind="stable")
        out_scores.append(fused[order])
        out_ids.append(order)
    return np.array(out_scores), np.array(out_ids)


# ---------------------------------------------------------------------------------------------- the fused score
def test_fused_score_every_term_by_hand():
    # 3 labels, 4 memory queries, 2-D; unit vectors so every inner product is a cosine we can write down.
    labels = np.array([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    mem = np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    y = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0], [0, 1, 1]])
    q = np.array([[0.6, 0.8]])
    lam, k, t = 0.4, 2, 0.5
    # s(q, l): 0.6, 0.8, 1.0. Memory similarities: 0.6, 0.96, 0.8, -0.6 -> the 2 nearest are rows 1 (0.96) and 2 (0.8).
    w1 = math.exp(0.96 / t) / (math.exp(0.96 / t) + math.exp(0.8 / t))
    w2 = 1 - w1
    # neighbour term: row 1 has labels {0, 2}, row 2 has {1}
    expected = {0: lam * 0.6 + (1 - lam) * w1, 1: lam * 0.8 + (1 - lam) * w2, 2: lam * 1.0 + (1 - lam) * w1}
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y), lam=lam, k=k, temperature=t)
    index = LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True, memory=memory)
    scores, ids = index.search(torch.tensor(q, dtype=torch.float32), k=3)
    order = sorted(expected, key=lambda j: -expected[j])
    assert ids[0].tolist() == order == [2, 0, 1]
    np.testing.assert_allclose(scores[0], [expected[j] for j in order], rtol=1e-6)
    # the neighbour term alone, and the plain search without the memory
    sims, rows = memory.neighbours(torch.tensor(q, dtype=torch.float32))
    assert rows[0].tolist() == [1, 2]
    np.testing.assert_allclose(memory.neighbour_term(sims, rows).toarray()[0], [w1, w2, w1], rtol=1e-6)
    plain_scores, plain_ids = index.search(torch.tensor(q, dtype=torch.float32), k=3, use_memory=False)
    assert plain_ids[0].tolist() == [2, 1, 0]
    np.testing.assert_allclose(plain_scores[0], [1.0, 0.8, 0.6], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_fused_search_equals_bruteforce_with_chunks_filters_and_relevances(dtype):
    rng = np.random.default_rng(3)
    n_labels, n_mem, n_q, dim = 60, 250, 37, 8
    labels, mem, q = rng.normal(size=(n_labels, dim)), rng.normal(size=(n_mem, dim)), rng.normal(size=(n_q, dim))
    y = sp.random(n_mem, n_labels, density=0.05, random_state=4, format="csr")  # relevances, binarised by the memory
    y.data = rng.uniform(0.5, 3.0, size=y.nnz)
    exclude = np.array([[0, 5], [3, 0], [3, 1], [36, 59]])
    labels_t = torch.tensor(_unit(labels), dtype=torch.float32).to(getattr(torch, dtype)).float()
    mem_t = torch.tensor(_unit(mem), dtype=torch.float32).to(getattr(torch, dtype)).float()
    memory = RetrievalMemory(mem_t, y, lam=0.6, k=7, temperature=0.1, dtype=dtype)
    index = LabelIndex(labels_t, normalized=True, dtype=dtype, memory=memory)
    ref_scores, ref_ids = reference_fused(q, labels_t.numpy(), mem_t.numpy(), y.toarray(), 0.6, 7, 0.1, exclude)
    for chunk in (5, 4096):  # many query chunks, and one
        scores, ids = index.search(torch.tensor(q, dtype=torch.float32), k=10, exclude=exclude, query_chunk=chunk)
        np.testing.assert_allclose(scores, ref_scores[:, :10], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(ids, ref_ids[:, :10])
    for row, col in exclude:
        assert col not in ids[row]


def _reference_dot_fused(q, labels, mem, y, lam, k, temperature):
    """Dense numpy reference of a dot model's fusion: ``s = q·l / (‖q‖ max_l ‖l‖)``, neighbours by cosine."""
    top = np.linalg.norm(labels, axis=1).max()
    s = (q @ labels.T) / (np.linalg.norm(q, axis=1, keepdims=True) * top)
    sims = _unit(q) @ _unit(mem).T
    out_scores, out_ids = [], []
    for i in range(len(q)):
        nn = np.argsort(-sims[i], kind="stable")[:k]
        w = np.exp(sims[i, nn] / temperature)
        w /= w.sum()
        fused = lam * s[i] + (1 - lam) * (w[:, None] * y[nn]).sum(0)
        order = np.argsort(-fused, kind="stable")
        out_scores.append(fused[order])
        out_ids.append(order)
    return np.array(out_scores), np.array(out_ids)


def test_dot_models_fuse_on_the_cosine_scale():
    """Unnormalised embeddings of varied norms: the fused score puts the dot product on the cosine's scale and
    weighs neighbours by cosine, so λ, k, T mean what they mean for a cosine model."""
    rng = np.random.default_rng(0)
    labels = rng.normal(size=(20, 4)) * rng.uniform(0.5, 3.0, size=(20, 1))
    mem = rng.normal(size=(50, 4)) * rng.uniform(0.5, 3.0, size=(50, 1))
    q = rng.normal(size=(6, 4)) * 7.0
    y = (rng.random((50, 20)) < 0.1).astype(float)

    def search(scale):
        memory = RetrievalMemory(
            torch.tensor(mem * scale), sp.csr_matrix(y), lam=0.5, k=3, temperature=0.1, normalized=False
        )
        index = LabelIndex(torch.tensor(labels * scale), normalized=False, memory=memory)
        return index, index.search(torch.tensor(q * scale), k=20)

    index, (scores, ids) = search(1.0)
    ref_scores, ref_ids = _reference_dot_fused(q, labels, mem, y, 0.5, 3, 0.1)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    # λ = 1 is the plain dual encoder: the raw dot product's ranking
    plain_ids = index.search(torch.tensor(q), k=20, use_memory=False)[1]
    np.testing.assert_array_equal(plain_ids, np.argsort(-(q @ labels.T), axis=1, kind="stable"))
    # every embedding ×10 (dot products ×100): the same fused ranking and scores; raw dot products would let
    # λ·s drown the neighbour term
    _, (scores10, ids10) = search(10.0)
    np.testing.assert_array_equal(ids10, ids)
    np.testing.assert_allclose(scores10, scores, rtol=1e-5, atol=1e-6)
    assert not np.array_equal(ids, plain_ids)  # the neighbour term does change the ranking


def test_dot_model_tuning_does_not_depend_on_the_embedding_scale():
    """grid_search on a dot index picks the same λ, k, T and values whatever the embeddings' scale."""
    rng = np.random.default_rng(5)
    labels = rng.normal(size=(30, 6)) * rng.uniform(0.5, 3.0, size=(30, 1))
    mem = rng.normal(size=(80, 6))
    val = mem[:20] + 0.3 * rng.normal(size=(20, 6))  # validation queries near memory queries: neighbours help
    y = sp.random(80, 30, density=0.1, random_state=2, format="csr")
    results = []
    for scale in (1.0, 10.0):
        memory = RetrievalMemory(torch.tensor(mem * scale), y, normalized=False)
        index = LabelIndex(torch.tensor(labels * scale), normalized=False)
        result = grid_search(index, memory, torch.tensor(val * scale), y[:20], metric="precision@1+precision@3")
        results.append((result.lam, result.k, result.temperature, [g["precision@1+precision@3"] for g in result.grid]))
    assert results[0] == results[1]
    assert results[0][0] < 1.0  # the memory is used


def test_memory_validation_errors():
    emb, y = torch.randn(4, 3), sp.csr_matrix(np.eye(4, 5))
    with pytest.raises(ValueError, match="lam must be in"):
        RetrievalMemory(emb, y, lam=0.0)
    with pytest.raises(ValueError, match="positive integer"):
        RetrievalMemory(emb, y, k=0)
    with pytest.raises(ValueError, match="3 rows"):
        RetrievalMemory(emb, y[:3])
    with pytest.raises(ValueError, match="5 labels"):
        LabelIndex(torch.randn(6, 3), normalized=True, memory=RetrievalMemory(emb, y))
    with pytest.raises(ValueError, match="normalized"):
        LabelIndex(torch.randn(5, 3), normalized=False, memory=RetrievalMemory(emb, y))


# ---------------------------------------------------------------------------------------------- persistence
LABEL_TEXTS = ["python", "rust programming", "sql databases", "linear algebra", "cooking pasta", "tax law"]
TRAIN = ["borrow checker in rust", "left join", "boil water", "eigenvalues", "vat rates", "list comprehension"]
TRAIN_Y = sp.csr_matrix(np.array([[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0],
                                  [0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 1]]))  # fmt: skip
QUERIES = ["lifetimes in rust", "inner join two tables", "al dente spaghetti", "income tax"]


def _index_with_memory(model, dtype="float32"):
    memory = RetrievalMemory.from_texts(model, TRAIN, TRAIN_Y, lam=0.7, k=3, temperature=0.05, dtype=dtype)
    memory.tuning = {"metric": "precision@1", "value": 0.5, "split": "validation"}
    return LabelIndex.from_texts(model, LABEL_TEXTS, dtype=dtype, memory=memory)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_push_load_identical_predictions(tiny_model, tmp_path, hub_repo_id, hf_cache, dtype):
    index = _index_with_memory(tiny_model, dtype)
    q = index.encode_queries(tiny_model, QUERIES)
    expected = index.search(q, k=6)
    assert not np.array_equal(expected[0], index.search(q, k=6, use_memory=False)[0])  # the memory does something

    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "label_index.json").read_text())
    assert meta["format_version"] == 3 and meta["memory"]["lam"] == 0.7 and meta["memory"]["k"] == 3
    assert meta["memory"]["tuning"]["split"] == "validation" and meta["memory"]["dtype"] == dtype
    assert (tmp_path / "idx" / "memory.safetensors").is_file()
    loaded = LabelIndex.load(tmp_path / "idx")
    assert loaded.memory is not None and loaded.memory.tuning == index.memory.tuning
    torch.testing.assert_close(loaded.memory.embeddings, index.memory.embeddings, rtol=0, atol=0)
    assert (loaded.memory.label_matrix != index.memory.label_matrix).nnz == 0
    for a, b in zip(expected, loaded.search(q, k=6)):
        np.testing.assert_array_equal(a, b)

    loaded.push_to_hub(hub_repo_id)
    from_hub = LabelIndex.load(hub_repo_id)
    assert any(hf_cache.rglob("memory.safetensors"))  # downloaded into the fresh cache, with the memory
    for a, b in zip(expected, from_hub.search(q, k=6)):
        np.testing.assert_array_equal(a, b)
    res = from_hub.search_texts(tiny_model, QUERIES[:1], k=2)
    assert res[0][0]["score"] == pytest.approx(float(expected[0][0, 0]))
    plain = LabelIndex.load(hub_repo_id, load_memory=False)
    assert plain.memory is None
    np.testing.assert_array_equal(plain.search(q, k=6)[1], index.search(q, k=6, use_memory=False)[1])


def test_format_errors_are_clear(tiny_model, tmp_path):
    index = _index_with_memory(tiny_model)
    index.save(tmp_path / "idx")
    (tmp_path / "idx" / "memory.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="declares a retrieval memory"):
        LabelIndex.load(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "label_index.json").read_text())
    meta["format_version"] = 4
    (tmp_path / "idx" / "label_index.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="format_version 4 is not one this dexml_hf reads"):
        LabelIndex.load(tmp_path / "idx")
    # a version-1 folder (no memory entry) still loads; saving without a memory removes a stale memory file
    plain = LabelIndex.from_texts(tiny_model, LABEL_TEXTS)
    plain.save(tmp_path / "v1")
    meta = json.loads((tmp_path / "v1" / "label_index.json").read_text())
    meta["format_version"] = 1
    del meta["memory"]
    (tmp_path / "v1" / "label_index.json").write_text(json.dumps(meta))
    assert LabelIndex.load(tmp_path / "v1").memory is None
    index.save(tmp_path / "again")
    plain.save(tmp_path / "again")
    assert not (tmp_path / "again" / "memory.safetensors").exists()
    assert LabelIndex.load(tmp_path / "again").memory is None


# ---------------------------------------------------------------------------------------------- evaluator
def test_evaluator_uses_the_memory_and_reembeds_memory_texts(tiny_model):
    truth = sp.csr_matrix(np.array([[0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 0, 1]]))
    index = _index_with_memory(tiny_model)
    q = index.encode_queries(tiny_model, QUERIES)
    _, ids = index.search(q, k=6)
    expected = xmc_metrics(ids, truth, ks=(1, 3, 5))
    for kwargs in ({"memory": index.memory}, {"index": index}, {"memory": index.memory, "memory_texts": TRAIN}):
        evaluator = XMCEvaluator(QUERIES, LABEL_TEXTS, truth, write_csv=False, search_depth=6, **kwargs)
        _, got = evaluator.compute_topk(tiny_model)
        np.testing.assert_array_equal(got, ids)
        assert evaluator.compute_metrics(got) == expected
        assert evaluator.get_config_dict()["retrieval"] == {"lam": 0.7, "k": 3, "temperature": 0.05}
    assert XMCEvaluator(QUERIES, LABEL_TEXTS, truth, index=index).index.memory is index.memory  # not detached
    with pytest.raises(ValueError, match="memory_texts needs memory"):
        XMCEvaluator(QUERIES, LABEL_TEXTS, truth, memory_texts=TRAIN)


# ---------------------------------------------------------------------------------------------- tuning
class TableEncoder:
    """A stand-in encoder with hand-made embeddings (text -> vector), so a tuning outcome can be designed."""

    similarity_fn_name = "cosine"
    prompts: dict = {}

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def get_embedding_dimension(self) -> int:
        return len(next(iter(self.table.values())))

    def encode(self, texts, normalize_embeddings=False, **kwargs):
        emb = torch.tensor([self.table[t] for t in texts], dtype=torch.float32)
        return torch.nn.functional.normalize(emb, dim=1) if normalize_embeddings else emb


def _xmc(splits: dict[str, tuple[list[str], np.ndarray]], label_texts: list[str]) -> XMCDataset:
    def table(texts):
        return datasets.Dataset.from_dict({"uid": texts, "title": texts, "content": [""] * len(texts)})

    return XMCDataset(
        {s: table(t) for s, (t, _) in splits.items()},
        table(label_texts),
        {s: sp.csr_matrix(y) for s, (_, y) in splits.items()},
    )


def test_tuning_chooses_on_validation_never_on_test():
    # Labels A, B, C. The memory says "near A's direction the label is B". Validation queries there are A (the dual
    # encoder is right, the memory misleads: λ = 1 wins); test queries at the same place are B (λ < 1 would win).
    table = {
        "A": [1, 0, 0], "B": [0, 1, 0], "C": [0, 0, 1],
        "t1": [1, 0.1, 0], "t2": [0, 0.1, 1], "v1": [1, 0.3, 0], "v2": [0.9, 0.3, 0.1], "u1": [1, 0.3, 0],
        "u2": [0.9, 0.3, 0.1],
    }  # fmt: skip
    xmc = _xmc(
        {
            "train": (["t1", "t2"], np.array([[0, 1, 0], [0, 0, 1]])),
            "validation": (["v1", "v2"], np.array([[1, 0, 0], [1, 0, 0]])),
            "test": (["u1", "u2"], np.array([[0, 1, 0], [0, 1, 0]])),
        },
        ["A", "B", "C"],
    )
    model = TableEncoder(table)
    grid = {"lam": (0.2, 0.5, 1.0), "k": (1,), "temperature": (0.05,)}
    index = LabelIndex.from_texts(model, ["A", "B", "C"])
    memory = tune_retrieval(model, index, xmc, grid=grid)
    assert memory.lam == 1.0 and index.memory is memory and len(memory) == 2
    assert memory.tuning["split"] == "validation" and memory.tuning["value"] == 1.0
    # choosing on test would have given another λ: the test split really was crafted against the choice
    test_q = index.encode_queries(model, ["u1", "u2"])
    on_test = grid_search(index, memory, test_q, xmc.label_matrices["test"], grid=grid, split="test")
    assert on_test.lam < 1.0 and on_test.value == 1.0 and on_test.baseline == 0.0
    with pytest.raises(ValueError, match="split='test' is not allowed"):
        tune_retrieval(model, index, xmc, grid=grid, split="test")


def test_tuning_without_validation_leaves_the_slice_out_of_the_memory():
    # 12 train queries on a circle, each with its own label; label i is embedded where query i+1 is, so the dual
    # encoder always ranks label i-1 first (P@1 = 0). Only a query that finds *itself* in the memory can get its
    # label to the top (then λ < 1 gives P@1 = 1): the carved-out queries must not be in the memory while tuning.
    n = 12
    angles = 2 * np.pi * np.arange(n) / n
    table = {f"q{i}": [math.cos(a), math.sin(a)] for i, a in enumerate(angles)}
    table.update({f"L{i}": table[f"q{(i + 1) % n}"] for i in range(n)})
    xmc = _xmc(
        {"train": ([f"q{i}" for i in range(n)], np.eye(n)), "test": (["q0"], np.eye(n)[:1])},
        [f"L{i}" for i in range(n)],
    )
    model = TableEncoder(table)
    index = LabelIndex.from_texts(model, [f"L{i}" for i in range(n)])
    grid = {"lam": (0.3, 0.5, 1.0), "k": (1, 2), "temperature": (0.05,)}
    memory = tune_retrieval(model, index, xmc, grid=grid, holdout=4, seed=1)
    assert memory.tuning["value"] == 0.0 and memory.lam == 1.0  # nothing leaked
    assert memory.tuning["n_queries"] == 4 and "train slice (4 of 12" in memory.tuning["split"]
    assert len(memory) == n  # the returned memory holds every training query
    # the same search with the slice left in the memory would have found itself: the leak this guards against
    q = index.encode_queries(model, [f"q{i}" for i in range(4)])
    leaky = grid_search(index, memory, q, xmc.label_matrices["train"][:4], grid=grid)
    assert leaky.value == 1.0 and leaky.lam < 1.0


def test_a_combined_criterion_maximises_the_mean_of_its_metrics():
    """`precision@1+psp@5`: the grid point chosen is the argmax of the mean of the two, each computed on the dense
    reference's rankings; the single metrics pick other points here, so a criterion reduced to one part would fail."""
    rng = np.random.default_rng(6)
    n_labels, n_mem, n_val, d = 12, 40, 30, 6
    labels, mem = _unit(rng.normal(size=(n_labels, d))), _unit(rng.normal(size=(n_mem, d)))
    y_mem = (rng.random((n_mem, n_labels)) < 0.25).astype(float)
    q = rng.normal(size=(n_val, d))
    truth = sp.csr_matrix((rng.random((n_val, n_labels)) < 0.3).astype(float))
    inv_p = 1.0 + 3.0 * rng.random(n_labels)
    labels = torch.tensor(labels, dtype=torch.float32).numpy().astype(np.float64)  # the values the index holds
    mem = torch.tensor(mem, dtype=torch.float32).numpy().astype(np.float64)
    index = LabelIndex(torch.tensor(labels, dtype=torch.float32), normalized=True)
    memory = RetrievalMemory(torch.tensor(mem, dtype=torch.float32), sp.csr_matrix(y_mem))
    grid = {"lam": (0.1, 0.3, 0.6, 0.9, 1.0), "k": (1, 3, 10), "temperature": (0.05, 0.5)}
    qt = torch.tensor(q, dtype=torch.float32)

    def reference(metric_names):
        best = None
        for lam in sorted(grid["lam"], reverse=True):
            for k in grid["k"]:
                for t in grid["temperature"]:
                    ids = reference_fused(q, labels, mem, y_mem, lam, k, t)[1][:, :5]
                    m = xmc_metrics(ids, truth, ks=(1, 5), inv_propensity=inv_p)
                    v = np.mean([m[name] for name in metric_names])
                    if best is None or v > best[0] + 1e-12:
                        best = (v, lam, k, t)
                    if lam == 1.0:
                        break
                if lam == 1.0:
                    break
        return best

    combined = grid_search(index, memory, qt, truth, "precision@1+psp@5", grid, inv_p)
    value, lam, k, t = reference(["precision@1", "psp@5"])
    assert combined.value == pytest.approx(value) and combined.lam == lam
    if lam < 1.0:
        assert (combined.k, combined.temperature) == (k, t)
    for name in ("precision@1", "psp@5"):  # each alone picks another point: the mean really is what is maximised
        assert reference([name])[1:] != (lam, k, t)
        single = grid_search(index, memory, qt, truth, name, grid, inv_p)
        assert (single.lam, single.k, single.temperature) != (lam, k, t)
    with pytest.raises(ValueError, match="several joined by"):
        grid_search(index, memory, qt, truth, "precision@1+p@5", grid, inv_p)
    with pytest.raises(ValueError, match="needs inv_propensity"):
        grid_search(index, memory, qt, truth, "precision@1+psp@5", grid)
