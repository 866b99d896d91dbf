"""Retrieval-augmented prediction (RAE-XMC): the training queries as a memory beside the label index.

The memory keeps the embeddings of the training queries and their (binarised) label matrix ``Y``. A query ``q``
scores label ``l`` as

    fused(q, l) = λ · s(q, l) + (1 − λ) · Σ_{q' ∈ kNN_k(q)} w(q, q') · Y[q', l],
    w(q, q') = exp(sim(q, q') / T) / Σ_{q'' ∈ kNN_k(q)} exp(sim(q, q'') / T),

where ``s(q, l)`` is the score :meth:`LabelIndex.search` ranks by, put on the cosine's scale: for a normalised
(cosine) model the cosine itself; for a ``dot`` model the dot product divided by ``‖q‖ · max_l' ‖l'‖`` — per query a
positive rescaling, so the label ranking (and ``λ = 1``, plain dual-encoder search) is the dot product's, but bounded in
``[−1, 1]`` whatever the embeddings' norms (never divided by the training temperature τ). ``sim(q, q')`` is the
cosine between query embeddings for every model (the memory is stored L2-normalised), ``kNN_k(q)`` the ``k`` memory
queries with the largest ``sim`` (exact, ties to the lower row), ``T`` the retrieval temperature and ``Y`` binary
(``Y[q', l] = 1`` iff ``l`` is a positive of ``q'``, whatever relevance the dataset stores). So ``s ∈ [−1, 1]`` and
the neighbour term ``∈ [0, 1]`` for every model: the two are on comparable scales, the grid of ``λ``, ``k``, ``T``
means the same for cosine and dot models (raw dot products of norm-10 embeddings would be ~100, drowning the
neighbour term and turning the softmax over neighbours into a one-hot), and ``λ`` is chosen on validation data
(:func:`tune_retrieval`).

Agreement gate: with ``agreement = γ > 0`` the weight is per query, ``λ_q = 1 − (1 − λ)·a_q^γ`` where ``a_q`` is the
neighbour term's largest entry (how much of the neighbours' weight sits on one label): where the neighbours
disagree the dual encoder ranks alone (:func:`query_weights`). ``tune_retrieval(guard="psp@1")`` keeps only the grid
points that do not lower the validation PSP@1 below the dual encoder's.

Lexical neighbours: a memory built with ``lexical=True`` also keeps the training queries' TF-IDF rows
(:mod:`dexml_hf.lexical`); the neighbour term is then ``(1 − β)·R_dense + β·R_lexical``, ``R_lexical`` the same
softmax-weighted vote over the ``lexical_k`` training queries nearest by TF-IDF cosine (temperature
``lexical_temperature``), ``β = lexical_weight``. It needs the query *texts* (``texts=`` of the searches): those the
queries are embedded from, or those of the lexical rows' own text mode (``tune_retrieval(lexical_text_mode=...)``,
e.g. the documents' full texts beside title embeddings; :attr:`RetrievalMemory.lexical_text_mode`).

Scaling. Neighbours come from :func:`~dexml_hf.evaluation.topk.chunked_topk` (exact, chunked), test queries are
processed ``query_chunk`` at a time, and the neighbour term of a chunk is a sparse ``chunk × L`` matrix
(``W @ Y`` with ``k`` weights a row), so no ``n_test × n_train`` or ``n_test × L`` dense matrix is built. The exact
fused top-``d`` of a query is found among ``top-d of s`` ∪ ``support of the neighbour term``: a label outside the
support has ``fused = λ·s``, and every label ranking above it by ``s`` ranks above it by ``fused`` too (the neighbour
term is ≥ 0), so it can only be in the fused top-``d`` if it is in the top-``d`` by ``s``. Ties go to the lower label
id, as in :meth:`LabelIndex.search`.

Files (written by :meth:`LabelIndex.save` beside the label embeddings): ``memory.safetensors`` with tensors
``embeddings`` (n × d), ``label_indptr`` (n + 1, int64), ``label_indices`` (nnz, int64), and a ``"memory"`` entry in
``label_index.json`` with the shape, ``lam``, ``k``, ``temperature`` and how they were chosen. The memory holds
embeddings of the training queries: publishing it publishes (an encoding of) them.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from dexml_hf.encoding import encode_texts, resolve_normalize
from dexml_hf.evaluation.topk import DeviceCopy, chunked_topk, exclude_to_csr
from dexml_hf.lexical import LEXICAL_FILE, LEXICAL_TERMS_FILE, LexicalNeighbours

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from dexml_hf.index import LabelIndex

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_GRID",
    "capped_holdout",
    "MEMORY_FILE",
    "RetrievalMemory",
    "DEFAULT_LEXICAL_GRID",
    "fused_topk",
    "mix_terms",
    "fusion_queries",
    "neighbour_term",
    "parse_guard",
    "query_weights",
    "tune_retrieval",
]

MEMORY_FILE = "memory.safetensors"
MEMORY_APPROXIMATE_DIR = "memory_approximate"  # the memory's ApproximateIndex files, when one is built
_DTYPES = {"float32": torch.float32, "float16": torch.float16}
#: the grid :func:`tune_retrieval` searches by default (λ = 1 is the plain dual encoder, so it can win)
DEFAULT_GRID: dict[str, tuple] = {
    "lam": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    "k": (5, 10, 20, 50),
    "temperature": (0.02, 0.05, 0.1, 0.2),
    "agreement": (0.0, 1.0, 2.0, 4.0),
}
#: the lexical share's grid, searched with the dense point's k, T and gate fixed (λ searched again)
DEFAULT_LEXICAL_GRID: dict[str, tuple] = {
    "lexical_weight": (0.0, 0.3, 0.5, 0.7, 0.9),
    "lexical_k": (3, 5, 10, 20),
    "lexical_temperature": (0.02, 0.05, 0.1),
}


def _binary_csr(matrix, n_rows: int | None = None) -> sp.csr_matrix:
    mat = sp.csr_matrix(matrix, dtype=np.float32, copy=True)
    mat.eliminate_zeros()
    mat.sum_duplicates()
    mat.data = np.ones_like(mat.data)
    mat.sort_indices()
    if n_rows is not None and mat.shape[0] != n_rows:
        raise ValueError(f"label matrix has {mat.shape[0]} rows but the memory has {n_rows} query embeddings")
    return mat


def _check_lexical(weight: float, k: int, temperature: float) -> None:
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"lexical_weight must be in [0, 1), got {weight}")
    if k < 1:
        raise ValueError(f"lexical_k must be >= 1, got {k}")
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"lexical_temperature must be a positive number, got {temperature}")


def _check_params(lam: float, k: int, temperature: float, agreement: float = 0.0) -> None:
    if not 0.0 < float(lam) <= 1.0:
        raise ValueError(f"lam must be in (0, 1] (1 = the dual encoder alone), got {lam!r}")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ValueError(f"k (neighbours) must be a positive integer, got {k!r}")
    if not float(temperature) > 0.0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= float(agreement) <= 16.0:
        raise ValueError(
            f"agreement (exponent of the neighbours' agreement gate) must be in [0, 16], got {agreement!r}"
        )


class RetrievalMemory:
    """Training-query embeddings and their label matrix, for retrieval-augmented scoring (see the module doc).

    Args:
        embeddings: ``(n, d)`` embeddings of the memory queries, made like the index's queries (same model, query
            prompt); stored L2-normalised (neighbours are found and weighted by cosine, for every model).
        label_matrix: ``(n, L)`` sparse label matrix of those queries (binarised here).
        lam: weight ``λ`` of the dual-encoder score (``1 − λ`` goes to the neighbour term), in ``(0, 1]``.
        k: neighbours per query.
        temperature: ``T`` of the softmax over the neighbours' similarities.
        agreement: ``γ`` of the per-query gate ``λ_q = 1 − (1 − λ)·a_q^γ`` (:func:`query_weights`; 0 = plain ``λ``).
        normalized: whether the model is a cosine one (the index's ``normalized``; the two must agree).
        dtype: storage of the embeddings, ``"float32"`` or ``"float16"``; similarities are computed in fp32.
        tuning: how ``lam``/``k``/``temperature`` were chosen (written by :func:`tune_retrieval`; saved as is).
        lexical: the memory queries' TF-IDF rows (:class:`~dexml_hf.lexical.LexicalNeighbours`, same row order),
            or ``None``; ``lexical_weight`` ``β`` (0 = unused), ``lexical_k``, ``lexical_temperature`` its term's.

    Example::

        memory = RetrievalMemory.from_texts(model, xmc.query_texts("train"), xmc.label_matrices["train"])
        index = LabelIndex.from_texts(model, xmc.label_texts(), memory=memory)
        scores, ids = index.search(index.encode_queries(model, ["a test document"]), k=5)  # fused scores
    """

    def __init__(
        self,
        embeddings: torch.Tensor | np.ndarray,
        label_matrix,
        lam: float = 0.8,
        k: int = 20,
        temperature: float = 0.05,
        normalized: bool = True,
        dtype: str = "float32",
        tuning: dict[str, Any] | None = None,
        device: torch.device | str | None = None,
        agreement: float = 0.0,
        lexical: LexicalNeighbours | None = None,
        lexical_weight: float = 0.0,
        lexical_k: int = 20,
        lexical_temperature: float = 0.1,
    ):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        emb = torch.as_tensor(embeddings).detach().cpu()
        if emb.ndim != 2 or emb.shape[0] == 0:
            raise ValueError(f"memory embeddings must be a non-empty (n, d) matrix, got shape {tuple(emb.shape)}")
        self.normalized = bool(normalized)
        if not self.normalized:  # a cosine model's are unit already (kept bit for bit)
            emb = torch.nn.functional.normalize(emb.float(), dim=1)
        self.embeddings = emb.to(_DTYPES[dtype]).contiguous()
        self.dtype = dtype
        self.label_matrix = _binary_csr(label_matrix, self.embeddings.shape[0])
        if lexical is not None and len(lexical) != self.embeddings.shape[0]:
            raise ValueError(
                f"lexical rows ({len(lexical)}) must match the memory's {self.embeddings.shape[0]} queries"
            )
        self.lexical = lexical
        self.set_params(lam, k, temperature, agreement)
        self.set_lexical_params(lexical_weight, lexical_k, lexical_temperature)
        self.tuning = dict(tuning) if tuning else None
        self.approximate = None  # an ApproximateIndex (dexml_hf.ann) for the kNN: build_approximate()
        self.to(device if device is not None else "cpu")

    def to(self, device: torch.device | str, memory_budget: int | None = None) -> RetrievalMemory:
        """Search the neighbours on ``device`` (the embeddings stay on the CPU; a copy goes there when it fits half
        of ``memory_budget``, default the device's free memory, else chunks are streamed). Returns ``self``."""
        self.device = torch.device(device)
        self.memory_budget = memory_budget
        self._on_device = DeviceCopy()
        return self

    def _embeddings_on_device(self) -> torch.Tensor:
        return self._on_device.get(self.embeddings, self.device, self.memory_budget)

    def remap_labels(self, keep: np.ndarray, n_new: int = 0) -> RetrievalMemory:
        """Keep the label columns ``keep`` (in that order) and append ``n_new`` empty ones: the memory follows
        :meth:`LabelIndex.remove_labels` / ``add_labels``, so a removed label never comes back through the
        neighbour term and a new one gets none (no training query has it)."""
        keep = np.asarray(keep, dtype=np.int64)
        matrix = self.label_matrix[:, keep]
        if n_new:
            matrix = sp.hstack([matrix, sp.csr_matrix((len(self), int(n_new)), dtype=np.float32)], format="csr")
        self.label_matrix = _binary_csr(matrix, len(self))
        return self

    def set_params(
        self, lam: float | None = None, k: int | None = None, temperature: float | None = None, agreement=None
    ) -> None:
        """Change ``λ``, ``k``, ``T`` or ``agreement`` (validated)."""
        lam = self.__dict__.get("lam") if lam is None else float(lam)
        k = self.__dict__.get("k") if k is None else int(k)
        temperature = self.__dict__.get("temperature") if temperature is None else float(temperature)
        agreement = self.__dict__.get("agreement", 0.0) if agreement is None else float(agreement)
        _check_params(lam, k, temperature, agreement)
        self.lam, self.k, self.temperature = float(lam), int(k), float(temperature)
        self.agreement = float(agreement)

    def set_lexical_params(self, weight: float | None = None, k: int | None = None, temperature=None) -> None:
        """Change the lexical term's ``β``, ``k`` or ``T`` (validated; ``β > 0`` needs :attr:`lexical`)."""
        weight = self.__dict__.get("lexical_weight") if weight is None else float(weight)
        k = self.__dict__.get("lexical_k") if k is None else int(k)
        temperature = self.__dict__.get("lexical_temperature") if temperature is None else float(temperature)
        _check_lexical(weight, k, temperature)
        if weight > 0 and self.lexical is None:
            raise ValueError("lexical_weight > 0 needs a memory built with lexical neighbours (lexical=True)")
        self.lexical_weight, self.lexical_k, self.lexical_temperature = float(weight), int(k), float(temperature)

    @property
    def uses_lexical(self) -> bool:
        """Whether searches need the query texts (a lexical term with a positive weight)."""
        return self.lexical is not None and self.lexical_weight > 0

    @property
    def lexical_text_mode(self) -> str | None:
        """The dataset text mode whose texts a search's ``texts`` must be (the lexical rows' own, e.g.
        ``title_content``), or ``None`` when they are the texts the queries are embedded from."""
        return self.lexical.text_mode if self.uses_lexical else None

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __repr__(self) -> str:
        return (
            f"RetrievalMemory(n_queries={len(self)}, n_labels={self.num_labels}, dim={self.dim}, lam={self.lam}, "
            f"k={self.k}, temperature={self.temperature}, agreement={self.agreement}, normalized={self.normalized}, "
            f"lexical_weight={self.lexical_weight if self.lexical is not None else None})"
        )

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    @property
    def num_labels(self) -> int:
        return self.label_matrix.shape[1]

    @classmethod
    def from_texts(
        cls,
        model: SentenceTransformer,
        texts: Sequence[str],
        label_matrix,
        batch_size: int = 64,
        normalize: bool | None = None,
        show_progress_bar: bool | None = None,
        lexical: bool = False,
        **kwargs,
    ) -> RetrievalMemory:
        """Embed the memory queries with ``model`` (as queries: its query prompt, its normalisation); with
        ``lexical``, also fit their TF-IDF rows (:class:`~dexml_hf.lexical.LexicalNeighbours`)."""
        normalized = resolve_normalize(model, normalize)
        emb = encode_texts(model, texts, "query", batch_size, normalized, show_progress_bar)
        words = LexicalNeighbours.fit(texts) if lexical else None
        return cls(emb, label_matrix, normalized=normalized, lexical=words, **kwargs)

    @classmethod
    def from_xmc(
        cls, model: SentenceTransformer, xmc, split: str = "train", query_mode: str = "title", **kwargs
    ) -> RetrievalMemory:
        """The memory of an :class:`~dexml_hf.data.XMCDataset` split (its query texts and label matrix)."""
        return cls.from_texts(model, xmc.query_texts(split, query_mode), xmc.label_matrices[split], **kwargs)

    def select(self, rows: np.ndarray) -> RetrievalMemory:
        """A memory of the given rows only (same parameters)."""
        rows = np.asarray(rows, dtype=np.int64)
        return RetrievalMemory(
            self.embeddings[torch.from_numpy(rows)],
            self.label_matrix[rows],
            self.lam,
            self.k,
            self.temperature,
            normalized=self.normalized,
            dtype=self.dtype,
            tuning=self.tuning,
            device=self.device,
            agreement=self.agreement,
            lexical=None if self.lexical is None else self.lexical.select(rows),
            lexical_weight=self.lexical_weight,
            lexical_k=self.lexical_k,
            lexical_temperature=self.lexical_temperature,
        )

    # ---- scoring --------------------------------------------------------------------------------------------

    def _queries(self, query_embeddings) -> torch.Tensor:
        q = torch.as_tensor(query_embeddings).detach().to("cpu", torch.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query embeddings have shape {tuple(q.shape)}, expected (n, {self.dim})")
        return torch.nn.functional.normalize(q, dim=1)

    def neighbours(self, query_embeddings, k: int | None = None, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Exact ``k`` nearest memory queries by cosine: ``(similarities (n, k) float32, rows (n, k) int64)``, best
        first.

        ``exclude``: ``(query_row, memory_row)`` pairs (or an ``n × N`` sparse matrix) that may not be neighbours
        (e.g. a training query itself). Places left empty have row ``-1`` and similarity ``-inf``.
        """
        k = self.k if k is None else int(k)
        if self.approximate is not None:
            return self.approximate.search(self._queries(query_embeddings), min(k, len(self)), exclude=exclude)
        budget = None if self.memory_budget is None else max(1, self.memory_budget // 2)
        sims, rows = chunked_topk(
            self._queries(query_embeddings),
            self._embeddings_on_device(),
            min(k, len(self)),
            exclude=exclude,
            device=self.device,
            memory_budget=budget,
        )
        return sims.numpy(), rows.numpy()

    def neighbour_term(self, sims: np.ndarray, rows: np.ndarray, k: int | None = None, temperature=None):
        """``Σ_{q' ∈ kNN_k} w(q, q') Y[q', :]`` as a sparse ``(n, L)`` CSR, from :meth:`neighbours`' output."""
        k = self.k if k is None else int(k)
        temperature = self.temperature if temperature is None else float(temperature)
        return neighbour_term(sims[:, :k], rows[:, :k], self.label_matrix, temperature)

    def lexical_neighbours(self, texts: Sequence[str], k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` memory queries nearest to each text by TF-IDF cosine (:meth:`LexicalNeighbours.neighbours`)."""
        if self.lexical is None:
            raise ValueError("this memory has no lexical neighbours (build it with lexical=True)")
        return self.lexical.neighbours(texts, self.lexical_k if k is None else int(k))

    def search_term(self, query_embeddings, texts: Sequence[str] | None = None) -> sp.csr_matrix:
        """The neighbour term of the searches with the stored parameters: dense, mixed with the lexical one when
        :attr:`uses_lexical` (then ``texts``, one per query, are required)."""
        sims, rows = self.neighbours(query_embeddings, self.k)
        term = self.neighbour_term(sims, rows)
        if not self.uses_lexical:
            return term
        if texts is None:
            raise ValueError(
                "this retrieval memory mixes in lexical neighbours (lexical_weight "
                f"{self.lexical_weight}): pass the query texts (texts=...) with the embeddings"
            )
        if len(texts) != term.shape[0]:
            raise ValueError(f"{len(texts)} query texts for {term.shape[0]} query embeddings")
        l_sims, l_rows = self.lexical_neighbours(texts)
        lexical = neighbour_term(l_sims, l_rows, self.label_matrix, self.lexical_temperature)
        return mix_terms(term, lexical, self.lexical_weight)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "embeddings": self.embeddings,
            "label_indptr": torch.from_numpy(self.label_matrix.indptr.astype(np.int64)),
            "label_indices": torch.from_numpy(self.label_matrix.indices.astype(np.int64)),
        }

    def config_dict(self) -> dict[str, Any]:
        return {
            "file": MEMORY_FILE,
            "n_queries": len(self),
            "n_labels": self.num_labels,
            "dim": self.dim,
            "dtype": self.dtype,
            "normalized": self.normalized,
            "lam": self.lam,
            "k": self.k,
            "temperature": self.temperature,
            "agreement": self.agreement,
            "label_matrix": "binary",
            "tuning": self.tuning,
            "approximate": self.approximate.config_dict() if self.approximate is not None else None,
            "lexical": self.lexical.config_dict() if self.lexical is not None else None,
            "lexical_weight": self.lexical_weight,
            "lexical_k": self.lexical_k,
            "lexical_temperature": self.lexical_temperature,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``memory.safetensors`` into the folder ``path`` (the parameters go into ``label_index.json``)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file(self.state_tensors(), str(path / MEMORY_FILE), metadata={"format": "dexml_hf.retrieval_memory"})
        self._save_approximate(path)
        if self.lexical is not None:
            self.lexical.save(path)
        else:  # stale files of an earlier save of this folder (our own names only)
            for name in (LEXICAL_FILE, LEXICAL_TERMS_FILE):
                (path / name).unlink(missing_ok=True)
        return path / MEMORY_FILE

    @classmethod
    def load(cls, path: str | os.PathLike, config: dict[str, Any]) -> RetrievalMemory:
        """Read ``memory.safetensors`` from the folder ``path`` with the ``"memory"`` entry of the index config."""
        from dexml_hf.io import ConfigFields, read_safetensors

        fields = ConfigFields(config, f"{Path(path) / 'label_index.json'}, entry 'memory'")
        file = fields.member("file", path, MEMORY_FILE)
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: label_index.json declares a retrieval memory")
        tensors = read_safetensors(file)
        missing = {"embeddings", "label_indptr", "label_indices"} - set(tensors)
        if missing:
            raise ValueError(f"{file}: missing tensors {sorted(missing)}")
        emb = tensors["embeddings"]
        n, n_labels = fields.get("n_queries", int), fields.get("n_labels", int)
        indptr = tensors["label_indptr"].numpy()
        indices = tensors["label_indices"].numpy()
        if emb.shape[0] != n or len(indptr) != n + 1 or int(indptr[-1]) != len(indices):
            raise ValueError(
                f"{file}: {emb.shape[0]} embeddings / {len(indptr) - 1} label rows, but the config says {n} queries"
            )
        matrix = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(n, n_labels))
        memory = cls(
            emb,
            matrix,
            lam=fields.get("lam", (int, float)),
            k=fields.get("k", int),
            temperature=fields.get("temperature", (int, float)),
            normalized=fields.get("normalized", bool, False),
            dtype=fields.get("dtype", str, "float32"),
            tuning=fields.get("tuning", dict, None),
            agreement=fields.get("agreement", (int, float), 0.0),
        )
        lexical = fields.get("lexical", dict, None)
        if lexical:
            memory.lexical = LexicalNeighbours.load(path, lexical, f"{fields.where}, entry 'lexical'")
            if len(memory.lexical) != n:
                raise ValueError(f"{path}: {len(memory.lexical)} lexical rows for {n} memory queries")
        try:
            memory.set_lexical_params(
                fields.get("lexical_weight", (int, float), 0.0),
                fields.get("lexical_k", int, 20),
                fields.get("lexical_temperature", (int, float), 0.1),
            )
        except ValueError as err:
            raise ValueError(f"{fields.where}: {err}") from None
        if fields.get("approximate", dict, None):
            from dexml_hf.ann import ApproximateIndex

            memory.approximate = ApproximateIndex.load(Path(path) / MEMORY_APPROXIMATE_DIR, vectors=memory.embeddings)
        return memory

    # ---- approximate kNN (dexml_hf.ann) ------------------------------------------------------------------------

    def build_approximate(
        self,
        kind: str = "hnsw",
        codes: str = "flat",
        target_recall: float | None = None,
        tune_queries=None,
        show_progress_bar: bool | None = None,
        **params,
    ):
        """Find the neighbours through an :class:`~dexml_hf.ann.ApproximateIndex` over the memory embeddings
        (``self.approximate``; ``None`` restores exact kNN), tuned for recall@``k`` on ``tune_queries`` when
        ``target_recall`` is given. Compressed ``codes`` are re-ranked against the embeddings (not copied)."""
        from dexml_hf.ann import ApproximateIndex

        queries = None if tune_queries is None else self._queries(tune_queries)
        self.approximate = ApproximateIndex.build_tuned(
            self.embeddings,
            queries,
            self.k,
            target_recall,
            show_progress_bar=show_progress_bar,
            kind=kind,
            codes=codes,
            **params,
        )
        return self.approximate

    def _save_approximate(self, path: Path) -> None:
        from dexml_hf.ann import ANN_CONFIG_FILE

        folder = path / MEMORY_APPROXIMATE_DIR
        if self.approximate is not None:
            self.approximate.save(folder, include_vectors=False)  # re-ranking vectors = memory.safetensors
        elif (folder / ANN_CONFIG_FILE).is_file():  # a stale one of an earlier save (only folders we wrote)
            import shutil

            shutil.rmtree(folder)


def neighbour_term(sims: np.ndarray, rows: np.ndarray, label_matrix: sp.csr_matrix, temperature: float):
    """``R = W @ Y``: ``W[i, rows[i, j]] = softmax_j(sims[i, :] / T)`` over the valid neighbours (row ``>= 0``)."""
    sims = np.asarray(sims, dtype=np.float64)
    rows = np.asarray(rows, dtype=np.int64)
    n, k = rows.shape
    valid = rows >= 0
    logits = np.where(valid, sims / float(temperature), -np.inf)
    top = np.max(logits, axis=1, keepdims=True) if k else np.zeros((n, 1))
    top = np.where(np.isfinite(top), top, 0.0)
    weights = np.where(valid, np.exp(logits - top), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    w = sp.csr_matrix(
        (weights[valid], (np.repeat(np.arange(n), k)[valid.ravel()], rows[valid])),
        shape=(n, label_matrix.shape[0]),
    )
    out = (w @ label_matrix).tocsr()
    out.sort_indices()
    return out


def mix_terms(dense: sp.csr_matrix, lexical: sp.csr_matrix, weight: float) -> sp.csr_matrix:
    """``(1 − β)·dense + β·lexical``: still a distribution over labels per query (each term's rows sum to at most 1)."""
    if not weight:
        return dense
    out = ((1.0 - float(weight)) * dense + float(weight) * lexical).tocsr()
    out.sort_indices()
    return out


def query_weights(term: sp.csr_matrix, lam: float, agreement: float) -> np.ndarray | float:
    """The dual encoder's weight per query: ``λ_q = 1 − (1 − λ) · a_q^γ`` with ``a_q = max_l R[q, l]`` (how much
    of the neighbours' weight agrees on one label) and ``γ = agreement``; ``γ = 0`` gives the plain ``λ``.

    Why: the neighbours of a query share the head labels by sheer frequency, so where they disagree their vote
    mostly pushes a frequent label over the rare one the dual encoder ranks first — the PSP@1 that fusion gives
    away. Gated by agreement, the memory speaks where it is sure and the dual encoder keeps the rest.
    """
    if not agreement:
        return float(lam)
    top = np.zeros(term.shape[0])
    filled = np.flatnonzero(np.diff(term.indptr))
    if len(filled):
        top[filled] = np.maximum.reduceat(term.data, term.indptr[filled])
    return 1.0 - (1.0 - float(lam)) * np.clip(top, 0.0, 1.0) ** float(agreement)


def fusion_queries(q: torch.Tensor, label_embeddings: torch.Tensor, normalized: bool) -> torch.Tensor:
    """Queries whose inner products with the labels are ``s(q, l)`` on the cosine's scale (module doc): as given
    for a normalised index, else ``q / (‖q‖ · max_l ‖l‖)`` (per query a positive factor: the ranking is unchanged)."""
    if normalized:
        return q
    top = 0.0
    for s in range(0, label_embeddings.shape[0], 1 << 16):  # the norms in pieces (no fp32 copy of an fp16 table)
        top = max(top, float(label_embeddings[s : s + (1 << 16)].float().norm(dim=1).max()))
    norms = q.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return q.float() / (norms * max(top, 1e-12))


def _gather_scores(q: torch.Tensor, labels: torch.Tensor, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``<q[rows], labels[cols]>`` in fp32, in pieces so the gathered ``(m, d)`` blocks stay small."""
    out = np.empty(len(rows), dtype=np.float32)
    step = 1 << 16
    for s in range(0, len(rows), step):
        r = torch.from_numpy(rows[s : s + step])
        c = torch.from_numpy(cols[s : s + step])
        out[s : s + step] = (q[r] * labels[c].float()).sum(dim=1).numpy()
    return out


def fused_topk(
    q: torch.Tensor,
    label_embeddings: torch.Tensor,
    k: int,
    lam: float,
    term: sp.csr_matrix,
    base: tuple[np.ndarray, np.ndarray],
    exclude: sp.csr_matrix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact fused top-``k`` of one query chunk (see the module doc for why the candidates suffice).

    Args:
        q: ``(n, d)`` query embeddings, from :func:`fusion_queries` (``<q, l>`` = ``s(q, l)``).
        label_embeddings: ``(L, d)``.
        lam: ``λ``, a number or one per query (:func:`query_weights`; each in ``(0, 1]``).
        term: the neighbour term, sparse ``(n, L)``.
        base: ``(scores, ids)`` of the top-``k`` labels by ``s`` (excluded pairs already removed).
        exclude: boolean CSR ``(n, L)`` of pairs to remove.
    """
    n, n_labels = q.shape[0], label_embeddings.shape[0]
    base_ids = base[1]
    k = min(k, n_labels)
    b_rows = np.repeat(np.arange(n, dtype=np.int64), base_ids.shape[1])
    b_cols = base_ids.ravel().astype(np.int64)
    keep = b_cols >= 0
    t = term.tocoo()
    rows = np.concatenate([b_rows[keep], t.row.astype(np.int64)])
    cols = np.concatenate([b_cols[keep], t.col.astype(np.int64)])
    keys = np.unique(rows * n_labels + cols)
    rows, cols = keys // n_labels, keys % n_labels
    if exclude is not None and exclude.nnz:
        ex = exclude.tocoo()
        dropped = np.isin(keys, ex.row.astype(np.int64) * n_labels + ex.col.astype(np.int64))
        rows, cols, keys = rows[~dropped], cols[~dropped], keys[~dropped]
    s = _gather_scores(q, label_embeddings, rows, cols).astype(np.float64)
    r = np.zeros(len(keys))
    if t.nnz:
        t_keys = t.row.astype(np.int64) * n_labels + t.col.astype(np.int64)
        order = np.argsort(t_keys)
        pos = np.searchsorted(t_keys[order], keys)
        pos = np.minimum(pos, len(t_keys) - 1)
        hit = t_keys[order][pos] == keys
        r[hit] = t.data[order][pos[hit]]
    lam = np.asarray(lam, dtype=np.float64)
    lam = lam[rows] if lam.ndim else lam
    fused = (lam * s + (1.0 - lam) * r).astype(np.float32)
    order = np.lexsort((cols, -fused, rows))  # by row, then score descending, then lower label id
    rows, cols, fused = rows[order], cols[order], fused[order]
    starts = np.searchsorted(rows, np.arange(n))
    rank = np.arange(len(rows)) - starts[rows]
    sel = rank < k
    out_ids = np.full((n, k), -1, dtype=np.int64)
    out_scores = np.full((n, k), -np.inf, dtype=np.float32)
    out_ids[rows[sel], rank[sel]] = cols[sel]
    out_scores[rows[sel], rank[sel]] = fused[sel]
    return out_scores, out_ids


def search_with_memory(
    index: LabelIndex,
    memory: RetrievalMemory,
    q: torch.Tensor,
    k: int,
    exclude=None,
    query_chunk: int = 4096,
    texts: Sequence[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Fused top-``k`` for queries ``q`` (normalised as the index expects), ``query_chunk`` queries at a time;
    ``texts`` (one per query) feed the lexical term when the memory has one (:meth:`RetrievalMemory.search_term`)."""
    if memory.dim != index.dim or memory.num_labels != len(index):
        raise ValueError(
            f"memory ({memory.dim} dims, {memory.num_labels} labels) does not match the index "
            f"({index.dim} dims, {len(index)} labels)"
        )
    lam = memory.lam
    n = q.shape[0]
    if texts is not None and len(texts) != n:
        raise ValueError(f"{len(texts)} query texts for {n} query embeddings")
    k = min(int(k), len(index))
    excluded = exclude_to_csr(exclude, n, len(index))
    out_scores = np.empty((n, k), dtype=np.float32)
    out_ids = np.empty((n, k), dtype=np.int64)
    for q0 in range(0, n, query_chunk):
        q1 = min(n, q0 + query_chunk)
        qc = q[q0:q1]
        ex = excluded[q0:q1] if excluded is not None else None
        base = index._topk(qc, k, exclude=ex)
        if lam == 1.0:
            out_scores[q0:q1], out_ids[q0:q1] = base
            continue
        term = memory.search_term(qc, None if texts is None else texts[q0:q1])
        qs = fusion_queries(qc, index.embeddings, index.normalized)
        lam_q = query_weights(term, lam, memory.agreement)
        out_scores[q0:q1], out_ids[q0:q1] = fused_topk(qs, index.embeddings, k, lam_q, term, base, ex)
    return out_scores, out_ids


# ---- choosing λ, k and T on validation data -----------------------------------------------------------------


@dataclass
class TuningResult:
    """What :func:`tune_retrieval` chose and every grid point's value of the metric (and of the guard)."""

    lam: float
    k: int
    temperature: float
    metric: str
    value: float
    baseline: float
    split: str
    n_queries: int
    grid: list[dict[str, float]]
    agreement: float = 0.0
    guard: str | None = None
    guard_baseline: dict[str, float] | None = None
    guard_margin: float | None = None
    lexical_weight: float = 0.0
    lexical_k: int | None = None
    lexical_temperature: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = {
            "metric": self.metric,
            "value": self.value,
            "dual_encoder_value": self.baseline,
            "split": self.split,
            "n_queries": self.n_queries,
            "grid": self.grid,
        }
        if self.guard:
            out["guard"] = self.guard
            out["guard_dual_encoder"] = self.guard_baseline
            out["guard_margin"] = self.guard_margin
        return out


def grid_search(
    index: LabelIndex,
    memory: RetrievalMemory,
    query_embeddings,
    truth,
    metric: str = "precision@1",
    grid: dict[str, Iterable] | None = None,
    inv_propensity: np.ndarray | None = None,
    exclude=None,
    split: str = "validation",
    show_progress_bar: bool | None = None,
    guard: str | None = None,
    guard_margin: float = 2.0,
    query_texts: Sequence[str] | None = None,
    lexical_grid: dict[str, Iterable] | None = None,
) -> TuningResult:
    """Evaluate every ``(λ, k, T, agreement)`` of ``grid`` on the given (validation) queries and pick the best by
    ``metric`` among the points that keep every ``guard`` metric (e.g. ``"psp@1"``, several joined by ``+``) at
    least at the dual encoder's own value; ``λ = 1`` (the dual encoder) always qualifies, so a memory that would
    cost the guarded metric is switched off rather than trusted.

    "At least" is a paired one-sided test over the queries: with ``d_i`` query ``i``'s contribution to the guard
    metric under the point minus under the dual encoder (:func:`~dexml_hf.evaluation.metric_contributions`), a
    point qualifies when ``Σ d_i ≥ guard_margin · √n · std(d)``. A few hundred validation queries pass a noisy
    point by chance; the margin (in standard errors; 0 = the plain comparison) prefers points that change few
    rankings, such as the agreement gate's.

    The neighbours (for the largest ``k``) and the dual-encoder top-``d`` are computed once; each grid point only
    re-weights and re-ranks. Ties in the metric go to the earlier grid point (grid order: ``λ`` descending first,
    then ``agreement`` ascending, so a tie prefers the plainer model).

    A memory with lexical neighbours, given the validation ``query_texts``, gets a second stage: with ``k``, ``T``
    and the gate of the best dense point (``λ < 1``) fixed, every ``λ`` × ``lexical_grid`` point (default
    :data:`DEFAULT_LEXICAL_GRID`) is evaluated too, under the same guard; the best of both stages wins (ties to the
    dense point). Two stages instead of the full product keep the grid at a few hundred points.
    """
    from dexml_hf.evaluation.metrics import metric_contributions

    grid = {**DEFAULT_GRID, **(grid or {})}
    lams = sorted({float(x) for x in grid["lam"]}, reverse=True)
    ks_nn = sorted({int(x) for x in grid["k"]})
    temps = sorted({float(x) for x in grid["temperature"]})
    gates = sorted({float(x) for x in grid["agreement"]})
    for lam, knn, temp, gate in itertools.product(lams, ks_nn, temps, gates):
        _check_params(lam, knn, temp, gate)
    if (
        isinstance(guard_margin, bool)
        or not isinstance(guard_margin, (int, float))
        or not 0 <= guard_margin < math.inf
    ):
        raise ValueError(f"guard_margin must be a finite number >= 0 (standard errors), got {guard_margin!r}")
    parts = parse_selection_metric(metric)
    guards = parse_selection_metric(guard) if guard else []
    if inv_propensity is None and any(name.startswith("ps") for name, _ in parts + guards):
        raise ValueError(f"metric {metric!r} / guard {guard!r} needs inv_propensity")
    names = [f"{name}@{at}" for name, at in parts]
    guard_names = [f"{name}@{at}" for name, at in guards]
    depth = max(at for _, at in parts + guards)
    if depth > len(index):
        raise ValueError(f"metric {metric!r} needs at least {depth} labels; the index has {len(index)}")
    truth = sp.csr_matrix(truth)
    q = index._prepare_queries(query_embeddings)
    if truth.shape[0] != q.shape[0]:
        raise ValueError(f"truth has {truth.shape[0]} rows for {q.shape[0]} queries")
    excluded = exclude_to_csr(exclude, q.shape[0], len(index))
    base = chunked_topk(q, index.embeddings, depth, exclude=excluded)
    base = (base[0].numpy(), base[1].numpy())
    sims, rows = memory.neighbours(q, max(ks_nn))
    qs = fusion_queries(q, index.embeddings, index.normalized)
    ks_metrics = {at for _, at in parts + guards}

    def values(ids: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
        terms = metric_contributions(ids, truth, ks=ks_metrics, inv_propensity=inv_propensity)
        return float(np.mean([terms[name].sum() for name in names])), {name: terms[name] for name in guard_names}

    def passes(kept: dict[str, np.ndarray]) -> bool:
        for name in guard_names:
            d = kept[name] - base_parts[name]
            spread = np.sqrt(len(d)) * d.std(ddof=1) if len(d) > 1 else 0.0
            if d.sum() < guard_margin * spread - 1e-12:
                return False
        return True

    lexical_on = memory.lexical is not None and query_texts is not None
    if lexical_on:
        if len(query_texts) != q.shape[0]:
            raise ValueError(f"{len(query_texts)} query texts for {q.shape[0]} queries")
        lex = {**DEFAULT_LEXICAL_GRID, **(lexical_grid or {})}
        betas = sorted({float(x) for x in lex["lexical_weight"]} - {0.0})
        ks_lex = sorted({int(x) for x in lex["lexical_k"]})
        temps_lex = sorted({float(x) for x in lex["lexical_temperature"]})
        for beta, kl, tl in itertools.product(betas, ks_lex, temps_lex):
            _check_lexical(beta, kl, tl)
        l_sims, l_rows = memory.lexical.neighbours(query_texts, max(ks_lex)) if betas else (None, None)
    baseline, base_parts = values(base[1])
    guard_baseline = {name: float(c.sum()) for name, c in base_parts.items()}
    points = [(1.0, None, None, None)] if 1.0 in lams else []  # λ = 1 ignores k, T and the gate: one point
    points += [p for p in itertools.product(lams, ks_nn, temps, gates) if p[0] != 1.0]
    results, best, terms = [], None, {}
    for lam, knn, temp, gate in tqdm(points, desc="choosing λ, k, T", disable=not show_progress_bar, leave=False):
        if lam == 1.0:
            v, kept = baseline, base_parts
        else:
            if (knn, temp) not in terms:  # one term at a time (the points of one (k, T) are consecutive)
                terms = {(knn, temp): neighbour_term(sims[:, :knn], rows[:, :knn], memory.label_matrix, temp)}
            term = terms[(knn, temp)]
            lam_q = query_weights(term, lam, gate)
            v, kept = values(fused_topk(qs, index.embeddings, depth, lam_q, term, base, excluded)[1])
        ok = passes(kept)
        point = {"lam": lam, "k": knn, "temperature": temp, "agreement": gate}
        results.append({**point, metric: v, **{n: float(c.sum()) for n, c in kept.items()}, "eligible": ok})
        if ok and (best is None or v > best[0]):
            best = (v, lam, knn, temp, gate, 0.0, None, None)
    dense = [r for r in results if r["lam"] != 1.0]
    if lexical_on and betas and dense:
        top = max(dense, key=lambda r: r[metric])  # first of the best: the grid order breaks ties
        knn, temp, gate = top["k"], top["temperature"], top["agreement"]
        dense_term = neighbour_term(sims[:, :knn], rows[:, :knn], memory.label_matrix, temp)
        lexical_terms: dict = {}
        points = list(itertools.product(ks_lex, temps_lex, betas, [x for x in lams if x != 1.0]))
        for kl, tl, beta, lam in tqdm(
            points, desc="choosing the lexical share", disable=not show_progress_bar, leave=False
        ):
            if (kl, tl) not in lexical_terms:
                lexical_terms = {(kl, tl): neighbour_term(l_sims[:, :kl], l_rows[:, :kl], memory.label_matrix, tl)}
            term = mix_terms(dense_term, lexical_terms[(kl, tl)], beta)
            v, kept = values(
                fused_topk(qs, index.embeddings, depth, query_weights(term, lam, gate), term, base, excluded)[1]
            )
            ok = passes(kept)
            point = {"lam": lam, "k": knn, "temperature": temp, "agreement": gate}
            point.update(lexical_weight=beta, lexical_k=kl, lexical_temperature=tl)
            results.append({**point, metric: v, **{n: float(c.sum()) for n, c in kept.items()}, "eligible": ok})
            if ok and (best is None or v > best[0]):
                best = (v, lam, knn, temp, gate, beta, kl, tl)
    if best is None:  # the grid has no λ = 1 and no point keeps the guard: the dual encoder alone
        best = (baseline, 1.0, None, None, None, 0.0, None, None)
    v, lam, knn, temp, gate, beta, kl, tl = best
    if lam == 1.0:  # keep the memory's own k / T / gate (unused at λ = 1)
        knn, temp, gate = memory.k, memory.temperature, memory.agreement
    return TuningResult(
        lam,
        knn,
        temp,
        metric,
        v,
        baseline,
        split,
        int(q.shape[0]),
        results,
        gate,
        guard or None,
        guard_baseline,
        float(guard_margin) if guard else None,
        beta,
        kl,
        tl,
    )


#: the metric families a selection criterion may name (keys of :func:`~dexml_hf.evaluation.xmc_metrics`)
SELECTION_FAMILIES = ("precision", "ndcg", "recall", "psp", "psndcg", "mrr")


def parse_selection_metric(metric: str) -> list[tuple[str, int]]:
    """``"precision@1"`` → ``[("precision", 1)]``; ``"precision@1+psp@5"`` → both: the criterion is their mean, so one
    choice of ``λ, k, T`` can weigh the head (P@1) and the tail (PSP@5) together."""
    parts = []
    for part in str(metric).split("+"):
        family, _, at = part.strip().partition("@")
        if family not in SELECTION_FAMILIES or not at.isdigit() or int(at) < 1:
            raise ValueError(
                f"metric {metric!r}: expected <metric>@<k>, or several joined by '+' (their mean), with metric one of "
                f"{', '.join(SELECTION_FAMILIES)} (e.g. precision@1, psp@5, precision@1+psp@5)"
            )
        parts.append((family, int(at)))
    return parts


def parse_guard(guard: str | None) -> str | None:
    """A guard setting: ``"none"`` / ``""`` / ``None`` switch it off, else metrics as :func:`parse_selection_metric`
    reads them (validated here, so a typo fails before anything is encoded)."""
    if guard is None or str(guard).strip().lower() in ("", "none"):
        return None
    parse_selection_metric(guard)
    return str(guard).strip()


def capped_holdout(requested: int, num_train: int) -> int:
    """The held-out slice actually used: at most a fifth of the training queries, so the memory keeps most of
    them while λ, k, T are chosen (a 2,000-query default on a 1,500-query train split would leave nothing)."""
    return min(requested, max(1, num_train // 5))


def tune_retrieval(
    model: SentenceTransformer,
    index: LabelIndex,
    xmc,
    metric: str = "precision@1",
    grid: dict[str, Iterable] | None = None,
    split: str | None = None,
    holdout: int | float = 2000,
    seed: int = 0,
    query_mode: str = "title",
    batch_size: int = 64,
    inv_propensity: np.ndarray | None = None,
    train_embeddings: torch.Tensor | None = None,
    show_progress_bar: bool | None = None,
    guard: str | None = None,
    guard_margin: float = 2.0,
    lexical: bool = False,
    lexical_text_mode: str | None = None,
) -> RetrievalMemory:
    """Build the retrieval memory of ``xmc``'s train split, choose ``λ``, ``k`` and ``T`` on validation data,
    attach the memory to ``index`` (``index.memory``) and return it. Never looks at the test split.

    Validation data: the ``split`` given, else ``xmc``'s ``validation`` split when it has one. Without one, a
    seeded random slice of ``holdout`` training queries (a count, or a fraction of train when < 1) is carved out:
    while tuning, those queries are left out of the memory (so they cannot find themselves), and the returned
    memory holds every training query. The choice is stored in ``memory.tuning`` (saved with the index).

    Args:
        metric: the metric maximised (a key of :func:`~dexml_hf.evaluation.xmc_metrics`, e.g. ``precision@1``,
            ``psp@5``, or several joined by ``+``, whose mean is maximised: ``precision@1+psp@5``; PSP needs
            ``inv_propensity``, by default ``xmc.inv_propensity()``).
        grid: ``{"lam": [...], "k": [...], "temperature": [...]}``, defaults from :data:`DEFAULT_GRID`.
        train_embeddings: the train queries' embeddings if already computed (skips encoding them).
        guard: metrics the fusion may not lower below the dual encoder alone on the validation queries
            (:func:`grid_search`), e.g. ``"psp@1"``; ``guard_margin``: by how many standard errors of the paired
            per-query difference a point must clear it.
        lexical: also keep the training queries' TF-IDF rows and choose the lexical term's share ``β`` (and its
            ``k``, ``T``) on the same validation queries (:func:`grid_search`'s second stage; ``β = 0`` if it
            does not pay).
        lexical_text_mode: the dataset text mode of the lexical rows and of the validation queries' lexical texts
            when it is not ``query_mode`` (e.g. ``title_content``: the documents' full texts, while the embeddings
            stay those of the titles); saved with the memory, so evaluation takes the same texts.
    """
    if "test" == split:
        raise ValueError("tune_retrieval chooses λ, k and T on validation data; split='test' is not allowed")
    train_matrix = xmc.label_matrices["train"]
    if lexical_text_mode is not None and not lexical:
        raise ValueError("lexical_text_mode is the text of the lexical neighbours: it needs lexical=True")
    lexical_mode = lexical_text_mode or query_mode
    train_texts = xmc.query_texts("train", query_mode) if train_embeddings is None else None
    if train_embeddings is None:
        train_embeddings = encode_texts(model, train_texts, "query", batch_size, index.normalized, show_progress_bar)
    lexical_texts = None
    if lexical:
        same = train_texts is not None and lexical_mode == query_mode
        lexical_texts = train_texts if same else xmc.query_texts("train", lexical_mode)
    # fitted on every training query: the held-out slice below (no validation split) shares the idf, not its rows
    own_mode = lexical_mode if lexical_mode != query_mode else None  # the embedded texts need no second mode
    words = LexicalNeighbours.fit(lexical_texts, text_mode=own_mode) if lexical else None
    full = RetrievalMemory(
        train_embeddings, train_matrix, normalized=index.normalized, dtype=index.dtype, lexical=words
    )
    guard = parse_guard(guard)
    selection = parse_selection_metric(metric) + (parse_selection_metric(guard) if guard else [])
    if inv_propensity is None and any(name.startswith("ps") for name, _ in selection):
        inv_propensity = xmc.inv_propensity()
    split = split or ("validation" if "validation" in xmc.label_matrices else None)
    if split is not None:
        if split not in xmc.label_matrices:
            raise ValueError(f"dataset has no split {split!r}; splits: {sorted(xmc.label_matrices)}")
        val_texts = xmc.query_texts(split, query_mode)
        val_emb = encode_texts(model, val_texts, "query", batch_size, index.normalized, show_progress_bar)
        result = grid_search(
            index,
            full,
            val_emb,
            xmc.label_matrices[split],
            metric,
            grid,
            inv_propensity,
            exclude=(xmc.filters or {}).get(split),
            split=split,
            show_progress_bar=show_progress_bar,
            guard=guard,
            guard_margin=guard_margin,
            query_texts=xmc.query_texts(split, lexical_mode) if lexical else None,
        )
    else:
        n = len(full)
        size = int(round(holdout * n)) if isinstance(holdout, float) and holdout < 1 else int(holdout)
        if not 0 < size < n:
            raise ValueError(f"holdout={holdout!r} must leave queries on both sides of {n} training queries")
        rng = np.random.default_rng(seed)
        held = np.zeros(n, dtype=bool)
        held[rng.choice(n, size=size, replace=False)] = True
        has_labels = np.diff(train_matrix.indptr) > 0
        val_rows = np.flatnonzero(held & has_labels)
        result = grid_search(
            index,
            full.select(np.flatnonzero(~held)),
            full.embeddings[torch.from_numpy(val_rows)].float(),
            train_matrix[val_rows],
            metric,
            grid,
            inv_propensity,
            split=f"train slice ({size} of {n} queries, seed {seed}, left out of the memory while tuning)",
            show_progress_bar=show_progress_bar,
            guard=guard,
            guard_margin=guard_margin,
            query_texts=[lexical_texts[i] for i in val_rows] if lexical else None,
        )
    full.set_params(result.lam, result.k, result.temperature, result.agreement)
    if lexical and result.lexical_weight:
        full.set_lexical_params(result.lexical_weight, result.lexical_k, result.lexical_temperature)
    full.tuning = result.as_dict()
    logger.info(
        f"retrieval: λ={result.lam}, k={result.k}, T={result.temperature}, agreement={result.agreement}, "
        f"lexical_weight={result.lexical_weight} ({metric} {100 * result.value:.2f} vs "
        f"{100 * result.baseline:.2f} for the dual encoder alone, on {result.split})"
    )
    index.memory = full
    return full
