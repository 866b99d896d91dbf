"""The full ``DEXMLTrainer.train()`` under ``torchrun`` (gloo, CPU) for ``test_trainer_ddp.py``, and its 1-process twin.

Unlike ``_dist_worker.py`` (which drives the loss code under a hand-made DDP wrapper), this runs the real Trainer:
accelerate wraps the model in DDP with the trainer's own defaults and shards the batches across ranks. The model
is used as a user would load it (its BERT pooler trainable and unused), so the DDP defaults are what is tested.
BERT registers buffers (``position_ids``, ``token_type_ids``), and the 30 labels in chunks of 7 are split 3/2 between
the ranks. (sentence-transformers sets ``ddp_broadcast_buffers=False``, so here DDP does not broadcast them; a wrapper
that does is tested in tests/losses/test_distributed.py.)
Rank 0 saves, per mode, the final parameters, the logged losses and the world size.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

MODES = ("in_batch", "all")


def build_tiny_bert(path: Path, tokenizer_path: str) -> Path:
    """A tiny random BERT *with* its pooler (as real checkpoints have), dropout off: 1 and 2 processes draw different
    dropout masks, without dropout they must agree."""
    from tests._models import build_tiny_bert as build

    return build(path, tokenizer_path, pooler=True, dropout=0.0)


def train_once(model_path: str, mode: str, output_dir: str, per_device_batch: int, steps: int, **extra) -> dict:
    """One ``DEXMLTrainer.train()``; returns the final parameters and the logged per-step losses."""
    from sentence_transformers import SentenceTransformer

    from dexml_hf.trainer import DEXMLTrainer
    from dexml_hf.training_args import DEXMLTrainingArguments
    from tests.trainer.test_trainer import make_xmc

    model = SentenceTransformer(model_path, device="cpu")
    args = DEXMLTrainingArguments(
        output_dir=output_dir,
        negatives=mode,
        per_device_train_batch_size=per_device_batch,
        max_steps=steps,
        learning_rate=5e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        label_chunk_size=7,  # 30 labels -> 5 chunks: 3 on rank 0, 2 on rank 1
        seed=1,
        use_cpu=True,
        # The 1-process batch of 2B rows is the two B-row batches the two ranks take (accelerate deals whole
        # batches round-robin) only for a plain chunked shuffle; the duplicate-avoiding sampler re-packs batches
        # depending on their size.
        avoid_duplicate_labels_in_batch=False,
        disable_tqdm=True,
        **extra,
    )
    trainer = DEXMLTrainer(model=model, args=args, train_dataset=make_xmc())
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    wrapped = trainer.model_wrapped
    return {
        "params": params,
        "losses": losses,
        "world": int(args.world_size),
        "wrapper": type(wrapped).__name__,
        "find_unused_parameters": getattr(wrapped, "find_unused_parameters", None),
        "buffers": sorted(n for n, _ in model.named_buffers()),
        "frozen": sorted(n for n, p in model.named_parameters() if not p.requires_grad),
    }


def evaluate_once(model_path: str, output_dir: str, per_device_batch: int, steps: int, delay: float) -> dict:
    """'in_batch' with ``test_split`` and ``evaluate_untrained`` under a short collective timeout (delay / 3), each
    evaluation made ``delay`` seconds longer: a process left out of an evaluation waits that long in its next
    collective. The group is made here: transformers passes ``ddp_timeout`` on only when not ``use_cpu``."""
    import datetime
    import time

    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=max(1.0, delay / 3)))

    from sentence_transformers import SentenceTransformer

    from dexml_hf.trainer import DEXMLTrainer
    from dexml_hf.training_args import DEXMLTrainingArguments
    from tests.trainer.test_trainer import make_xmc

    class SlowEvaluation(DEXMLTrainer):
        def evaluate_test(self, build_index: bool = True) -> dict[str, float]:
            time.sleep(delay)  # a long test split
            return super().evaluate_test(build_index)

    model = SentenceTransformer(model_path, device="cpu")
    args = DEXMLTrainingArguments(
        output_dir=output_dir,
        negatives="in_batch",
        per_device_train_batch_size=per_device_batch,
        max_steps=steps,
        learning_rate=5e-3,
        report_to="none",
        save_strategy="no",
        seed=1,
        use_cpu=True,
        avoid_duplicate_labels_in_batch=False,
        disable_tqdm=True,
        test_split="test",
        evaluate_untrained=True,
    )
    trainer = SlowEvaluation(model=model, args=args, train_dataset=make_xmc())
    trainer.train()
    return {"baseline": trainer.baseline_metrics, "test": trainer.test_metrics}


def main() -> None:
    import torch.distributed as dist

    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--per-device-batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--eval-delay", type=float, default=None, help="run evaluate_once instead of the modes")
    parser.add_argument(
        "--ddp-find-unused-parameters",
        choices=["default", "true", "false"],
        default="default",
        help="'default' leaves the Trainer's choice (True for a SentenceTransformer)",
    )
    args = parser.parse_args()
    extra = {}
    if args.ddp_find_unused_parameters != "default":
        extra["ddp_find_unused_parameters"] = args.ddp_find_unused_parameters == "true"

    results = {}
    if args.eval_delay is not None:
        results = evaluate_once(args.model, args.output_dir, args.per_device_batch, args.steps, args.eval_delay)
        rank = int(os.environ.get("RANK", "0"))
        torch.save(results, f"{args.out}.rank{rank}")
        return
    for mode in args.modes.split(","):
        results[mode] = train_once(
            args.model, mode, os.path.join(args.output_dir, mode), args.per_device_batch, args.steps, **extra
        )
    if dist.is_initialized():
        rank = dist.get_rank()
        dist.barrier()
    else:
        rank = 0
    if rank == 0:
        torch.save(results, args.out)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
