"""The loss classes on sentence-transformers' contract: the list-shaped entry, honest configs, capabilities the
trainer dispatches on, the 'all_cached' entry against a brute-force reference, non-finite inputs, bf16 autocast."""

from __future__ import annotations

import inspect
from functools import partial

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sentence_transformers.util import dot_score
from torch import nn

from dexml_hf.losses import (
    CachedDecoupledSoftmaxLoss,
    CachedSoftTopKLoss,
    DecoupledSoftmaxLoss,
    OvABCELoss,
    SoftmaxLoss,
    SoftTopKLoss,
    XMCLoss,
    functional,
)

ALL_CLASSES = [
    DecoupledSoftmaxLoss,
    SoftmaxLoss,
    OvABCELoss,
    SoftTopKLoss,
    CachedDecoupledSoftmaxLoss,
    CachedSoftTopKLoss,
]
CLASS_IDS = [c.__name__ for c in ALL_CLASSES]
FUNCTIONAL = {
    DecoupledSoftmaxLoss: functional.decoupled_softmax,
    SoftmaxLoss: functional.softmax_pal,
    OvABCELoss: functional.ova_bce,
    SoftTopKLoss: partial(functional.soft_topk_loss, k=2),
}


def make(cls, model, **kwargs):
    if issubclass(cls, SoftTopKLoss):
        kwargs.setdefault("k", 2)
    if cls in (CachedDecoupledSoftmaxLoss, CachedSoftTopKLoss):
        kwargs.setdefault("mini_batch_size", 2)
    return cls(model, **kwargs)


class LinearEncoder(nn.Module):
    """Feature dict in, ``sentence_embedding`` out: a stand-in for a SentenceTransformer."""

    def __init__(self, dim_in=6, dim_out=5):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, features):
        return {"sentence_embedding": self.linear(features["x"])}


MATRIX = sp.csr_matrix((np.ones(9), ([0, 0, 1, 1, 2, 3, 3, 3, 4], [0, 3, 1, 2, 2, 4, 5, 0, 6])), shape=(5, 8))
LABELS = torch.tensor(
    [[0, 0, 5], [1, 2, 7], [2, 2, 3], [3, 4, 1], [4, 6, 0], [0, 3, 7]]
)  # [query, positive, negative]


def _batch(seed=1, dim=6):
    g = torch.Generator().manual_seed(seed)
    table = torch.randn(8, dim, generator=g)
    queries = torch.randn(len(LABELS), dim, generator=g)
    return [{"x": queries}, {"x": table[LABELS[:, 1]]}, {"x": table[LABELS[:, 2]]}], table


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_st_entry_takes_a_list_of_column_embeddings(cls):
    torch.manual_seed(0)
    loss = make(cls, nn.Identity(), label_matrix=MATRIX)
    columns = [torch.randn(6, 4, dtype=torch.float64) for _ in range(3)]
    got = loss.compute_loss_from_embeddings(columns, LABELS)
    expected = loss.compute_loss_from_candidates(
        columns[0], torch.cat(columns[1:]), LABELS[:, 0], LABELS[:, 1:].T.reshape(-1)
    )
    assert got.item() == pytest.approx(expected.item(), rel=1e-12) and got.item() > 0
    with pytest.raises(ValueError, match="compute_loss_from_candidates"):
        loss.compute_loss_from_embeddings(columns[0], LABELS)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_config_reports_only_constructor_arguments(cls):
    loss = make(cls, nn.Identity(), label_matrix=MATRIX, scale=7.0)
    config = loss.get_config_dict()
    params = set(inspect.signature(cls.__init__).parameters)
    assert set(config) <= params, set(config) - params
    assert config["scale"] == 7.0 and config["label_matrix"] == "5x8 CSR" and config["similarity_fct"] == "cos_sim"
    assert ("logq_correction" in config) == ("logq_correction" in params)
    if "Cached" in cls.__name__:
        assert config["mini_batch_size"] == 2 and "mini_batch_num_tokens" in config
    # the config rebuilds an equal loss
    rebuilt = cls(nn.Identity(), **{k: v for k, v in config.items() if k not in ("label_matrix", "similarity_fct")})
    assert rebuilt.get_config_dict() == {**config, "label_matrix": None}


def test_all_labels_objective_is_inherited():
    assert DecoupledSoftmaxLoss.all_labels_objective == "decoupled_softmax"
    assert CachedDecoupledSoftmaxLoss.all_labels_objective == "decoupled_softmax"
    assert SoftmaxLoss.all_labels_objective == "softmax"
    assert SoftTopKLoss.all_labels_objective == CachedSoftTopKLoss.all_labels_objective == "soft_topk"
    assert OvABCELoss.all_labels_objective is None and XMCLoss.all_labels_objective is None

    class MyLoss(DecoupledSoftmaxLoss):
        pass

    assert MyLoss.all_labels_objective == "decoupled_softmax"


def test_all_labels_engine_reads_the_loss():
    model = LinearEncoder()
    loss = CachedDecoupledSoftmaxLoss(model, scale=9.0, similarity_fct=dot_score, mini_batch_size=4)
    engine = loss.all_labels_engine(model, ["a", "b"], lambda t: t, label_chunk_size=7, ddp_grad_factor=2.0)
    assert (engine.loss, engine.scale, engine.normalize, engine.label_chunk_size, engine.ddp_grad_factor) == (
        "decoupled_softmax",
        9.0,
        False,
        7,
        2.0,
    )
    topk = SoftTopKLoss(model, k="num_pos", alpha=3.0, n_iter=20, max_positives=4).all_labels_engine(model, [], None)
    assert (topk.loss, topk.k, topk.alpha, topk.n_iter, topk.max_positives, topk.normalize) == (
        "soft_topk",
        "num_pos",
        3.0,
        20,
        4,
        True,
    )
    with pytest.raises(ValueError, match="OvABCELoss has no exact all-label form"):
        OvABCELoss(model).all_labels_engine(model, [], None)
    with pytest.raises(ValueError, match="logq_correction"):
        DecoupledSoftmaxLoss(model, logq_correction=True).all_labels_engine(model, [], None)


def test_cached_losses_keep_the_st_guards():
    with pytest.raises(ValueError, match="mini_batch_num_tokens"):
        CachedDecoupledSoftmaxLoss(nn.Identity(), mini_batch_num_tokens=0)
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedSoftTopKLoss(nn.Identity(), mini_batch_size=0)


def test_cached_losses_refuse_static_embeddings():
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "a": 1, "b": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    model = SentenceTransformer(modules=[StaticEmbedding(tok, embedding_dim=4)], device="cpu")
    with pytest.raises(ValueError, match="StaticEmbedding"):
        CachedDecoupledSoftmaxLoss(model)
    DecoupledSoftmaxLoss(model)  # the uncached loss is fine


# ---------------------------------------------------------------------------------------------------------------
# 'all_cached': the batch against a full label table
# ---------------------------------------------------------------------------------------------------------------


def _brute_force_against_labels(fn, q, table, query_ids, positive_ids, matrix, scale, cosine=True):
    """Loops: positives = the query's matrix row plus its sampled positive; fp64 scores over every label."""
    q, table = q.double(), table.double()
    if cosine:
        q, table = nn.functional.normalize(q, dim=-1), nn.functional.normalize(table, dim=-1)
    scores = scale * q @ table.T
    positives = torch.zeros(scores.shape, dtype=torch.bool)
    for b, (qid, pid) in enumerate(zip(query_ids.tolist(), positive_ids.tolist())):
        for label in matrix[qid].indices.tolist() + [pid]:
            positives[b, label] = True
    return fn(scores, positives)


def _assert_same_loss_and_grads(got, ref, tensors):
    """``ref`` (fp64 brute force) backpropagated; ``got`` (already backpropagated) equal in value and in the
    gradient of each (tensor, its reference copy) pair."""
    ref.backward()
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    for tensor, reference in tensors:
        torch.testing.assert_close(tensor.grad, reference.grad.float(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "cls", [DecoupledSoftmaxLoss, SoftmaxLoss, OvABCELoss, SoftTopKLoss], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_compute_loss_against_labels_matches_brute_force(cls, similarity):
    torch.manual_seed(0)
    kwargs = {} if similarity == "cos" else {"similarity_fct": dot_score}
    loss = make(cls, nn.Identity(), label_matrix=MATRIX, scale=5.0, **kwargs)
    q = torch.randn(4, 3, requires_grad=True)
    table = torch.randn(8, 3, requires_grad=True)
    query_ids, positive_ids = torch.tensor([0, 1, 3, 0]), torch.tensor([3, 2, 7, 0])  # 7: sampled, not in the matrix
    got = loss.compute_loss_against_labels(q, table, query_ids, positive_ids)
    got.backward()
    assert got.dtype == torch.float32
    q_ref, t_ref = q.detach().clone().requires_grad_(), table.detach().clone().requires_grad_()
    ref = _brute_force_against_labels(
        FUNCTIONAL[cls], q_ref, t_ref, query_ids, positive_ids, MATRIX, 5.0, similarity == "cos"
    )
    _assert_same_loss_and_grads(got, ref, [(q, q_ref), (table, t_ref)])


class _RecordOutputs(torch.utils._python_dispatch.TorchDispatchMode):
    """(shape, storage address) of every tensor an op returns: an L × d tensor with storage of its own is a copy
    of the label table (a view such as ``detach`` shares the table's storage)."""

    def __init__(self):
        super().__init__()
        self.outputs = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.outputs.append((tuple(t.shape), t.untyped_storage().data_ptr()))
        return out


@pytest.mark.parametrize(
    "cls", [DecoupledSoftmaxLoss, SoftmaxLoss, OvABCELoss, SoftTopKLoss], ids=lambda c: c.__name__
)
@pytest.mark.parametrize("similarity", ["cos", "dot"])
def test_fresh_positives_equal_the_table_with_their_rows_replaced_without_copying_it(cls, similarity):
    """'all_cached': positive_embeddings scored in place of their table rows = the brute force over a table whose
    rows were replaced (a repeated id: its first row); the table is never copied (no L × d tensor is made) nor
    written, and gets no gradient."""
    torch.manual_seed(2)
    kwargs = {} if similarity == "cos" else {"similarity_fct": dot_score}
    loss = make(cls, nn.Identity(), label_matrix=MATRIX, scale=5.0, **kwargs)
    num_labels, dim = 8, 5  # dim differs from the batch size and L, so an L x d output is the table
    table = torch.randn(num_labels, dim)
    before = table.clone()
    q = torch.randn(4, dim, requires_grad=True)
    fresh = torch.randn(4, dim, requires_grad=True)
    query_ids, positive_ids = torch.tensor([0, 1, 3, 3]), torch.tensor([3, 2, 5, 5])  # id 5 twice: row 2 counts
    with _RecordOutputs() as recorded:
        got = loss.compute_loss_against_labels(q, table, query_ids, positive_ids, positive_embeddings=fresh)
        got.backward()
    own = table.untyped_storage().data_ptr()
    assert [o for o in recorded.outputs if o[0] == (num_labels, dim) and o[1] != own] == []
    assert torch.equal(table, before) and table.grad is None

    q_ref, fresh_ref = q.detach().clone().requires_grad_(), fresh.detach().clone().requires_grad_()
    replaced = table.clone().double()
    replaced = replaced.index_put((torch.tensor([3, 2, 5]),), fresh_ref[[0, 1, 2]].double())
    ref = _brute_force_against_labels(
        FUNCTIONAL[cls], q_ref, replaced, query_ids, positive_ids, MATRIX, 5.0, similarity == "cos"
    )
    _assert_same_loss_and_grads(got, ref, [(q, q_ref), (fresh, fresh_ref)])
    assert fresh.grad[3].abs().sum() == 0  # the repeated id's second row is not scored


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_fresh_positive_is_named_with_its_label_id(bad):
    """A NaN/inf in a fresh positive embedding ('all_cached') names that batch row and its label id, not the table."""
    loss = make(DecoupledSoftmaxLoss, nn.Identity(), label_matrix=MATRIX)
    q, table, fresh = torch.randn(4, 5), torch.randn(8, 5), torch.randn(4, 5)
    fresh[1, 2] = bad
    query_ids, positive_ids = torch.tensor([0, 1, 3, 3]), torch.tensor([3, 2, 5, 5])
    with pytest.raises(FloatingPointError, match=r"positive label embeddings \(rows \[1\], label ids \[2\]\)"):
        loss.compute_loss_against_labels(q, table, query_ids, positive_ids, positive_embeddings=fresh)
    fresh[1, 2], table[6, 0] = 0.0, bad  # a cached row no positive replaces
    with pytest.raises(FloatingPointError, match=r"NaN or inf in the table label embeddings \(rows \[6\]\)"):
        loss.compute_loss_against_labels(q, table, query_ids, positive_ids, positive_embeddings=fresh)


def test_compute_loss_against_labels_soft_topk_caps_positives():
    """max_positives=1 keeps only the sampled positive; the query's other positives leave the candidates."""
    torch.manual_seed(1)
    loss = SoftTopKLoss(nn.Identity(), label_matrix=MATRIX, k=2, max_positives=1)
    q, table = torch.randn(3, 4, dtype=torch.float64), torch.randn(8, 4, dtype=torch.float64)
    query_ids, positive_ids = torch.tensor([0, 3, 1]), torch.tensor([3, 5, 1])
    got = loss.compute_loss_against_labels(q, table, query_ids, positive_ids)
    scores = 20.0 * nn.functional.normalize(q, dim=-1) @ nn.functional.normalize(table, dim=-1).T
    positives = torch.zeros(3, 8, dtype=torch.bool)
    positives[torch.arange(3), positive_ids] = True
    others = [(0, 0), (1, 4), (1, 0), (2, 2)]  # matrix positives that are not the sampled one
    for b, label in others:
        scores[b, label] = float("-inf")
    assert got.item() == pytest.approx(functional.soft_topk_loss(scores, positives, k=2).item(), rel=1e-10)


# ---------------------------------------------------------------------------------------------------------------
# non-finite inputs: a clear error, never a NaN loss
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_nonfinite_embeddings_raise_naming_the_loss_and_rows(cls, bad):
    loss = make(cls, nn.Identity(), label_matrix=MATRIX)
    columns = [torch.randn(6, 4) for _ in range(3)]
    columns[0][4, 1] = bad
    with pytest.raises(
        FloatingPointError, match=rf"{cls.__name__}: NaN or inf in the query embeddings \(batch rows \[4\]\)"
    ):
        loss.compute_loss_from_embeddings(columns, LABELS)
    columns[0][4, 1] = 0.0
    columns[2][1, 0] = bad  # the negative of row 1: label 7
    with pytest.raises(FloatingPointError, match=r"candidate label embeddings \(rows \[7\], label ids \[7\]\)"):
        loss.compute_loss_from_embeddings(columns, LABELS)
    table = torch.randn(8, 4)
    table[5] = bad
    with pytest.raises(
        FloatingPointError, match=rf"{cls.__name__}: NaN or inf in the table label embeddings \(rows \[5\]\)"
    ):
        loss.compute_loss_against_labels(torch.randn(2, 4), table, torch.tensor([0, 1]), torch.tensor([0, 1]))


def test_nonfinite_through_forward_of_a_cached_loss():
    model = LinearEncoder()
    features, _ = _batch()
    features[1]["x"][2, 0] = float("nan")  # row 2's positive duplicates row 1's: never scored, still refused
    with pytest.raises(
        FloatingPointError, match=r"CachedSoftTopKLoss: NaN or inf in the candidate label embeddings \(rows \[2\]"
    ):
        CachedSoftTopKLoss(model, label_matrix=MATRIX, k=2, mini_batch_size=4)(features, LABELS)


def test_soft_topk_class_refuses_k_at_least_the_candidates():
    loss = SoftTopKLoss(nn.Identity(), k=6)
    columns = [torch.randn(6, 4) for _ in range(2)]
    with pytest.raises(ValueError, match="k=6 but query row 0 sees only 6 candidate"):
        loss.compute_loss_from_embeddings(columns, None)


# ---------------------------------------------------------------------------------------------------------------
# bf16 autocast on CPU
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=CLASS_IDS)
def test_bf16_autocast_gives_a_finite_loss_close_to_fp32(cls):
    model = LinearEncoder(dim_in=16, dim_out=12)
    features, _ = _batch(dim=16)
    loss = make(cls, model, label_matrix=MATRIX)
    reference = loss(features, LABELS)
    reference.backward()
    ref_grad = model.linear.weight.grad.clone()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = loss(features, LABELS)
    got.backward()
    assert got.dtype == torch.float32 and torch.isfinite(got)
    assert got.item() == pytest.approx(reference.item(), rel=3e-2, abs=1e-3)
    grad = model.linear.weight.grad
    assert torch.isfinite(grad).all()
    cos = nn.functional.cosine_similarity(grad.flatten(), ref_grad.flatten(), dim=0)
    assert cos > 0.98, cos
