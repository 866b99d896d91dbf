"""The loss classes: batch reading, deduplication, the positives mask, GradCache, trainer and fit()."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from datasets import Dataset
from sentence_transformers import InputExample, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from torch.utils.data import DataLoader

from dexml_hf import (
    CachedDecoupledSoftmaxLoss,
    CachedSoftTopKLoss,
    DecoupledSoftmaxLoss,
    OvABCELoss,
    SoftmaxLoss,
    SoftTopKLoss,
)
from dexml_hf.losses import functional

LOSSES = [
    (DecoupledSoftmaxLoss, functional.decoupled_softmax),
    (SoftmaxLoss, functional.softmax_pal),
    (OvABCELoss, functional.ova_bce),
    (partial(SoftTopKLoss, k=2), lambda s, p: functional.soft_topk_loss(s, p, k=2, alpha=2.0, n_iter=32)),
]
LOSS_IDS = ["decoupled", "pal", "bce", "soft_topk"]


def cosine(a, b):
    return torch.nn.functional.normalize(a, dim=-1) @ torch.nn.functional.normalize(b, dim=-1).T


def expected_mask(query_ids, positive_ids, unique_ids, label_matrix):
    """Loop over (query, candidate): positive if the label matrix says so or a batch row pairs them."""
    rows = []
    for q in query_ids:
        truth = set(label_matrix[q].indices.tolist()) if label_matrix is not None else set()
        truth |= {p for q2, p in zip(query_ids, positive_ids) if q2 == q}
        rows.append([u in truth for u in unique_ids])
    return torch.tensor(rows)


# query 0 appears twice (rows 0 and 2); label 10 is repeated (rows 0 and 3, and as a hard negative of row 1)
QUERY_IDS = [0, 1, 0, 2]
POSITIVE_IDS = [10, 11, 12, 10]
NEGATIVE_IDS = [13, 10, 14, 11]
# query 1 also has labels 12 and 13 (in the batch as another row's positive and row 0's hard negative)
LABEL_MATRIX = sp.csr_matrix(
    (np.ones(7), ([0, 0, 1, 1, 1, 2, 2], [10, 12, 11, 12, 13, 10, 3])),
    shape=(4, 20),
)


@pytest.mark.parametrize("use_matrix", [True, False])
@pytest.mark.parametrize("loss_cls,fn", LOSSES, ids=LOSS_IDS)
def test_dedup_and_positives_mask(loss_cls, fn, use_matrix):
    torch.manual_seed(0)
    B, d = 4, 8
    queries = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(2 * B, d, dtype=torch.float64)
    # duplicated label ids carry identical embeddings, as the same text would in eval mode
    ids = POSITIVE_IDS + NEGATIVE_IDS
    first = {}
    for i, label in enumerate(ids):
        first.setdefault(label, i)
        candidates[i] = candidates[first[label]]
    candidates.requires_grad_()
    matrix = LABEL_MATRIX if use_matrix else None
    loss_obj = loss_cls(model=torch.nn.Identity(), scale=7.0, label_matrix=matrix)
    loss = loss_obj.compute_loss_from_candidates(queries, candidates, torch.tensor(QUERY_IDS), torch.tensor(ids))

    unique_ids = sorted(set(ids))
    mask = expected_mask(QUERY_IDS, POSITIVE_IDS, unique_ids, matrix)
    if use_matrix:
        assert mask[1, unique_ids.index(12)] and mask[1, unique_ids.index(13)]  # from the matrix, not the row
    assert mask[0, unique_ids.index(12)] and mask[2, unique_ids.index(10)]  # same query id, other row
    unique_emb = torch.stack([candidates[first[u]] for u in unique_ids])
    expected = fn(cosine(queries, unique_emb) * 7.0, mask)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss_obj._positives_mask(
        torch.tensor(QUERY_IDS), torch.tensor(QUERY_IDS), torch.tensor(POSITIVE_IDS), torch.tensor(unique_ids)
    ).equal(mask)
    # each label scored once: duplicates after the first occurrence get no gradient
    loss.backward()
    duplicates = [i for i, label in enumerate(ids) if first[label] != i]
    assert duplicates and torch.all(candidates.grad[duplicates] == 0)


@pytest.mark.parametrize("loss_cls,fn", LOSSES[:2], ids=LOSS_IDS[:2])
def test_logq_correction_subtracts_each_labels_log_positive_share(loss_cls, fn):
    """q_j = sum over queries having label j of 1/|P_q|, normalised; the loss sees scale * cos - log q_j."""
    torch.manual_seed(1)
    queries, candidates = torch.randn(4, 8, dtype=torch.float64), torch.randn(8, 8, dtype=torch.float64)
    ids = POSITIVE_IDS + NEGATIVE_IDS
    for i, label in enumerate(ids):  # same label, same embedding
        candidates[i] = candidates[ids.index(label)]
    loss_obj = loss_cls(model=torch.nn.Identity(), scale=7.0, label_matrix=LABEL_MATRIX, logq_correction=True)
    got = loss_obj.compute_loss_from_candidates(queries, candidates, torch.tensor(QUERY_IDS), torch.tensor(ids))

    # by hand: query 0 has {10, 12}, query 1 {11, 12, 13}, query 2 {3, 10}; query 3 none
    share = {3: 1 / 2, 10: 1 / 2 + 1 / 2, 11: 1 / 3, 12: 1 / 2 + 1 / 3, 13: 1 / 3}
    total = sum(share.values())
    unique_ids = sorted(set(ids))
    # label 14 (only a hard negative, never a positive) gets the smallest share, 1/3
    log_q = torch.tensor([np.log(share.get(u, 1 / 3) / total) for u in unique_ids], dtype=torch.float64)
    unique_emb = torch.stack([candidates[ids.index(u)] for u in unique_ids])
    mask = expected_mask(QUERY_IDS, POSITIVE_IDS, unique_ids, LABEL_MATRIX)
    expected = fn(cosine(queries, unique_emb) * 7.0 - log_q, mask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    plain = loss_cls(model=torch.nn.Identity(), scale=7.0, label_matrix=LABEL_MATRIX)
    assert plain.compute_loss_from_candidates(
        queries, candidates, torch.tensor(QUERY_IDS), torch.tensor(ids)
    ).item() != pytest.approx(got.item(), rel=1e-3)
    # without the label matrix there is nothing to estimate q from
    with pytest.raises(ValueError, match="logq_correction needs"):
        loss_cls(model=torch.nn.Identity(), logq_correction=True).compute_loss_from_candidates(
            queries, candidates, torch.tensor(QUERY_IDS), torch.tensor(ids)
        )


def test_bad_inputs_raise_clear_errors():
    loss = DecoupledSoftmaxLoss(torch.nn.Identity(), label_matrix=LABEL_MATRIX)
    q, c = torch.randn(4, 3), torch.randn(8, 3)
    with pytest.raises(ValueError, match="query_id 7 is outside the label matrix"):
        loss.compute_loss_from_candidates(q, c, torch.tensor([0, 1, 7, 2]), torch.arange(8))
    with pytest.raises(ValueError, match=r"shape \(4, 3\)"):
        loss.compute_loss_from_embeddings([q, c[:4], c[4:]], torch.zeros(4, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="scipy sparse"):
        DecoupledSoftmaxLoss(torch.nn.Identity(), label_matrix=np.eye(3))
    with pytest.raises(ValueError, match="scale"):
        DecoupledSoftmaxLoss(torch.nn.Identity(), scale=0)


def _features(model, texts):
    return model.preprocess(texts)


def test_without_labels_softmax_equals_mnrl(tiny_model):
    tiny_model.eval()
    texts = [["q one", "q two", "q three"], ["l one", "l two", "l three"], ["n one", "n two", "n three"]]
    features = [_features(tiny_model, t) for t in texts]
    ours = SoftmaxLoss(tiny_model)(features, None)
    theirs = MultipleNegativesRankingLoss(tiny_model)(features, None)
    assert ours.item() == pytest.approx(theirs.item(), rel=1e-5)


@pytest.mark.parametrize("loss_cls,fn", LOSSES, ids=LOSS_IDS)
def test_forward_embeds_with_the_model(tiny_model, loss_cls, fn):
    tiny_model.eval()
    queries = ["how to bake bread", "fix a robot arm", "soft pretzel crust", "servo range"]
    positives = ["baking", "robotics", "baking", "servo"]
    labels = torch.tensor([[0, 10, 13], [1, 11, 10], [0, 10, 14], [2, 12, 11]])
    negatives = ["salt", "baking", "crust", "robotics"]
    loss_obj = loss_cls(tiny_model, label_matrix=LABEL_MATRIX)
    features = [_features(tiny_model, t) for t in (queries, positives, negatives)]
    loss = loss_obj(features, labels)
    with torch.no_grad():
        q = tiny_model.encode(queries, convert_to_tensor=True)
        cands = {10: "baking", 11: "robotics", 12: "servo", 13: "salt", 14: "crust"}
        unique = sorted(cands)
        c = tiny_model.encode([cands[u] for u in unique], convert_to_tensor=True)
    mask = expected_mask([0, 1, 0, 2], [10, 11, 10, 12], unique, LABEL_MATRIX)
    assert loss.item() == pytest.approx(fn(cosine(q, c) * 20.0, mask).item(), rel=1e-4, abs=1e-5)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_model.parameters())


@pytest.mark.parametrize(
    "plain_cls,cached_cls",
    [
        (DecoupledSoftmaxLoss, CachedDecoupledSoftmaxLoss),
        (partial(SoftTopKLoss, k=2), partial(CachedSoftTopKLoss, k=2)),
    ],
    ids=["decoupled", "soft_topk"],
)
def test_cached_equals_uncached(tiny_model, plain_cls, cached_cls):
    import copy

    tiny_model.eval()  # no dropout, so both runs see the same network
    other = copy.deepcopy(tiny_model)
    queries = [f"query number {i} about topic {i % 3}" for i in range(7)]
    positives = [f"label {i % 4}" for i in range(7)]
    labels = torch.tensor([[i, i % 4] for i in range(7)])
    matrix = sp.csr_matrix((np.ones(7), (np.arange(7), np.arange(7) % 4)), shape=(7, 4))
    plain = plain_cls(tiny_model, label_matrix=matrix)
    cached = cached_cls(other, label_matrix=matrix, mini_batch_size=3)
    loss_a = plain([_features(tiny_model, queries), _features(tiny_model, positives)], labels)
    loss_a.backward()
    assert loss_a.item() > 0.01  # a loss with something to learn, so equal gradients mean something
    loss_b = cached([_features(other, queries), _features(other, positives)], labels)
    loss_b.backward()
    assert loss_b.item() == pytest.approx(loss_a.item(), rel=1e-5)
    n_checked = 0
    for (name, p_a), p_b in zip(tiny_model.named_parameters(), other.parameters()):
        if p_a.grad is None:
            continue
        torch.testing.assert_close(p_b.grad, p_a.grad, rtol=1e-4, atol=1e-6, msg=name)
        n_checked += 1
    assert n_checked > 10
    assert cached.get_config_dict()["mini_batch_size"] == 3
    assert "2101.06983" in cached.citation and "Dual-Encoders" in cached.citation


def test_config_and_citation(tiny_model):
    loss = SoftTopKLoss(tiny_model, scale=10.0, label_matrix=LABEL_MATRIX, k=3)
    config = loss.get_config_dict()
    assert config["scale"] == 10.0 and config["k"] == 3 and config["label_matrix"] == "4x20 CSR"
    assert config["similarity_fct"] == "cos_sim"
    assert "Gupta" in loss.citation and "Dual-Encoders for Extreme Multi-Label Classification" in loss.citation


def _toy_dataset(n=24):
    rng = np.random.default_rng(0)
    topics = ["bread", "robot", "cheese", "motor", "oven", "sensor"]
    rows = {"query": [], "positive": [], "label": []}
    for i in range(n):
        t = int(rng.integers(len(topics)))
        rows["query"].append(f"question {i} about the {topics[t]}")
        rows["positive"].append(topics[t])
        rows["label"].append([i, t])
    matrix = sp.csr_matrix((np.ones(n), (np.arange(n), [lab[1] for lab in rows["label"]])), shape=(n, len(topics)))
    return Dataset.from_dict(rows), matrix


@pytest.mark.parametrize("loss_name", ["decoupled", "cached", "topk"])
def test_sentence_transformer_trainer_updates_parameters(tiny_model, tmp_path, loss_name):
    dataset, matrix = _toy_dataset()
    loss = {
        "decoupled": lambda: DecoupledSoftmaxLoss(tiny_model, label_matrix=matrix),
        "cached": lambda: CachedDecoupledSoftmaxLoss(tiny_model, label_matrix=matrix, mini_batch_size=4),
        "topk": lambda: SoftTopKLoss(tiny_model, label_matrix=matrix, k=2),
    }[loss_name]()
    before = {n: p.detach().clone() for n, p in tiny_model.named_parameters()}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=1e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        use_cpu=True,
    )
    trainer = SentenceTransformerTrainer(model=tiny_model, args=args, train_dataset=dataset, loss=loss)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(np.isfinite(losses))
    changed = [n for n, p in tiny_model.named_parameters() if not torch.equal(before[n], p.detach())]
    assert len(changed) > len(before) // 2


def test_legacy_fit_reads_query_and_label_ids(tiny_model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset, matrix = _toy_dataset(16)
    examples = [InputExample(texts=[r["query"], r["positive"]], label=r["label"]) for r in dataset]
    loss = DecoupledSoftmaxLoss(tiny_model, label_matrix=matrix)
    seen = []
    original = loss.compute_loss_from_candidates

    def spy(q, c, query_ids, candidate_ids):
        seen.append((query_ids.tolist(), candidate_ids.tolist()))
        return original(q, c, query_ids, candidate_ids)

    loss.compute_loss_from_candidates = spy
    before = [p.detach().clone() for p in tiny_model.parameters()]
    tiny_model.fit(
        train_objectives=[(DataLoader(examples, batch_size=8, shuffle=False), loss)],
        epochs=1,
        warmup_steps=0,
        show_progress_bar=False,
        optimizer_params={"lr": 1e-3},
    )
    assert seen, "fit() never reached the loss"
    pairs = {(q, c) for qs, cs in seen for q, c in zip(qs, cs)}
    assert pairs == {tuple(r["label"]) for r in dataset}
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, tiny_model.parameters()))


def test_scores_are_fp32_under_autocast():
    torch.manual_seed(0)
    q = torch.randn(4, 8).bfloat16()
    c = torch.randn(4, 8).bfloat16()
    ids = torch.arange(4)
    loss_obj = DecoupledSoftmaxLoss(torch.nn.Identity())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = loss_obj.compute_loss_from_candidates(q, c, ids, ids)
    assert loss.dtype == torch.float32
    expected = functional.decoupled_softmax(cosine(q.float(), c.float()) * 20.0, torch.eye(4, dtype=torch.bool))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
