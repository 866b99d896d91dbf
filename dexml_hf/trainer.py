"""DEXMLTrainer: the sentence-transformers Trainer with DEXML's negatives strategies, through its hooks only.

- ``get_train_dataset`` view: the Trainer sees a fixed-length table of row numbers whose transform reads the
  current epoch's training view (a fresh, seeded positive draw per epoch, plus mined hard negatives);
- ``get_batch_sampler``: :class:`~dexml_hf.negatives.sampler.NoDuplicateLabelsBatchSampler`, a pure function of
  ``(seed, epoch)`` so a resumed run replays the same order;
- ``compute_loss``: in-batch / hard go through the loss; 'all' through the two-pass all-label loss; 'all_cached'
  scores the batch against a label-embedding cache;
- a callback refreshes the per-epoch state (positives, mining) and saves the mined shortlists and the label cache
  into each checkpoint, so ``train(resume_from_checkpoint=...)`` continues exactly.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import datasets
import numpy as np
import scipy.sparse as sp
import torch
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from transformers import TrainerCallback

from dexml_hf.negatives.all_labels import AllLabelsLoss
from dexml_hf.negatives.hard_negatives import mine_shortlists, sample_from_shortlists
from dexml_hf.negatives.label_cache import LabelEmbeddingCache
from dexml_hf.negatives.sampler import NoDuplicateLabelsBatchSampler
from dexml_hf.training_args import DEXMLTrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["DEXMLTrainer"]

NEGATIVES_STATE = "dexml_negatives.pt"


class _EpochState(TrainerCallback):
    """Sets the trainer's epoch (mining, positive draw) at each epoch start; saves the negatives state."""

    def __init__(self, trainer: DEXMLTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._begin_epoch(int(math.floor(state.epoch + 1e-6)))

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder) and self.trainer.is_world_process_zero():
            torch.save(self.trainer._negatives_state(), os.path.join(folder, NEGATIVES_STATE))


def _freeze_unused_poolers(model) -> list[str]:
    """Freeze the backbone poolers (BERT's ``pooler``) that the SentenceTransformer never reads; returns their names.

    DDP defaults. A SentenceTransformer is not a ``PreTrainedModel``, so the HF Trainer wraps it with
    ``find_unused_parameters=True``: DDP then searches each step's graph and tolerates parameters without a gradient,
    such as BERT's pooler (computed by ``BertModel.forward`` but ignored by mean/CLS pooling, which read
    ``last_hidden_state``). Every negatives mode works so (tests/trainer/test_trainer_ddp.py), including 'all', whose
    many replay backwards run under ``no_sync`` (safe with unused-parameter search since torch 2.4). With
    ``ddp_find_unused_parameters=False`` (no graph search, a little faster) DDP instead fails on the step after one
    where a trainable parameter got no gradient, so the trainer freezes those poolers first; their weights, never
    used, are saved unchanged.
    """
    frozen = []
    for prefix, module in model.named_modules():
        backbone = getattr(module, "model", None)
        pooler = getattr(backbone, "pooler", None)
        config = getattr(module, "modality_config", None)
        if not isinstance(pooler, torch.nn.Module) or not isinstance(config, dict):
            continue
        if any(isinstance(c, dict) and c.get("method_output_name") == "pooler_output" for c in config.values()):
            continue  # this backbone's embeddings come from its pooler: it is used
        for name, param in pooler.named_parameters():
            if param.requires_grad:
                param.requires_grad_(False)
                frozen.append(f"{prefix}.model.pooler.{name}".lstrip("."))
    if frozen:
        logger.info(f"ddp_find_unused_parameters=False: froze {len(frozen)} unused pooler parameters: {frozen}")
    return frozen


class DEXMLTrainer(SentenceTransformerTrainer):
    """Train a dual encoder for XMC (DEXML) with in-batch, all-label, cached all-label or hard negatives.

    Args:
        model: a SentenceTransformer (query and label encoder are shared).
        args: :class:`~dexml_hf.training_args.DEXMLTrainingArguments`.
        train_dataset: an :class:`~dexml_hf.data.XMCDataset` (its ``train`` split is used; the trainer draws a new
            positive per query every epoch), or ready-made training rows (``query, positive[, negative_i], label``)
            for the 'in_batch' mode.
        eval_dataset: an XMCDataset (its ``validation`` split, else ``test``) or a split name of ``train_dataset``;
            turned into an :class:`~dexml_hf.evaluation.XMCEvaluator` (P@k, nDCG@k, PSP@k) unless ``evaluator``.
        loss: defaults to :class:`~dexml_hf.losses.DecoupledSoftmaxLoss` with scale 1/τ and the training label
            matrix (so other positives of a query are never its negatives).

    Example::

        from dexml_hf import DEXMLTrainer, DEXMLTrainingArguments, load_xmc_dataset
        xmc = load_xmc_dataset("synthetic")
        args = DEXMLTrainingArguments("out", negatives="all", label_chunk_size=1024, num_train_epochs=1)
        DEXMLTrainer(model=model, args=args, train_dataset=xmc, eval_dataset="test").train()
    """

    training_args_class = DEXMLTrainingArguments

    def __init__(
        self,
        model=None,
        args: DEXMLTrainingArguments | None = None,
        train_dataset=None,
        eval_dataset=None,
        loss=None,
        evaluator=None,
        **kwargs,
    ):
        from dexml_hf.data import XMCDataset

        if args is None:
            args = DEXMLTrainingArguments(output_dir="tmp_trainer")
        if not isinstance(args, DEXMLTrainingArguments):
            raise ValueError(f"args must be DEXMLTrainingArguments, got {type(args).__name__}")
        args._validate_dexml_fields()
        self.xmc: XMCDataset | None = train_dataset if isinstance(train_dataset, XMCDataset) else None
        self.epoch = 0
        self._shortlists: np.ndarray | None = None
        self._negatives: np.ndarray | None = None
        self._view_epoch: int | None = None
        self._view: datasets.Dataset | None = None
        self._cache: LabelEmbeddingCache | None = None
        self._label_texts: list[str] | None = None

        if self.xmc is not None:
            self._validate_xmc(self.xmc, args)
            self.train_matrix = self.xmc.label_matrices["train"]
            self._label_texts = self.xmc.label_texts(args.label_text_mode)
            self._query_texts = self.xmc.query_texts("train", args.query_text_mode)
            self._query_ids, _ = self.xmc.sample_positives("train", 0, args.seed, args.positive_sampling)
            rows = datasets.Dataset.from_dict({"row": np.arange(len(self._query_ids))})
            rows.set_transform(self._rows_transform)
            train_dataset = rows
        else:
            if args.negatives != "in_batch":
                raise ValueError(
                    f"negatives={args.negatives!r} needs the label texts: pass an XMCDataset as train_dataset"
                )
            if train_dataset is not None and "label" not in train_dataset.column_names:
                raise ValueError(
                    "train_dataset has no 'label' column ([query_id, positive_id, ...]); see architecture.md"
                )
            self.train_matrix = None

        eval_xmc, eval_split = self._resolve_eval(eval_dataset)
        if evaluator is None and eval_xmc is not None:
            evaluator = self._make_evaluator(eval_xmc, eval_split, args)
        if eval_xmc is not None:
            eval_dataset = None
        if evaluator is not None and args.metric_for_best_model == "precision@1" and getattr(evaluator, "name", ""):
            args.metric_for_best_model = f"{evaluator.name}_precision@1"

        if loss is None:
            from dexml_hf.losses import DecoupledSoftmaxLoss

            # across ranks the batch is gathered, so in-batch negatives are those of the global batch
            loss = DecoupledSoftmaxLoss(
                model, scale=args.scale, label_matrix=self.train_matrix, gather_across_devices=args.world_size > 1
            )
        elif self.train_matrix is not None and getattr(loss, "label_matrix", "absent") is None:
            loss.set_label_matrix(self.train_matrix)
        if args.negatives in ("all", "all_cached") and getattr(loss, "logq_correction", False):
            raise ValueError(
                f"logq_correction corrects the sampling bias of in-batch negatives; negatives={args.negatives!r} "
                "already scores every label, so turn it off"
            )
        if args.negatives == "all" and type(loss).__name__ not in ("DecoupledSoftmaxLoss", "SoftmaxLoss"):
            raise ValueError(
                f"negatives='all' supports DecoupledSoftmaxLoss and SoftmaxLoss (exact chunked softmax); got "
                f"{type(loss).__name__}. Soft top-k needs every score at once: use negatives='all_cached' for it."
            )

        if model is not None and args.world_size > 1 and args.ddp_find_unused_parameters is False:
            _freeze_unused_poolers(model)

        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            loss=loss,
            evaluator=evaluator,
            **kwargs,
        )
        self.add_callback(_EpochState(self))
        self.model.model_card_data.add_tags(
            ["dexml", "extreme-multi-label-classification", f"negatives-{args.negatives}"]
        )
        if args.negatives == "all_cached":
            self._cache = LabelEmbeddingCache(self._label_texts, args.label_refresh_steps, args.encode_batch_size)

    # ------------------------------------------------------------------ validation and evaluation
    @staticmethod
    def _validate_xmc(xmc, args: DEXMLTrainingArguments) -> None:
        if "train" not in xmc.label_matrices:
            raise ValueError(f"the XMCDataset has no 'train' split (splits: {xmc.splits})")
        matrix = xmc.label_matrices["train"]
        if matrix.shape[1] != xmc.num_labels:
            raise ValueError(
                f"train label matrix has {matrix.shape[1]} label columns but the label table has {xmc.num_labels} rows"
            )
        if matrix.nnz == 0:
            raise ValueError("the train label matrix is empty: no query has a positive label, nothing to train on")
        if args.negatives == "hard" and args.shortlist_size > xmc.num_labels:
            raise ValueError(f"shortlist_size={args.shortlist_size} exceeds the number of labels ({xmc.num_labels})")

    def _resolve_eval(self, eval_dataset):
        from dexml_hf.data import XMCDataset

        if isinstance(eval_dataset, XMCDataset):
            split = "validation" if "validation" in eval_dataset.splits else "test"
            return eval_dataset, split
        if isinstance(eval_dataset, str):
            if self.xmc is None or eval_dataset not in self.xmc.splits:
                raise ValueError(f"eval_dataset={eval_dataset!r} is not a split of the training XMCDataset")
            return self.xmc, eval_dataset
        return None, None

    @staticmethod
    def _make_evaluator(xmc, split: str, args: DEXMLTrainingArguments):
        from dexml_hf.evaluation import XMCEvaluator

        queries = xmc.query_texts(split, args.query_text_mode)
        truth = xmc.label_matrices[split]
        filters = xmc.filters.get(split)
        if args.eval_max_queries is not None and args.eval_max_queries < len(queries):
            n = args.eval_max_queries
            queries, truth = queries[:n], truth[:n]
            if filters is not None:
                filters = filters[filters[:, 0] < n]
        return XMCEvaluator(
            queries,
            xmc.label_texts(args.label_text_mode),
            truth,
            filters=filters,
            inv_propensity=xmc.inv_propensity(),
            batch_size=args.encode_batch_size,
            name=split,
        )

    # ------------------------------------------------------------------ per-epoch training rows
    def _begin_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        args = self.args
        if self.xmc is None or args.negatives != "hard" or epoch < args.hard_negatives_start_epoch:
            return
        if (epoch - args.hard_negatives_start_epoch) % args.mining_interval == 0 or self._shortlists is None:
            if self._shortlists is None or getattr(self, "_shortlist_epoch", None) != epoch:
                logger.info(f"mining hard negatives for epoch {epoch}")
                self._shortlists = mine_shortlists(
                    self.model,
                    self._query_texts,
                    self._label_texts,
                    self.train_matrix,
                    args.shortlist_size,
                    batch_size=args.encode_batch_size,
                    label_chunk_size=args.label_chunk_size,
                    use_faiss=args.use_faiss,
                )
                self._shortlist_epoch = epoch
        rng = np.random.default_rng([args.seed, epoch, 11])
        self._negatives = sample_from_shortlists(self._shortlists, args.num_hard_negatives, self.xmc.num_labels, rng)
        self._view_epoch = None  # the view must pick up the new negatives

    def training_view(self, epoch: int) -> datasets.Dataset:
        """The rows of ``epoch``: a new seeded positive per query, hard-negative columns when mined."""
        if self._view_epoch != epoch:
            args = self.args
            use_negatives = args.negatives == "hard" and epoch >= args.hard_negatives_start_epoch
            self._view = self.xmc.training_view(
                epoch=epoch,
                seed=args.seed,
                sampling=args.positive_sampling,
                query_text=args.query_text_mode,
                label_text=args.label_text_mode,
                negatives=self._negatives if use_negatives else None,
            )
            self._view_epoch = epoch
        return self._view

    def _rows_transform(self, batch: dict[str, list]) -> dict[str, list]:
        return self.training_view(self.epoch)[list(batch["row"])]

    def _positive_ids(self, epoch: int) -> np.ndarray:
        _, label_ids = self.xmc.sample_positives("train", epoch, self.args.seed, self.args.positive_sampling)
        return label_ids

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        """Seeded per-epoch order; with an XMCDataset, no sampled positive label twice in a batch (if asked)."""
        if self.xmc is None:
            return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        return NoDuplicateLabelsBatchSampler(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            positive_ids=self._positive_ids,
            epoch_of=lambda: self.epoch,
            avoid_duplicates=self.args.avoid_duplicate_labels_in_batch,
            seed=seed,
        )

    # ------------------------------------------------------------------ losses per mode
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = self.args.negatives
        if mode in ("in_batch", "hard"):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs.pop("dataset_name", None)
        features, labels = self.collect_features(inputs)
        if labels is None:
            raise ValueError(f"negatives={mode!r} needs the 'label' column [query_id, positive_id, ...]")
        labels = labels.cpu()
        query_ids, positive_ids = labels[:, 0].numpy(), labels[:, 1]
        rows = self.train_matrix[query_ids]
        if mode == "all":
            loss = self._all_labels_engine(model)(features[0], positive_ids, rows)
        else:
            loss = self._all_cached_loss(model, features, query_ids, positive_ids, rows)
        return (loss, {}) if return_outputs else loss

    def _similarity_is_cosine(self) -> bool:
        from sentence_transformers.util import cos_sim

        return getattr(self.loss, "similarity_fct", cos_sim) is cos_sim

    def _all_labels_engine(self, model) -> AllLabelsLoss:
        world = self.args.world_size
        return AllLabelsLoss(
            model,
            self._label_texts,
            self.model.preprocess,
            scale=self.loss.scale,
            label_chunk_size=self.args.label_chunk_size,
            mini_batch_size=self.args.label_mini_batch_size,
            loss="softmax" if type(self.loss).__name__ == "SoftmaxLoss" else "decoupled_softmax",
            ddp_grad_factor=float(world) if world > 1 else 1.0,
            normalize=self._similarity_is_cosine(),
        )

    def _all_cached_loss(self, model, features, query_ids, positive_ids, rows: sp.csr_matrix) -> torch.Tensor:
        """Batch queries vs every label: cached embeddings (no grad), the batch's positives fresh (with grad)."""
        q = model(features[0])["sentence_embedding"]
        p = model(features[1])["sentence_embedding"]
        table = self._cache.get(self.model, self.state.global_step, q.device)
        candidates = table.to(p.dtype).index_put((positive_ids.to(q.device),), p)
        scores = self.loss.similarity_fct(q.float(), candidates.float()) * self.loss.scale
        positives = torch.zeros(scores.shape, dtype=torch.bool)
        coo = rows.tocoo()
        positives[torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)] = True
        positives[torch.arange(len(query_ids)), positive_ids] = True
        return self.loss.loss_fn(scores, positives.to(scores.device), reduction="mean")

    # ------------------------------------------------------------------ resume
    def _negatives_state(self) -> dict[str, Any]:
        return {
            "shortlists": self._shortlists,
            "shortlist_epoch": getattr(self, "_shortlist_epoch", None),
            "cache": self._cache.state_dict() if self._cache is not None else None,
        }

    def _load_from_checkpoint(self, checkpoint_path: str) -> None:
        super()._load_from_checkpoint(checkpoint_path)
        path = os.path.join(checkpoint_path, NEGATIVES_STATE)
        if os.path.isfile(path):
            state = torch.load(path, weights_only=False)
            self._shortlists = state["shortlists"]
            self._shortlist_epoch = state["shortlist_epoch"]
            if self._cache is not None and state["cache"] is not None:
                self._cache.load_state_dict(state["cache"])
