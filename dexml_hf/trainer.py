"""DEXMLTrainer: the sentence-transformers Trainer with DEXML's negatives strategies, through its hooks only.

- the training rows: the Trainer sees a fixed-length table of row numbers
  (:class:`~dexml_hf.negatives.epoch_rows.EpochRowsDataset`) whose DataLoader keys carry the epoch, so the rows
  (a fresh, seeded positive draw per epoch, plus the epoch's mined hard negatives) are built right in any
  DataLoader worker, persistent or not;
- ``get_batch_sampler``: :class:`~dexml_hf.negatives.sampler.NoDuplicateLabelsBatchSampler`, a pure function of
  ``(seed, epoch)`` so a resumed run replays the same order;
- ``compute_loss``: in-batch / hard go through the loss; 'all' through the two-pass all-label loss; 'all_cached'
  scores the batch against a label-embedding cache;
- a callback refreshes the per-epoch state (positives, mining); ``_save_checkpoint`` adds the mined shortlists and
  the label cache (safetensors + JSON, nothing pickled) and a completion marker to each checkpoint before it is
  pushed or rotated (:mod:`dexml_hf.checkpoints`), so ``train(resume_from_checkpoint=...)`` continues exactly and
  never from a half-written checkpoint;
- callbacks do the rest: :class:`~dexml_hf.split_evaluation.TestSplitCallback` evaluates the test split before
  (optionally) and after training and keeps the final label index, which ``save_model`` writes beside the model
  with ``eval_results.json``; :class:`~dexml_hf.model_card.DEXMLModelCardCallback` fills the DEXML card with the
  XMC metrics; ``push_to_hub`` publishes all of it. Multi-process checks live in :mod:`dexml_hf.parallel`.
  A ``hub_token`` is taken out of the arguments at construction, so no file ever holds it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import datasets
import numpy as np
from sentence_transformers.base.sampler import BatchSamplers, NoDuplicatesBatchSampler
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from dexml_hf import checkpoints
from dexml_hf.checkpoints import EXTRA_FILES, NegativesState
from dexml_hf.errors import DataError, UsageError
from dexml_hf.hub import hub_token_in_environment
from dexml_hf.losses.base import XMCLoss
from dexml_hf.model_card import DEXMLModelCardCallback, DEXMLModelCardData
from dexml_hf.model_options import prompt_for, training_prompts, training_text_columns, validate_for_training
from dexml_hf.negatives.all_labels import AllLabelsLoss
from dexml_hf.negatives.epoch_rows import ROWS_FOLDER, EpochKeysBatchSampler, EpochRows, EpochRowsDataset
from dexml_hf.negatives.hard_negatives import mine_shortlists, sample_from_shortlists
from dexml_hf.negatives.label_cache import LabelEmbeddingCache
from dexml_hf.negatives.sampler import NoDuplicateLabelsBatchSampler
from dexml_hf.parallel import freeze_unused_poolers, refuse_unsynchronised_processes
from dexml_hf.split_evaluation import TestSplitCallback, build_split_evaluator, evaluate_split, write_eval_results
from dexml_hf.training_args import DEXMLTrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["DEXMLTrainer"]


class _EpochState(TrainerCallback):
    """Sets the trainer's epoch (mining, positive draw) at each epoch start; saves the negatives state."""

    def __init__(self, trainer: DEXMLTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._begin_epoch(int(math.floor(state.epoch + 1e-6)))

    def on_train_end(self, args, state, control, **kwargs):
        if self.trainer._rows is not None:
            self.trainer._rows.close()  # the per-epoch negatives files handed to the DataLoader workers


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
        loss: defaults to ``args.loss`` built by :func:`dexml_hf.factory.build_loss` (scale 1/τ, the training label
            matrix so other positives of a query are never its negatives, the global batch across processes).

    With ``args.test_split`` the split is evaluated after training (and before, with ``evaluate_untrained``):
    ``trainer.test_metrics``, the card's metric table and ``model-index``, and the label index that
    ``save_model()`` writes to ``label_index/`` beside the model.

    Example::

        from dexml_hf import DEXMLTrainer, DEXMLTrainingArguments
        from dexml_hf.data.synthetic import generate_synthetic_xmc
        xmc = generate_synthetic_xmc()
        args = DEXMLTrainingArguments("out", negatives="all", label_chunk_size=1024, num_train_epochs=1,
                                      test_split="test")
        trainer = DEXMLTrainer(model=model, args=args, train_dataset=xmc)
        trainer.train()
        trainer.save_model()  # model, label_index/, README.md (the DEXML card), eval_results.json
    """

    training_args_class = DEXMLTrainingArguments
    model_card_callback_class = DEXMLModelCardCallback

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
            raise UsageError(f"args must be DEXMLTrainingArguments, got {type(args).__name__}")
        args._validate_dexml_fields()
        refuse_unsynchronised_processes(args)
        # The token authenticates uploads only: out of the arguments before anything can serialise them.
        self._hub_token, args.hub_token = args.hub_token, None
        self.xmc: XMCDataset | None = train_dataset if isinstance(train_dataset, XMCDataset) else None
        # evaluation, propensities and the card use the dataset as given; training may add label-text rows
        self.source_xmc: XMCDataset | None = self.xmc
        if args.augment_with_label_texts:
            if self.xmc is None:
                raise UsageError("augment_with_label_texts needs an XMCDataset as train_dataset (its label texts)")
            from dexml_hf.data.augment import augment_with_label_texts

            self.xmc = augment_with_label_texts(
                self.xmc, args.label_cooccurrence_top, args.label_text_mode, query_text_mode=args.query_text_mode
            )
        self.epoch = 0
        self._shortlists: np.ndarray | None = None
        self._shortlist_epoch: int | None = None
        self._rows: EpochRows | None = None
        self._cache: LabelEmbeddingCache | None = None
        self._label_texts: list[str] | None = None
        self.test_metrics: dict[str, float] | None = None
        self.baseline_metrics: dict[str, float] | None = None
        self.dual_encoder_metrics: dict[str, float] | None = None  # test metrics without the retrieval memory
        self.label_index = None

        if self.xmc is not None:
            self._validate_xmc(self.xmc, args)
            self.train_matrix = self.xmc.label_matrices["train"]
            self._label_texts = self.xmc.label_texts(args.label_text_mode)
            self._query_texts = self.xmc.query_texts("train", args.query_text_mode)
            self._rows = EpochRows(
                self.xmc,
                seed=args.seed,
                sampling=args.positive_sampling,
                query_text=args.query_text_mode,
                label_text=args.label_text_mode,
                negatives_from_epoch=args.hard_negatives_start_epoch if args.negatives == "hard" else None,
                columns=("query", "label") if args.negatives == "all" else None,  # 'all' embeds label chunks itself
                store=Path(args.output_dir) / ROWS_FOLDER if args.dataloader_num_workers > 0 else None,
                process_index=args.process_index,
            )
            train_dataset = EpochRowsDataset.create(self._rows)
        else:
            if args.negatives != "in_batch":
                raise UsageError(
                    f"negatives={args.negatives!r} needs the label texts: pass an XMCDataset as train_dataset"
                )
            if args.test_split:
                raise UsageError("test_split needs an XMCDataset as train_dataset (its split is evaluated)")
            if train_dataset is not None and "label" not in train_dataset.column_names:
                raise UsageError(
                    "train_dataset has no 'label' column ([query_id, positive_id, ...]); see architecture.md"
                )
            self.train_matrix = None
        if args.test_split and args.test_split not in self.xmc.splits:
            raise UsageError(f"test_split={args.test_split!r} is not a split of the dataset ({self.xmc.splits})")

        eval_xmc, eval_split = self._resolve_eval(eval_dataset)
        if evaluator is None and eval_xmc is not None:
            evaluator = build_split_evaluator(eval_xmc, eval_split, args)
        if eval_xmc is not None:
            eval_dataset = None
        if evaluator is not None and args.metric_for_best_model == "precision@1" and getattr(evaluator, "name", ""):
            args.metric_for_best_model = f"{evaluator.name}_precision@1"

        if isinstance(loss, XMCLoss) and self.train_matrix is not None and loss.label_matrix is None:
            loss.set_label_matrix(self.train_matrix)
        if model is not None and args.world_size > 1 and args.ddp_find_unused_parameters is False:
            freeze_unused_poolers(model)
        # training rows get the prompts the index, evaluation and mining encode with (model_options)
        self._training_prompts = {}
        if model is not None:
            columns = training_text_columns(args, train_dataset, self.xmc)
            self._training_prompts = training_prompts(model, columns, args.prompts)
        if model is not None and not isinstance(model.model_card_data, DEXMLModelCardData):
            model.model_card_data = DEXMLModelCardData.from_card_data(model.model_card_data)
            model.model_card_data.register_model(model)

        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            loss=loss,
            evaluator=evaluator,
            **kwargs,
        )
        if self.model is not None:
            validate_for_training(self.model, args, self.loss, self.xmc.num_labels if self.xmc is not None else None)
        self._check_loss_for_mode()
        self.add_callback(_EpochState(self))
        self.add_callback(TestSplitCallback(self))
        self.add_callback(self.pop_callback(DEXMLModelCardCallback))  # last: it cards what the others produced
        if args.negatives == "all_cached":
            self._cache = LabelEmbeddingCache(
                self._label_texts, args.label_refresh_steps, args.encode_batch_size, max_length=args.max_length
            )

    def get_default_loss(self, model):
        """``args.loss`` from the factory: scale 1/τ, the training label matrix, the global batch across ranks."""
        from dexml_hf.factory import build_loss

        args = self.args
        return build_loss(
            args.loss,
            model,
            temperature=args.temperature,
            label_matrix=self.train_matrix,
            world_size=args.world_size,
            k=args.topk_k,
            alpha=args.topk_alpha,
            logq_correction=args.logq_correction,
        )

    def get_data_collator(self, model, args, processing_class=None):
        """Upstream collator with the model's prompts on the training columns (``model_options.training_prompts``)."""
        collator = super().get_data_collator(model=model, args=args, processing_class=processing_class)
        collator.prompts = self._training_prompts
        return collator

    def get_optimizer_cls_and_kwargs(self, args, model=None):
        """Upstream optimiser; with ``scale_lr_with_world_size`` every rate times the world size (the reference)."""
        optimizer_cls, kwargs = super().get_optimizer_cls_and_kwargs(args, model)
        if args.scale_lr_with_world_size and args.world_size > 1:
            kwargs["lr"] = kwargs.get("lr", args.learning_rate) * args.world_size
            for group in kwargs.get("optimizer_dict", []):
                if "lr" in group:
                    group["lr"] *= args.world_size
        return optimizer_cls, kwargs

    def _check_loss_for_mode(self) -> None:
        mode = self.args.negatives
        if mode in ("all", "all_cached") and getattr(self.loss, "logq_correction", False):
            raise UsageError(
                f"logq_correction corrects the sampling bias of in-batch negatives; negatives={mode!r} "
                "already scores every label, so turn it off"
            )
        if mode in ("all", "all_cached") and not isinstance(self.loss, XMCLoss):
            raise UsageError(f"negatives={mode!r} needs a dexml_hf loss, got {type(self.loss).__name__}")
        if mode == "all" and getattr(self.loss, "all_labels_objective", None) is None:
            raise UsageError(
                f"negatives='all' has no exact chunked form of {type(self.loss).__name__}; use negatives='all_cached'"
            )

    # ------------------------------------------------------------------ validation and evaluation
    @staticmethod
    def _validate_xmc(xmc, args: DEXMLTrainingArguments) -> None:
        if "train" not in xmc.label_matrices:
            raise DataError(f"the XMCDataset has no 'train' split (splits: {xmc.splits})")
        matrix = xmc.label_matrices["train"]
        if matrix.shape[1] != xmc.num_labels:
            raise DataError(
                f"train label matrix has {matrix.shape[1]} label columns but the label table has {xmc.num_labels} rows"
            )
        if matrix.nnz == 0:
            raise DataError("the train label matrix is empty: no query has a positive label, nothing to train on")
        args.validate_for_xmc_dataset()
        if args.negatives == "hard" and args.shortlist_size > xmc.num_labels:
            raise UsageError(f"shortlist_size={args.shortlist_size} exceeds the number of labels ({xmc.num_labels})")

    def _resolve_eval(self, eval_dataset):
        from dexml_hf.data import XMCDataset

        if isinstance(eval_dataset, XMCDataset):
            if "validation" not in eval_dataset.splits:
                raise UsageError(
                    "eval_dataset has no 'validation' split, and evaluating during training must not select on "
                    "test: carve one from train (XMCDataset.carve_validation / --num_val_points), or name a split "
                    "explicitly (eval_dataset='test' if that is really what you want)"
                )
            return eval_dataset, "validation"
        if isinstance(eval_dataset, str):
            if self.xmc is None or eval_dataset not in self.xmc.splits:
                raise UsageError(f"eval_dataset={eval_dataset!r} is not a split of the training XMCDataset")
            return self.source_xmc, eval_dataset
        return None, None

    def evaluate_test(self, build_index: bool = True) -> dict[str, float]:
        """Exact top-k of ``args.test_split`` with the current model (:func:`~dexml_hf.split_evaluation.evaluate_split`);
        with ``build_index`` keeps the label index (and its tuned retrieval memory) and the plain dual-encoder metrics
        in ``self.dual_encoder_metrics``."""
        bars = not self.args.disable_tqdm and self.is_world_process_zero()  # minutes on CPU: show it, once
        result = evaluate_split(self.model, self.source_xmc, self.args, build_index, show_progress_bar=bars)
        if build_index:
            self.label_index = result.index
            if result.dual_encoder_metrics is not None:
                self.dual_encoder_metrics = result.dual_encoder_metrics
        return result.metrics

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
                    process_index=args.process_index,
                    num_processes=args.world_size,
                )
                self._shortlist_epoch = epoch
        rng = np.random.default_rng([args.seed, epoch, 11])
        negatives = sample_from_shortlists(self._shortlists, args.num_hard_negatives, self.xmc.num_labels, rng)
        self._rows.set_negatives(epoch, negatives)  # before the epoch's DataLoader iterator (and its workers) starts

    def training_view(self, epoch: int) -> datasets.Dataset:
        """The rows of ``epoch``: a new seeded positive per query, hard-negative columns once mined for it."""
        return self._rows.view(epoch, required=False)

    def _positive_ids(self, epoch: int) -> np.ndarray:
        return self._rows.positives(epoch)[1]

    def get_batch_sampler(self, dataset, batch_size, drop_last, valid_label_columns=None, generator=None, seed=0):
        """Seeded per-epoch order; with an XMCDataset, no sampled positive label twice in a batch (if asked)."""
        if not isinstance(dataset, EpochRowsDataset):  # ready-made rows, or an eval/test dataset: upstream's
            training_rows = self.xmc is None and dataset is self.train_dataset
            if (
                training_rows
                and self.args.avoid_duplicate_labels_in_batch
                and self.args.batch_sampler == BatchSamplers.BATCH_SAMPLER
            ):
                # ready-made rows: the same promise through upstream's sampler (no text, so no positive, twice)
                return NoDuplicatesBatchSampler(
                    dataset, batch_size, drop_last, valid_label_columns, generator=generator, seed=seed
                )
            return super().get_batch_sampler(dataset, batch_size, drop_last, valid_label_columns, generator, seed)
        rows = NoDuplicateLabelsBatchSampler(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            positive_ids=self._positive_ids,
            epoch_of=lambda: self.epoch,
            avoid_duplicates=self.args.avoid_duplicate_labels_in_batch,
            seed=seed,
        )
        # the keys carry the epoch, so DataLoader workers (persistent or not) build that epoch's rows
        return EpochKeysBatchSampler(rows, len(dataset), epoch_of=lambda: self.epoch)

    # ------------------------------------------------------------------ losses per mode
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """'in_batch' / 'hard': the loss's own forward; 'all': its exact chunked engine over every label;
        'all_cached': its loss against the cached label table with the batch's positives re-embedded."""
        mode = self.args.negatives
        if mode in ("in_batch", "hard"):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        inputs.pop("dataset_name", None)
        features, labels = self.collect_features(inputs)
        if labels is None:
            raise UsageError(f"negatives={mode!r} needs the 'label' column [query_id, positive_id, ...]")
        query_ids, positive_ids = labels[:, 0], labels[:, 1]
        if mode == "all":
            loss = self._all_labels_engine(model)(features[0], positive_ids, query_ids=query_ids)
        else:
            queries = model(features[0])["sentence_embedding"]
            positives = model(features[1])["sentence_embedding"]
            # the table may come from a checkpoint read elsewhere: on the queries' device (a no-op once there)
            table = self._cache.get(self.model, self.state.global_step, queries.device).to(queries.device)
            loss = self.loss.compute_loss_against_labels(
                queries, table, query_ids, positive_ids, positive_embeddings=positives
            )
        return (loss, {}) if return_outputs else loss

    def _training_preprocess(self, texts, **kwargs):
        """The model's tokenisation of label chunks: its label prompt (as the index encodes them), at the training
        token limit ``args.max_length`` when set."""
        if self.args.max_length is not None:
            kwargs.setdefault("max_length", self.args.max_length)
        kwargs.setdefault("prompt", prompt_for(self.model, "label"))
        return self.model.preprocess(texts, **kwargs)

    def _all_labels_engine(self, model) -> AllLabelsLoss:
        world = self.args.world_size
        return self.loss.all_labels_engine(
            model,
            self._label_texts,
            self._training_preprocess,
            label_chunk_size=self.args.label_chunk_size,
            mini_batch_size=self.args.label_mini_batch_size,
            ddp_grad_factor=float(world) if world > 1 else 1.0,
        )

    # ------------------------------------------------------------------ saving and the Hub
    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The model and its card; into ``args.output_dir`` also the final label index and ``eval_results.json``."""
        card = getattr(self.model, "model_card_data", None)
        if isinstance(card, DEXMLModelCardData):  # the card tells of the label index saved beside the model
            card.set_label_index(self.label_index)
        super().save_model(output_dir, _internal_call=_internal_call)
        target = Path(output_dir or self.args.output_dir)
        if self.is_world_process_zero() and target.resolve() == Path(self.args.output_dir).resolve():
            write_eval_results(self, target)

    def init_hf_repo(self, token: str | None = None, private: bool | None = None) -> None:
        super().init_hf_repo(token=token or self._hub_token, private=private)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token=None, **kw):
        """One commit with the model, ``label_index/``, the DEXML card and ``eval_results.json``."""
        return super().push_to_hub(
            commit_message=commit_message, blocking=blocking, token=token or self._hub_token, **kw
        )

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # The upstream checkpoint push reads args.hub_token, which stays None: lend the token to the Hub client
        # through its environment variable for the duration of the (awaited) upload, never to the arguments.
        with hub_token_in_environment(self._hub_token):
            super()._push_from_checkpoint(checkpoint_folder)
            self._finish_current_push()

    def _checkpoint_push_skip_names(self, checkpoint_folder: str) -> set[str]:
        """The checkpoint extras go to ``last-checkpoint/`` with the checkpoint, never to the model repo's root."""
        return super()._checkpoint_push_skip_names(checkpoint_folder) | EXTRA_FILES

    # ------------------------------------------------------------------ checkpoints and resume
    def _save_checkpoint(self, model, trial) -> None:
        """Upstream's checkpoint files, then the negatives state and the completion marker (last), and only then
        the push (``hub_strategy``) and the rotation (``save_total_limit``) that upstream would do before them."""
        run_dir = self._get_output_dir(trial=trial)
        folder = Path(run_dir) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            checkpoints.unmark(folder)
        with checkpoints.upstream_push_and_rotation_held(self.args, folder if self.args.should_save else None):
            super()._save_checkpoint(model, trial)
        if self.args.should_save:
            checkpoints.save_negatives_state(folder, self._negatives_state())
            checkpoints.mark_complete(folder, self.state.global_step)
        if self.args.push_to_hub:
            self._push_from_checkpoint(str(folder))
        if self.args.should_save:
            checkpoints.rotate_checkpoints(
                run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, current=folder
            )

    def _negatives_state(self) -> NegativesState:
        cache = self._cache
        return NegativesState(
            shortlists=self._shortlists,
            shortlist_epoch=self._shortlist_epoch,
            cache_embeddings=cache.embeddings if cache is not None else None,
            cache_step=cache.step if cache is not None else None,
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Upstream ``train``; ``resume_from_checkpoint=True`` takes the last *complete* checkpoint in output_dir."""
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            resume_from_checkpoint = self._checkpoint_to_resume(resume_from_checkpoint)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        finally:  # the per-epoch negatives files for DataLoader workers, also when training fails
            if self._rows is not None:
                self._rows.close()

    def _checkpoint_to_resume(self, resume: str | bool) -> str:
        return checkpoints.checkpoint_to_resume(self.args.output_dir, resume)

    def _load_from_checkpoint(self, checkpoint_path: str) -> None:
        """Upstream's model weights, then the negatives state, its cache on the model's device."""
        super()._load_from_checkpoint(checkpoint_path)
        state = checkpoints.load_negatives_state(checkpoint_path, device=self.model.device)
        if self.args.negatives == "hard" and state.shortlists is not None:
            self._shortlists, self._shortlist_epoch = state.shortlists, state.shortlist_epoch
        if self._cache is not None and state.cache_embeddings is not None:
            self._cache.load_state_dict({"embeddings": state.cache_embeddings, "step": state.cache_step})
