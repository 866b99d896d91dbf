"""The chunked two-pass all-labels loss equals the loss over the full label set computed in one piece."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dexml_hf.negatives.all_labels import AllLabelsLoss

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma tau".split()


def _problem(num_labels=23, batch=5, seed=0):
    rng = np.random.default_rng(seed)
    # 1 to 6 words: texts of different lengths, so length-grouped mini-batches reorder them
    labels = [" ".join(rng.choice(WORDS, size=1 + i % 6)) + f" {i}" for i in range(num_labels)]
    queries = [" ".join(rng.choice(WORDS, size=6)) for _ in range(batch)]
    dense = np.zeros((batch, num_labels), dtype=np.float32)
    for i in range(batch):
        dense[i, rng.choice(num_labels, size=1 + i % 3, replace=False)] = 1.0
    matrix = sp.csr_matrix(dense)
    sampled = np.array([rng.choice(matrix[i].indices) for i in range(batch)])
    return labels, queries, matrix, sampled


def _brute_force(model, queries, labels, matrix, sampled, scale, loss, normalize=False):
    """The loss over the full B x L score matrix in one piece, by the losses' functional core."""
    from dexml_hf.losses.functional import decoupled_softmax, softmax_pal

    q = model(model.preprocess(queries))["sentence_embedding"].float()
    e = model(model.preprocess(labels))["sentence_embedding"].float()
    if normalize:
        q, e = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(e, dim=-1)
    scores = scale * q @ e.T
    positives = torch.as_tensor(matrix.toarray() > 0)
    positives[torch.arange(len(queries)), torch.as_tensor(sampled)] = True
    fn = decoupled_softmax if loss == "decoupled_softmax" else softmax_pal
    return fn(scores, positives)


def _hand_decoupled(q, e, positives, scale):
    """DESIGN.md formula written out: mean_b 1/|P_b| sum_p -log(e^s_p / (e^s_p + sum_neg e^s_n))."""
    total = 0.0
    s = scale * q @ e.T
    for b in range(s.shape[0]):
        pos = positives[b].nonzero().flatten().tolist()
        neg = [c for c in range(s.shape[1]) if c not in pos]
        for p in pos:
            total += -(s[b, p] - torch.log(torch.exp(s[b, p]) + torch.exp(s[b, neg]).sum())) / len(pos)
    return total / s.shape[0]


def _scale(grads):
    """Tolerance unit: the largest gradient entry of the reference (some true gradients are exactly zero)."""
    return max(float(g.abs().max()) for g in grads.values())


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "loss,chunk,normalize,mini_batch",
    [
        ("decoupled_softmax", 4, False, None),
        ("decoupled_softmax", 7, True, None),
        ("decoupled_softmax", 100, True, None),
        ("decoupled_softmax", 100, True, 4),
        ("decoupled_softmax", 9, False, 2),
        ("softmax", 5, False, None),
        ("softmax", 6, True, None),
        ("softmax", 11, True, 3),
    ],
)
def test_all_labels_matches_one_piece(tiny_model, loss, chunk, normalize, mini_batch):
    model = tiny_model.eval()  # dropout off: the one-piece reference has no RNG replay
    labels, queries, matrix, sampled = _problem()
    scale = 20.0

    ref = _brute_force(model, queries, labels, matrix, sampled, scale, loss, normalize)
    ref.backward()
    ref_grads = _grads(model)
    model.zero_grad()

    engine = AllLabelsLoss(
        model,
        labels,
        model.preprocess,
        scale=scale,
        label_chunk_size=chunk,
        loss=loss,
        normalize=normalize,
        mini_batch_size=mini_batch,
    )
    value = engine(model.preprocess(queries), torch.as_tensor(sampled), matrix)
    value.backward()
    grads = _grads(model)

    torch.testing.assert_close(value.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(
            grads[name], g, rtol=1e-3, atol=1e-4 * _scale(ref_grads), msg=lambda m, n=name: f"{n}: {m}"
        )


def test_all_labels_replays_dropout(tiny_model):
    """In train mode the gradient pass must see the same dropout masks as the no-grad pass: the loss value of a
    second identical call from the same RNG state is identical, and gradients match a one-piece run that replays
    the per-chunk RNG."""
    model = tiny_model.train()
    labels, queries, matrix, sampled = _problem(num_labels=9)
    engine = AllLabelsLoss(model, labels, model.preprocess, scale=10.0, label_chunk_size=100)
    torch.manual_seed(3)
    value = engine(model.preprocess(queries), torch.as_tensor(sampled), matrix)
    value.backward()
    grads = _grads(model)
    model.zero_grad()
    # one chunk holding every label: the reference is encode(queries) then encode(labels) from the same seed
    torch.manual_seed(3)
    ref = _brute_force(model, queries, labels, matrix, sampled, 10.0, "decoupled_softmax")
    ref.backward()
    torch.testing.assert_close(value.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    ref_grads = _grads(model)
    for name, g in ref_grads.items():
        torch.testing.assert_close(
            grads[name], g, rtol=1e-3, atol=1e-4 * _scale(ref_grads), msg=lambda m, n=name: f"{n}: {m}"
        )


def test_mini_batches_group_by_length_and_replay_dropout(tiny_model):
    """mini_batch_size: one encoder call per length-grouped piece of the chunk; in train mode each call's dropout
    is replayed in the gradient pass. Reference: the same calls, in the same order from the same seed, in one
    autograd graph."""
    from dexml_hf.losses.functional import decoupled_softmax

    model = tiny_model.train()
    labels, queries, matrix, sampled = _problem(num_labels=10)
    engine = AllLabelsLoss(model, labels, model.preprocess, scale=10.0, label_chunk_size=100, mini_batch_size=3)
    pieces = engine._pieces(labels)
    lengths = [len(t) for t in labels]
    assert sorted(np.concatenate(pieces).tolist()) == list(range(10)) and len(pieces) == 4
    assert max(lengths[i] for i in pieces[0]) <= min(lengths[i] for i in pieces[-1])  # shortest first
    torch.manual_seed(3)
    value = engine(model.preprocess(queries), torch.as_tensor(sampled), matrix)
    value.backward()
    grads = _grads(model)
    model.zero_grad()

    torch.manual_seed(3)
    q = model(model.preprocess(queries))["sentence_embedding"].float()
    e = torch.zeros(len(labels), q.shape[1])
    for idx in pieces:
        e = e.index_put(
            (torch.as_tensor(idx),), model(model.preprocess([labels[i] for i in idx]))["sentence_embedding"]
        )
    positives = torch.as_tensor(matrix.toarray() > 0)
    positives[torch.arange(len(queries)), torch.as_tensor(sampled)] = True
    ref = decoupled_softmax(10.0 * q @ e.T, positives)
    ref.backward()
    torch.testing.assert_close(value.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    ref_grads = _grads(model)
    for name, g in ref_grads.items():
        torch.testing.assert_close(
            grads[name], g, rtol=1e-3, atol=1e-4 * _scale(ref_grads), msg=lambda m, n=name: f"{n}: {m}"
        )


def test_all_labels_rejects_bad_ids(tiny_model):
    labels, queries, matrix, _ = _problem()
    engine = AllLabelsLoss(tiny_model, labels, tiny_model.preprocess, label_chunk_size=4)
    with pytest.raises(ValueError, match="positive label ids"):
        engine(tiny_model.preprocess(queries), torch.tensor([0, 1, 2, 3, 99]), matrix)
    with pytest.raises(ValueError, match="label_chunk_size"):
        AllLabelsLoss(tiny_model, labels, tiny_model.preprocess, label_chunk_size=0)
    with pytest.raises(ValueError, match="mini_batch_size"):
        AllLabelsLoss(tiny_model, labels, tiny_model.preprocess, mini_batch_size=0)


def test_hand_formula_agrees_with_functional_core():
    """Guards the reference itself: the functional core equals the DESIGN.md formula on random numbers."""
    from dexml_hf.losses.functional import decoupled_softmax

    torch.manual_seed(0)
    q, e = torch.randn(4, 6), torch.randn(9, 6)
    positives = torch.rand(4, 9) < 0.3
    positives[:, 0] = True
    torch.testing.assert_close(decoupled_softmax(0.5 * q @ e.T, positives), _hand_decoupled(q, e, positives, 0.5))


# ---------------------------------------------------------------------------------------------------------------
# exact all-label soft top-k, and the engine built from a loss
# ---------------------------------------------------------------------------------------------------------------


def _dense_topk(model, queries, labels, matrix, sampled, k, max_positives=None, scale=20.0):
    """soft_topk_loss on the full B x L cosine scores; with max_positives=1 the other positives are -inf."""
    from dexml_hf.losses.functional import soft_topk_loss

    q = torch.nn.functional.normalize(model(model.preprocess(queries))["sentence_embedding"].float(), dim=-1)
    e = torch.nn.functional.normalize(model(model.preprocess(labels))["sentence_embedding"].float(), dim=-1)
    scores = scale * q @ e.T
    positives = torch.as_tensor(matrix.toarray() > 0)
    positives[torch.arange(len(queries)), torch.as_tensor(sampled)] = True
    if max_positives == 1:
        others = positives.clone()
        others[torch.arange(len(queries)), torch.as_tensor(sampled)] = False
        scores = scores.masked_fill(others, float("-inf"))
        positives = positives & ~others
    return soft_topk_loss(scores, positives, k=k)


@pytest.mark.parametrize(
    "k,chunk,mini_batch,max_positives",
    [(3, 4, None, None), (5, 100, None, None), (3, 7, 3, None), ("num_pos", 5, None, None), (2, 6, None, 1)],
)
def test_all_labels_soft_topk_matches_the_dense_operator(tiny_model, k, chunk, mini_batch, max_positives):
    from dexml_hf.losses import SoftTopKLoss

    model = tiny_model.eval()
    labels, queries, matrix, sampled = _problem()
    ref = _dense_topk(model, queries, labels, matrix, sampled, k, max_positives)
    ref.backward()
    ref_grads = _grads(model)
    model.zero_grad()

    loss = SoftTopKLoss(model, scale=20.0, k=k, max_positives=max_positives)
    engine = loss.all_labels_engine(
        model, labels, model.preprocess, label_chunk_size=chunk, mini_batch_size=mini_batch
    )
    value = engine(model.preprocess(queries), torch.as_tensor(sampled), matrix)
    value.backward()
    grads = _grads(model)
    torch.testing.assert_close(value.detach(), ref.detach(), rtol=1e-5, atol=1e-5)
    assert ref.item() > 0.1
    assert set(grads) == set(ref_grads)
    for name, g in ref_grads.items():
        torch.testing.assert_close(
            grads[name], g, rtol=1e-3, atol=1e-4 * _scale(ref_grads), msg=lambda m, n=name: f"{n}: {m}"
        )


def test_engine_from_a_loss_reads_positives_from_its_label_matrix(tiny_model):
    """query_ids instead of label_matrix_rows: the loss's own label matrix gives the positives (on device)."""
    from dexml_hf.losses import CachedDecoupledSoftmaxLoss

    model = tiny_model.eval()
    labels, queries, matrix, sampled = _problem()
    full = sp.vstack([sp.csr_matrix((3, matrix.shape[1])), matrix]).tocsr()  # the batch is rows 3.. of the matrix
    loss = CachedDecoupledSoftmaxLoss(model, scale=20.0, label_matrix=full)
    engine = loss.all_labels_engine(model, labels, model.preprocess, label_chunk_size=6)
    with torch.no_grad():
        by_ids = engine(model.preprocess(queries), torch.as_tensor(sampled), query_ids=torch.arange(3, 8))
        by_rows = engine(model.preprocess(queries), torch.as_tensor(sampled), matrix)
        ref = _brute_force(model, queries, labels, matrix, sampled, 20.0, "decoupled_softmax", normalize=True)
    torch.testing.assert_close(by_ids, ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(by_rows, ref, rtol=1e-5, atol=1e-6)


class _TableEncoder(torch.nn.Module):
    """Texts are row numbers of a fixed table; a linear map embeds them (fast, and NaN rows can be planted)."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.linear = torch.nn.Linear(table.shape[1], 4)

    def preprocess(self, texts):
        return {"x": self.table[torch.tensor([int(t) for t in texts])]}

    def forward(self, features):
        return {"sentence_embedding": self.linear(features["x"])}


@pytest.mark.parametrize("objective", ["decoupled_softmax", "softmax", "soft_topk"])
def test_all_labels_engine_refuses_nonfinite_embeddings(objective):
    table = torch.randn(30, 5)
    table[17, 2] = float("nan")
    model = _TableEncoder(table)
    labels = [str(i) for i in range(10, 30)]
    engine = AllLabelsLoss(model, labels, model.preprocess, label_chunk_size=6, loss=objective, k=2)
    with pytest.raises(
        FloatingPointError, match=r"AllLabelsLoss \(.*\): NaN or inf in the label embeddings \(label ids \[7\]\)"
    ):
        engine(model.preprocess(["0", "1"]), torch.tensor([0, 1]))
    with pytest.raises(FloatingPointError, match=r"query embeddings \(batch rows \[1\]\)"):
        engine(model.preprocess(["3", "17"]), torch.tensor([0, 1]))


def test_all_labels_soft_topk_refuses_k_at_least_the_labels():
    model = _TableEncoder(torch.randn(10, 5))
    engine = AllLabelsLoss(
        model, [str(i) for i in range(4)], model.preprocess, label_chunk_size=3, loss="soft_topk", k=4
    )
    with pytest.raises(ValueError, match="k=4 but query row 0 sees only 4 candidate"):
        engine(model.preprocess(["5", "6"]), torch.tensor([0, 1]))
