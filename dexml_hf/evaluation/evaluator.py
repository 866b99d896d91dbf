"""``XMCEvaluator``: exact top-k over all labels, XMC metrics, usable as a SentenceTransformerTrainer evaluator."""

from __future__ import annotations

import copy
import csv
import logging
import os
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator

from dexml_hf.evaluation.metrics import xmc_metrics
from dexml_hf.index import LabelIndex, encode_texts, resolve_normalize

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from dexml_hf.retrieval import RetrievalMemory

logger = logging.getLogger(__name__)

__all__ = ["XMCEvaluator"]


class XMCEvaluator(BaseEvaluator):
    """Embeds every label and every query, takes each query's exact top-k labels by inner product (filtered pairs
    removed first) and reports precision / nDCG / recall / MRR at ``ks`` (and PSP / PSnDCG with propensities).

    Embeddings follow the model: its ``query`` / ``label`` prompts when it defines them, its max length, and
    L2 normalisation when its similarity is cosine (see :func:`dexml_hf.index.resolve_normalize`).

    Args:
        queries: query texts, one per row of ``truth``.
        label_texts: label texts, one per column of ``truth``.
        truth: ``(n_queries, n_labels)`` sparse matrix of true labels.
        filters: ``(m, 2)`` ``(query_row, label_id)`` pairs removed from the rankings before top-k.
        inv_propensity: per-label inverse propensities (adds ``psp@k`` and ``psndcg@k``).
        ks: cut-offs; ``recall@k`` / ``mrr@k`` are also reported at 10, 20, 50, 100 up to ``search_depth``.
        batch_size: encoding batch size.
        name: prefix of the returned keys (``<name>_precision@1``); the Trainer adds ``eval_``.
        primary_metric: metric used for model selection (``metric_for_best_model``), unprefixed.
        search_depth: how many labels to retrieve per query; default ``max(max(ks), 100)`` (capped at the label count).
        normalize: override the model-derived normalisation.
        show_progress_bar: progress bars while encoding.
        write_csv: append the metrics to ``<output_path>/XMC_evaluation_<name>_results.csv``.
        label_ids: external label identifiers kept in the index (display only).
        index: a ready :class:`~dexml_hf.index.LabelIndex` of these labels (e.g. ``LabelIndex.load`` of a saved
            model): its embeddings are used instead of encoding ``label_texts``, and its retrieval memory if it has
            one. Only valid for the model that built it.
        memory: a :class:`~dexml_hf.retrieval.RetrievalMemory`: rank by the retrieval-augmented fused score
            (its ``λ``, ``k``, ``T`` and label matrix); overrides the index's memory.
        memory_texts: the memory's query texts; when given, they are re-embedded with the evaluated model at every
            call (needed while training, where a memory embedded by an earlier model would be stale).
        lexical_queries: the queries' texts for a memory's lexical term when its rows are of another text mode than
            ``queries`` (:attr:`~dexml_hf.retrieval.RetrievalMemory.lexical_text_mode`, e.g. the full documents
            beside embedded titles); ``from_xmc_dataset(lexical_query_mode=...)`` reads them.

    Example::

        evaluator = XMCEvaluator(test_queries, label_texts, Y_test, name="eurlex")
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=rows, loss=loss,
                                             evaluator=evaluator)  # metric_for_best_model="eurlex_precision@1"
    """

    def __init__(
        self,
        queries: Sequence[str],
        label_texts: Sequence[str],
        truth,
        filters: np.ndarray | None = None,
        inv_propensity: np.ndarray | None = None,
        ks: Iterable[int] = (1, 3, 5),
        batch_size: int = 64,
        name: str = "",
        primary_metric: str = "precision@1",
        search_depth: int | None = None,
        normalize: bool | None = None,
        show_progress_bar: bool | None = None,
        write_csv: bool = True,
        label_ids: Sequence[Any] | None = None,
        index=None,
        memory: RetrievalMemory | None = None,
        memory_texts: Sequence[str] | None = None,
        lexical_queries: Sequence[str] | None = None,
    ):
        super().__init__()
        self.queries = list(queries)
        self.lexical_queries = None if lexical_queries is None else list(lexical_queries)
        if self.lexical_queries is not None and len(self.lexical_queries) != len(self.queries):
            raise ValueError(f"{len(self.lexical_queries)} lexical_queries for {len(self.queries)} queries")
        self.label_texts = list(label_texts)
        truth = sp.csr_matrix(truth)
        if truth.shape != (len(self.queries), len(self.label_texts)):
            raise ValueError(
                f"truth has shape {truth.shape} but there are {len(self.queries)} queries and "
                f"{len(self.label_texts)} label texts"
            )
        self.truth = truth
        self.filters = None if filters is None or len(filters) == 0 else np.asarray(filters, dtype=np.int64)
        if self.filters is not None and (self.filters.ndim != 2 or self.filters.shape[1] != 2):
            raise ValueError(f"filters must be (m, 2) (query_row, label_id) pairs, got shape {self.filters.shape}")
        self.inv_propensity = None if inv_propensity is None else np.asarray(inv_propensity, dtype=np.float64)
        if self.inv_propensity is not None and len(self.inv_propensity) != len(self.label_texts):
            raise ValueError(
                f"inv_propensity has {len(self.inv_propensity)} entries for {len(self.label_texts)} labels"
            )
        self.ks = tuple(sorted({int(k) for k in ks}))
        if not self.ks or self.ks[0] < 1:
            raise ValueError(f"ks must be positive integers, got {ks}")
        n_labels = len(self.label_texts)
        self.search_depth = min(n_labels, search_depth or max(self.ks[-1], 100))
        if self.search_depth < self.ks[-1]:
            raise ValueError(f"search_depth {self.search_depth} is below the largest k {self.ks[-1]}")
        self.batch_size = batch_size
        self.name = name
        self.normalize = normalize
        self.show_progress_bar = show_progress_bar
        self.write_csv = write_csv
        self.label_ids = label_ids
        if index is not None and len(index) != n_labels:
            raise ValueError(f"index has {len(index)} labels but there are {n_labels} label texts")
        self.index = index
        self.memory = memory
        self.memory_texts = None if memory_texts is None else list(memory_texts)
        if self.memory_texts is not None:
            if memory is None:
                raise ValueError("memory_texts needs memory (its label matrix and λ, k, T)")
            if len(self.memory_texts) != len(memory):
                raise ValueError(f"memory_texts has {len(self.memory_texts)} texts for a memory of {len(memory)}")
        if memory is not None and memory.num_labels != n_labels:
            raise ValueError(f"memory has {memory.num_labels} labels but there are {n_labels} label texts")
        self.primary_metric = primary_metric
        self.greater_is_better = True
        self.metrics: dict[str, float] = {}
        self.csv_file = f"XMC_evaluation_{name}_results.csv" if name else "XMC_evaluation_results.csv"

    @classmethod
    def from_xmc_dataset(
        cls,
        dataset,
        split: str = "test",
        query_mode: str | None = None,
        label_mode: str | None = None,
        propensity: bool = True,
        max_queries: int | None = None,
        lexical_query_mode: str | None = None,
        **kwargs,
    ) -> XMCEvaluator:
        """Build from an :class:`~dexml_hf.data.XMCDataset` split: its query and label texts, label matrix,
        reciprocal-pair filters and (with ``propensity``) the inverse propensities of its family.
        ``max_queries`` keeps the first queries only (a quick evaluation during training); ``lexical_query_mode``
        the text mode of ``lexical_queries`` (a memory whose lexical rows are of that mode)."""
        if split not in dataset.label_matrices:
            raise ValueError(f"dataset has no split {split!r}; splits: {sorted(dataset.label_matrices)}")
        if propensity and "inv_propensity" not in kwargs and "train" in dataset.label_matrices:
            kwargs["inv_propensity"] = dataset.inv_propensity()  # of the whole training split
        dataset = dataset.head(split, max_queries)
        queries = list(dataset.query_texts(split) if query_mode is None else dataset.query_texts(split, query_mode))
        labels = list(dataset.label_texts() if label_mode is None else dataset.label_texts(label_mode))
        truth = sp.csr_matrix(dataset.label_matrices[split])
        filters = dataset.filters.get(split)
        if lexical_query_mode is not None:
            kwargs["lexical_queries"] = list(dataset.query_texts(split, lexical_query_mode))
        kwargs.setdefault("name", getattr(dataset, "name", None) or split)
        return cls(queries, labels, truth, filters=filters, **kwargs)

    def compute_topk(self, model: SentenceTransformer) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of the top ``search_depth`` labels of every query (filters removed); retrieval-augmented
        (fused scores) when a memory is given or the given index has one."""
        if self.index is not None:
            index, normalized = copy.copy(self.index), self.index.normalized
        else:
            normalized = resolve_normalize(model, self.normalize)
            index = LabelIndex.from_texts(
                model,
                self.label_texts,
                label_ids=self.label_ids,
                batch_size=self.batch_size,
                normalize=normalized,
                show_progress_bar=self.show_progress_bar,
            )
        memory = self.memory if self.memory is not None else index.memory
        if self.memory_texts is not None:
            from dexml_hf.retrieval import RetrievalMemory

            memory = RetrievalMemory(
                encode_texts(model, self.memory_texts, "query", self.batch_size, normalized, self.show_progress_bar),
                self.memory.label_matrix,
                self.memory.lam,
                self.memory.k,
                self.memory.temperature,
                normalized=normalized,
                agreement=self.memory.agreement,
                lexical=self.memory.lexical,
                lexical_weight=self.memory.lexical_weight,
                lexical_k=self.memory.lexical_k,
                lexical_temperature=self.memory.lexical_temperature,
            )
        index.attach_memory(memory)
        query_emb = encode_texts(model, self.queries, "query", self.batch_size, normalized, self.show_progress_bar)
        return index.search(query_emb, self.search_depth, exclude=self.filters, texts=self.search_texts(memory))

    def search_texts(self, memory: RetrievalMemory | None) -> list[str]:
        """The texts of a search's lexical term: ``lexical_queries`` when given, else ``queries``; a memory whose
        lexical rows are of another text mode is refused without ``lexical_queries`` (its term would compare the
        wrong texts)."""
        if self.lexical_queries is not None:
            return self.lexical_queries
        mode = None if memory is None else memory.lexical_text_mode
        if mode is not None:
            raise ValueError(
                f"the retrieval memory's lexical neighbours are {mode!r} texts: give this evaluator the queries' "
                f"{mode!r} texts (lexical_queries, or from_xmc_dataset(lexical_query_mode={mode!r}))"
            )
        return self.queries

    def compute_metrics(self, topk: np.ndarray) -> dict[str, float]:
        return xmc_metrics(topk, self.truth, ks=self.ks, inv_propensity=self.inv_propensity)

    def __call__(
        self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1, steps: int = -1
    ) -> dict[str, float]:
        where = (
            ""
            if epoch == -1
            else (f" after epoch {epoch}" if steps == -1 else f" in epoch {epoch} after {steps} steps")
        )
        logger.info(f"XMC evaluation of the model on the {self.name or 'given'} dataset{where}:")
        _, ids = self.compute_topk(model)
        raw = self.compute_metrics(ids)
        for key, value in raw.items():
            logger.info(f"  {key:>14}: {100 * value:.2f}")
        if output_path is not None and self.write_csv:
            self._append_csv(output_path, raw, epoch, steps)
        metrics = self.prefix_name_to_metrics(raw, self.name)
        self.metrics = metrics
        self.store_metrics_in_model_card_data(model, metrics, epoch, steps)
        return metrics

    def _append_csv(self, output_path: str, metrics: dict[str, float], epoch: int, steps: int) -> None:
        os.makedirs(output_path, exist_ok=True)
        path = os.path.join(output_path, self.csv_file)
        new = not os.path.isfile(path)
        with open(path, "a", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["epoch", "steps", *metrics])
            writer.writerow([epoch, steps, *metrics.values()])

    @property
    def description(self) -> str:
        return "Extreme Multi-Label Classification"

    def get_config_dict(self) -> dict[str, Any]:
        config: dict[str, Any] = {"ks": list(self.ks), "search_depth": self.search_depth}
        if self.filters is not None:
            config["filtered_pairs"] = int(len(self.filters))
        if self.inv_propensity is not None:
            config["propensity_scored"] = True
        memory = self.memory if self.memory is not None else getattr(self.index, "memory", None)
        if memory is not None:
            config["retrieval"] = {"lam": memory.lam, "k": memory.k, "temperature": memory.temperature}
        return config
