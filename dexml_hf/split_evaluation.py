"""The held-out split of a training run (``args.test_split``): evaluated before training (``evaluate_untrained``) and
after it, the final label index (with its tuned retrieval memory) kept, ``eval_results.json`` written.

:class:`TestSplitCallback` is the trainer's hook for it; :func:`evaluate_split` does the work and
:func:`build_split_evaluator` builds the evaluator with the final evaluation's settings, which the in-training
evaluator shares (so its PSP@k is the final one's). Under DDP every process evaluates (the same weights give the
same numbers; rank 0 alone saves and prints): a process that skipped it would sit in its next collective until
rank 0 is done, past ``ddp_timeout`` on a long split.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from dexml_hf.index import LabelIndex
    from dexml_hf.training_args import DEXMLTrainingArguments

logger = logging.getLogger(__name__)

__all__ = ["EVAL_RESULTS", "SplitEvaluation", "TestSplitCallback", "build_split_evaluator", "evaluate_split"]

EVAL_RESULTS = "eval_results.json"


def build_split_evaluator(xmc, split: str, args: DEXMLTrainingArguments, max_queries: int | None = None, **kwargs):
    """The evaluator of ``split`` with the final evaluation's settings: the args' propensity A, B over the
    dataset's training split and ``top_k`` labels a query; ``kwargs`` override them."""
    from dexml_hf.factory import build_evaluator

    if "inv_propensity" not in kwargs and "train" in xmc.label_matrices:
        kwargs["inv_propensity"] = xmc.inv_propensity(args.propensity_a, args.propensity_b)
    kwargs.setdefault("search_depth", args.top_k)
    return build_evaluator(
        xmc,
        split,
        query_text_mode=args.query_text_mode,
        label_text_mode=args.label_text_mode,
        max_queries=max_queries if max_queries is not None else args.eval_max_queries,
        batch_size=args.encode_batch_size,
        name=split,
        **kwargs,
    )


@dataclass
class SplitEvaluation:
    """What :func:`evaluate_split` found: the metrics (retrieval-augmented when a memory was tuned), the plain
    dual encoder's when it was, and the label index (``None`` unless asked for)."""

    metrics: dict[str, float]
    dual_encoder_metrics: dict[str, float] | None = None
    index: LabelIndex | None = None


def evaluate_split(model, xmc, args: DEXMLTrainingArguments, build_index: bool, show_progress_bar: bool):
    """Exact top-k of ``args.test_split`` over every label with ``model``.

    With ``build_index`` the label index is returned, and with ``args.retrieval_memory`` the training queries
    become its retrieval memory, λ, k and T chosen on validation data (:func:`~dexml_hf.retrieval.tune_retrieval`)."""
    from dexml_hf.index import LabelIndex

    lexical_mode = args.retrieval_lexical_text_mode if build_index and args.retrieval_memory else None
    evaluator = build_split_evaluator(
        xmc,
        args.test_split,
        args,
        max_queries=args.max_test_samples,
        search_depth=args.top_k,
        write_csv=False,
        lexical_query_mode=lexical_mode,
    )
    batch = args.encode_batch_size
    index = LabelIndex.from_texts(
        model,
        evaluator.label_texts,
        label_ids=xmc.labels["uid"],
        batch_size=batch,
        show_progress_bar=show_progress_bar,
    )
    queries = index.encode_queries(model, evaluator.queries, batch_size=batch, show_progress_bar=show_progress_bar)
    _, topk = index.search(queries, k=evaluator.search_depth, exclude=evaluator.filters, texts=evaluator.queries)
    result = SplitEvaluation(evaluator.compute_metrics(topk), index=index if build_index else None)
    if build_index and args.retrieval_memory:
        from dexml_hf.retrieval import capped_holdout, tune_retrieval

        tune_retrieval(
            model,
            index,
            xmc,
            metric=args.retrieval_metric,
            guard=args.retrieval_guard,
            guard_margin=args.retrieval_guard_margin,
            holdout=capped_holdout(args.retrieval_holdout, xmc.num_queries("train")),
            seed=args.seed,
            query_mode=args.query_text_mode,
            batch_size=batch,
            inv_propensity=evaluator.inv_propensity,
            show_progress_bar=show_progress_bar,
            lexical=args.retrieval_lexical,
            lexical_text_mode=args.retrieval_lexical_text_mode,
        )
        texts = evaluator.search_texts(index.memory)
        _, topk = index.search(queries, k=evaluator.search_depth, exclude=evaluator.filters, texts=texts)
        result.dual_encoder_metrics, result.metrics = result.metrics, evaluator.compute_metrics(topk)
    return result


def eval_results(trainer) -> dict[str, Any]:
    """The content of ``eval_results.json``: the test metrics, the untrained ones and the retrieval choice."""
    results = {"test_split": trainer.args.test_split, "metrics": trainer.test_metrics}
    results["untrained_metrics"] = trainer.baseline_metrics
    memory = getattr(trainer.label_index, "memory", None)
    if trainer.dual_encoder_metrics is not None and memory is not None:
        results["dual_encoder_metrics"] = trainer.dual_encoder_metrics
        results["retrieval"] = {
            "lam": memory.lam,
            "k": memory.k,
            "temperature": memory.temperature,
            "agreement": memory.agreement,
        }
        if memory.lexical is not None:
            results["retrieval"].update(
                lexical_weight=memory.lexical_weight,
                lexical_k=memory.lexical_k,
                lexical_temperature=memory.lexical_temperature,
            )
        results["retrieval"]["tuning"] = memory.tuning
    return results


def write_eval_results(trainer, folder: Path) -> None:
    """``label_index/`` and ``eval_results.json`` of the final evaluation into ``folder`` (the output_dir)."""
    if trainer.label_index is not None:
        trainer.label_index.save(folder / "label_index")
    if trainer.test_metrics is not None:
        (folder / EVAL_RESULTS).write_text(json.dumps(eval_results(trainer), indent=2), encoding="utf-8")


class TestSplitCallback(TrainerCallback):
    """Logs the effective settings, evaluates ``args.test_split`` before training (``evaluate_untrained``) and
    after it (the card's table, ``trainer.label_index``), on every process."""

    __test__ = False  # not a pytest class

    def __init__(self, trainer) -> None:
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        trainer = self.trainer
        if trainer.is_world_process_zero():
            settings = args.effective_settings(state.max_steps, loss=trainer.loss)
            logger.warning("effective settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()))
        if args.evaluate_untrained and args.test_split:
            trainer.baseline_metrics = trainer.evaluate_test(build_index=False)

    def on_train_end(self, args, state, control, **kwargs):
        if args.test_split:
            self.trainer.test_metrics = self.trainer.evaluate_test(build_index=True)
