"""What the trainer checks and adjusts before it runs under several processes (DDP through accelerate/torchrun)."""

from __future__ import annotations

import logging
import os

import torch
from transformers.training_args import ParallelMode

from dexml_hf.errors import UsageError

logger = logging.getLogger(__name__)

__all__ = ["freeze_unused_poolers", "refuse_unsynchronised_processes"]


def freeze_unused_poolers(model) -> list[str]:
    """Freeze the backbone poolers (BERT's ``pooler``) that the SentenceTransformer never reads; returns their names.

    DDP defaults. A SentenceTransformer is not a ``PreTrainedModel``, so the HF Trainer wraps it with
    ``find_unused_parameters=True``: DDP then searches each step's graph and tolerates parameters without a gradient,
    such as BERT's pooler (computed by ``BertModel.forward`` but ignored by mean/CLS pooling, which read
    ``last_hidden_state``). Every negatives mode works so (tests/trainer/test_trainer_ddp.py), including 'all', whose
    label passes run on the unwrapped module and only the query replay goes through the wrapper. With
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


def refuse_unsynchronised_processes(args) -> None:
    """Several processes that the Trainer would not run data-parallel would train independent models."""
    initialised = torch.distributed.is_available() and torch.distributed.is_initialized()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if (initialised or launched) and args.parallel_mode in (ParallelMode.NOT_PARALLEL, ParallelMode.NOT_DISTRIBUTED):
        raise UsageError(
            f"{os.environ.get('WORLD_SIZE', '?')} processes were launched but the Trainer would run them as "
            f"{args.parallel_mode.value}, i.e. independent unsynchronised models; launch with a distributed "
            "backend (torchrun, or accelerate launch with a multi-process config: recipes/accelerate_configs/)"
        )
