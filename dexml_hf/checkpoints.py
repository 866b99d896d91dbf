"""The extras of a DEXMLTrainer checkpoint: the negatives state, the completion marker, the resumable checkpoint.

A checkpoint folder holds the Trainer's own files (model, optimizer, scheduler, RNG, ``trainer_state.json``) plus

- ``dexml_negatives.json`` (scalars) and ``dexml_negatives.safetensors`` (the mined shortlists, the label cache):
  nothing pickled;
- ``dexml_checkpoint_complete.json``, written last: a folder without it was stopped while being written and is
  never resumed.

The marker exists before the checkpoint is pushed (``hub_strategy``) or older ones are rotated away
(``save_total_limit``), so a pushed ``last-checkpoint/`` resumes and a kill at any moment of a save leaves a complete
checkpoint behind (:func:`rotate_checkpoints`). The extras belong to the checkpoint only: :data:`EXTRA_FILES` never
go to the model repository's root.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers.trainer import TRAINING_ARGS_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.trainer_utils import rotate_checkpoints as _upstream_rotate_checkpoints

from dexml_hf.errors import DataError

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_COMPLETE",
    "EXTRA_FILES",
    "NEGATIVES_STATE",
    "NegativesState",
    "checkpoint_folders",
    "checkpoint_to_resume",
    "is_complete",
    "load_negatives_state",
    "mark_complete",
    "rotate_checkpoints",
    "save_negatives_state",
    "unmark",
    "upstream_push_and_rotation_held",
]

NEGATIVES_STATE = "dexml_negatives"  # .json (scalars) + .safetensors (arrays)
CHECKPOINT_COMPLETE = "dexml_checkpoint_complete.json"
CHECKPOINT_STARTED = "dexml_checkpoint_started.json"  # ours: only such a folder, never completed, is ever deleted
EXTRA_FILES = frozenset(
    {f"{NEGATIVES_STATE}.json", f"{NEGATIVES_STATE}.safetensors", CHECKPOINT_COMPLETE, CHECKPOINT_STARTED}
)


@dataclass
class NegativesState:
    """What a resumed run needs beyond the Trainer's state: the mined shortlists and the label-embedding cache."""

    shortlists: np.ndarray | None = None
    shortlist_epoch: int | None = None
    cache_embeddings: torch.Tensor | None = None
    cache_step: int | None = None


def save_negatives_state(folder: str | Path, state: NegativesState) -> None:
    """Arrays as safetensors (the cache in fp32, from any device), scalars as JSON."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    arrays, scalars = {}, {"shortlist_epoch": state.shortlist_epoch, "cache_step": None}
    if state.shortlists is not None:
        arrays["shortlists"] = np.ascontiguousarray(state.shortlists)
    if state.cache_embeddings is not None:
        arrays["cache_embeddings"] = state.cache_embeddings.detach().to("cpu", torch.float32).numpy()
        scalars["cache_step"] = state.cache_step
    if arrays:
        save_file(arrays, str(folder / f"{NEGATIVES_STATE}.safetensors"))
    (folder / f"{NEGATIVES_STATE}.json").write_text(json.dumps(scalars), encoding="utf-8")


def load_negatives_state(folder: str | Path, device: torch.device | str | None = None) -> NegativesState:
    """The saved state, the cache placed on ``device`` (the model's); a missing part is a :class:`DataError`."""
    from dexml_hf.io import read_json, read_safetensors

    folder = Path(folder)
    meta_path = folder / f"{NEGATIVES_STATE}.json"
    if not meta_path.is_file():
        raise DataError(f"{folder}: no {meta_path.name}; this checkpoint cannot resume the negatives state")
    scalars = read_json(meta_path)
    tensors_path = folder / f"{NEGATIVES_STATE}.safetensors"
    arrays = read_safetensors(tensors_path, framework="numpy") if tensors_path.is_file() else {}
    state = NegativesState(shortlist_epoch=scalars.get("shortlist_epoch"), cache_step=scalars.get("cache_step"))
    if state.shortlist_epoch is not None:
        if "shortlists" not in arrays:
            raise DataError(f"{tensors_path}: the mined shortlists are missing")
        state.shortlists = arrays["shortlists"]
    if state.cache_step is not None:
        if "cache_embeddings" not in arrays:
            raise DataError(f"{tensors_path}: the label-embedding cache is missing")
        state.cache_embeddings = torch.from_numpy(arrays["cache_embeddings"]).to(device)
    return state


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / CHECKPOINT_COMPLETE).is_file()


def unmark(folder: str | Path) -> None:
    """Before a checkpoint is written: the folder is marked as this package's, and a step saved again (a resumed
    run reaching an old step) is incomplete until it is written in full again."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CHECKPOINT_COMPLETE).unlink(missing_ok=True)
    (folder / CHECKPOINT_STARTED).write_text("{}", encoding="utf-8")


def mark_complete(folder: str | Path, global_step: int) -> None:
    """The last write of a checkpoint."""
    (Path(folder) / CHECKPOINT_COMPLETE).write_text(json.dumps({"global_step": global_step}), encoding="utf-8")


def checkpoint_folders(run_dir: str | Path) -> list[Path]:
    """``checkpoint-<step>`` folders of ``run_dir``, by step."""
    root = Path(run_dir)
    found = [
        (int(m.group(1)), p)
        for p in (root.iterdir() if root.is_dir() else [])
        if (m := re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", p.name)) and p.is_dir()
    ]
    return [p for _, p in sorted(found)]


def checkpoint_to_resume(output_dir: str | Path, resume: str | bool) -> str:
    """``True``: the last complete checkpoint of ``output_dir``; a path: that folder, if complete."""
    if resume is True:
        found = checkpoint_folders(output_dir)
        for p in found:
            if not is_complete(p):
                logger.warning(f"skipping {p}: incomplete checkpoint (the run was stopped while writing it)")
        complete = [p for p in found if is_complete(p)]
        if not complete:
            raise DataError(f"resume_from_checkpoint=True: no complete checkpoint in {output_dir}")
        return str(complete[-1])
    path = Path(resume)
    if not path.is_dir():
        raise DataError(f"resume_from_checkpoint: {path} is not a folder")
    if not is_complete(path):
        raise DataError(
            f"resume_from_checkpoint: {path} is not a complete DEXMLTrainer checkpoint (no {CHECKPOINT_COMPLETE}:"
            " written by another trainer, or the run was stopped while writing it)"
        )
    return str(path)


def rotate_checkpoints(run_dir: str | Path, limit: int | None, best: str | None, current: str | Path) -> None:
    """Upstream's ``save_total_limit`` rotation, once ``current`` is complete; incomplete checkpoints of ours (never
    resumable: left by a killed run) go first, so the newest one upstream keeps is a complete one."""
    if limit is None or limit <= 0:
        return
    folders = checkpoint_folders(run_dir)
    if len(folders) <= limit:
        return
    for folder in folders:  # only folders this package started writing; other trainers' are upstream's to rotate
        ours = (folder / CHECKPOINT_STARTED).is_file()
        if folder.name != Path(current).name and ours and not is_complete(folder):
            logger.info(f"deleting incomplete checkpoint {folder} (save_total_limit={limit})")
            shutil.rmtree(folder, ignore_errors=True)
    _upstream_rotate_checkpoints(str(run_dir), limit, best_model_checkpoint=best, use_mtime=True)


@contextmanager
def upstream_push_and_rotation_held(args, folder: str | Path | None):
    """Upstream ``Trainer._save_checkpoint`` pushes and rotates as its last steps, before the extras could exist;
    inside this block it does neither, so the caller completes the checkpoint first and then does both itself.
    The checkpoint's ``training_args.bin``, saved meanwhile, is saved again into ``folder`` (the saving process's;
    ``None`` elsewhere) with the arguments as they are."""
    push, limit = args.push_to_hub, args.save_total_limit
    args.push_to_hub, args.save_total_limit = False, None
    try:
        yield
    finally:
        args.push_to_hub, args.save_total_limit = push, limit
    if folder is not None and (Path(folder) / TRAINING_ARGS_NAME).is_file():
        torch.save(args, Path(folder) / TRAINING_ARGS_NAME)
