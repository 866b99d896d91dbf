"""``LabelIndex``: label embeddings encoded once, exact top-k search, save/load/push.

Label ids are positions ``0 … L-1`` in the index (the column index of the label matrix); an
optional ``label_ids`` list keeps the dataset's own identifiers (e.g. uids) for display.
Normalisation follows the model: a model whose similarity is cosine is searched with
L2-normalised embeddings (inner product = cosine), a ``dot`` model with raw embeddings.

Files written by :meth:`LabelIndex.save`: ``embeddings.safetensors`` (one tensor, ``embeddings``)
and ``label_index.json`` (format version, dtype, normalisation flag, model name, prompt names,
label ids and texts). An index with a retrieval memory (:mod:`dexml_hf.retrieval`: the training queries'
embeddings and label matrix, for retrieval-augmented prediction) adds ``memory.safetensors`` and a ``"memory"``
entry in the JSON; :meth:`LabelIndex.search` then ranks by the fused score. Format version 2 (version 1 folders,
without a memory, still load).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dexml_hf.evaluation.topk import chunked_topk, exclude_to_csr
from dexml_hf.retrieval import MEMORY_APPROXIMATE_DIR, MEMORY_FILE, RetrievalMemory, search_with_memory

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["LabelIndex", "encode_texts", "model_name_of", "prompt_name_for", "resolve_normalize"]

EMBEDDINGS_FILE = "embeddings.safetensors"
CONFIG_FILE = "label_index.json"
APPROXIMATE_DIR = "approximate"  # the ApproximateIndex files (dexml_hf.ann), when one is built
FORMAT_VERSION = 2  # 2: optional retrieval memory (memory.safetensors + "memory" in the JSON)
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "fp32": torch.float32, "fp16": torch.float16}
_BACKENDS = ("torch", "faiss")


def prompt_name_for(model: SentenceTransformer, role: str) -> str | None:
    """The model's prompt name for ``role`` when it defines a non-empty one, else ``None``.

    ``"query"`` for queries; ``"label"`` for labels, falling back to sentence-transformers' ``"document"``.
    (Sentence-transformers 6 registers empty ``query``/``document`` prompts on every model; empty means none.)
    """
    prompts = getattr(model, "prompts", None) or {}
    candidates = ("label", "document") if role == "label" else (role,)
    return next((name for name in candidates if prompts.get(name)), None)


def resolve_normalize(model: SentenceTransformer, normalize: bool | None = None) -> bool:
    """Whether to L2-normalise embeddings before inner-product search, from the model's similarity function."""
    if normalize is not None:
        return bool(normalize)
    name = str(getattr(model, "similarity_fn_name", "cosine") or "cosine")
    name = getattr(getattr(model, "similarity_fn_name", None), "value", name)
    if name == "cosine":
        return True
    if name == "dot":
        return False
    raise ValueError(
        f"LabelIndex searches by inner product; model similarity {name!r} is not supported (use cosine or dot)"
    )


def model_name_of(model: SentenceTransformer) -> str | None:
    """A readable name for the model (Hub id or local path) recorded in the index metadata."""
    card = getattr(model, "model_card_data", None)
    for value in (getattr(card, "model_id", None), getattr(card, "base_model", None)):
        if value:
            return str(value)
    return None


def encode_texts(
    model: SentenceTransformer,
    texts: Sequence[str],
    role: str,
    batch_size: int = 64,
    normalize: bool | None = None,
    show_progress_bar: bool | None = None,
    max_length: int | None = None,
) -> torch.Tensor:
    """Embed ``texts`` as ``role`` (``"query"`` or ``"label"``): batched, with the model's prompt of that name
    if it has one, its max length (or ``max_length`` tokens), and normalisation per :func:`resolve_normalize`.
    Returns fp32 on CPU."""
    texts = list(texts)
    if not texts:
        dim = model.get_embedding_dimension() or 0
        return torch.empty((0, dim), dtype=torch.float32)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise ValueError(f"{role} text #{bad[0]} is {type(texts[bad[0]]).__name__}, expected str")
    emb = model.encode(
        texts,
        prompt_name=prompt_name_for(model, role),
        batch_size=batch_size,
        show_progress_bar=show_progress_bar,
        convert_to_tensor=True,
        normalize_embeddings=resolve_normalize(model, normalize),
        **({"processing_kwargs": {"text": {"max_length": max_length}}} if max_length is not None else {}),
    )
    return emb.detach().to("cpu", torch.float32)


class LabelIndex:
    """Label embeddings with exact, chunked inner-product top-k search.

    Args:
        embeddings: ``(L, d)`` label embeddings (stored as given ``dtype``).
        label_ids: optional external identifiers, one per row (kept for display and saved with the index).
        texts: optional label texts, one per row.
        normalized: whether the embeddings are L2-normalised (queries are then normalised the same way).
        model_name: the encoder that produced the embeddings (metadata only).
        dtype: ``"float32"`` or ``"float16"`` storage; scores are always computed in fp32.
        backend: ``"torch"`` (exact, chunked) or ``"faiss"`` (``IndexFlatIP``, needs ``faiss-cpu``).
        memory: a :class:`~dexml_hf.retrieval.RetrievalMemory` (training queries + label matrix); when set,
            :meth:`search` ranks by ``λ·s(q, l) + (1 − λ)·Σ_kNN w·Y`` (exact, always through the torch search).

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
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        emb = torch.as_tensor(embeddings).detach().cpu()
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be 2-D (labels × dims), got shape {tuple(emb.shape)}")
        self.embeddings = emb.to(_DTYPES[dtype]).contiguous()
        self.dtype = "float16" if _DTYPES[dtype] == torch.float16 else "float32"
        n = self.embeddings.shape[0]
        for field, values in (("label_ids", label_ids), ("texts", texts)):
            if values is not None and len(values) != n:
                raise ValueError(f"{field} has {len(values)} entries but embeddings have {n} rows")
        self.label_ids = list(label_ids) if label_ids is not None else None
        self.texts = list(texts) if texts is not None else None
        self.normalized = bool(normalized)
        self.model_name = model_name
        self.backend = backend
        self.query_prompt_name = query_prompt_name
        self.label_prompt_name = label_prompt_name
        self._faiss_index = None
        self.approximate = None  # an ApproximateIndex (dexml_hf.ann) over the embeddings: build_approximate()
        self.memory = None
        if memory is not None:
            self.attach_memory(memory)

    def attach_memory(self, memory: RetrievalMemory | None) -> LabelIndex:
        """Use ``memory`` for retrieval-augmented search (``None`` detaches it); checks dims, labels, normalisation."""
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
        self.memory = memory
        return self

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __repr__(self) -> str:
        return (
            f"LabelIndex(n_labels={len(self)}, dim={self.dim}, dtype={self.dtype}, normalized={self.normalized}, "
            f"backend={self.backend!r}, model_name={self.model_name!r}, memory={self.memory!r})"
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
    ) -> LabelIndex:
        """Encode ``texts`` once with ``model`` (label prompt if the model has one) and index them."""
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
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` labels per query: ``(scores (n, k) float32, ids (n, k) int64)``, best first.

        ``exclude`` holds ``(query_row, label_id)`` pairs (or an ``n × L`` sparse matrix) removed before the
        top-k. Ties go to the lower label id; empty places (fewer than ``k`` labels left) have id ``-1``.
        Queries must be embedded like the labels (``normalized`` tells whether to L2-normalise them).
        With a retrieval memory attached (and ``use_memory``), scores are the fused scores of
        :mod:`dexml_hf.retrieval` (``λ·s + (1 − λ)·neighbour term``); otherwise the inner products ``s``.
        """
        q = self._prepare_queries(query_embeddings)
        if self.approximate is not None and not (self.memory is not None and use_memory):
            return self.approximate.search(
                q, min(k, len(self)), exclude=exclude_to_csr(exclude, q.shape[0], len(self))
            )
        if self.memory is not None and use_memory:
            return search_with_memory(self, self.memory, q, k, exclude=exclude, query_chunk=query_chunk or 4096)
        if self.backend == "faiss":
            return self._search_faiss(q, k, exclude)
        scores, ids = chunked_topk(
            q,
            self.embeddings,
            k,
            exclude=exclude,
            query_chunk=query_chunk,
            label_chunk=label_chunk,
            show_progress_bar=show_progress_bar,
        )
        return scores.numpy(), ids.numpy()

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
        scores, ids = self.search(q, k, exclude=exclude, use_memory=use_memory)
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
            "label_ids": self.label_ids,
            "texts": self.texts,
            "memory": self.memory.config_dict() if self.memory is not None else None,
            "approximate": self.approximate.config_dict() if self.approximate is not None else None,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``embeddings.safetensors``, ``label_index.json`` (and ``memory.safetensors``) into ``path``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({"embeddings": self.embeddings}, str(path / EMBEDDINGS_FILE), metadata={"format": "dexml_hf"})
        if self.memory is not None:
            self.memory.save(path)
        elif (path / MEMORY_FILE).is_file():
            (path / MEMORY_FILE).unlink()  # a stale memory of an earlier save must not look like this index's
        self._save_approximate(path)
        with open(path / CONFIG_FILE, "w", encoding="utf-8") as f:
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
        load_approximate: bool = True,
    ) -> LabelIndex:
        """Load from a local folder written by :meth:`save`, or download it from a Hub repo id.

        ``load_memory=False`` skips a saved retrieval memory (plain dual-encoder search, less memory);
        ``load_approximate=False`` a saved approximate index (exact search)."""
        from dexml_hf.io import read_safetensors

        path = Path(path_or_repo_id)
        if not path.is_dir():
            if os.path.exists(path) or str(path_or_repo_id).count("/") > 1 or str(path_or_repo_id).startswith("."):
                raise FileNotFoundError(f"{path_or_repo_id} is neither a LabelIndex folder nor a Hub repo id")
            from huggingface_hub import snapshot_download

            path = Path(
                snapshot_download(
                    str(path_or_repo_id),
                    revision=revision,
                    token=token,
                    repo_type=repo_type,
                    allow_patterns=[
                        EMBEDDINGS_FILE,
                        CONFIG_FILE,
                        *([MEMORY_FILE, f"{MEMORY_APPROXIMATE_DIR}/*"] if load_memory else []),
                        *([f"{APPROXIMATE_DIR}/*"] if load_approximate else []),
                    ],
                )
            )
        config_path = path / CONFIG_FILE
        if not config_path.is_file() or not (path / EMBEDDINGS_FILE).is_file():
            raise FileNotFoundError(f"{path} lacks {CONFIG_FILE} or {EMBEDDINGS_FILE}; not a saved LabelIndex")
        try:
            with open(config_path, encoding="utf-8") as f:
                config = json.load(f)
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_path}: invalid JSON at line {err.lineno}: {err.msg}") from err
        version = config.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(
                f"{config_path}: format_version {version!r} is not one this dexml_hf reads (1 to {FORMAT_VERSION}); "
                "a newer index needs a newer dexml_hf (pip install -U dexml_hf)"
            )
        tensors = read_safetensors(path / EMBEDDINGS_FILE)
        if "embeddings" not in tensors:
            raise ValueError(f"{path / EMBEDDINGS_FILE}: no tensor named 'embeddings'")
        emb = tensors["embeddings"]
        if config.get("n_labels") is not None and emb.shape[0] != config["n_labels"]:
            raise ValueError(
                f"{config_path}: field n_labels={config['n_labels']} but embeddings have {emb.shape[0]} rows"
            )
        index = cls(
            emb,
            label_ids=config.get("label_ids"),
            texts=config.get("texts"),
            normalized=config.get("normalized", False),
            model_name=config.get("model_name"),
            dtype=config.get("dtype", "float32"),
            backend=backend,
            query_prompt_name=config.get("query_prompt_name"),
            label_prompt_name=config.get("label_prompt_name"),
            memory=RetrievalMemory.load(path, config["memory"]) if load_memory and config.get("memory") else None,
        )
        if load_approximate and config.get("approximate"):
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
    ):
        """Create ``repo_id`` if needed and upload the saved index; returns the commit info."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, repo_type=repo_type, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            self.save(tmp)
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
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
        show_progress_bar: bool | None = None,
        **params,
    ):
        """Build an :class:`~dexml_hf.ann.ApproximateIndex` over the label embeddings and search through it
        (``self.approximate``; ``None`` restores exact search). Compressed ``codes`` are re-ranked exactly against
        these embeddings (not copied). With ``target_recall``, ``efSearch`` / ``nprobe`` are tuned on
        ``tune_queries`` (query embeddings, e.g. of validation documents) for recall@``tune_k`` against exact
        search; the measured recall is saved with the index. ``params``: see :meth:`ApproximateIndex.build`.
        The approximate index covers the labels as they are now: rebuild it after adding or removing labels."""
        from dexml_hf.ann import ApproximateIndex

        if target_recall is not None and tune_queries is None:
            raise ValueError("target_recall needs tune_queries (query embeddings to measure recall on)")
        self.approximate = ApproximateIndex.build(
            self.embeddings,
            kind=kind,
            codes=codes,
            vectors=self.embeddings,
            show_progress_bar=show_progress_bar,
            **params,
        )
        if target_recall is not None:
            self.approximate.tune(
                self._prepare_queries(tune_queries), tune_k, target_recall, show_progress_bar=show_progress_bar
            )
        return self.approximate

    def _save_approximate(self, path: Path) -> None:
        from dexml_hf.ann import ANN_CONFIG_FILE

        folder = path / APPROXIMATE_DIR
        if self.approximate is not None:
            self.approximate.save(folder, include_vectors=False)  # re-ranking vectors = embeddings.safetensors
        elif (folder / ANN_CONFIG_FILE).is_file():  # a stale one of an earlier save (only folders we wrote)
            import shutil

            shutil.rmtree(folder)

    def _load_approximate(self, path: Path) -> None:
        from dexml_hf.ann import ApproximateIndex

        self.approximate = ApproximateIndex.load(path / APPROXIMATE_DIR, vectors=self.embeddings)
        if len(self.approximate.ids) != len(self):
            raise ValueError(
                f"{path / APPROXIMATE_DIR}: the approximate index has {len(self.approximate.ids)} rows, the label "
                f"index {len(self)}: rebuild it (index.build_approximate)"
            )
