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

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Union

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
    "SoftTopKAccumulator",
    "bisect_threshold",
    "cap_positive_pairs",
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

KSpec = Union[float, str, Tensor]


def _check_topk_scores(scores: Tensor, where: str) -> None:
    """NaN or +inf scores would silently break the bisection (a finite loss with NaN gradients): refuse them.

    ``-inf`` is allowed: it marks a candidate the query does not see (σ = 0, no gradient).
    """
    bad = torch.isnan(scores) | torch.isposinf(scores)
    if bool(bad.any()):
        rows = bad.any(dim=1).nonzero().flatten().tolist()
        raise ValueError(
            f"{where}: the scores of query row(s) {rows[:10]}{' ...' if len(rows) > 10 else ''} contain NaN or +inf "
            "(the embeddings or the scale are not finite); the soft top-k threshold is undefined"
        )


def _k_per_row(k: KSpec, positives: Tensor | None, like: Tensor) -> Tensor:
    """k as a (B,) tensor of ``like``'s dtype: a number, one value per row, or ``"num_pos"`` (k_b = |P_b|)."""
    if isinstance(k, str):
        if k != "num_pos" or positives is None:
            raise ValueError(f"k must be a positive number or 'num_pos', got {k!r}")
        return positives.sum(dim=1).to(like.dtype).clamp_min(1)
    if isinstance(k, Tensor):
        return k.to(device=like.device, dtype=like.dtype).expand(like.shape[0])
    if not k > 0:
        raise ValueError(f"k must be positive, got {k}")
    return torch.full((like.shape[0],), float(k), dtype=like.dtype, device=like.device)


def _refuse_saturated(n_candidates: Tensor, k: Tensor, rows: Tensor | None, where: str) -> None:
    """A query with k ≥ its number of candidates has every σ = 1: loss 0 and gradient 0, i.e. it trains nothing."""
    saturated = n_candidates.to(k.dtype) <= k
    if rows is not None:
        saturated = saturated & rows
    if bool(saturated.any()):
        row = int(saturated.nonzero()[0, 0])
        raise ValueError(
            f"{where}: k={float(k[row]):g} but query row {row} sees only "
            f"{int(n_candidates[row])} candidate label(s); k must be smaller than the number of candidates (the "
            "batch's deduplicated labels in-batch, all labels with negatives='all'), else the loss and its gradient "
            "are 0. Lower k or raise the batch size."
        )


def threshold_bracket(n: Tensor, s_max: Tensor, s_min: Tensor, k: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """An interval [lo, hi] holding the t with Σ_j σ(α(s_j + t)) = k, from the row's count, max and min.

    σ(α(min s + t)) ≤ σ_j ≤ σ(α(max s + t)), so with n candidates t ∈ [−max − M, −min + M], M = |logit(k/n)|/α + 1/α.
    """
    ratio = (k / n.to(k.dtype).clamp_min(1)).clamp(1e-12, 1 - 1e-12)
    margin = (torch.log(ratio) - torch.log1p(-ratio)).abs() / alpha + 1.0 / alpha
    return -s_max - margin, -s_min + margin


@torch.no_grad()
def bisect_threshold(
    sums: Callable[[Tensor, bool], tuple[Tensor, Tensor | None]],
    lo: Tensor,
    hi: Tensor,
    k: Tensor,
    n_iter: int,
) -> Tensor:
    """Per-row t with Σ_j σ(α(s_j + t)) = k: ``n_iter`` bisection steps, then two safeguarded Newton steps.

    ``sums(t, with_slope)`` returns (Σ_j σ_j, Σ_j α σ_j (1 − σ_j) or None) per row at the thresholds ``t``; the
    dense operator sums one B × C matrix, the all-label engine sums label chunks and ranks. Both run this same
    search, so they find the same t. Rows whose bracket is not finite (no candidate) get t = 0.
    """
    for _ in range(n_iter):
        mid = 0.5 * (lo + hi)
        above = sums(mid, False)[0] > k
        hi = torch.where(above, mid, hi)
        lo = torch.where(above, lo, mid)
    t = 0.5 * (lo + hi)
    t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
    # Newton sharpens t far below the bisection width, so the forward value is consistent with the implicit
    # gradient to float precision; a step leaving the bracket is rejected.
    for _ in range(2):
        total, slope = sums(t, True)
        candidate = t - (total - k) / slope.clamp_min(torch.finfo(t.dtype).tiny)
        ok = (slope > 0) & (candidate >= lo) & (candidate <= hi)
        t = torch.where(ok, candidate, t)
    return t


def _dense_threshold(scores: Tensor, k: Tensor, alpha: float, n_iter: int) -> Tensor:
    finite = torch.isfinite(scores)
    n = finite.sum(dim=1)
    s_max = scores.masked_fill(~finite, float("-inf")).amax(dim=1)
    s_min = scores.masked_fill(~finite, float("inf")).amin(dim=1)
    lo, hi = threshold_bracket(n, s_max, s_min, k, alpha)

    def sums(t: Tensor, with_slope: bool) -> tuple[Tensor, Tensor | None]:
        sig = torch.sigmoid(alpha * (scores + t.unsqueeze(1)))
        return sig.sum(dim=1), (alpha * sig * (1 - sig)).sum(dim=1) if with_slope else None

    return bisect_threshold(sums, lo, hi, k, n_iter)


class SoftTopK(torch.autograd.Function):
    """Soft top-k operator σ(α(s + t(s))) with Σ_j σ_j = k per row; backward by implicit differentiation.

    The threshold t is found without gradient; its derivative follows from the constraint:
    ∂t/∂s_i = −v_i / Σ_j v_j with v_j = α σ_j (1 − σ_j). With ``log=True`` the output is log σ (computed with
    ``logsigmoid``, finite for ±1e4 scores) and the vector-Jacobian product is g = u − v (Σu)/(Σv), u = G α (1 − σ),
    exactly the reference formula; with ``log=False`` u = G v. ``-inf`` scores are candidates the row does not see.
    NaN/+inf scores, and rows of ``check_rows`` (default: every row) with k ≥ their number of candidates, raise a
    ValueError; unchecked saturated rows are all in (σ = 1, zero gradient).
    """

    @staticmethod
    def forward(
        ctx, scores: Tensor, k: float | Tensor, alpha: float, n_iter: int, log: bool, check_rows: Tensor | None = None
    ):
        compute = scores if scores.dtype == torch.float64 else scores.float()
        _check_topk_scores(compute, "soft top-k")
        k = _k_per_row(k, None, compute)
        finite = torch.isfinite(compute)
        n_finite = finite.sum(dim=1)
        _refuse_saturated(n_finite, k, check_rows, "soft top-k")
        saturated = n_finite.to(k.dtype) <= k
        t = _dense_threshold(compute, k, float(alpha), int(n_iter))
        z = alpha * (compute + t.unsqueeze(1))
        z = torch.where(saturated.unsqueeze(1) & finite, torch.full_like(z, float("inf")), z)
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
        return grad, None, None, None, None, None


def soft_topk(scores: Tensor, k: float | Tensor = 5, alpha: float = 2.0, n_iter: int = 32) -> Tensor:
    """Differentiable top-k membership σ(α(s_j + t)), each row summing to k (see :class:`SoftTopK`).

    ``k`` is a number or one value per row; every row needs more finite scores than k (else a ValueError).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be a B x C matrix, got shape {tuple(scores.shape)}")
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    return SoftTopK.apply(scores, _k_per_row(k, None, scores.float()), alpha, n_iter, False, None)


def soft_topk_loss(
    scores: Tensor,
    positives: Tensor,
    k: KSpec = 5,
    alpha: float = 2.0,
    n_iter: int = 32,
    reduction: Reduction = "mean",
) -> Tensor:
    """Soft top-k loss: L_b = −(1/|P_b|) Σ_{p∈P_b} log σ(α(s_p + t_b)), t_b from Σ_c σ(α(s_c + t_b)) = k.

    All finite candidates (positives and negatives) take part in the top-k constraint; only the positives are
    scored; ``-inf`` scores are candidates the query does not see (e.g. positives left out by
    :func:`cap_positive_pairs`). ``k="num_pos"`` sets k_b = |P_b| per query. A query with positives that sees k or
    fewer candidates raises a ValueError (its loss would be 0 whatever the scores), as do NaN/+inf scores. For
    all-label training :class:`SoftTopKAccumulator` gives the same loss and gradients chunk by chunk.
    """
    scores, positives = _prepare(scores, positives)
    if alpha <= 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    weight, has_positive = _positive_weights(positives, scores.dtype)
    k_row = _k_per_row(k, positives, scores)
    log_top = SoftTopK.apply(scores, k_row, alpha, n_iter, True, has_positive)
    per_query = -(log_top.masked_fill(~positives, 0.0)).sum(dim=1) * weight
    return reduce_query_losses(per_query, has_positive, reduction)


def cap_positive_pairs(rows: Tensor, first: Tensor, max_per_row: int, num_rows: int) -> Tensor:
    """Keep at most ``max_per_row`` of each row's (row, label) positive pairs, drawn at random (torch's RNG), the
    pairs flagged ``first`` (the row's sampled positive) before the others. Returns the bool keep mask of the pairs.

    The reference samples at most k positives per query for the soft top-k loss and masks the others out of the
    candidates: more than k positives cannot all fit in a top k. Vectorised (one sort), no loop over rows.
    """
    n = rows.numel()
    if n == 0:
        return torch.zeros(0, dtype=torch.bool, device=rows.device)
    priority = torch.rand(n, device=rows.device) - 2.0 * first.to(torch.float32)
    order = torch.argsort(priority)
    order = order[torch.argsort(rows[order], stable=True)]
    sorted_rows = rows[order]
    position = torch.arange(n, device=rows.device)
    start = torch.full((num_rows,), n, dtype=torch.long, device=rows.device)
    start = start.scatter_reduce(0, sorted_rows, position, reduce="amin")
    keep = torch.empty(n, dtype=torch.bool, device=rows.device)
    keep[order] = (position - start[sorted_rows]) < max_per_row
    return keep


@dataclass
class SoftTopKAccumulator:
    """Exact soft top-k loss over label chunks (and ranks), for scoring every label each step.

    Protocol (one query batch of B rows; the chunks cover every label once; ``-inf`` scores are labels a query
    does not see):

    1. for each chunk, without grad: ``acc.update(scores, positives)`` (count, max and min of the finite scores,
       the positives' scores);
    2. ``acc.finalize(score_chunks, sync=False)``: ``score_chunks()`` must yield the chunks' no-grad score matrices
       again (in any order; e.g. recomputed from cached label embeddings). Each bisection step sums σ over them
       (all-reduced across ranks with ``sync=True``), then Newton polishes t as in :func:`soft_topk_loss`; a last
       pass gives Σ_j v_j. Returns the exact loss (``reduction="mean"``);
    3. for each chunk, with grad: ``acc.chunk_gradient(scores, positives)`` is ∂loss/∂scores of that chunk,
       g_j = u_j − v_j (Σu)/(Σv), with both sums over all labels and ranks.

    Memory: O(B) statistics plus the positives' scores; never O(L).
    """

    k: KSpec = 5
    alpha: float = 2.0
    n_iter: int = 32
    n_candidates: Tensor | None = None
    s_max: Tensor | None = None
    s_min: Tensor | None = None
    num_positives: Tensor | None = None
    _pos_rows: list = field(default_factory=list)
    _pos_scores: list = field(default_factory=list)
    t: Tensor | None = None
    correction: Tensor | None = None
    positive_weight: Tensor | None = None
    loss: Tensor | None = None

    def update(self, scores: Tensor, positives: Tensor) -> None:
        with torch.no_grad():
            scores, positives = _prepare(scores.detach(), positives)
            _check_topk_scores(scores, "SoftTopKAccumulator.update")
            finite = torch.isfinite(scores)
            if bool((positives & ~finite).any()):
                raise ValueError(
                    "SoftTopKAccumulator.update: a positive has score -inf (a label the query cannot see)"
                )
            n = finite.sum(dim=1)
            if scores.shape[1]:
                s_max = scores.masked_fill(~finite, float("-inf")).amax(dim=1)
                s_min = scores.masked_fill(~finite, float("inf")).amin(dim=1)
            else:  # a rank without labels still joins the all-reduces
                s_max = scores.new_full((scores.shape[0],), float("-inf"))
                s_min = scores.new_full((scores.shape[0],), float("inf"))
            if self.n_candidates is None:
                self.n_candidates, self.s_max, self.s_min = n, s_max, s_min
                self.num_positives = positives.sum(dim=1)
            else:
                self.n_candidates = self.n_candidates + n
                self.s_max, self.s_min = torch.maximum(self.s_max, s_max), torch.minimum(self.s_min, s_min)
                self.num_positives = self.num_positives + positives.sum(dim=1)
            rows, cols = positives.nonzero(as_tuple=True)
            self._pos_rows.append(rows)
            self._pos_scores.append(scores[rows, cols])

    def finalize(self, score_chunks: Callable[[], Iterable[Tensor]], sync: bool = False) -> Tensor:
        if self.n_candidates is None:
            raise ValueError("SoftTopKAccumulator.finalize() called before any update()")
        alpha = float(self.alpha)
        with torch.no_grad():
            if sync:
                import torch.distributed as dist

                for tensor, op in (
                    (self.n_candidates, dist.ReduceOp.SUM),
                    (self.num_positives, dist.ReduceOp.SUM),
                    (self.s_max, dist.ReduceOp.MAX),
                    (self.s_min, dist.ReduceOp.MIN),
                ):
                    dist.all_reduce(tensor, op=op)
            dtype = self.s_max.dtype
            positives_per_row = self.num_positives
            has_positive = positives_per_row > 0
            k = _k_per_row(self.k, None, self.s_max) if not isinstance(self.k, str) else None
            if k is None:
                if self.k != "num_pos":
                    raise ValueError(f"k must be a positive number or 'num_pos', got {self.k!r}")
                k = positives_per_row.to(dtype).clamp_min(1)
            _refuse_saturated(self.n_candidates, k, has_positive, "soft top-k over all labels")
            lo, hi = threshold_bracket(self.n_candidates, self.s_max, self.s_min, k, alpha)

            def sums(t: Tensor, with_slope: bool) -> tuple[Tensor, Tensor | None]:
                total = torch.zeros_like(t)
                slope = torch.zeros_like(t) if with_slope else None
                for scores in score_chunks():
                    sig = torch.sigmoid(alpha * (scores.to(dtype) + t.unsqueeze(1)))
                    total += sig.sum(dim=1)
                    if with_slope:
                        slope += (alpha * sig * (1 - sig)).sum(dim=1)
                if sync:
                    import torch.distributed as dist

                    dist.all_reduce(total)
                    if with_slope:
                        dist.all_reduce(slope)
                return total, slope

            t = bisect_threshold(sums, lo, hi, k, int(self.n_iter))
            _, v_sum = sums(t, True)
            rows = torch.cat(self._pos_rows)
            z = alpha * (torch.cat(self._pos_scores) + t[rows])
            inv = torch.where(has_positive, 1.0 / positives_per_row.clamp_min(1).to(dtype), 0.0)
            num_queries = has_positive.sum().clamp_min(1).to(dtype)
            loss_sum = torch.zeros_like(t).index_add_(0, rows, -F.logsigmoid(z))
            # u_j = G_j α (1 − σ_j) with G_j = ∂loss/∂log σ_j = −1/(|P_b| · #queries) on the positives, 0 elsewhere
            u_sum = torch.zeros_like(t).index_add_(0, rows, -alpha * torch.sigmoid(-z))
            if sync:
                dist.all_reduce(loss_sum)
                dist.all_reduce(u_sum)
            self.positive_weight = inv / num_queries
            u_sum = u_sum * self.positive_weight
            self.correction = torch.where(v_sum > 0, u_sum / v_sum.clamp_min(torch.finfo(dtype).tiny), 0.0)
            self.t = t
            self.loss = (loss_sum * inv).sum() / num_queries
        return self.loss

    def chunk_gradient(self, scores: Tensor, positives: Tensor) -> Tensor:
        """∂loss/∂scores for one chunk (B × c): g = u − v (Σu)/(Σv), the sums taken over every label in finalize."""
        if self.t is None:
            raise ValueError("call finalize() before chunk_gradient()")
        scores, positives = _prepare(scores.detach(), positives)
        sig = torch.sigmoid(self.alpha * (scores.to(self.t.dtype) + self.t.unsqueeze(1)))
        v = self.alpha * sig * (1 - sig)
        u = (-self.alpha * self.positive_weight).unsqueeze(1) * (1 - sig) * positives
        return u - v * self.correction.unsqueeze(1)


# --------------------------------------------------------------------------------------------------------------
# Chunked softmax (all-label training)
# --------------------------------------------------------------------------------------------------------------


@dataclass
class DecoupledSoftmaxAccumulator:
    """Exact decoupled softmax (or, with ``decoupled=False``, PAL softmax) over label chunks, for all-label training.

    Protocol (one query batch of B rows; chunks may come in any order and cover every label once):

    1. ``acc = DecoupledSoftmaxAccumulator()``; for each chunk, without grad: ``acc.update(scores, positives)``;
    2. ``acc.finalize()`` (pass ``sync=True`` when the labels are sharded across ranks: the per-query statistics are
       then all-reduced, so every rank holds the statistics of the full label set);
    3. ``acc.loss`` is the exact :func:`decoupled_softmax` (:func:`softmax_pal` with ``decoupled=False``,
       ``reduction="mean"``) of the full B × L matrix;
    4. for each chunk: ``acc.chunk_gradient(scores, positives)`` is the exact ∂loss/∂scores of that chunk (what the
       all-label engine back-propagates), and ``acc.chunk_loss(scores, positives)`` a surrogate with the same
       gradient whose values sum to ``acc.loss`` over all chunks.

    ``valid`` masks (bool, optional) exclude padding candidates in both passes. Everything is float32 or float64.
    """

    decoupled: bool = True
    negative_lse: Tensor | None = None
    num_positives: Tensor | None = None
    _pos_rows: list | None = None
    _pos_scores: list | None = None
    positive_weight: Tensor | None = None
    num_queries: Tensor | None = None
    loss: Tensor | None = None

    def _denominator(self, positives: Tensor, valid: Tensor | None) -> Tensor:
        """Candidates in the denominator: the negatives (decoupled) or every candidate (PAL)."""
        keep = ~positives if self.decoupled else torch.ones_like(positives)
        return keep if valid is None else keep & valid.to(torch.bool)

    def update(self, scores: Tensor, positives: Tensor, valid: Tensor | None = None) -> None:
        with torch.no_grad():
            scores, positives = _prepare(scores.detach(), positives)
            if valid is not None:
                positives = positives & valid.to(torch.bool)
            lse = _masked_logsumexp(scores, self._denominator(positives, valid))
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
        """Per-query weights w_b = (1/|P_b|) Σ_p ∂term_p/∂N_b and the loss; returns the loss."""
        if self.negative_lse is None:
            raise ValueError(f"{type(self).__name__}.finalize() called before any update()")
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
            margin = n_lse[rows] - pos_scores
            if self.decoupled:  # term softplus(N − s_p), ∂/∂N = σ(N − s_p)
                terms, coefs = F.softplus(margin), torch.sigmoid(margin)
            else:  # term N − s_p, ∂/∂N = 1
                terms, coefs = margin, torch.ones_like(margin)
            coef_sum = torch.zeros_like(n_lse).index_add_(0, rows, coefs)
            loss_sum = torch.zeros_like(n_lse).index_add_(0, rows, terms)
            if sync:
                dist.all_reduce(coef_sum)
                dist.all_reduce(loss_sum)
            has_positive = self.num_positives > 0
            inv = torch.where(has_positive, 1.0 / self.num_positives.clamp_min(1).to(n_lse.dtype), 0.0)
            self.positive_weight = coef_sum * inv
            self.num_queries = has_positive.sum().clamp_min(1).to(n_lse.dtype)
            self.loss = (loss_sum * inv).sum() / self.num_queries
        return self.loss

    def _chunk_parts(self, scores: Tensor, positives: Tensor, valid: Tensor | None):
        if self.positive_weight is None:
            raise ValueError("call finalize() before chunk_loss() / chunk_gradient()")
        scores, positives = _prepare(scores, positives)
        keep = self._denominator(positives, valid)
        if valid is not None:
            positives = positives & valid.to(torch.bool)
        inv = torch.where(self.num_positives > 0, 1.0 / self.num_positives.clamp_min(1).to(scores.dtype), 0.0)
        n_lse = self.negative_lse.to(scores.dtype).unsqueeze(1)
        finite_n = torch.where(torch.isfinite(n_lse), n_lse, torch.zeros_like(n_lse))
        # ∂L/∂s_n = w_b e^{s_n − N_b} over the denominator (0 where N_b = −inf: no denominator at all)
        share = torch.exp(scores.masked_fill(~keep, float("-inf")) - finite_n)
        share = torch.where(keep & torch.isfinite(n_lse), share, torch.zeros_like(share))
        return scores, positives, inv, n_lse, share

    def chunk_gradient(self, scores: Tensor, positives: Tensor, valid: Tensor | None = None) -> Tensor:
        """∂loss/∂scores of one chunk (B × c), from the finalized statistics; no autograd."""
        scores, positives, inv, n_lse, share = self._chunk_parts(scores.detach(), positives, valid)
        grad = self.positive_weight.to(scores.dtype).unsqueeze(1) * share
        if self.decoupled:  # −σ(N − s_p)/|P_b| on the positives
            pos = torch.sigmoid(n_lse - scores.masked_fill(~positives, 0.0))
        else:  # −1/|P_b| on the positives
            pos = torch.ones_like(scores)
        grad = grad - (inv.unsqueeze(1) * pos).masked_fill(~positives, 0.0)
        return grad / self.num_queries

    def chunk_loss(self, scores: Tensor, positives: Tensor, valid: Tensor | None = None) -> Tensor:
        """Surrogate for one chunk: exact full-loss gradient w.r.t. ``scores``; values sum to ``loss`` over chunks."""
        scores, positives, inv, n_lse, share = self._chunk_parts(scores, positives, valid)
        # Positive terms with N frozen: their partials w.r.t. s_p are exact.
        margin = n_lse - scores.masked_fill(~positives, 0.0)
        pos_terms = (F.softplus(margin) if self.decoupled else margin).masked_fill(~positives, 0.0)
        pos_part = (pos_terms.sum(dim=1) * inv).sum()
        # Denominator terms: the detached copy is subtracted so the value adds nothing.
        neg_part = (self.positive_weight.unsqueeze(1) * (share - share.detach())).sum()
        return (pos_part + neg_part) / self.num_queries
