"""The DEXML losses as pure tensor math (DESIGN.md §1), independent of any model or trainer.

Every loss takes ``scores`` (B × C, already multiplied by ``scale`` = 1/τ) and a boolean ``positives``
mask (B × C, True where candidate c is a positive of query b). Conventions shared by all of them:

- computed in float32 (float64 stays float64) even under autocast, so fp16/bf16 scores never overflow;
- a query's positive terms are weighted 1/|P_b|, so every query counts once however many positives it has;
- queries without any positive contribute nothing; ``reduction="mean"`` averages over the queries that
  have positives, ``"sum"`` returns their sum (for callers that normalise across chunks or ranks
  themselves), ``"none"`` returns the per-query loss (0 for queries without positives);
- no NaN for empty rows, rows without negatives, or scores of ±1e4.

Chunk contract (all-label training, see :class:`DecoupledSoftmaxAccumulator`): the decoupled softmax
denominator is ``e^{s_p} + e^{N_b}`` with ``N_b`` the logsumexp of the query's negative scores, and
logsumexps combine exactly across label chunks and ranks (``torch.logaddexp``), so the loss and its
exact gradient w.r.t. each chunk's scores can be computed one chunk at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "decoupled_softmax",
    "softmax_pal",
    "ova_bce",
    "soft_topk",
    "soft_topk_loss",
    "SoftTopK",
    "negative_logsumexp",
    "decoupled_softmax_from_lse",
    "DecoupledSoftmaxAccumulator",
    "reduce_query_losses",
]

Reduction = Literal["mean", "sum", "none"]


def _prepare(scores: Tensor, positives: Tensor) -> tuple[Tensor, Tensor]:
    """Validate shapes and cast to a float type wide enough for ±1e4 logits (fp32, or fp64 if given)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be a B x C matrix, got shape {tuple(scores.shape)}")
    if positives.shape != scores.shape:
        raise ValueError(
            f"positives must have the shape of scores {tuple(scores.shape)}, got {tuple(positives.shape)}"
        )
    if scores.dtype != torch.float64:
        scores = scores.float()
    return scores, positives.to(device=scores.device, dtype=torch.bool)


def reduce_query_losses(per_query: Tensor, has_positive: Tensor, reduction: Reduction) -> Tensor:
    """Apply the shared reduction to a per-query loss vector (entries of queries without positives are 0)."""
    if reduction == "none":
        return per_query
    total = per_query.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        # Dividing by max(count, 1) returns an exact 0 (still attached to the graph) when no query has a positive.
        return total / has_positive.sum().clamp_min(1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def _positive_weights(positives: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """1/|P_b| per query (0 where |P_b| = 0) and the has-positive flags."""
    n_pos = positives.sum(dim=1)
    has_positive = n_pos > 0
    weight = torch.where(has_positive, 1.0 / n_pos.clamp_min(1).to(dtype), torch.zeros((), dtype=dtype))
    return weight, has_positive


def _masked_logsumexp(scores: Tensor, keep: Tensor) -> Tensor:
    """Row-wise logsumexp over the entries where ``keep`` is True; -inf (with zero gradient) for empty rows."""
    non_empty = keep.any(dim=1, keepdim=True)
    # Rows with nothing to sum are filled with 0 so logsumexp stays finite there; torch.where then swaps
    # in -inf without letting a NaN gradient through.
    masked = scores.masked_fill(~keep, float("-inf")).masked_fill(~non_empty, 0.0)
    lse = torch.logsumexp(masked, dim=1)
    return torch.where(non_empty.squeeze(1), lse, torch.full_like(lse, float("-inf")))


def negative_logsumexp(scores: Tensor, positives: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-query logsumexp of the negative scores (candidates that are not positives), shape (B,).

    This is the chunk-combinable part of the decoupled softmax: for label chunks ``S_1, S_2, ...`` of one
    query batch, ``torch.logaddexp(negative_logsumexp(S_1, P_1), negative_logsumexp(S_2, P_2))`` equals
    ``negative_logsumexp`` of the concatenated chunks; across ranks, all-gather the (B,) vectors and take
    ``torch.logsumexp`` over the rank axis. A query without any negative in the chunk gets ``-inf``
    (the identity of ``logaddexp``). ``valid`` (bool B × C, optional) excludes padding candidates.
    """
    scores, positives = _prepare(scores, positives)
    keep = ~positives if valid is None else (~positives & valid.to(torch.bool))
    return _masked_logsumexp(scores, keep)


def decoupled_softmax(scores: Tensor, positives: Tensor, reduction: Reduction = "mean") -> Tensor:
    """The DEXML decoupled softmax: each positive competes only with the negatives, never with other positives.

    L_b = (1/|P_b|) Σ_{p∈P_b} −log( e^{s_p} / (e^{s_p} + Σ_{n∈N_b} e^{s_n}) ) = (1/|P_b|) Σ_p softplus(N_b − s_p)
    with N_b = logsumexp of the negatives. A query without negatives has loss 0.
    """
    scores, positives = _prepare(scores, positives)
    neg_lse = _masked_logsumexp(scores, ~positives)
    return decoupled_softmax_from_lse(scores, positives, neg_lse, reduction=reduction)


def decoupled_softmax_from_lse(
    scores: Tensor,
    positives: Tensor,
    negative_lse: Tensor,
    reduction: Reduction = "mean",
) -> Tensor:
    """Decoupled softmax from a precomputed (B,) negative logsumexp ``negative_lse`` (e.g. over all label chunks).

    Only the positive entries of ``scores`` are read: the loss is (1/|P_b|) Σ_p softplus(N_b − s_p) where |P_b|
    counts the positives of *this* ``positives`` mask. Gradients flow into ``negative_lse`` if it requires grad,
    so ``decoupled_softmax(S, P) == decoupled_softmax_from_lse(S, P, negative_logsumexp(S, P))`` in value and
    gradient. When positives and negatives live in different chunks, use :class:`DecoupledSoftmaxAccumulator`.
    """
    scores, positives = _prepare(scores, positives)
    negative_lse = negative_lse.to(scores.dtype)
    weight, has_positive = _positive_weights(positives, scores.dtype)
    # softplus(−inf) = 0: a query with no negatives is already solved. Non-positive entries are masked to
    # a finite value first so their (discarded) softplus can never produce a NaN gradient.
    margin = negative_lse.unsqueeze(1) - scores.masked_fill(~positives, 0.0)
    terms = F.softplus(margin).masked_fill(~positives, 0.0)
    per_query = terms.sum(dim=1) * weight
    return reduce_query_losses(per_query, has_positive, reduction)


def softmax_pal(scores: Tensor, positives: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Multi-positive InfoNCE ("PAL"): every positive competes with *all* candidates, other positives included.

    L_b = (1/|P_b|) Σ_{p∈P_b} ( logsumexp_c s_c − s_p ). Its optimum spreads probability mass equally over the
    positives, which is what the decoupled softmax fixes.
    """
    scores, positives = _prepare(scores, positives)
    weight, has_positive = _positive_weights(positives, scores.dtype)
    if scores.shape[1] == 0:
        return reduce_query_losses(scores.sum(dim=1), has_positive, reduction)
    lse = torch.logsumexp(scores, dim=1, keepdim=True)
    # Σ_p (lse − s_p) term by term, not |P|·lse − Σ s_p, which cancels catastrophically for large scores.
    per_query = (lse - scores).masked_fill(~positives, 0.0).sum(dim=1) * weight
    return reduce_query_losses(per_query, has_positive, reduction)


def ova_bce(scores: Tensor, positives: Tensor, reduction: Reduction = "mean") -> Tensor:
    """One-vs-all binary cross-entropy: per query, the mean over candidates of BCE(s_c, y_c).

    L_b = (1/C) ( Σ_c log(1 + e^{s_c}) − Σ_{p∈P_b} s_p ). Queries without positives contribute nothing, as in the
    other losses (their in-batch candidates carry no label signal worth a term of their own).
    """
    scores, positives = _prepare(scores, positives)
    _, has_positive = _positive_weights(positives, scores.dtype)
    n_candidates = max(scores.shape[1], 1)
    bce = F.binary_cross_entropy_with_logits(scores, positives.to(scores.dtype), reduction="none")
    per_query = torch.where(has_positive, bce.sum(dim=1) / n_candidates, 0.0)
    return reduce_query_losses(per_query, has_positive, reduction)


# --------------------------------------------------------------------------------------------------------------
# Soft top-k
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def _soft_topk_threshold(scores: Tensor, k: float, alpha: float, n_iter: int) -> Tensor:
    """Per-row t with Σ_j σ(α(s_j + t)) = k: bisection on a bracket that provably contains it, then Newton polish.

    Entries at −inf (excluded candidates) have σ = 0 and are ignored. The bracket comes from
    σ(α(s_j + t)) ≤ σ(α(max s + t)) and ≥ σ(α(min s + t)): with n finite entries, t ∈ [−max − M, −min + M]
    where M = |logit(k/n)|/α + 1/α.
    """
    finite = torch.isfinite(scores)
    n = finite.sum(dim=1).to(scores.dtype).clamp_min(1)
    s_max = scores.masked_fill(~finite, float("-inf")).amax(dim=1)
    s_min = scores.masked_fill(~finite, float("inf")).amin(dim=1)
    ratio = (k / n).clamp(1e-12, 1 - 1e-12)
    margin = (torch.log(ratio) - torch.log1p(-ratio)).abs() / alpha + 1.0 / alpha
    lo = -s_max - margin
    hi = -s_min + margin

    def excess(t: Tensor) -> Tensor:
        return torch.sigmoid(alpha * (scores + t.unsqueeze(1))).sum(dim=1) - k

    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        above = excess(mid) > 0
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    t = 0.5 * (lo + hi)
    # Two safeguarded Newton steps sharpen t far below the bisection width (cheap, and it makes the forward
    # value consistent with the implicit gradient to float precision); a step leaving the bracket is rejected.
    for _ in range(2):
        sig = torch.sigmoid(alpha * (scores + t.unsqueeze(1)))
        slope = (alpha * sig * (1 - sig)).sum(dim=1)
        step = (sig.sum(dim=1) - k) / slope.clamp_min(torch.finfo(scores.dtype).tiny)
        candidate = t - step
        ok = (slope > 0) & (candidate >= lo) & (candidate <= hi)
        t = torch.where(ok, candidate, t)
    return t


class SoftTopK(torch.autograd.Function):
    """Soft top-k operator σ(α(s + t(s))) with Σ_j σ_j = k per row; backward by implicit differentiation.

    The threshold t is found without gradient; its derivative follows from the constraint:
    ∂t/∂s_i = −v_i / Σ_j v_j with v_j = α σ_j (1 − σ_j). With ``log=True`` the output is log σ (computed with
    ``logsigmoid``, finite for ±1e4 scores) and the vector-Jacobian product is g = u − v (Σu)/(Σv), u = G α (1 − σ),
    exactly the reference formula; with ``log=False`` u = G v. Rows with k ≥ (number of finite scores) are all in the
    top-k: σ = 1, zero gradient.
    """

    @staticmethod
    def forward(ctx, scores: Tensor, k: float, alpha: float, n_iter: int, log: bool) -> Tensor:
        compute = scores if scores.dtype == torch.float64 else scores.float()
        n_finite = torch.isfinite(compute).sum(dim=1)
        saturated = n_finite <= k
        t = _soft_topk_threshold(compute, float(k), float(alpha), int(n_iter))
        z = alpha * (compute + t.unsqueeze(1))
        z = torch.where(saturated.unsqueeze(1) & torch.isfinite(compute), torch.full_like(z, float("inf")), z)
        sig = torch.sigmoid(z)
        ctx.save_for_backward(sig)
        ctx.alpha = float(alpha)
        ctx.log = bool(log)
        return F.logsigmoid(z) if log else sig

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (sig,) = ctx.saved_tensors
        grad_output = grad_output.to(sig.dtype)
        v = ctx.alpha * sig * (1 - sig)
        u = grad_output * ctx.alpha * (1 - sig) if ctx.log else grad_output * v
        v_sum = v.sum(dim=1, keepdim=True)
        correction = torch.where(
            v_sum > 0, u.sum(dim=1, keepdim=True) / v_sum.clamp_min(torch.finfo(v.dtype).tiny), 0.0
        )
        grad = u - v * correction
        return grad, None, None, None, None


def soft_topk(scores: Tensor, k: float = 5, alpha: float = 2.0, n_iter: int = 32) -> Tensor:
    """Differentiable top-k membership σ(α(s_j + t)), each row summing to k (see :class:`SoftTopK`)."""
    if scores.dim() != 2:
        raise ValueError(f"scores must be a B x C matrix, got shape {tuple(scores.shape)}")
    if k <= 0 or alpha <= 0:
        raise ValueError(f"k and alpha must be positive, got k={k}, alpha={alpha}")
    return SoftTopK.apply(scores, k, alpha, n_iter, False)


def soft_topk_loss(
    scores: Tensor,
    positives: Tensor,
    k: float = 5,
    alpha: float = 2.0,
    n_iter: int = 32,
    reduction: Reduction = "mean",
) -> Tensor:
    """Soft top-k loss: L_b = −(1/|P_b|) Σ_{p∈P_b} log σ(α(s_p + t_b)), t_b from Σ_c σ(α(s_c + t_b)) = k.

    All candidates (positives and negatives) take part in the top-k constraint; only the positives are scored.
    For all-label training call it on the full B × L score matrix (the constraint needs every label).
    """
    scores, positives = _prepare(scores, positives)
    if k <= 0 or alpha <= 0:
        raise ValueError(f"k and alpha must be positive, got k={k}, alpha={alpha}")
    weight, has_positive = _positive_weights(positives, scores.dtype)
    log_top = SoftTopK.apply(scores, k, alpha, n_iter, True)
    per_query = -(log_top.masked_fill(~positives, 0.0)).sum(dim=1) * weight
    return reduce_query_losses(per_query, has_positive, reduction)


# --------------------------------------------------------------------------------------------------------------
# Chunked decoupled softmax (all-label training)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DecoupledSoftmaxAccumulator:
    """Exact decoupled softmax over label chunks, for scoring every label each step.

    Protocol (one query batch of B rows; chunks may come in any order and cover every label once):

    1. ``acc = DecoupledSoftmaxAccumulator()``; for each chunk, without grad: ``acc.update(scores, positives)``;
    2. ``acc.finalize()`` (pass ``sync=True`` when the labels are sharded across ranks: the per-query statistics are
       then all-reduced, so every rank holds the statistics of the full label set);
    3. ``acc.loss`` is the exact :func:`decoupled_softmax` (``reduction="mean"``) of the full B × L matrix;
    4. for each chunk, with grad: ``acc.chunk_loss(scores, positives).backward()``. The gradient of that surrogate
       w.r.t. the chunk's scores equals the gradient of the full loss w.r.t. those scores, so summed over chunks
       (and ranks) the accumulated gradients are exact. Its values also sum to ``acc.loss`` over all chunks.

    ``valid`` masks (bool, optional) exclude padding candidates in both passes. Everything is float32 or float64.
    """

    negative_lse: Tensor | None = None
    num_positives: Tensor | None = None
    _pos_rows: list | None = None
    _pos_scores: list | None = None
    positive_weight: Tensor | None = None
    num_queries: Tensor | None = None
    loss: Tensor | None = None

    def update(self, scores: Tensor, positives: Tensor, valid: Tensor | None = None) -> None:
        with torch.no_grad():
            scores, positives = _prepare(scores.detach(), positives)
            if valid is not None:
                positives = positives & valid.to(torch.bool)
            lse = negative_logsumexp(scores, positives, valid)
            n_pos = positives.sum(dim=1)
            if self.negative_lse is None:
                self.negative_lse, self.num_positives = lse, n_pos
                self._pos_rows, self._pos_scores = [], []
            else:
                self.negative_lse = torch.logaddexp(self.negative_lse, lse)
                self.num_positives = self.num_positives + n_pos
            rows, cols = positives.nonzero(as_tuple=True)
            self._pos_rows.append(rows)
            self._pos_scores.append(scores[rows, cols])

    def finalize(self, sync: bool = False) -> Tensor:
        """Compute the per-query weights w_b = (1/|P_b|) Σ_p σ(N_b − s_p) and the loss; returns the loss."""
        if self.negative_lse is None:
            raise ValueError("DecoupledSoftmaxAccumulator.finalize() called before any update()")
        with torch.no_grad():
            if sync:
                import torch.distributed as dist

                gathered = [torch.empty_like(self.negative_lse) for _ in range(dist.get_world_size())]
                dist.all_gather(gathered, self.negative_lse)
                self.negative_lse = torch.logsumexp(torch.stack(gathered), dim=0)
                dist.all_reduce(self.num_positives)
            rows = torch.cat(self._pos_rows)
            pos_scores = torch.cat(self._pos_scores)
            n_lse = self.negative_lse
            sig_sum = torch.zeros_like(n_lse).index_add_(0, rows, torch.sigmoid(n_lse[rows] - pos_scores))
            loss_sum = torch.zeros_like(n_lse).index_add_(0, rows, F.softplus(n_lse[rows] - pos_scores))
            if sync:
                dist.all_reduce(sig_sum)
                dist.all_reduce(loss_sum)
            has_positive = self.num_positives > 0
            inv = torch.where(has_positive, 1.0 / self.num_positives.clamp_min(1).to(n_lse.dtype), 0.0)
            self.positive_weight = sig_sum * inv
            self.num_queries = has_positive.sum().clamp_min(1).to(n_lse.dtype)
            self.loss = (loss_sum * inv).sum() / self.num_queries
        return self.loss

    def chunk_loss(self, scores: Tensor, positives: Tensor, valid: Tensor | None = None) -> Tensor:
        """Surrogate for one chunk: exact full-loss gradient w.r.t. ``scores``; values sum to ``loss`` over chunks."""
        if self.positive_weight is None:
            raise ValueError("call finalize() before chunk_loss()")
        scores, positives = _prepare(scores, positives)
        keep_neg = ~positives if valid is None else (~positives & valid.to(torch.bool))
        if valid is not None:
            positives = positives & valid.to(torch.bool)
        n_lse = self.negative_lse.unsqueeze(1)
        inv = torch.where(self.num_positives > 0, 1.0 / self.num_positives.clamp_min(1).to(scores.dtype), 0.0)
        # Positive terms: softplus(N − s_p) with N frozen gives ∂/∂s_p = −σ(N − s_p)/|P|, the exact partial.
        pos_terms = F.softplus(n_lse - scores.masked_fill(~positives, 0.0)).masked_fill(~positives, 0.0)
        pos_part = (pos_terms.sum(dim=1) * inv).sum()
        # Negative terms: ∂L/∂s_n = w_b e^{s_n − N_b}; the detached copy is subtracted so the value adds nothing.
        finite_n = torch.where(torch.isfinite(n_lse), n_lse, torch.zeros_like(n_lse))
        share = torch.exp(scores.masked_fill(~keep_neg, float("-inf")) - finite_n)
        share = torch.where(keep_neg & torch.isfinite(n_lse), share, torch.zeros_like(share))
        neg_part = (self.positive_weight.unsqueeze(1) * (share - share.detach())).sum()
        return (pos_part + neg_part) / self.num_queries
