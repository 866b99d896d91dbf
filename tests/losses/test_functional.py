"""The functional losses against brute-force loops written here from the formulas in DESIGN.md §1."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq
from scipy.special import expit, log_expit

from dexml_hf.losses import functional as F

# ---------------------------------------------------------------------------------------------------------------
# brute-force references: plain Python over (query, positive, candidate), float64
# ---------------------------------------------------------------------------------------------------------------


def _logsumexp(values):
    m = max(values)
    return m + math.log(sum(math.exp(v - m) for v in values))


def ref_decoupled(S, P):
    total, count = 0.0, 0
    for b in range(len(S)):
        pos = [c for c in range(len(S[b])) if P[b][c]]
        neg = [c for c in range(len(S[b])) if not P[b][c]]
        if not pos:
            continue
        row = 0.0
        for p in pos:
            denominator = _logsumexp([S[b][p]] + [S[b][n] for n in neg])
            row += denominator - S[b][p]
        total += row / len(pos)
        count += 1
    return total / count if count else 0.0


def ref_pal(S, P):
    total, count = 0.0, 0
    for b in range(len(S)):
        pos = [c for c in range(len(S[b])) if P[b][c]]
        if not pos:
            continue
        row = 0.0
        for p in pos:
            row += _logsumexp([S[b][c] for c in range(len(S[b]))]) - S[b][p]
        total += row / len(pos)
        count += 1
    return total / count if count else 0.0


def ref_bce(S, P):
    total, count = 0.0, 0
    for b in range(len(S)):
        if not any(P[b]):
            continue
        row = 0.0
        for c in range(len(S[b])):
            s = S[b][c]
            softplus = max(s, 0.0) + math.log1p(math.exp(-abs(s)))
            row += softplus - (s if P[b][c] else 0.0)
        total += row / len(S[b])
        count += 1
    return total / count if count else 0.0


def ref_threshold(row, k, alpha):
    def f(t):
        return sum(expit(alpha * (s + t)) for s in row) - k

    return brentq(f, -max(row) - 100.0, -min(row) + 100.0, xtol=1e-13, rtol=1e-15, maxiter=500)


def ref_soft_topk_loss(S, P, k, alpha):
    total, count = 0.0, 0
    for b in range(len(S)):
        pos = [c for c in range(len(S[b])) if P[b][c]]
        if not pos:
            continue
        t = ref_threshold(S[b], k, alpha)
        total += sum(-log_expit(alpha * (S[b][p] + t)) for p in pos) / len(pos)
        count += 1
    return total / count if count else 0.0


def finite_difference(fn, S, eps=1e-6):
    S = [list(r) for r in S]
    grad = np.zeros((len(S), len(S[0])))
    for b in range(len(S)):
        for c in range(len(S[0])):
            orig = S[b][c]
            S[b][c] = orig + eps
            up = fn(S)
            S[b][c] = orig - eps
            down = fn(S)
            S[b][c] = orig
            grad[b, c] = (up - down) / (2 * eps)
    return grad


def make_case(seed, B=6, C=9, scale=3.0, extreme=False):
    g = torch.Generator().manual_seed(seed)
    S = torch.randn(B, C, generator=g, dtype=torch.float64) * scale
    P = torch.rand(B, C, generator=g) < 0.3
    P[0] = False  # a query without positives
    P[1, :3] = True  # several positives
    P[2] = True  # no negatives at all
    P[3, :] = False
    P[3, 4] = True  # exactly one positive
    if extreme:
        S[4, 0], S[4, 1] = 1e4, -1e4
        S[5, :] = -1e4
        S[5, 2] = 1e4
        P[4, 1] = True
        P[5, 2] = True
        P[5, 3] = True
    return S, P


CASES = [
    ("decoupled", F.decoupled_softmax, ref_decoupled),
    ("pal", F.softmax_pal, ref_pal),
    ("bce", F.ova_bce, ref_bce),
]


@pytest.mark.parametrize("name,fn,ref", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_and_gradient_match_brute_force(name, fn, ref, seed):
    S, P = make_case(seed)
    s = S.clone().requires_grad_()
    loss = fn(s, P)
    loss.backward()
    S_list, P_list = S.tolist(), P.tolist()
    assert loss.item() == pytest.approx(ref(S_list, P_list), rel=1e-10, abs=1e-12)
    fd = finite_difference(lambda x: ref(x, P_list), S_list)
    np.testing.assert_allclose(s.grad.numpy(), fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name,fn,ref", CASES, ids=[c[0] for c in CASES])
def test_extreme_scores_float32(name, fn, ref):
    S, P = make_case(3, extreme=True)
    s = S.float().requires_grad_()
    loss = fn(s, P)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert loss.item() == pytest.approx(ref(S.tolist(), P.tolist()), rel=1e-5)
    # float64 gradients at the extremes against finite differences
    s64 = S.clone().requires_grad_()
    fn(s64, P).backward()
    fd = finite_difference(lambda x: ref(x, P.tolist()), S.tolist(), eps=1e-5)
    np.testing.assert_allclose(s64.grad.numpy(), fd, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(s.grad.double().numpy(), fd, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("fn", [F.decoupled_softmax, F.softmax_pal, F.ova_bce, F.soft_topk_loss])
def test_no_positive_anywhere_gives_zero_without_nan(fn):
    s = torch.randn(3, 5, requires_grad=True)
    loss = fn(s, torch.zeros(3, 5, dtype=torch.bool))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(s.grad, torch.zeros_like(s))


@pytest.mark.parametrize("fn", [F.decoupled_softmax, F.softmax_pal, F.ova_bce, F.soft_topk_loss])
def test_low_precision_scores_are_computed_in_float32(fn):
    S, P = make_case(4)
    for dtype in (torch.float16, torch.bfloat16):
        loss = fn(S.to(dtype), P)
        assert loss.dtype == torch.float32
        assert loss.item() == pytest.approx(fn(S.to(dtype).double(), P).item(), rel=1e-5)


def test_reductions():
    S, P = make_case(5)
    per_query = F.decoupled_softmax(S, P, reduction="none")
    has = P.any(dim=1)
    assert torch.all(per_query[~has] == 0)
    assert F.decoupled_softmax(S, P, reduction="sum").item() == pytest.approx(per_query.sum().item())
    assert F.decoupled_softmax(S, P).item() == pytest.approx(per_query.sum().item() / has.sum().item())
    with pytest.raises(ValueError, match="reduction"):
        F.decoupled_softmax(S, P, reduction="avg")
    with pytest.raises(ValueError, match="shape"):
        F.decoupled_softmax(S, P[:, :3])


# ---------------------------------------------------------------------------------------------------------------
# decoupled vs PAL: the property the paper is about
# ---------------------------------------------------------------------------------------------------------------


def test_decoupled_is_invariant_to_extra_positives_pal_is_not():
    g = torch.Generator().manual_seed(0)
    negatives = torch.randn(1, 20, generator=g, dtype=torch.float64)
    s_p = torch.tensor([[1.5]], dtype=torch.float64)
    one = torch.cat([s_p, negatives], dim=1)
    pos_one = torch.zeros_like(one, dtype=torch.bool)
    pos_one[0, 0] = True
    for extra in (1, 3, 10):
        # more positives with the same score: each still faces the same negatives
        many = torch.cat([s_p.repeat(1, extra + 1), negatives], dim=1)
        pos_many = torch.zeros_like(many, dtype=torch.bool)
        pos_many[0, : extra + 1] = True
        assert F.decoupled_softmax(many, pos_many).item() == pytest.approx(F.decoupled_softmax(one, pos_one).item())
        # PAL: the other positives share the denominator, the loss grows by ~log(1 + extra * share)
        assert F.softmax_pal(many, pos_many).item() > F.softmax_pal(one, pos_one).item() + 0.1
    # at a perfect separation, decoupled reaches 0 while PAL is stuck at log |P|
    perfect = torch.tensor([[50.0, 50.0, 50.0, -50.0, -50.0]], dtype=torch.float64)
    pos = torch.tensor([[True, True, True, False, False]])
    assert F.decoupled_softmax(perfect, pos).item() == pytest.approx(0.0, abs=1e-12)
    assert F.softmax_pal(perfect, pos).item() == pytest.approx(math.log(3), rel=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# chunk contract
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_negative_logsumexp_combines_across_chunks(dtype):
    S, P = make_case(6, C=12)
    S = S.to(dtype)
    full = F.negative_logsumexp(S, P)
    parts = [F.negative_logsumexp(S[:, i : i + 4], P[:, i : i + 4]) for i in range(0, 12, 4)]
    combined = torch.logaddexp(torch.logaddexp(parts[0], parts[1]), parts[2])
    torch.testing.assert_close(combined, full)
    assert torch.isneginf(full[2])  # a row with no negatives gives -inf
    s = S.clone().requires_grad_()
    a = F.decoupled_softmax_from_lse(s, P, F.negative_logsumexp(s, P))
    a.backward()
    s2 = S.clone().requires_grad_()
    b = F.decoupled_softmax(s2, P)
    b.backward()
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(s.grad, s2.grad)


def test_accumulator_gives_the_exact_loss_and_gradient_per_chunk():
    S, P = make_case(7, B=8, C=20, extreme=False)
    ref = S.clone().requires_grad_()
    F.decoupled_softmax(ref, P).backward()
    chunks = [slice(0, 6), slice(6, 13), slice(13, 20)]
    acc = F.DecoupledSoftmaxAccumulator()
    for sl in reversed(chunks):  # any order
        acc.update(S[:, sl], P[:, sl])
    loss = acc.finalize()
    assert loss.item() == pytest.approx(F.decoupled_softmax(S, P).item(), rel=1e-12)
    grad = torch.zeros_like(S)
    values = 0.0
    for sl in chunks:
        chunk = S[:, sl].clone().requires_grad_()
        surrogate = acc.chunk_loss(chunk, P[:, sl])
        surrogate.backward()
        grad[:, sl] = chunk.grad
        values += surrogate.item()
    assert values == pytest.approx(loss.item(), rel=1e-10)
    torch.testing.assert_close(grad, ref.grad)


# ---------------------------------------------------------------------------------------------------------------
# soft top-k
# ---------------------------------------------------------------------------------------------------------------


def test_soft_topk_rows_sum_to_k_and_match_bisection_reference():
    g = torch.Generator().manual_seed(0)
    S = torch.randn(4, 30, generator=g, dtype=torch.float64) * 2
    for k in (1, 5, 12):
        out = F.soft_topk(S, k=k, alpha=2.0)
        torch.testing.assert_close(out.sum(dim=1), torch.full((4,), float(k), dtype=torch.float64))
        for b in range(4):
            t = ref_threshold(S[b].tolist(), k, 2.0)
            expected = [expit(2.0 * (s + t)) for s in S[b].tolist()]
            np.testing.assert_allclose(out[b].numpy(), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("log", [False, True])
def test_soft_topk_gradcheck(log):
    g = torch.Generator().manual_seed(1)
    S = (torch.randn(3, 8, generator=g, dtype=torch.float64) * 1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda s: F.SoftTopK.apply(s, 3, 2.0, 32, log), (S,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1])
def test_soft_topk_loss_matches_brute_force(seed):
    S, P = make_case(seed, B=6, C=12)
    s = S.clone().requires_grad_()
    loss = F.soft_topk_loss(s, P, k=3, alpha=2.0)
    loss.backward()
    S_list, P_list = S.tolist(), P.tolist()
    assert loss.item() == pytest.approx(ref_soft_topk_loss(S_list, P_list, 3, 2.0), rel=1e-9)
    fd = finite_difference(lambda x: ref_soft_topk_loss(x, P_list, 3, 2.0), S_list, eps=1e-5)
    np.testing.assert_allclose(s.grad.numpy(), fd, rtol=1e-4, atol=1e-6)


def test_soft_topk_loss_extreme_scores():
    S, P = make_case(2, B=6, C=12, extreme=True)
    for dtype in (torch.float32, torch.float64):
        s = S.to(dtype).requires_grad_()
        loss = F.soft_topk_loss(s, P, k=3, alpha=2.0)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
        assert loss.item() == pytest.approx(ref_soft_topk_loss(S.tolist(), P.tolist(), 3, 2.0), rel=1e-4)


def test_soft_topk_with_k_at_least_candidates_raises():
    s = torch.randn(2, 4, requires_grad=True)
    with pytest.raises(ValueError, match=r"k=4 but query row 0 sees only 4 candidate"):
        F.soft_topk(s, k=4)
    with pytest.raises(ValueError, match=r"k=6 but query row 0 sees only 4"):
        F.soft_topk_loss(s, torch.ones(2, 4, dtype=torch.bool), k=6)
    # -inf entries are not candidates: 3 finite scores cannot hold a top 3
    masked = s.detach().clone()
    masked[1, 0] = float("-inf")
    with pytest.raises(ValueError, match="query row 1 sees only 3"):
        F.soft_topk_loss(masked, torch.eye(2, 4, dtype=torch.bool), k=3)
    # a row without positives is not checked (it contributes nothing)
    positives = torch.zeros(2, 4, dtype=torch.bool)
    positives[0, 1] = True
    assert torch.isfinite(F.soft_topk_loss(masked, positives, k=3))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_soft_topk_refuses_nan_and_posinf_scores(bad):
    """One NaN score used to give a finite loss (0.83) with NaN gradients."""
    s = torch.randn(3, 8)
    s[2, 5] = bad
    with pytest.raises(ValueError, match=r"query row\(s\) \[2\] contain NaN or \+inf"):
        F.soft_topk_loss(s.requires_grad_(), torch.eye(3, 8, dtype=torch.bool), k=2)
    acc = F.SoftTopKAccumulator(k=2)
    with pytest.raises(ValueError, match="NaN or"):
        acc.update(s, torch.eye(3, 8, dtype=torch.bool))


def test_soft_topk_num_pos_uses_each_rows_positive_count():
    S, P = make_case(3, B=6, C=12)
    S[:, -1] = float("-inf")  # a candidate nobody sees
    P[:, -1] = False
    P[2] = False  # make_case's "all positives" row: k = |P| = every candidate would be saturated
    P[2, :4] = True
    got = F.soft_topk_loss(S, P, k="num_pos", reduction="none")
    for b in range(6):
        n_pos = int(P[b].sum())
        if n_pos == 0:
            assert got[b] == 0
            continue
        one = F.soft_topk_loss(S[b : b + 1], P[b : b + 1], k=n_pos, reduction="none")
        torch.testing.assert_close(got[b], one[0])


def _chunked_topk(S, P, k, chunks, alpha=2.0):
    """The accumulator protocol: no-grad update per chunk, finalize (re-reading the chunks), chunk gradients."""
    acc = F.SoftTopKAccumulator(k=k, alpha=alpha)
    for sl in reversed(chunks):
        acc.update(S[:, sl], P[:, sl])
    loss = acc.finalize(lambda: (S[:, sl] for sl in chunks))
    grad = torch.cat([acc.chunk_gradient(S[:, sl], P[:, sl]) for sl in chunks], dim=1)
    return loss, grad


@pytest.mark.parametrize("k", [3, 5.5, "num_pos"])
def test_soft_topk_accumulator_equals_dense_loss_and_gradient(k):
    S, P = make_case(8, B=7, C=23, scale=2.0)
    P[2] = False  # make_case's "all positives" row would be saturated for every k
    P[2, :2] = True
    S[4, 7] = float("-inf")  # a candidate left out for one query
    P[4, 7] = False
    ref = S.clone().requires_grad_()
    dense = F.soft_topk_loss(ref, P, k=k)
    dense.backward()
    loss, grad = _chunked_topk(S, P, k, [slice(0, 5), slice(5, 6), slice(6, 17), slice(17, 23)])
    assert loss.item() == pytest.approx(dense.item(), rel=1e-12)
    torch.testing.assert_close(grad, ref.grad, rtol=1e-9, atol=1e-12)
    assert torch.all(grad[4, 7] == 0)  # a left-out candidate gets no gradient


def test_soft_topk_accumulator_float32_and_saturation_check():
    S, P = make_case(9, B=5, C=40)
    P[2] = False
    P[2, 0] = True
    S32 = S.float()
    ref = S32.clone().requires_grad_()
    F.soft_topk_loss(ref, P, k=5).backward()
    loss, grad = _chunked_topk(S32, P, 5, [slice(0, 16), slice(16, 40)])
    assert loss.item() == pytest.approx(F.soft_topk_loss(S32, P, k=5).item(), rel=1e-5)
    torch.testing.assert_close(grad, ref.grad, rtol=1e-3, atol=1e-6)
    acc = F.SoftTopKAccumulator(k=40)
    acc.update(S, P)
    with pytest.raises(ValueError, match="soft top-k over all labels: k=40 but"):
        acc.finalize(lambda: [S])


def test_pal_accumulator_and_chunk_gradients():
    S, P = make_case(10, B=8, C=20)
    chunks = [slice(0, 6), slice(6, 13), slice(13, 20)]
    for decoupled, dense_fn in ((True, F.decoupled_softmax), (False, F.softmax_pal)):
        ref = S.clone().requires_grad_()
        dense_fn(ref, P).backward()
        acc = F.DecoupledSoftmaxAccumulator(decoupled=decoupled)
        for sl in chunks:
            acc.update(S[:, sl], P[:, sl])
        assert acc.finalize().item() == pytest.approx(dense_fn(S, P).item(), rel=1e-12)
        grad = torch.cat([acc.chunk_gradient(S[:, sl], P[:, sl]) for sl in chunks], dim=1)
        torch.testing.assert_close(grad, ref.grad)
        surrogate_grad = []
        for sl in chunks:
            chunk = S[:, sl].clone().requires_grad_()
            acc.chunk_loss(chunk, P[:, sl]).backward()
            surrogate_grad.append(chunk.grad)
        torch.testing.assert_close(torch.cat(surrogate_grad, dim=1), ref.grad)


def test_cap_positive_pairs_keeps_the_sampled_one_and_at_most_k():
    torch.manual_seed(0)
    rows = torch.tensor([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])
    first = torch.tensor([False, False, True, False, True, False, True, False, False, True])
    for _ in range(5):
        keep = F.cap_positive_pairs(rows, first, 2, num_rows=4)
        counts = torch.zeros(4, dtype=torch.long).index_add_(0, rows, keep.long())
        assert counts.tolist() == [2, 2, 1, 2]
        assert keep[first].all()
    assert F.cap_positive_pairs(rows, first, 1, num_rows=4).tolist() == first.tolist()
