"""ApproximateIndex (faiss HNSW / IVF / compressed flat) against numpy brute force; the LabelIndex and memory hooks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

pytest.importorskip("faiss")

from dexml_hf.ann import ApproximateIndex, recall_at_k  # noqa: E402
from dexml_hf.errors import DataError  # noqa: E402
from dexml_hf.index import LabelIndex  # noqa: E402
from dexml_hf.retrieval import RetrievalMemory  # noqa: E402

N, D, Q = 3000, 32, 120


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """Clustered unit vectors (80 centres, like topics) and queries drawn around the same centres."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(80, D))
    x = _unit(centres[rng.integers(0, 80, N)] + 0.6 * rng.normal(size=(N, D)))
    q = _unit(centres[rng.integers(0, 80, Q)] + 0.6 * rng.normal(size=(Q, D)))
    return x, q


def brute(q: np.ndarray, x: np.ndarray, k: int, ids: np.ndarray | None = None):
    """Reference top-k by numpy: score descending, then id ascending (a stable sort over rows in id order)."""
    ids = np.arange(len(x)) if ids is None else np.asarray(ids)
    order = np.argsort(ids, kind="stable")
    scores = q.astype(np.float64) @ x[order].T.astype(np.float64)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, 1), ids[order][top]


CASES = [
    ("hnsw", "flat", {}),
    ("hnsw", "sq8", {}),
    ("hnsw", "fp16", {}),
    ("ivf", "flat", {"nlist": 32, "nprobe": 8}),
    ("ivf", "sq8", {"nlist": 32, "nprobe": 8}),
    ("ivf", "pq", {"nlist": 32, "nprobe": 8, "pq_m": 8, "pq_nbits": 6}),
    ("ivf", "pq", {"nlist": 32, "nprobe": 8, "pq_m": 16, "pq_nbits": 4}),  # fast-scan kernels
    ("flat", "sq8", {}),
    ("flat", "fp16", {}),
]


CASE_IDS = [f"{k}-{c}{p.get('pq_nbits', '')}" for k, c, p in CASES]


@pytest.mark.parametrize("kind,codes,params", CASES, ids=CASE_IDS)
def test_recall_against_bruteforce_and_exact_rescoring(data, kind, codes, params):
    x, q = data
    ann = ApproximateIndex.build(x, kind=kind, codes=codes, **params)
    scores, ids = ann.search(q, 10)
    _, exact = brute(q, x, 10)
    assert recall_at_k(ids, exact) >= 0.9, (kind, codes)
    assert ids.dtype == np.int64 and scores.dtype == np.float32 and ids.shape == (Q, 10)
    # scores are the true inner products (faiss's exact ones for flat codes, re-scored for compressed ones)
    true = np.einsum("qd,qkd->qk", q, x[ids])
    np.testing.assert_allclose(scores, true, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_ties_are_ordered_like_the_exact_label_index():
    # multiples of 1/8: inner products exact in fp32 whatever the summation order (BLAS and faiss kernels differ in
    # it; on random unit floats duplicated rows can differ by an ulp, which is no tie); inner product, no cosine
    rng = np.random.default_rng(1)
    base = rng.integers(-8, 9, size=(100, 16)).astype(np.float32) / 8
    x = np.concatenate([base, base, base])  # every vector three times: every score is (at least) a three-way tie
    q = rng.integers(-8, 9, size=(400, 16)).astype(np.float32) / 8
    top4 = -np.sort(-(q @ base.T), axis=1)[:, :4]
    q = q[(np.diff(top4, axis=1) < 0).all(axis=1)][:20]  # tie groups of exactly three at the cut k = 9
    assert len(q) == 20
    exact_scores, exact_ids = LabelIndex(x, normalized=False).search(q, 9)
    for kind in ("hnsw", "flat"):
        ann = ApproximateIndex.build(x, kind=kind, efSearch=300) if kind == "hnsw" else ApproximateIndex.build(x, kind)
        scores, ids = ann.search(q, 9)
        np.testing.assert_array_equal(ids, exact_ids)
        np.testing.assert_array_equal(scores, exact_scores)


def test_save_load_round_trip_is_identical_and_pickle_free(data, tmp_path):
    x, q = data
    ids = np.arange(N, dtype=np.int64) * 7 + 1000
    ann = ApproximateIndex.build(x, kind="hnsw", codes="sq8", ids=ids, M=16)
    ann.remove(ids[:50])
    ann.tune(q, 10, target_recall=0.95)
    before = ann.search(q, 20)
    ann.save(tmp_path / "ann")
    files = sorted(p.name for p in (tmp_path / "ann").iterdir())
    assert files == ["ann.json", "ids.npy", "index.faiss", "removed.npy", "vectors.npy"]
    for name in ("ids.npy", "removed.npy", "vectors.npy"):
        np.load(tmp_path / "ann" / name, allow_pickle=False)  # plain arrays: no object (pickled) payload
    assert not (tmp_path / "ann" / "index.faiss").read_bytes().startswith(b"\x80")  # not a pickle stream
    config = json.loads((tmp_path / "ann" / "ann.json").read_text())
    assert config["kind"] == "hnsw" and config["recall"]["recall"] == ann.recall["recall"]
    loaded = ApproximateIndex.load(tmp_path / "ann")
    after = loaded.search(q, 20)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_array_equal(after[0], before[0])
    assert loaded.recall == ann.recall and loaded.params == ann.params and len(loaded) == N - 50
    mapped = ApproximateIndex.load(tmp_path / "ann", mmap=True)
    np.testing.assert_array_equal(mapped.search(q, 20)[1], before[1])


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda c, outside: c.update(vectors="../outside.npy"), "'vectors'.*must be the name of a file inside"),
        (lambda c, outside: c.update(vectors=str(outside)), "'vectors'.*must be the name of a file inside"),
        (lambda c, outside: c.pop("n_rows"), "'n_rows' is missing"),
        (lambda c, outside: c.update(params=[]), "'params' must be dict"),
    ],
)
def test_a_malformed_config_is_refused_with_the_field_named(data, tmp_path, edit, needle):
    """The vectors file named in ann.json must be inside the folder, even when the file outside exists."""
    x, _ = data
    folder = ApproximateIndex.build(x[:40], kind="flat", codes="fp16", keep_vectors=True).save(tmp_path / "ann")
    outside = tmp_path / "outside.npy"
    np.save(outside, x[:40])
    config = json.loads((folder / "ann.json").read_text())
    edit(config, outside)
    (folder / "ann.json").write_text(json.dumps(config))
    with pytest.raises(DataError, match=needle) as err:
        ApproximateIndex.load(folder)
    assert "ann.json" in str(err.value)


FAST_SCAN = {"codes": "pq", "nlist": 32, "nprobe": 8, "pq_m": 16, "pq_nbits": 4}


@pytest.mark.parametrize(
    "kind,options", [("hnsw", {}), ("ivf", {"nlist": 32, "nprobe": 8}), ("ivf", FAST_SCAN), ("flat", {})]
)
def test_removed_ids_are_never_returned(data, kind, options):
    x, q = data
    ann = ApproximateIndex.build(x, kind=kind, **options)
    _, exact = brute(q, x, 10)
    rng = np.random.default_rng(2)
    gone = np.union1d(exact[:, :3].ravel(), rng.choice(N, size=N // 3, replace=False))  # every query's best too
    assert ann.remove(gone) == len(gone) and len(ann) == N - len(gone)
    _, ids = ann.search(q, 50)
    assert not np.isin(ids, gone).any()
    keep = np.setdiff1d(np.arange(N), gone)
    _, exact_kept = brute(q, x[keep], 10, ids=keep)
    assert recall_at_k(ids[:, :10], exact_kept) >= 0.9
    with pytest.raises(ValueError, match="not in the index"):
        ann.remove(gone[:1])


def test_search_everything_after_removals_pads_with_minus_one(data):
    x, q = data
    ann = ApproximateIndex.build(x[:40], kind="flat", codes="fp16", keep_vectors=True)
    ann.remove(np.arange(35))
    scores, ids = ann.search(q[:3], 10)
    assert (ids[:, :5] >= 35).all() and (ids[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


@pytest.mark.parametrize("kind,codes", [("hnsw", "flat"), ("hnsw", "sq8"), ("ivf", "sq8"), ("ivf", "pq")])
def test_added_rows_are_found(data, kind, codes):
    x, q = data
    params = {"nlist": 32, "nprobe": 8} if kind == "ivf" else {}
    if codes == "pq":
        params.update(pq_m=16, pq_nbits=4)
    ann = ApproximateIndex.build(x, kind=kind, codes=codes, **params)
    new = _unit(q[:10] + 0.01 * np.random.default_rng(3).normal(size=(10, D)))  # right next to queries 0..9
    new_ids = np.arange(10, dtype=np.int64) + 10**9
    ann.add(new, new_ids)
    assert len(ann) == N + 10
    scores, ids = ann.search(q[:10], 1)
    np.testing.assert_array_equal(ids[:, 0], new_ids)
    np.testing.assert_allclose(scores[:, 0], np.einsum("qd,qd->q", q[:10], new), atol=1e-5)
    with pytest.raises(ValueError, match="already in the index"):
        ann.add(new[:1], new_ids[:1])
    ann.remove(new_ids[:5])  # a removed id can come back as a new row
    ann.add(new[:1], new_ids[:1])
    assert ann.search(q[:1], 1)[1][0, 0] == new_ids[0]


@pytest.mark.parametrize("kind,params", [("hnsw", {"M": 8, "efSearch": 16}), ("ivf", {"nlist": 64, "nprobe": 1})])
def test_tune_reaches_the_target_recall(data, kind, params):
    x, q = data
    ann = ApproximateIndex.build(x, kind=kind, **params)
    _, exact = brute(q, x, 50)
    untuned = recall_at_k(ann.search(q, 50)[1], exact)
    assert untuned < 0.99  # the fixture is hard enough that the low setting misses some
    measured = ann.tune(q, k=50, target_recall=0.99)
    assert measured is ann.recall and measured["recall"] >= 0.99 and measured["k"] == 50
    name = "efSearch" if kind == "hnsw" else "nprobe"
    assert ann.params[name] == measured[name] > params[name]
    assert recall_at_k(ann.search(q, 50)[1], exact) == pytest.approx(measured["recall"])  # independent check


@pytest.mark.parametrize("kind,params", [("hnsw", {"M": 8, "efSearch": 16}), ("ivf", {"nlist": 64, "nprobe": 1})])
def test_tune_refines_between_grid_values_to_the_smallest_setting_reaching_the_target(data, kind, params):
    from dexml_hf.ann import _EF_GRID, _NPROBE_GRID, _between

    x, q = data
    ann = ApproximateIndex.build(x, kind=kind, **params)
    _, exact = brute(q, x, 50)
    name = "efSearch" if kind == "hnsw" else "nprobe"

    def recall(value: int) -> float:  # measured here, one search per value, against numpy brute force
        return recall_at_k(ann.search(q, 50, **{name: value})[1], exact)

    target = 0.97
    chosen = ann.tune(q, k=50, target_recall=target)[name]
    assert recall(chosen) >= target
    grid = _EF_GRID if kind == "hnsw" else [*(v for v in _NPROBE_GRID if v < 64), 64]
    refined = sorted({*grid, *(v for a, b in zip(grid, grid[1:]) for v in _between(a, b))})
    below = [v for v in refined if v < chosen]
    assert below and recall(below[-1]) < target  # the next smaller setting tuning could pick misses the target
    coarse = min(v for v in grid if recall(v) >= target)
    assert chosen <= coarse
    assert chosen > params[name]


def test_four_bit_pq_in_ivf_lists_is_fast_scan_and_stays_so_after_save_and_load(data, tmp_path):
    import faiss

    x, q = data
    ann = ApproximateIndex.build(x, kind="ivf", **FAST_SCAN)
    assert isinstance(faiss.downcast_index(ann.index), faiss.IndexIVFPQFastScan)
    assert faiss.downcast_index(ann.index).by_residual  # codes of the residual to the cell's centroid
    eight_bit = ApproximateIndex.build(x, kind="ivf", **{**FAST_SCAN, "pq_nbits": 8})
    assert not isinstance(faiss.downcast_index(eight_bit.index), faiss.IndexIVFPQFastScan)
    ann.remove(np.arange(0, N, 3))
    before = ann.search(q, 20)
    loaded = ApproximateIndex.load(ann.save(tmp_path / "fs"))
    assert isinstance(faiss.downcast_index(loaded.index), faiss.IndexIVFPQFastScan)
    for a, b in zip(loaded.search(q, 20), before):
        np.testing.assert_array_equal(a, b)


def test_residual_fast_scan_codes_rank_closer_to_exact_than_codes_of_the_vectors(data):
    """The reason for "fsr": with re-ranking off, the codes' own top-k agrees more with exact search."""
    import faiss

    x, q = data
    _, exact = brute(q, x, 20)
    recalls = {}
    for suffix in ("fs", "fsr"):
        index = faiss.index_factory(D, f"IVF32,PQ16x4{suffix}", faiss.METRIC_INNER_PRODUCT)
        index.train(x)
        index.add(x)
        index.nprobe = 32
        recalls[suffix] = recall_at_k(index.search(q, 20)[1], exact)
    ann = ApproximateIndex.build(x, kind="ivf", **{**FAST_SCAN, "nprobe": 32}, keep_vectors=False)
    assert not ann.reranks
    assert recall_at_k(ann.search(q, 20)[1], exact) == pytest.approx(recalls["fsr"])
    assert recalls["fsr"] > recalls["fs"]


def test_tune_takes_the_shallowest_rerank_that_keeps_the_target(data):
    from dexml_hf.ann import _RERANK_GRID

    x, q = data
    ann = ApproximateIndex.build(x, kind="ivf", **{**FAST_SCAN, "nprobe": 1}, rerank=30)
    _, exact = brute(q, x, 20)

    def recall(**overrides) -> float:
        return recall_at_k(ann.search(q, 20, **overrides)[1], exact)

    measured = ann.tune(q, k=20, target_recall=0.95)
    depth = ann.params["rerank"]
    assert measured["rerank"] == depth < 30
    assert recall() == pytest.approx(measured["recall"]) and measured["recall"] >= 0.95
    shallower = [v for v in _RERANK_GRID if v < depth]
    assert shallower and all(recall(rerank=v) < 0.95 for v in shallower)  # so the override reaches the search
    with pytest.raises(ValueError, match="unknown search parameter"):
        ann.search(q, 5, ef=3)
    with pytest.raises(ValueError, match="rerank must be a positive integer"):
        ann.search(q, 5, rerank=0)


def test_candidate_rows_are_ordered_like_a_full_sort_with_ties_at_the_cut():
    """The re-ranked candidates (many more than k) keep the order of sorting every candidate by (-score, id)."""
    from dexml_hf.ann import _order_rows

    rng = np.random.default_rng(4)
    scores = rng.integers(0, 6, size=(200, 300)).astype(np.float32) / 4  # few distinct values: ties everywhere
    ids = np.stack([rng.permutation(10_000)[:300] for _ in range(200)]).astype(np.int64)
    ids[rng.random(ids.shape) < 0.1] = -1  # empty places
    ids[-1] = -1  # a row with no candidate at all
    for k in (1, 7, 100):
        got_scores, got_ids = _order_rows(scores, ids, k)
        for row in range(len(ids)):
            ref = sorted((-scores[row, j], ids[row, j]) for j in range(ids.shape[1]) if ids[row, j] >= 0)[:k]
            want_ids = [i for _, i in ref] + [-1] * (k - len(ref))
            want_scores = [-s for s, _ in ref] + [-np.inf] * (k - len(ref))
            np.testing.assert_array_equal(got_ids[row], want_ids)
            np.testing.assert_array_equal(got_scores[row], np.float32(want_scores))


def test_rescoring_reads_fp32_rows_in_place_and_fp16_rows_by_gathering_with_the_same_scores(data):
    x, q = data
    x16 = x.astype(np.float16)
    on32 = ApproximateIndex.build(x16.astype(np.float32), kind="ivf", vectors=x16.astype(np.float32), **FAST_SCAN)
    on16 = ApproximateIndex.build(x16, kind="ivf", vectors=x16, **FAST_SCAN)
    pos = np.random.default_rng(5).integers(-1, N, size=(Q, 50))
    want = np.where(pos >= 0, np.einsum("qd,qkd->qk", q, x16.astype(np.float32)[np.maximum(pos, 0)]), -np.inf)
    for ann in (on32, on16):
        np.testing.assert_allclose(ann._exact_scores(q, pos), want, atol=1e-5)


def test_bad_options_are_refused(data):
    x, _ = data
    with pytest.raises(ValueError, match="kind must be"):
        ApproximateIndex.build(x, kind="lsh")
    with pytest.raises(ValueError, match="only 'ip'"):
        ApproximateIndex.build(x, metric="l2")
    with pytest.raises(ValueError, match="unknown parameter"):
        ApproximateIndex.build(x, kind="hnsw", nprobe=3)
    with pytest.raises(ValueError, match="must divide"):
        ApproximateIndex.build(x, kind="ivf", codes="pq", pq_m=5)
    with pytest.raises(ValueError, match="distinct"):
        ApproximateIndex.build(x[:3], kind="flat", ids=np.array([1, 1, 2]))
    ann = ApproximateIndex.build(x[:100], kind="flat")
    with pytest.raises(ValueError, match="unknown search parameter"):
        ann.search(x[:2], 3, efsearch=10)


# ---- the hooks in LabelIndex and RetrievalMemory -----------------------------------------------------------------


def test_label_index_searches_through_the_approximate_index_and_saves_it(data, tmp_path):
    x, q = data
    index = LabelIndex(torch.from_numpy(x), normalized=True)
    exact_scores, exact_ids = index.search(q, 10)
    ann = index.build_approximate("hnsw", codes="sq8", target_recall=0.99, tune_queries=q, tune_k=10, M=16)
    assert ann is index.approximate and ann.recall["recall"] >= 0.99
    assert np.shares_memory(ann.vectors, index.embeddings.numpy())  # re-ranks against the embeddings, no copy
    scores, ids = index.search(q, 10)
    assert recall_at_k(ids, exact_ids) >= 0.99
    ann.remove(exact_ids[:, 0])  # search consults the approximate index: the removed best labels disappear
    _, ids = index.search(q, 10)
    assert not np.isin(ids, exact_ids[:, 0]).any()
    _, ids = index.search(q, 10, exclude=[(0, int(exact_ids[0, 1]))])
    assert exact_ids[0, 1] not in ids[0]
    index.save(tmp_path / "idx")
    assert sorted(p.name for p in (tmp_path / "idx" / "approximate").iterdir()) == [
        "ann.json",
        "index.faiss",
        "removed.npy",
    ]  # the re-ranking vectors are embeddings.safetensors, not a second copy
    config = json.loads((tmp_path / "idx" / "label_index.json").read_text())
    assert config["approximate"]["recall"]["recall"] == ann.recall["recall"]
    loaded = LabelIndex.load(tmp_path / "idx")
    assert loaded.approximate is not None and loaded.approximate.reranks
    np.testing.assert_array_equal(loaded.search(q, 10)[1], index.search(q, 10)[1])
    assert LabelIndex.load(tmp_path / "idx", load_approximate=False).approximate is None
    index.approximate = None
    index.save(tmp_path / "idx")  # exact again: the stale approximate folder must go
    assert not (tmp_path / "idx" / "approximate").exists()
    np.testing.assert_array_equal(LabelIndex.load(tmp_path / "idx").search(q, 10)[1], exact_ids)
    with pytest.raises(ValueError, match="tune_queries"):
        index.build_approximate("hnsw", target_recall=0.9)


def test_memory_knn_through_a_compressed_index_matches_exact(data, tmp_path):
    x, q = data
    rng = np.random.default_rng(4)
    labels = sp.random(N, 50, density=0.05, random_state=5, format="csr")
    memory = RetrievalMemory(torch.from_numpy(x), labels, lam=0.7, k=10, temperature=0.1)
    exact_sims, exact_rows = memory.neighbours(q)
    memory.build_approximate("flat", codes="sq8", target_recall=0.99, tune_queries=q)
    sims, rows = memory.neighbours(q)
    assert recall_at_k(rows, exact_rows) >= 0.99
    same = rows == exact_rows
    np.testing.assert_allclose(sims[same], exact_sims[same], atol=1e-5)
    label_emb = _unit(rng.normal(size=(50, D)))
    index = LabelIndex(label_emb, normalized=True, memory=memory)
    fused = index.search(q, 5)
    index.save(tmp_path / "idx")
    assert (tmp_path / "idx" / "memory_approximate" / "index.faiss").is_file()
    loaded = LabelIndex.load(tmp_path / "idx")
    assert loaded.memory.approximate is not None and loaded.memory.approximate.recall == memory.approximate.recall
    np.testing.assert_array_equal(loaded.search(q, 5)[1], fused[1])
    np.testing.assert_allclose(loaded.search(q, 5)[0], fused[0], atol=1e-6)


def test_evaluator_with_a_saved_index_searches_through_its_approximate_index(tiny_model, tmp_path):
    from dexml_hf.evaluation import XMCEvaluator

    words = ["apple", "river", "engine", "violin", "planet", "garden", "bridge", "winter", "copper", "forest"]
    labels = [f"{a} {b}" for a in words for b in words[:6]]  # 60 labels
    queries = [f"{a} question about {b}" for a, b in zip(words, words[::-1])]
    truth = sp.csr_matrix((np.ones(10), (np.arange(10), np.arange(0, 60, 6))), shape=(10, 60))
    index = LabelIndex.from_texts(tiny_model, labels)
    exact_ids = XMCEvaluator(queries, labels, truth, index=index, ks=(1, 5)).compute_topk(tiny_model)[1]
    index.build_approximate("hnsw", M=8)
    index.approximate.remove(exact_ids[:, 0])  # the exact best labels: the approximate index can no longer return them
    index.save(tmp_path / "idx")
    loaded = LabelIndex.load(tmp_path / "idx")
    ids = XMCEvaluator(queries, labels, truth, index=loaded, ks=(1, 5)).compute_topk(tiny_model)[1]
    assert not np.isin(ids, exact_ids[:, 0]).any()
    np.testing.assert_array_equal(
        ids[:, :5], np.asarray([[i for i in row if i not in exact_ids[:, 0]][:5] for row in exact_ids])
    )


def test_pushed_index_brings_its_approximate_index_and_memory_knn(data, hub_repo_id):
    x, q = data
    labels = sp.random(N, 40, density=0.05, random_state=6, format="csr")
    memory = RetrievalMemory(torch.from_numpy(x), labels, lam=0.6, k=8, temperature=0.1)
    memory.build_approximate("hnsw", codes="fp16", M=8)
    index = LabelIndex(_unit(np.random.default_rng(7).normal(size=(40, D))), normalized=True, memory=memory)
    index.build_approximate("flat", codes="sq8")
    index.approximate.remove([3])
    index.push_to_hub(hub_repo_id)
    loaded = LabelIndex.load(hub_repo_id)
    assert loaded.approximate is not None and loaded.approximate.codes == "sq8" and len(loaded.approximate) == 39
    assert loaded.memory.approximate is not None and loaded.memory.approximate.kind == "hnsw"
    for use_memory in (True, False):
        a, b = index.search(q, 5, use_memory=use_memory), loaded.search(q, 5, use_memory=use_memory)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    assert 3 not in index.search(q, 39, use_memory=False)[1]


def test_recall_at_k_by_hand():
    """The recall every threshold in this file rests on, on hand-counted cases (padding -1 ignored)."""
    from dexml_hf.ann import recall_at_k

    assert recall_at_k([[1, 2, -1]], [[2, 3, 4]]) == pytest.approx(1 / 3)
    assert recall_at_k([[1, 2], [5, 6]], [[2, 1], [7, 8]]) == pytest.approx(2 / 4)
    assert recall_at_k([[9, 1, 2]], [[1, 2, 3]], k=2) == pytest.approx(1 / 2)  # top-2: {9, 1} vs {1, 2}
    assert recall_at_k([[1, -1]], [[1, -1]]) == 1.0
