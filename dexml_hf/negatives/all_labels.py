"""Exact loss over *every* label each step, with memory that does not grow with the number of labels.

The paper's released models contrast each query with all L labels. Materialising the B × L score matrix, or the
L × d embedding table with its autograd graph, does not scale to millions of labels. :class:`AllLabelsLoss` computes
the same loss and the same gradients as the one-piece computation in two encoder passes over label chunks
(GradCache, Gao et al. 2021); the math of each objective lives in one place, :mod:`dexml_hf.losses.functional`:

1. **No-grad pass.** Encode the batch's queries and every label chunk without gradients (snapshotting the RNG
   before each encoder call) and feed each chunk's B × c scores to the objective's accumulator
   (:class:`~dexml_hf.losses.functional.DecoupledSoftmaxAccumulator` for the decoupled and PAL softmax: per-query
   logsumexps; :class:`~dexml_hf.losses.functional.SoftTopKAccumulator` for soft top-k: count, max, min). Then
   ``finalize`` gives the exact loss. Soft top-k needs Σ_j σ(α(s_j + t)) at every bisection step: its chunk scores
   are recomputed from the no-grad label embeddings kept by the first pass (L/world × d fp32 on the model's device:
   4 bytes × d per label, against 4 bytes × B per label for the scores, and one B × c matmul per chunk per step,
   ~35 steps, which is small next to encoding the labels).
2. **Gradient pass** (run from the loss tensor's backward hook, so the Trainer's ``backward`` drives it). For each
   chunk, re-encode it *with* gradients under the same RNG state, rebuild the chunk's scores, take
   G = ``accumulator.chunk_gradient(scores, positives)`` (the exact ∂loss/∂scores of that chunk), back-propagate
   ``∂loss/∂E_chunk = G^T Q`` into the encoder at once and accumulate ``∂loss/∂Q += G E_chunk``. At the end, one
   backward through the query encoder.

Under ``torch.distributed`` the queries and positive pairs of all ranks are gathered, the label chunks are dealt
round-robin to the ranks, and the accumulators all-reduce their per-query statistics (``sync=True``), so every rank
holds the statistics of the full label set; the query gradient is all-reduced.

DDP. Ranks hold different numbers of label chunks, so every chunk pass (no-grad and replay) runs on the *unwrapped*
module: a DDP forward may issue collectives (the buffer broadcast), and uneven counts of them would hang. The
replays' parameter gradients accumulate locally, as under ``no_sync``; the one query replay per step runs through the
wrapper, whose backward all-reduces (averages) the accumulated gradients once, on every rank alike; ``ddp_grad_factor``
(the world size) undoes the averaging, since each rank holds a disjoint part of the global loss's gradient. DDP's
``static_graph`` is refused: it expects as many backward passes on every rank and step as in its first one. A
non-finite embedding raises ``FloatingPointError`` on every rank together: the query check runs on the gathered
batch, and the label check is agreed by one all-reduce.

Build it from a loss: ``loss.all_labels_engine(model, label_texts, preprocess, label_chunk_size, mini_batch_size,
ddp_grad_factor)`` (= :meth:`AllLabelsLoss.from_loss`), then ``engine(query_features, positive_ids,
label_matrix_rows=None, query_ids=None)`` returns the loss; ``backward()`` on it runs the gradient pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from sentence_transformers.base.losses.gradcache import RandContext
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from dexml_hf.losses import functional

__all__ = ["AllLabelsLoss", "ALL_LABEL_OBJECTIVES"]

ALL_LABEL_OBJECTIVES = ("decoupled_softmax", "softmax", "soft_topk")


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather_rows(tensor: Tensor, world_size: int) -> tuple[Tensor, list[int]]:
    """All-gather a (n_r, ...) tensor whose first dimension may differ between ranks; returns (concat, sizes)."""
    if world_size == 1:
        return tensor, [tensor.shape[0]]
    size = torch.tensor([tensor.shape[0]], device=tensor.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    out = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(out, padded)
    return torch.cat([o[:s] for o, s in zip(out, sizes)]), sizes


@dataclass
class _PassState:
    """What the no-grad pass leaves for the gradient pass (O(B) statistics, never O(L) beyond soft top-k's cache)."""

    queries: Tensor  # (B_global, d) fp32, detached
    pos_rows: Tensor  # (nnz,) rows of the global batch's (query, positive) pairs
    pos_cols: Tensor  # (nnz,) their label ids
    out_rows: Tensor  # (m,) (query, label) pairs left out of the candidates (positives beyond max_positives)
    out_cols: Tensor
    accumulator: Any  # finalized DecoupledSoftmaxAccumulator / SoftTopKAccumulator
    chunk_states: list[list[RandContext | None]]  # per chunk, per encoder call
    chunks: list[tuple[int, int]]
    query_state: RandContext | None
    query_slice: slice  # this rank's rows in the global batch
    grad_factor: float


def _chunk_mask(rows: Tensor, cols: Tensor, start: int, end: int, batch: int) -> Tensor:
    """Dense (batch × (end − start)) bool mask of the pairs whose label lies in [start, end)."""
    inside = (cols >= start) & (cols < end)
    mask = torch.zeros(batch, end - start, dtype=torch.bool, device=rows.device)
    mask[rows[inside], cols[inside] - start] = True
    return mask


class AllLabelsLoss:
    """Loss over every label for a batch of queries, computed chunk by chunk (see the module docstring).

    Args:
        model: the (possibly DDP-wrapped) SentenceTransformer; called as ``model(features)``, the wrapper only for
            the synchronised query replay (the other passes call the module inside it).
        label_texts: all label texts, any sequence supporting ``len`` and slicing (a list, a ``datasets`` column,
            or a lazy generator object for benchmarks).
        preprocess: turns a list of texts into model features (``SentenceTransformer.preprocess``).
        scale: multiplies the similarities (1/τ); scores are computed in fp32.
        label_chunk_size: labels scored at once (a B × chunk score block).
        loss: the objective, ``"decoupled_softmax"`` (other positives leave the denominator, the paper's loss),
            ``"softmax"`` (PAL: every label in the denominator) or ``"soft_topk"`` (exact soft top-k over all labels).
        ddp_grad_factor: multiply the parameter gradients by this (the world size when a DDP wrapper averages the
            per-rank gradients, since every rank computes a disjoint part of the *global* loss's gradient).
        normalize: L2-normalise both sides (cosine scores, as the losses' default ``similarity_fct``).
        show_progress_bar: progress bars over the chunks.
        mini_batch_size: labels per encoder call inside a chunk (``None``: the whole chunk). The chunk's texts are
            grouped by length first, so each call pads to similar lengths: fewer padded tokens, and activation
            memory bounded by the mini-batch. Same loss and gradients.
        k, alpha, n_iter: soft top-k only (``k`` may be ``"num_pos"``), as :class:`~dexml_hf.losses.SoftTopKLoss`.
        max_positives: soft top-k only: at most this many positives per query (its sampled positive first, the
            others at random); the others leave the candidates.
        label_source: a loss with a ``label_matrix`` (:class:`~dexml_hf.losses.XMCLoss`), whose rows give the
            positives when the engine is called with ``query_ids`` instead of ``label_matrix_rows``.

    Prefer :meth:`from_loss` (or ``loss.all_labels_engine(...)``), which reads all of this from a loss object.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        label_texts: Sequence[str],
        preprocess: Callable[[list[str]], dict],
        scale: float = 20.0,
        label_chunk_size: int = 4096,
        loss: str = "decoupled_softmax",
        ddp_grad_factor: float = 1.0,
        normalize: bool = False,
        show_progress_bar: bool = False,
        mini_batch_size: int | None = None,
        k: int | str = 5,
        alpha: float = 2.0,
        n_iter: int = 32,
        max_positives: int | None = None,
        label_source: Any = None,
    ) -> None:
        if loss not in ALL_LABEL_OBJECTIVES:
            raise ValueError(
                f"loss={loss!r} is not supported in the all-labels mode; choose one of {ALL_LABEL_OBJECTIVES}"
            )
        if label_chunk_size <= 0:
            raise ValueError(f"label_chunk_size must be > 0, got {label_chunk_size}")
        if mini_batch_size is not None and mini_batch_size <= 0:
            raise ValueError(f"mini_batch_size must be > 0 or None, got {mini_batch_size}")
        if max_positives is not None and max_positives <= 0:
            raise ValueError(f"max_positives must be > 0 or None, got {max_positives}")
        if isinstance(model, DistributedDataParallel) and model.static_graph:
            raise ValueError(
                "the all-label engine runs a different number of backward passes on each process, which DDP's "
                "static_graph=True cannot follow; wrap the model without it (ddp_static_graph=False)"
            )
        self.model = model
        self.module = model.module if isinstance(model, DistributedDataParallel) else model
        self.label_texts = label_texts
        self.preprocess = preprocess
        self.scale = float(scale)
        self.label_chunk_size = int(label_chunk_size)
        self.loss = loss
        self.ddp_grad_factor = float(ddp_grad_factor)
        self.normalize = normalize
        self.show_progress_bar = show_progress_bar
        self.mini_batch_size = mini_batch_size
        self.k, self.alpha, self.n_iter, self.max_positives = k, alpha, n_iter, max_positives
        self.label_source = label_source

    @classmethod
    def from_loss(
        cls,
        loss: Any,
        model: torch.nn.Module,
        label_texts: Sequence[str],
        preprocess: Callable[[list[str]], dict],
        label_chunk_size: int = 4096,
        mini_batch_size: int | None = None,
        ddp_grad_factor: float = 1.0,
        show_progress_bar: bool = False,
    ) -> AllLabelsLoss:
        """The engine for ``loss`` (an :class:`~dexml_hf.losses.XMCLoss`): its ``all_labels_objective``, scale,
        similarity (``cos_sim`` → normalised, ``dot_score`` → raw), label matrix and soft top-k settings."""
        from sentence_transformers.util import cos_sim, dot_score

        objective = getattr(loss, "all_labels_objective", None)
        if objective is None:
            raise ValueError(
                f"{type(loss).__name__} has no exact all-label form (all_labels_objective is None); use "
                "negatives='all_cached' or one of the decoupled softmax, softmax and soft top-k losses"
            )
        if getattr(loss, "logq_correction", False):
            raise ValueError(
                f"{type(loss).__name__}(logq_correction=True): the correction is for in-batch sampling bias; scoring "
                "every label has none, so turn it off"
            )
        similarity = loss.similarity_fct
        if similarity is not cos_sim and similarity is not dot_score:
            raise ValueError(
                f"the all-label engine scores with cosine or dot product; {type(loss).__name__} uses "
                f"{getattr(similarity, '__name__', similarity)}"
            )
        extra = {}
        if objective == "soft_topk":
            extra = dict(k=loss.k, alpha=loss.alpha, n_iter=loss.n_iter, max_positives=loss.max_positives)
        return cls(
            model,
            label_texts,
            preprocess,
            scale=loss.scale,
            label_chunk_size=label_chunk_size,
            loss=objective,
            ddp_grad_factor=ddp_grad_factor,
            normalize=similarity is cos_sim,
            show_progress_bar=show_progress_bar,
            mini_batch_size=mini_batch_size,
            label_source=loss,
            **extra,
        )

    def _prep(self, emb: Tensor) -> Tensor:
        """fp32 scores even under autocast; L2-normalised when the loss scores by cosine similarity."""
        emb = emb.float()
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    def _raise_non_finite(self, what: str, named: str) -> None:
        raise FloatingPointError(
            f"AllLabelsLoss ({self.loss}): NaN or inf in the {what} embeddings ({named}); refusing to return a "
            "non-finite loss. Check the inputs, the learning rate (diverged weights) and fp16 overflow."
        )

    def _check_queries(self, queries: Tensor) -> None:
        """On the gathered batch (rows of the global batch), so that every rank raises together."""
        if not bool(torch.isfinite(queries).all()):
            rows = (~torch.isfinite(queries)).any(dim=1).nonzero().flatten()
            self._raise_non_finite("query", f"batch rows {rows.tolist()[:10]}")

    @staticmethod
    def _non_finite_ids(emb: Tensor, start: int) -> list[int]:
        """The label ids (up to 10) of a chunk starting at ``start`` whose embeddings are not finite."""
        if bool(torch.isfinite(emb).all()):
            return []
        return (start + (~torch.isfinite(emb)).any(dim=1).nonzero().flatten()[:10]).tolist()

    # -- encoding helpers --------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.module.parameters()).device

    def _features(self, texts: list[str]) -> dict:
        device = self._device()
        feats = self.preprocess(list(texts))
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in feats.items()}

    def _encode(
        self, features: dict, with_grad: bool, snapshot: bool, wrapper: bool = False
    ) -> tuple[Tensor, RandContext | None]:
        """Embeddings through the module, or through the DDP wrapper (``wrapper``: the synchronised query replay)."""
        state = RandContext(*[v for v in features.values() if isinstance(v, Tensor)]) if snapshot else None
        with nullcontext() if with_grad else torch.no_grad():
            emb = (self.model if wrapper else self.module)(dict(features))["sentence_embedding"]
        return emb, state

    def _pieces(self, texts: list[str]) -> list[np.ndarray]:
        """Positions of a chunk's texts per encoder call: grouped by length (stable), ``mini_batch_size`` a call."""
        n = len(texts)
        if self.mini_batch_size is None or self.mini_batch_size >= n:
            return [np.arange(n)]
        order = np.argsort(np.fromiter((len(t) for t in texts), dtype=np.int64, count=n), kind="stable")
        return [np.sort(order[i : i + self.mini_batch_size]) for i in range(0, n, self.mini_batch_size)]

    def _encode_chunk(self, texts: list[str], snapshot: bool) -> tuple[Tensor, list[RandContext | None]]:
        """No-grad embeddings (c × d) of a chunk, one encoder call per piece; the RNG state of each call."""
        pieces, states, out = self._pieces(texts), [], None
        for idx in pieces:
            emb, state = self._encode(self._features([texts[i] for i in idx]), False, snapshot=snapshot)
            if out is None:
                out = emb.new_empty((len(texts), emb.shape[1]))
            out[torch.as_tensor(idx, device=emb.device)] = emb
            states.append(state)
        return out, states

    def _accumulator(self):
        if self.loss == "soft_topk":
            return functional.SoftTopKAccumulator(k=self.k, alpha=self.alpha, n_iter=self.n_iter)
        return functional.DecoupledSoftmaxAccumulator(decoupled=self.loss == "decoupled_softmax")

    def _local_pairs(
        self, batch: int, positive_ids: Tensor, label_matrix_rows: sp.spmatrix | None, query_ids: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """This rank's (row, label id, kept) positive pairs: the matrix rows plus the sampled positives, deduped;
        ``kept`` False for positives beyond ``max_positives`` (soft top-k), which leave the candidates."""
        device = positive_ids.device
        num_labels = len(self.label_texts)
        rows, cols = torch.arange(batch, device=device), positive_ids
        if label_matrix_rows is not None:
            coo = sp.coo_matrix(label_matrix_rows)
            if coo.shape[0] != batch:
                raise ValueError(f"label_matrix_rows has {coo.shape[0]} rows for a batch of {batch} queries")
            rows = torch.cat([rows, torch.as_tensor(coo.row, dtype=torch.long, device=device)])
            cols = torch.cat([cols, torch.as_tensor(coo.col, dtype=torch.long, device=device)])
        elif query_ids is not None and getattr(self.label_source, "label_matrix", None) is not None:
            m_rows, m_cols = self.label_source.label_matrix_pairs(torch.as_tensor(query_ids, device=device).long())
            rows, cols = torch.cat([rows, m_rows]), torch.cat([cols, m_cols])
        keys = torch.unique(rows * num_labels + cols)  # the sampled positive is normally in the matrix already
        rows, cols = keys // num_labels, keys % num_labels
        kept = torch.ones_like(rows, dtype=torch.bool)
        if self.loss == "soft_topk" and self.max_positives is not None:
            first = cols == positive_ids[rows]
            kept = functional.cap_positive_pairs(rows, first, self.max_positives, batch)
        return rows, cols, kept

    # -- the two passes ------------------------------------------------------------------------------------------
    def __call__(
        self,
        query_features: dict,
        positive_ids: Tensor,
        label_matrix_rows: sp.spmatrix | None = None,
        query_ids: Tensor | None = None,
    ) -> Tensor:
        """Mean loss of this rank's queries against all labels; ``backward()`` on it runs the gradient pass.

        ``positive_ids`` (B,) is each query's sampled positive. Its other positives (never negatives) come from
        ``label_matrix_rows`` (B × L scipy CSR) or, with ``query_ids``, from the label matrix of the loss the
        engine was built from; with neither, only the sampled positive counts as positive.
        """
        rank, world = _world()
        device = self._device()
        grad_enabled = torch.is_grad_enabled()
        num_labels = len(self.label_texts)
        positive_ids = torch.as_tensor(positive_ids).to(device=device, dtype=torch.long).reshape(-1)
        if positive_ids.numel() and bool((positive_ids.min() < 0) | (positive_ids.max() >= num_labels)):
            raise ValueError(f"positive label ids must lie in [0, {num_labels}); got {positive_ids.tolist()[:10]}")

        q_local, query_state = self._encode(query_features, with_grad=False, snapshot=grad_enabled)
        q_local = self._prep(q_local)
        b_local = q_local.shape[0]
        rows_l, cols_l, kept_l = self._local_pairs(b_local, positive_ids, label_matrix_rows, query_ids)

        # gather the queries and pairs of every rank (the label shards must score all of them)
        queries, sizes = _gather_rows(q_local, world)
        offset = sum(sizes[:rank])
        pairs = torch.stack([rows_l + offset, cols_l, kept_l.long()], dim=1)
        if world > 1:
            pairs, _ = _gather_rows(pairs, world)
        kept = pairs[:, 2].bool()
        pos_rows, pos_cols = pairs[kept, 0], pairs[kept, 1]
        out_rows, out_cols = pairs[~kept, 0], pairs[~kept, 1]
        batch = queries.shape[0]
        self._check_queries(queries)

        chunks = [
            (start, min(start + self.label_chunk_size, num_labels))
            for start in range(0, num_labels, self.label_chunk_size)
        ][rank::world]
        accumulator = self._accumulator()
        # soft top-k: this rank's no-grad label embeddings for the bisection, in one preallocated buffer (one
        # allocation instead of a block per chunk kept alive between the chunks' temporaries)
        cached: Tensor | None = None
        offsets = np.cumsum([0] + [end - start for start, end in chunks])
        chunk_states: list[list[RandContext | None]] = []
        bad: list[int] = []  # label ids with a non-finite embedding on this rank
        for i, (start, end) in enumerate(
            tqdm(chunks, desc="all labels (no grad)", disable=not self.show_progress_bar)
        ):
            emb, states = self._encode_chunk(list(self.label_texts[start:end]), snapshot=grad_enabled)
            bad = self._non_finite_ids(emb, start)
            if bad:
                break  # no collective inside this loop: the other ranks meet this one at the all-reduce below
            emb = self._prep(emb)
            chunk_states.append(states)
            scores = self.scale * queries @ emb.T  # (B, c) fp32
            positives = _chunk_mask(pos_rows, pos_cols, start, end, batch)
            if self.loss == "soft_topk":
                if cached is None:
                    cached = emb.new_empty((int(offsets[-1]), emb.shape[1]))
                cached[offsets[i] : offsets[i + 1]] = emb
                scores = scores.masked_fill(_chunk_mask(out_rows, out_cols, start, end, batch), -math.inf)
            accumulator.update(scores, positives)
        first_bad = num_labels  # agreed by all ranks before any raises, so that none waits for the others
        if world > 1:
            flag = torch.tensor([bad[0] if bad else num_labels], device=device, dtype=torch.long)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            first_bad = int(flag)
        if bad:
            self._raise_non_finite("label", f"label ids {bad}")
        if first_bad < num_labels:
            self._raise_non_finite("label", f"label id {first_bad}, embedded by another process")
        if not chunks:  # more ranks than chunks: this rank scores nothing but joins the collectives
            accumulator.update(queries.new_zeros((batch, 0)), torch.zeros(batch, 0, dtype=torch.bool, device=device))
        if self.loss == "soft_topk":

            def score_chunks():
                for i, (start, end) in enumerate(chunks):
                    out = _chunk_mask(out_rows, out_cols, start, end, batch)
                    emb = cached[offsets[i] : offsets[i + 1]]
                    yield (self.scale * queries @ emb.T).masked_fill(out, -math.inf)

            value = accumulator.finalize(score_chunks, sync=world > 1)
            del cached
        else:
            value = accumulator.finalize(sync=world > 1)

        if not grad_enabled:
            return value
        state = _PassState(
            queries=queries,
            pos_rows=pos_rows,
            pos_cols=pos_cols,
            out_rows=out_rows,
            out_cols=out_cols,
            accumulator=accumulator,
            chunk_states=chunk_states,
            chunks=chunks,
            query_state=query_state,
            query_slice=slice(offset, offset + b_local),
            grad_factor=self.ddp_grad_factor,
        )
        loss = value.detach().clone().requires_grad_()
        loss.register_hook(lambda grad, st=state, qf=query_features: self._gradient_pass(grad, st, qf))
        return loss

    def _gradient_pass(self, grad_output: Tensor, st: _PassState, query_features: dict) -> None:
        _, world = _world()
        factor = grad_output.float() * st.grad_factor
        grad_q = torch.zeros_like(st.queries)
        batch = st.queries.shape[0]
        with torch.enable_grad():
            for (start, end), states in tqdm(
                list(zip(st.chunks, st.chunk_states)), desc="all labels (grad)", disable=not self.show_progress_bar
            ):
                texts = list(self.label_texts[start:end])
                positives = _chunk_mask(st.pos_rows, st.pos_cols, start, end, batch)
                left_out = _chunk_mask(st.out_rows, st.out_cols, start, end, batch)
                for idx, state in zip(self._pieces(texts), states):
                    features = self._features([texts[i] for i in idx])
                    cols = torch.as_tensor(idx, device=grad_q.device)
                    with state or nullcontext():  # the module, not the wrapper: no collective (see the docstring)
                        emb, _ = self._encode(features, with_grad=True, snapshot=False)
                        emb = self._prep(emb)
                        e = emb.detach()
                        scores = (self.scale * st.queries @ e.T).masked_fill(left_out[:, cols], -math.inf)
                        g = st.accumulator.chunk_gradient(scores, positives[:, cols]).to(e.dtype) * self.scale
                        grad_q += g @ e
                        if emb.requires_grad:
                            emb.backward(g.T @ st.queries * factor)
            if world > 1:
                dist.all_reduce(grad_q)
            with st.query_state or nullcontext():  # through the wrapper: its backward all-reduces the gradients
                q, _ = self._encode(query_features, with_grad=True, snapshot=False, wrapper=True)
                q = self._prep(q)
                if q.requires_grad:
                    q.backward(grad_q[st.query_slice] * factor)
