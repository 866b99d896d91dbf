"""``LabelIndex``: label embeddings encoded once, exact top-k search where the model runs, save/load/push, and
labels that change without retraining.

Label ids are positions ``0 … L-1`` in the index (the column index of the label matrix); an optional ``label_ids``
list keeps the dataset's own identifiers (e.g. uids), the handle by which labels are removed or updated.
Normalisation follows the model: a model whose similarity is cosine is searched with L2-normalised embeddings
(inner product = cosine), a ``dot`` model with raw embeddings.

Files written by :meth:`LabelIndex.save` (all at once: :func:`dexml_hf.io.atomic_folder`):
``embeddings.safetensors`` (one tensor, ``embeddings``), ``labels.feather`` (an Arrow IPC file with columns
``label_id`` and ``text`` when the index has them, memory-mapped on load) and ``label_index.json`` (format version,
dtype, normalisation flag, model name, prompt names). An index with a retrieval memory (:mod:`dexml_hf.retrieval`)
adds ``memory.safetensors`` and a ``"memory"`` entry in the JSON; an approximate backend saves into
``approximate/``. Format version 3; versions 1 and 2 (ids and texts inside the JSON) still load.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dexml_hf.encoding import encode_texts, model_name_of, prompt_name_for, resolve_normalize
from dexml_hf.errors import DataError, UsageError
from dexml_hf.evaluation.topk import DeviceCopy, chunked_topk, exclude_to_csr
from dexml_hf.io import ArrowColumn, ConfigFields, atomic_folder, read_arrow_columns, write_arrow_columns
from dexml_hf.lexical import LEXICAL_FILE, LEXICAL_TERMS_FILE
from dexml_hf.retrieval import MEMORY_APPROXIMATE_DIR, MEMORY_FILE, RetrievalMemory, search_with_memory

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["LabelIndex", "encode_texts", "model_name_of", "prompt_name_for", "resolve_normalize"]

EMBEDDINGS_FILE = "embeddings.safetensors"
CONFIG_FILE = "label_index.json"
LABELS_FILE = "labels.feather"
#: the folder inside an index folder that an approximate backend (``LabelIndex.approximate``) saves into
APPROXIMATE_DIR = "approximate"
FORMAT_VERSION = 3  # 2: optional retrieval memory; 3: label ids and texts in labels.feather
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "fp32": torch.float32, "fp16": torch.float16}
_BACKENDS = ("torch", "faiss")


def _is_index_folder(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file()


def _column(values: Sequence[Any] | None):
    """Keep an Arrow column as is (memory-mapped), copy anything else into a list."""
    if values is None or isinstance(values, ArrowColumn):
        return values
    return list(values)


def _lookup(column: Sequence[Any], wanted: Sequence[Any]) -> np.ndarray:
    """Position of each ``wanted`` value in ``column`` (-1 when absent), vectorised through Arrow."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not isinstance(column, ArrowColumn):
        try:
            column = ArrowColumn(pa.array(list(column)))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # ids of mixed types: a plain dictionary
            where = {value: i for i, value in enumerate(column)}
            return np.asarray([where.get(value, -1) for value in wanted], dtype=np.int64)
    haystack = column.array
    if len(haystack) == 0 or len(wanted) == 0:
        return np.full(len(wanted), -1, dtype=np.int64)
    try:
        needles = pa.array(list(wanted), type=haystack.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        return np.full(len(wanted), -1, dtype=np.int64)  # ids of another type cannot be in the column
    found = pc.index_in(needles, value_set=haystack.combine_chunks())
    return np.asarray(found.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


class LabelIndex:
    """Label embeddings with exact, chunked inner-product top-k search on a chosen device.

    Args:
        embeddings: ``(L, d)`` label embeddings (stored as given ``dtype``, on the CPU).
        label_ids: optional external identifiers, one per row (saved with the index; how labels are removed).
        texts: optional label texts, one per row.
        normalized: whether the embeddings are L2-normalised (queries are then normalised the same way).
        model_name: the encoder that produced the embeddings (metadata only).
        dtype: ``"float32"`` or ``"float16"`` storage; scores are always computed in fp32.
        backend: ``"torch"`` (exact, chunked) or ``"faiss"`` (``IndexFlatIP``, needs ``faiss-cpu``).
        memory: a :class:`~dexml_hf.retrieval.RetrievalMemory` (training queries + label matrix); when set,
            :meth:`search` ranks by ``λ·s(q, l) + (1 − λ)·Σ_kNN w·Y`` (exact fusion over :meth:`_topk`'s candidates).
        device: where searches run (``"cpu"``, ``"cuda"``, a ``torch.device``); default CPU, and the model's
            device in :meth:`from_texts`. On a GPU the embeddings are copied there once when they fit half of
            ``memory_budget`` (default: of its free memory), else streamed a chunk at a time. Ids, scores (fp32,
            no TF32) and ties (to the lower id) are those of the CPU search.
        memory_budget: bytes a search may use on ``device`` (the resident labels and one score block).

    Example::

        index = LabelIndex.from_texts(model, ["python", "rust", "sql"])
        scores, ids = index.search(model.encode(["borrow checker"], convert_to_tensor=True), k=2)
    """

    def __init__(
        self,
        embeddings: torch.Tensor | np.ndarray,
        label_ids: Sequence[Any] | None = None,
        texts: Sequence[str] | None = None,
        normalized: bool = False,
        model_name: str | None = None,
        dtype: str = "float32",
        backend: str = "torch",
        query_prompt_name: str | None = None,
        label_prompt_name: str | None = None,
        memory: RetrievalMemory | None = None,
        device: torch.device | str | None = None,
        memory_budget: int | None = None,
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if memory_budget is not None and int(memory_budget) < 1:
            raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
        emb = torch.as_tensor(embeddings).detach().cpu()
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (labels × dims), got shape {tuple(emb.shape)}")
        self.embeddings = emb.to(_DTYPES[dtype]).contiguous()
        #: whether ``embeddings`` is the index's own memory, which :meth:`update_labels` may write: not when it is
        #: the caller's tensor (or array) as given, or a tensor read from a file
        self._owns_embeddings = self.embeddings is not emb
        self.dtype = "float16" if _DTYPES[dtype] == torch.float16 else "float32"
        n = self.embeddings.shape[0]
        for field, values in (("label_ids", label_ids), ("texts", texts)):
            if values is not None and len(values) != n:
                raise ValueError(f"{field} has {len(values)} entries but embeddings have {n} rows")
        self.label_ids = _column(label_ids)
        self.texts = _column(texts)
        self.normalized = bool(normalized)
        self.model_name = model_name
        self.backend = backend
        self.query_prompt_name = query_prompt_name
        self.label_prompt_name = label_prompt_name
        self.memory_budget = None if memory_budget is None else int(memory_budget)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._on_device = DeviceCopy()
        self._faiss_index = None
        #: an approximate backend (``dexml_hf.ann``) with ``search/add/remove/save``: when set, :meth:`_topk` asks
        #: it instead of the exact search, and label changes and saves are passed on to it.
        self.approximate = None
        self.memory = None
        if memory is not None:
            self.attach_memory(memory)

    def attach_memory(self, memory: RetrievalMemory | None) -> LabelIndex:
        """Use ``memory`` for retrieval-augmented search (``None`` detaches it); checks dims, labels, normalisation.
        The memory searches on the index's device."""
        if memory is not None:
            if not isinstance(memory, RetrievalMemory):
                raise TypeError(f"memory must be a RetrievalMemory, got {type(memory).__name__}")
            if memory.dim != self.dim or memory.num_labels != len(self):
                raise ValueError(
                    f"memory has {memory.dim}-dim embeddings and {memory.num_labels} labels; the index has "
                    f"{self.dim} and {len(self)}"
                )
            if memory.normalized != self.normalized:
                raise ValueError(
                    f"memory normalized={memory.normalized} but index normalized={self.normalized}: "
                    "embed both with the same model"
                )
            memory.to(self.device, self.memory_budget)
        self.memory = memory
        return self

    def to(self, device: torch.device | str, memory_budget: int | None = None) -> LabelIndex:
        """Search on ``device`` from now on (the memory too); returns ``self``."""
        self.device = torch.device(device)
        if memory_budget is not None:
            self.memory_budget = int(memory_budget)
        self._on_device = DeviceCopy()
        if self.memory is not None:
            self.memory.to(self.device, self.memory_budget)
        return self

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __repr__(self) -> str:
        return (
            f"LabelIndex(n_labels={len(self)}, dim={self.dim}, dtype={self.dtype}, normalized={self.normalized}, "
            f"backend={self.backend!r}, device={str(self.device)!r}, model_name={self.model_name!r}, "
            f"memory={self.memory!r})"
        )

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @classmethod
    def from_texts(
        cls,
        model: SentenceTransformer,
        texts: Sequence[str],
        label_ids: Sequence[Any] | None = None,
        batch_size: int = 64,
        dtype: str = "float32",
        normalize: bool | None = None,
        backend: str = "torch",
        show_progress_bar: bool | None = None,
        memory: RetrievalMemory | None = None,
        device: torch.device | str | None = None,
        memory_budget: int | None = None,
    ) -> LabelIndex:
        """Encode ``texts`` once with ``model`` (label prompt if the model has one) and index them; searches run on
        ``device``, by default the model's."""
        normalized = resolve_normalize(model, normalize)
        emb = encode_texts(model, texts, "label", batch_size, normalized, show_progress_bar)
        return cls(
            emb,
            label_ids=label_ids,
            texts=texts,
            normalized=normalized,
            model_name=model_name_of(model),
            dtype=dtype,
            backend=backend,
            query_prompt_name=prompt_name_for(model, "query"),
            label_prompt_name=prompt_name_for(model, "label"),
            memory=memory,
            device=device if device is not None else getattr(model, "device", None),
            memory_budget=memory_budget,
        )

    from_model = from_texts

    # ---- search -------------------------------------------------------------------------------

    def search(
        self,
        query_embeddings: torch.Tensor | np.ndarray,
        k: int,
        exclude=None,
        query_chunk: int | None = None,
        label_chunk: int | None = None,
        show_progress_bar: bool = False,
        use_memory: bool = True,
        texts: Sequence[str] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` labels per query: ``(scores (n, k) float32, ids (n, k) int64)``, best first.

        ``exclude`` holds ``(query_row, label_id)`` pairs (or an ``n × L`` sparse matrix) removed before the
        top-k. Ties go to the lower label id; empty places (fewer than ``k`` labels left) have id ``-1``.
        Queries must be embedded like the labels (``normalized`` tells whether to L2-normalise them).
        With a retrieval memory attached (and ``use_memory``), scores are the fused scores of
        :mod:`dexml_hf.retrieval` (``λ·s + (1 − λ)·neighbour term``); otherwise the inner products ``s``.
        ``texts``: the queries' texts, required by a memory with lexical neighbours (ignored otherwise).
        """
        q = self._prepare_queries(query_embeddings)
        if self.memory is not None and use_memory:
            return search_with_memory(
                self, self.memory, q, k, exclude=exclude, query_chunk=query_chunk or 4096, texts=texts
            )
        return self._topk(q, k, exclude, query_chunk, label_chunk, show_progress_bar)

    def _topk(
        self, q: torch.Tensor, k: int, exclude=None, query_chunk=None, label_chunk=None, show_progress_bar=False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by ``s(q, l)`` of prepared queries: the one place a search backend is chosen (the approximate
        backend when one is attached, faiss when asked, else the exact chunked search on :attr:`device`)."""
        if self.approximate is not None:
            return self.approximate.search(
                q, min(k, len(self)), exclude=exclude_to_csr(exclude, q.shape[0], len(self))
            )
        if self.backend == "faiss":
            return self._search_faiss(q, k, exclude)
        budget = self.memory_budget
        scores, ids = chunked_topk(
            q,
            self._labels_on_device(),
            k,
            exclude=exclude,
            query_chunk=query_chunk,
            label_chunk=label_chunk,
            device=self.device,
            show_progress_bar=show_progress_bar,
            memory_budget=None if budget is None else max(1, budget // 2),
        )
        return scores.numpy(), ids.numpy()

    def _labels_on_device(self) -> torch.Tensor:
        """The label embeddings for a search on :attr:`device` (a resident copy, cached, when they fit)."""
        return self._on_device.get(self.embeddings, self.device, self.memory_budget)

    def _prepare_queries(self, query_embeddings) -> torch.Tensor:
        """fp32 CPU ``(n, d)`` queries, L2-normalised when the index is."""
        q = torch.as_tensor(query_embeddings).detach().to("cpu", torch.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query embeddings have shape {tuple(q.shape)}, expected (n, {self.dim})")
        if self.normalized:
            q = torch.nn.functional.normalize(q, dim=1)
        return q

    def _search_faiss(self, q: torch.Tensor, k: int, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        try:
            import faiss
        except ImportError as err:
            raise ImportError("backend='faiss' needs faiss: pip install faiss-cpu (or dexml_hf[faiss])") from err
        if self._faiss_index is None:
            index = faiss.IndexFlatIP(self.dim)
            index.add(np.ascontiguousarray(self.embeddings.float().numpy()))
            self._faiss_index = index
        n, k = q.shape[0], min(k, len(self))
        excluded = exclude_to_csr(exclude, n, len(self))
        extra = int(np.diff(excluded.indptr).max()) if excluded is not None and excluded.nnz else 0
        depth = min(len(self), k + extra)
        scores, ids = self._faiss_index.search(np.ascontiguousarray(q.numpy()), depth)
        if extra:
            # Drop excluded pairs, then keep the first k survivors in order.
            rows = np.repeat(np.arange(n), depth)
            drop = np.asarray(excluded[rows, np.maximum(ids.ravel(), 0)]).ravel().astype(bool)
            keep = ~drop.reshape(n, depth) & (ids >= 0)
            order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
            kept = np.take_along_axis(keep, order, axis=1)
            ids = np.where(kept, np.take_along_axis(ids, order, axis=1), -1)
            scores = np.where(kept, np.take_along_axis(scores, order, axis=1), -np.inf)
        return scores[:, :k].astype(np.float32), ids[:, :k].astype(np.int64)

    def encode_queries(
        self, model: SentenceTransformer, texts: Sequence[str], batch_size: int = 64, show_progress_bar=None
    ) -> torch.Tensor:
        """Embed query texts the way this index expects (query prompt if the model has one, same normalisation)."""
        return encode_texts(model, texts, "query", batch_size, self.normalized, show_progress_bar)

    def search_texts(
        self,
        model: SentenceTransformer,
        texts: Sequence[str],
        k: int = 10,
        exclude=None,
        batch_size: int = 64,
        use_memory: bool = True,
    ) -> list[list[dict[str, Any]]]:
        """Embed ``texts`` with ``model`` and return, per text, the top-``k`` labels as dicts
        ``{"id", "label_id", "text", "score"}`` (``label_id``/``text`` are ``None`` when not stored; ``score`` is
        the fused score when a retrieval memory is attached and ``use_memory``)."""
        q = self.encode_queries(model, texts, batch_size)
        scores, ids = self.search(q, k, exclude=exclude, use_memory=use_memory, texts=texts)
        results = []
        for row_scores, row_ids in zip(scores, ids):
            row = []
            for score, i in zip(row_scores.tolist(), row_ids.tolist()):
                if i < 0:
                    continue
                row.append(
                    {
                        "id": i,
                        "label_id": self.label_ids[i] if self.label_ids is not None else None,
                        "text": self.texts[i] if self.texts is not None else None,
                        "score": score,
                    }
                )
            results.append(row)
        return results

    # ---- labels that change without retraining ------------------------------------------------

    def positions_of(self, ids: Sequence[Any]) -> np.ndarray:
        """Positions of the labels with external ids ``ids`` (positions themselves when the index has no
        ``label_ids``); an unknown or repeated id is a :class:`~dexml_hf.errors.UsageError` naming it."""
        ids = list(ids)
        seen = set()
        for value in ids:
            if value in seen:
                raise UsageError(f"label id {value!r} is given twice")
            seen.add(value)
        if self.label_ids is None:
            bad = [
                v for v in ids if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v < len(self)
            ]
            if bad:
                raise UsageError(
                    f"unknown label {bad[0]!r}: this index has no label ids, labels are positions 0 to {len(self) - 1}"
                )
            return np.asarray(ids, dtype=np.int64)
        positions = _lookup(self.label_ids, ids)
        if (positions < 0).any():
            missing = [ids[i] for i in np.flatnonzero(positions < 0)[:5]]
            raise UsageError(f"unknown label id(s) {', '.join(map(repr, missing))}: not in this index")
        return positions

    def _encode_labels(self, model: SentenceTransformer, texts: Sequence[str], batch_size: int, show_progress_bar):
        texts = list(texts)
        if any(not isinstance(t, str) for t in texts):
            raise UsageError("label texts must be strings")
        emb = encode_texts(model, texts, "label", batch_size, self.normalized, show_progress_bar)
        if emb.shape[1] != self.dim:
            raise UsageError(f"the model makes {emb.shape[1]}-dim embeddings; this index holds {self.dim}-dim ones")
        return emb.to(self.embeddings.dtype)

    def add_labels(
        self,
        model: SentenceTransformer,
        texts: Sequence[str],
        ids: Sequence[Any] | None = None,
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Embed ``texts`` with ``model`` (as labels) and append them at positions ``L … L+m−1``; returns those.

        ``ids``: their external ids (required when the index has ``label_ids``, refused when it has none; an id
        already in the index or given twice is refused). The retrieval memory gets empty columns for them (no
        training query has them: their neighbour term is 0 until the memory is rebuilt)."""
        texts = list(texts)
        if self.label_ids is not None:
            if ids is None or len(ids) != len(texts):
                raise UsageError(f"this index has label ids: give one id per text ({len(texts)} texts)")
            ids = list(ids)
            twice = [value for value, count in Counter(ids).items() if count > 1]
            if twice:
                raise UsageError(f"label id {twice[0]!r} is given twice")
            clash = _lookup(self.label_ids, ids)
            if (clash >= 0).any():
                raise UsageError(f"label id {ids[int(np.flatnonzero(clash >= 0)[0])]!r} is already in the index")
        elif ids is not None:
            raise UsageError("this index has no label ids (labels are positions); add without ids")
        if not texts:
            return np.empty(0, dtype=np.int64)
        emb = self._encode_labels(model, texts, batch_size, show_progress_bar)
        start = len(self)
        self.embeddings = torch.cat([self.embeddings, emb]).contiguous()
        self._owns_embeddings = True
        if self.label_ids is not None:
            self.label_ids = _extend(self.label_ids, ids)
        if self.texts is not None:
            self.texts = _extend(self.texts, texts)
        if self.memory is not None:
            self.memory.remap_labels(np.arange(start), len(texts))
        if self.approximate is not None:  # appended rows: their positions are their ids in the approximate index
            self.approximate.add(emb, ids=np.arange(start, len(self)), vectors=self.embeddings)
        self._faiss_index = None
        return np.arange(start, len(self), dtype=np.int64)

    def remove_labels(self, ids: Sequence[Any]) -> np.ndarray:
        """Remove the labels with external ids ``ids`` (positions when the index has no ``label_ids``); the labels
        after them move up (position = row of the compacted index). Their columns leave the retrieval memory, so
        neither the label score nor the neighbour term can return them. Returns the removed (old) positions."""
        positions = np.sort(self.positions_of(ids))
        keep = np.setdiff1d(np.arange(len(self)), positions)
        if len(keep) == 0:
            raise UsageError("removing every label would leave an empty index")
        self.embeddings = self.embeddings[torch.from_numpy(keep)].contiguous()
        self._owns_embeddings = True
        if self.label_ids is not None:
            self.label_ids = _take(self.label_ids, keep)
        if self.texts is not None:
            self.texts = _take(self.texts, keep)
        if self.memory is not None:
            self.memory.remap_labels(keep, 0)
        if self.approximate is not None:  # positions moved up: rebuilt, so its ids stay the positions
            self._rebuild_approximate()
        self._faiss_index = None
        return positions

    def update_labels(
        self,
        model: SentenceTransformer,
        texts: Sequence[str],
        ids: Sequence[Any],
        batch_size: int = 64,
        show_progress_bar: bool | None = None,
    ) -> np.ndarray:
        """Re-embed the labels ``ids`` from new ``texts`` in place (positions and memory columns unchanged).

        The rows are written into the index's own table; a table that is the caller's tensor or read from a file is
        copied once first (the caller's data never changes)."""
        texts, ids = list(texts), list(ids)
        if len(texts) != len(ids):
            raise UsageError(f"{len(texts)} texts for {len(ids)} ids")
        positions = self.positions_of(ids)
        if not len(positions):
            return positions
        emb = self._encode_labels(model, texts, batch_size, show_progress_bar)
        if not self._owns_embeddings:
            self.embeddings = self.embeddings.clone()
            self._owns_embeddings = True
        self.embeddings[torch.from_numpy(positions)] = emb
        self._on_device = DeviceCopy()  # the same tensor with new rows: a copy on the device is stale
        if self.texts is not None:
            self.texts = _replace(self.texts, positions, texts)
        if self.approximate is not None:  # rows changed in place: the approximate index is rebuilt on them
            self._rebuild_approximate()
        self._faiss_index = None
        return positions

    # ---- persistence --------------------------------------------------------------------------

    def config_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "n_labels": len(self),
            "dim": self.dim,
            "dtype": self.dtype,
            "normalized": self.normalized,
            "model_name": self.model_name,
            "query_prompt_name": self.query_prompt_name,
            "label_prompt_name": self.label_prompt_name,
            "labels_file": LABELS_FILE,
            "label_columns": [
                name for name, v in (("label_id", self.label_ids), ("text", self.texts)) if v is not None
            ],
            "memory": self.memory.config_dict() if self.memory is not None else None,
            "approximate": self.approximate.config_dict() if self.approximate is not None else None,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the index folder at once: embeddings, ``labels.feather``, ``label_index.json``, the memory and the
        approximate index, into a temp folder beside ``path`` that then takes its place (see
        :func:`dexml_hf.io.atomic_folder`). An existing index folder at ``path`` is replaced; a folder of other
        files is refused."""
        from safetensors.torch import save_file
        from tqdm.auto import tqdm

        path = Path(path)
        steps = ["embeddings", "labels", *(["memory"] if self.memory is not None else [])]
        steps += ["approximate index"] if self.approximate is not None else []
        with atomic_folder(path, replaceable=_is_index_folder) as tmp:
            progress = tqdm(steps, desc=f"saving {path.name}", leave=False, disable=len(self) < 1_000_000)
            for step in progress:
                progress.set_postfix_str(step)
                if step == "embeddings":
                    save_file(
                        {"embeddings": self.embeddings}, str(tmp / EMBEDDINGS_FILE), metadata={"format": "dexml_hf"}
                    )
                elif step == "labels":
                    write_arrow_columns(tmp / LABELS_FILE, {"label_id": self.label_ids, "text": self.texts})
                elif step == "memory":
                    self.memory.save(tmp)
                else:
                    self.approximate.save(tmp / APPROXIMATE_DIR, include_vectors=False)  # = embeddings
            with open(tmp / CONFIG_FILE, "w", encoding="utf-8") as f:
                json.dump(self.config_dict(), f, ensure_ascii=False)
        return path

    @classmethod
    def load(
        cls,
        path_or_repo_id: str | os.PathLike,
        revision: str | None = None,
        token: str | bool | None = None,
        repo_type: str = "model",
        backend: str = "torch",
        load_memory: bool = True,
        subfolder: str | None = None,
        device: torch.device | str | None = None,
        memory_budget: int | None = None,
        load_approximate: bool = True,
    ) -> LabelIndex:
        """Load from a local folder written by :meth:`save`, or download it from the Hub.

        A Hub index is ``repo_id`` (the index at the repo's root) with ``subfolder`` (e.g. ``"label_index"`` in a
        model repo), or both in one string, ``user/model/label_index``; only the index's files are downloaded.
        ``load_memory=False`` skips a saved retrieval memory (plain dual-encoder search, less memory),
        ``load_approximate=False`` a saved approximate index (exact search). Label ids and texts are memory-mapped from ``labels.feather`` (folders of format 1 and 2 keep them in the JSON)."""
        path = Path(path_or_repo_id)
        if subfolder:
            path = path / subfolder
        if path.exists() and not path.is_dir():
            raise FileNotFoundError(f"{path} is a file, not a LabelIndex folder")
        if not path.is_dir():
            path = _download(
                str(path_or_repo_id), subfolder, revision, token, repo_type, load_memory, load_approximate
            )
        config_path = path / CONFIG_FILE
        if not config_path.is_file() or not (path / EMBEDDINGS_FILE).is_file():
            raise FileNotFoundError(f"{path} lacks {CONFIG_FILE} or {EMBEDDINGS_FILE}; not a saved LabelIndex")
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: invalid JSON at line {err.lineno}: {err.msg}") from err
        fields = ConfigFields(config, str(config_path))
        version = fields.get("format_version", default=FORMAT_VERSION)
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(
                f"{config_path}: format_version {version!r} is not one this dexml_hf reads (1 to {FORMAT_VERSION}); "
                "a newer index needs a newer dexml_hf (pip install -U dexml_hf)"
            )
        emb = _read_embeddings(path / EMBEDDINGS_FILE)
        n_labels = fields.get("n_labels", int, None)
        if n_labels is not None and emb.shape[0] != n_labels:
            raise ValueError(f"{config_path}: field n_labels={n_labels} but embeddings have {emb.shape[0]} rows")
        if version >= 3:
            columns = read_arrow_columns(fields.member("labels_file", path, LABELS_FILE))
            label_ids, texts = columns.get("label_id"), columns.get("text")
        else:  # formats 1 and 2: ids and texts inside the JSON
            label_ids, texts = fields.get("label_ids", list, None), fields.get("texts", list, None)
        memory = fields.get("memory", dict, None)
        index = cls(
            emb,
            label_ids=label_ids,
            texts=texts,
            normalized=fields.get("normalized", bool, False),
            model_name=fields.get("model_name", str, None),
            dtype=fields.get("dtype", str, "float32"),
            backend=backend,
            query_prompt_name=fields.get("query_prompt_name", str, None),
            label_prompt_name=fields.get("label_prompt_name", str, None),
            memory=RetrievalMemory.load(path, memory) if load_memory and memory else None,
            device=device,
            memory_budget=memory_budget,
        )
        if load_approximate and fields.get("approximate", dict, None):
            index._load_approximate(path)
        return index

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | None = None,
        commit_message: str = "Upload LabelIndex",
        repo_type: str = "model",
        revision: str | None = None,
        path_in_repo: str | None = None,
    ):
        """Create ``repo_id`` if needed and upload the saved index (into ``path_in_repo``, e.g. ``label_index``
        beside a model); returns the commit info."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save(Path(tmp) / "label_index")
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                path_in_repo=path_in_repo,
                repo_type=repo_type,
                revision=revision,
                commit_message=commit_message,
            )

    # ---- approximate search (dexml_hf.ann) ---------------------------------------------------------------------

    def build_approximate(
        self,
        kind: str = "hnsw",
        codes: str = "flat",
        target_recall: float | None = None,
        tune_queries=None,
        tune_k: int = 100,
        tune_max_queries: int = 1000,
        show_progress_bar: bool | None = None,
        **params,
    ):
        """Build an :class:`~dexml_hf.ann.ApproximateIndex` over the label embeddings and search through it
        (``self.approximate``; ``None`` restores exact search). Compressed ``codes`` are re-ranked exactly against
        these embeddings (not copied). With ``target_recall``, ``efSearch`` / ``nprobe`` are tuned on
        ``tune_queries`` (query embeddings, e.g. of validation documents) for recall@``tune_k`` against exact
        search (a seeded sample of at most ``tune_max_queries``); the measured recall is saved with the index.
        ``params``: see :meth:`ApproximateIndex.build`.
        Label changes keep it current: added labels are added to it, removals and updates rebuild it."""
        from dexml_hf.ann import ApproximateIndex

        queries = None if tune_queries is None else self._prepare_queries(tune_queries)
        self.approximate = ApproximateIndex.build_tuned(
            self.embeddings,
            queries,
            tune_k,
            target_recall,
            tune_max_queries,
            show_progress_bar,
            kind=kind,
            codes=codes,
            **params,
        )
        return self.approximate

    def _rebuild_approximate(self) -> None:
        """The approximate index again over the current rows, with its kind, codes and (tuned) parameters; the
        recall measured before the change is kept, marked as measured on the earlier labels."""
        from dexml_hf.ann import ApproximateIndex

        old = self.approximate
        params = {k: v for k, v in old.params.items() if k != "rerank"}
        if old.kind == "ivf":
            params["nlist"] = min(params["nlist"], len(self))
        self.approximate = ApproximateIndex.build(
            self.embeddings,
            kind=old.kind,
            codes=old.codes,
            vectors=self.embeddings,
            rerank=old.params["rerank"],
            **params,
        )
        if old.recall is not None:
            self.approximate.recall = {**old.recall, "measured_before_label_changes": True}

    def _load_approximate(self, path: Path) -> None:
        from dexml_hf.ann import ApproximateIndex

        self.approximate = ApproximateIndex.load(path / APPROXIMATE_DIR, vectors=self.embeddings)
        if len(self.approximate.ids) != len(self):
            raise ValueError(
                f"{path / APPROXIMATE_DIR}: the approximate index has {len(self.approximate.ids)} rows, the label "
                f"index {len(self)}: rebuild it (index.build_approximate)"
            )


def _extend(column, values: Sequence[Any]):
    if isinstance(column, ArrowColumn):
        import pyarrow as pa

        try:
            extra = pa.array(list(values), type=column.array.type)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise UsageError(f"new values do not match the index's {column.array.type} column ({err})") from err
        return ArrowColumn(pa.chunked_array([*column.array.chunks, extra], type=column.array.type))
    return [*column, *values]


def _take(column, positions: np.ndarray):
    if isinstance(column, ArrowColumn):
        return ArrowColumn(column.array.take(positions))
    return [column[i] for i in positions.tolist()]


def _replace(column, positions: np.ndarray, values: Sequence[Any]):
    """``column`` with ``values`` at ``positions``: a list (the index's own) in place, an Arrow column by one
    ``take`` over it and the new values (no Python object per label)."""
    if isinstance(column, ArrowColumn):
        order = np.arange(len(column))
        order[positions] = len(column) + np.arange(len(values))
        return ArrowColumn(_extend(column, values).array.take(order))
    for p, value in zip(positions.tolist(), values):
        column[p] = value
    return column


def _read_embeddings(file: Path) -> torch.Tensor:
    """The ``embeddings`` tensor of a safetensors file (safetensors memory-maps it: pages are read when searched)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            names = list(f.keys())
            tensor = f.get_tensor("embeddings") if "embeddings" in names else None
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise DataError(f"{file}: not a readable safetensors file ({err})") from err
    if tensor is None:
        raise DataError(f"{file}: no tensor named 'embeddings'")
    return tensor


def _split_hub_id(repo_id: str, subfolder: str | None) -> tuple[str, str]:
    """``user/model/label_index`` → (``user/model``, ``label_index``); a plain ``user/model`` has no subfolder."""
    parts = [p for p in repo_id.strip("/").split("/") if p]
    if repo_id.startswith((".", "/", "~")) or len(parts) < 1 or any(p in (".", "..") for p in parts):
        raise FileNotFoundError(f"{repo_id} is neither a LabelIndex folder nor a Hub repo id")
    repo, inner = "/".join(parts[:2]), "/".join(parts[2:])
    sub = "/".join(p for p in (inner, (subfolder or "").strip("/")) if p)
    return repo, sub


def _download(repo_id, subfolder, revision, token, repo_type, load_memory, load_approximate=True) -> Path:
    """Download only the index's files (and its approximate index) from a Hub repo; returns the local folder."""
    from huggingface_hub import snapshot_download

    repo, sub = _split_hub_id(repo_id, subfolder)
    prefix = f"{sub}/" if sub else ""
    names = [
        EMBEDDINGS_FILE,
        CONFIG_FILE,
        LABELS_FILE,
        *([MEMORY_FILE, LEXICAL_FILE, LEXICAL_TERMS_FILE, f"{MEMORY_APPROXIMATE_DIR}/*"] if load_memory else []),
    ]
    names += [f"{APPROXIMATE_DIR}/*"] if load_approximate else []
    patterns = [prefix + name for name in names]
    try:
        root = snapshot_download(repo, revision=revision, token=token, repo_type=repo_type, allow_patterns=patterns)
    except Exception as err:
        from huggingface_hub.errors import (
            HFValidationError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        if isinstance(
            err, (HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError)
        ):
            raise FileNotFoundError(
                f"{repo_id} is neither a LabelIndex folder nor a Hub repo with one ({type(err).__name__})"
            ) from err
        raise
    folder = Path(root) / sub if sub else Path(root)
    if not (folder / CONFIG_FILE).is_file():
        where = f"{repo}, folder {sub!r}" if sub else repo
        raise FileNotFoundError(f"no LabelIndex in Hub repo {where}: {prefix}{CONFIG_FILE} is missing")
    return folder
