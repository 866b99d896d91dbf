"""Exact softmax over *every* label each step, with memory that does not grow with the number of labels.

The paper's released models contrast each query with all L labels. Materialising the B × L score matrix, or the
L × d embedding table with its autograd graph, does not scale to millions of labels. This module computes the same
loss and the same gradients in two encoder passes over label chunks (GradCache, Gao et al. 2021):

1. **No-grad pass.** Encode the batch's queries and every label chunk without gradients (snapshotting the RNG
   before each forward). Per query, accumulate the exact logsumexp of its scores over the labels of its
   denominator, and pick up the score of its sampled positive. Nothing of size L is kept.
2. **Gradient pass** (run from the loss tensor's backward hook, so the Trainer's ``backward`` drives it). For each
   chunk, re-encode it *with* gradients under the same RNG state, rebuild the chunk's scores, and turn them into
   the exact ∂loss/∂score from the stored logsumexps: ``softmax − onehot(positive)``. Back-propagate
   ``∂loss/∂E_chunk = G^T Q`` into the encoder immediately and accumulate ``∂loss/∂Q += G E_chunk`` (B × d). At the
   end, one backward through the query encoder.

Under ``torch.distributed`` the queries of all ranks are gathered, the label chunks are dealt round-robin to the
ranks, and the per-rank logsumexps are combined exactly (all-reduce of the max, then of the shifted sums).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.distributed as dist
from sentence_transformers.base.losses.gradcache import RandContext
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["AllLabelsLoss", "all_label_loss", "ALL_LABEL_LOSSES"]

ALL_LABEL_LOSSES = ("decoupled_softmax", "softmax")


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
    """What the no-grad pass leaves for the gradient pass (all O(B) or O(B·d), never O(L))."""

    queries: Tensor  # (B_global, d) fp32, detached
    pos_rows: Tensor  # (nnz,) long: rows of the global batch's (query, positive) pairs
    pos_cols: Tensor  # (nnz,) long: their label ids
    lse: Tensor  # (B_global,) logsumexp over the negatives (decoupled) or every label (softmax)
    neg_coef: Tensor  # (B_global,) weight of softmax(s - lse) in dL/ds
    pair_coef: Tensor  # (nnz,) what each positive pair subtracts from dL/ds
    chunk_states: list[list[RandContext | None]]  # per chunk, per encoder call
    chunks: list[tuple[int, int]]
    query_state: RandContext | None
    query_slice: slice  # this rank's rows in the global batch
    grad_factor: float


class AllLabelsLoss:
    """Loss over every label for a batch of queries, computed chunk by chunk (see the module docstring).

    Args:
        model: the (possibly DDP-wrapped) SentenceTransformer; called as ``model(features)``.
        label_texts: all label texts, any sequence supporting ``len`` and slicing (a list, a ``datasets`` column,
            or a lazy generator object for benchmarks).
        preprocess: turns a list of texts into model features (``SentenceTransformer.preprocess``).
        scale: multiplies the dot products (1/τ); scores are computed in fp32.
        label_chunk_size: labels scored at once (a B × chunk score block).
        mini_batch_size: labels per encoder call inside a chunk (``None``: the whole chunk). The chunk's texts are
            grouped by length first, so each call pads to similar lengths: fewer padded tokens, and activation
            memory bounded by the mini-batch. Same loss and gradients.
        loss: ``"decoupled_softmax"`` (other positives leave the denominator, the paper's loss) or ``"softmax"``
            (every label in the denominator).
        normalize: L2-normalise both sides (cosine scores, as the losses' default ``similarity_fct``).
        ddp_grad_factor: multiply the parameter gradients by this (the world size when a DDP wrapper averages the
            per-rank gradients, since every rank computes a disjoint part of the *global* loss's gradient).
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
    ) -> None:
        if loss not in ALL_LABEL_LOSSES:
            raise ValueError(
                f"loss={loss!r} is not supported in the all-labels mode; choose one of {ALL_LABEL_LOSSES}"
            )
        if label_chunk_size <= 0:
            raise ValueError(f"label_chunk_size must be > 0, got {label_chunk_size}")
        if mini_batch_size is not None and mini_batch_size <= 0:
            raise ValueError(f"mini_batch_size must be > 0 or None, got {mini_batch_size}")
        self.model = model
        self.label_texts = label_texts
        self.preprocess = preprocess
        self.scale = float(scale)
        self.label_chunk_size = int(label_chunk_size)
        self.loss = loss
        self.ddp_grad_factor = float(ddp_grad_factor)
        self.normalize = normalize
        self.show_progress_bar = show_progress_bar
        self.mini_batch_size = mini_batch_size

    def _prep(self, emb: Tensor) -> Tensor:
        """fp32 scores even under autocast; L2-normalised when the loss scores by cosine similarity."""
        emb = emb.float()
        return torch.nn.functional.normalize(emb, dim=-1) if self.normalize else emb

    # -- encoding helpers --------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _features(self, texts: list[str]) -> dict:
        device = self._device()
        feats = self.preprocess(list(texts))
        return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in feats.items()}

    def _encode(self, features: dict, with_grad: bool, snapshot: bool) -> tuple[Tensor, RandContext | None]:
        state = RandContext(*[v for v in features.values() if isinstance(v, Tensor)]) if snapshot else None
        with nullcontext() if with_grad else torch.no_grad():
            emb = self.model(dict(features))["sentence_embedding"]
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

    # -- the two passes ------------------------------------------------------------------------------------------
    def __call__(
        self,
        query_features: dict,
        positive_ids: Tensor,
        label_matrix_rows: sp.csr_matrix | None = None,
    ) -> Tensor:
        """Loss of this rank's queries against all labels; ``backward()`` on it runs the gradient pass.

        ``positive_ids`` (B,) is each query's sampled positive; ``label_matrix_rows`` (B × L CSR) its full positive
        set (removed from the decoupled denominator); without it only the sampled positive counts as positive.
        """
        rank, world = _world()
        device = self._device()
        grad_enabled = torch.is_grad_enabled()
        num_labels = len(self.label_texts)
        positive_ids = positive_ids.to(device=device, dtype=torch.long).reshape(-1)
        if positive_ids.numel() and (int(positive_ids.min()) < 0 or int(positive_ids.max()) >= num_labels):
            raise ValueError(f"positive label ids must lie in [0, {num_labels}); got {positive_ids.tolist()[:10]}")

        q_local, query_state = self._encode(query_features, with_grad=False, snapshot=grad_enabled)
        q_local = self._prep(q_local)
        b_local = q_local.shape[0]
        if label_matrix_rows is not None:
            coo = sp.csr_matrix(label_matrix_rows).tocoo()
            if coo.shape[0] != b_local:
                raise ValueError(f"label_matrix_rows has {coo.shape[0]} rows for a batch of {b_local} queries")
            rows = np.concatenate([coo.row, np.arange(b_local)])
            cols = np.concatenate([coo.col, positive_ids.cpu().numpy()])
            # dedupe (row, col) pairs: the sampled positive is normally in the matrix already
            keys = np.unique(rows.astype(np.int64) * num_labels + cols.astype(np.int64))
            pos_rows_l = torch.as_tensor(keys // num_labels, device=device)
            pos_cols_l = torch.as_tensor(keys % num_labels, device=device)
        else:
            pos_rows_l = torch.arange(b_local, device=device)
            pos_cols_l = positive_ids.clone()

        # gather the queries of every rank (the label shards must score all of them)
        queries, sizes = _gather_rows(q_local, world)
        offset = sum(sizes[:rank])
        if world > 1:
            pair = torch.stack([pos_rows_l + offset, pos_cols_l], dim=1)
            pair, _ = _gather_rows(pair, world)
            pos_rows, pos_cols = pair[:, 0], pair[:, 1]
        else:
            pos_rows, pos_cols = pos_rows_l, pos_cols_l
        batch = queries.shape[0]

        chunks = [
            (start, min(start + self.label_chunk_size, num_labels))
            for start in range(0, num_labels, self.label_chunk_size)
        ][rank::world]
        lse = torch.full((batch,), -math.inf, device=device)  # over the negatives (decoupled) or all labels
        pair_score = torch.zeros(pos_rows.shape[0], device=device)
        chunk_states: list[list[RandContext | None]] = []  # per chunk, per encoder call
        for start, end in tqdm(chunks, desc="all labels (no grad)", disable=not self.show_progress_bar):
            emb, states = self._encode_chunk(list(self.label_texts[start:end]), snapshot=grad_enabled)
            chunk_states.append(states)
            scores = self.scale * queries @ self._prep(emb).T  # (B, c) fp32
            in_chunk = (pos_cols >= start) & (pos_cols < end)
            r, c = pos_rows[in_chunk], pos_cols[in_chunk] - start
            pair_score[in_chunk] = scores[r, c]
            if self.loss == "decoupled_softmax":
                scores[r, c] = -math.inf
            lse = torch.logaddexp(lse, torch.logsumexp(scores, dim=1))
        if world > 1:
            # exact combination of the per-shard logsumexps: max, then sum of shifted exponentials
            m = lse.clone()
            dist.all_reduce(m, op=dist.ReduceOp.MAX)
            m_safe = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            shifted = torch.exp(lse - m_safe)
            dist.all_reduce(shifted)
            lse = m_safe + torch.log(shifted)
            dist.all_reduce(pair_score)  # every (query, positive) pair lives in exactly one chunk of one rank
        n_pos = torch.zeros(batch, device=device).index_add_(0, pos_rows, torch.ones_like(pair_score))
        w_pair = 1.0 / (n_pos[pos_rows] * batch)  # each query counts once, the batch is averaged
        if self.loss == "decoupled_softmax":
            # L_b = 1/|P_b| sum_p softplus(N_b - s_p); dL/dN_b = sum_p w sigmoid(N_b - s_p)
            margin = lse[pos_rows] - pair_score
            per_pair = torch.nn.functional.softplus(margin)
            pair_coef = w_pair * torch.sigmoid(margin)
        else:
            # L_b = logsumexp(all) - mean_p s_p
            per_pair = lse[pos_rows] - pair_score
            pair_coef = w_pair
        value = (per_pair * w_pair).sum()
        neg_coef = torch.zeros(batch, device=device).index_add_(0, pos_rows, pair_coef)
        neg_coef = torch.where(torch.isfinite(lse), neg_coef, torch.zeros_like(neg_coef))
        lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))

        if not grad_enabled:
            return value
        state = _PassState(
            queries=queries,
            pos_rows=pos_rows,
            pos_cols=pos_cols,
            lse=lse,
            neg_coef=neg_coef,
            pair_coef=pair_coef,
            chunk_states=chunk_states,
            chunks=chunks,
            query_state=query_state,
            query_slice=slice(offset, offset + b_local),
            grad_factor=self.ddp_grad_factor,
        )
        loss = value.detach().requires_grad_()
        loss.register_hook(lambda grad, st=state, qf=query_features: self._gradient_pass(grad, st, qf))
        return loss

    def score_gradient(self, scores: Tensor, label_ids: Tensor, st: _PassState) -> Tensor:
        """∂(mean loss)/∂scores of the columns ``label_ids`` (distinct ids; B × len(label_ids)) from the stored
        logsumexps: weighted softmax − positives."""
        grad = st.neg_coef[:, None] * torch.exp(scores - st.lse[:, None])
        sorted_ids, perm = torch.sort(label_ids)
        where = torch.searchsorted(sorted_ids, st.pos_cols).clamp_max(len(sorted_ids) - 1)
        hit = sorted_ids[where] == st.pos_cols
        r, c = st.pos_rows[hit], perm[where[hit]]
        if self.loss == "decoupled_softmax":
            grad[r, c] = 0.0  # positives are not in their query's denominator
        grad.index_put_((r, c), -st.pair_coef[hit], accumulate=True)
        return grad

    def _gradient_pass(self, grad_output: Tensor, st: _PassState, query_features: dict) -> None:
        rank, world = _world()
        from sentence_transformers.base.losses.gradcache import _ddp_replay_context

        factor = grad_output.float() * st.grad_factor
        grad_q = torch.zeros_like(st.queries)
        with torch.enable_grad():
            for (start, end), states in tqdm(
                list(zip(st.chunks, st.chunk_states)), desc="all labels (grad)", disable=not self.show_progress_bar
            ):
                texts = list(self.label_texts[start:end])
                for idx, state in zip(self._pieces(texts), states):
                    features = self._features([texts[i] for i in idx])
                    ids = torch.as_tensor(idx + start, device=grad_q.device)
                    with _ddp_replay_context(self.model, synchronize=False), state or nullcontext():
                        emb, _ = self._encode(features, with_grad=True, snapshot=False)
                        emb = self._prep(emb)
                        e = emb.detach()
                        g = self.score_gradient(self.scale * st.queries @ e.T, ids, st) * self.scale
                        grad_q += g @ e
                        if emb.requires_grad:
                            emb.backward(g.T @ st.queries * factor)
            if world > 1:
                dist.all_reduce(grad_q)
            with _ddp_replay_context(self.model, synchronize=True), st.query_state or nullcontext():
                q, _ = self._encode(query_features, with_grad=True, snapshot=False)
                q = self._prep(q)
                if q.requires_grad:
                    q.backward(grad_q[st.query_slice] * factor)


def all_label_loss(model, query_texts: list[str], positive_ids, label_texts: Sequence[str], **kwargs) -> Tensor:
    """Convenience wrapper: the all-labels loss of raw query texts (``model`` a SentenceTransformer)."""
    label_matrix_rows = kwargs.pop("label_matrix_rows", None)
    engine = AllLabelsLoss(model, label_texts, model.preprocess, **kwargs)
    return engine(engine._features(query_texts), torch.as_tensor(positive_ids), label_matrix_rows)
