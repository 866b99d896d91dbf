"""The trainer's training rows, built in whichever process reads them: the epoch travels in the DataLoader keys.

A DataLoader worker holds its own copy of the dataset, taken when its iterator starts (forked, or pickled under
spawn), and with ``dataloader_persistent_workers`` once for the whole run: state the trainer sets per epoch in the
main process never reaches it. So nothing here reads trainer state. :class:`EpochKeysBatchSampler` (main process)
turns each row number into the key ``(epoch + 1) * n + row``, and :class:`EpochRowsDataset` decodes it in the worker
and builds the rows as a pure function of ``(seed, epoch)``: the epoch's positive draw
(:meth:`~dexml_hf.data.XMCDataset.sample_positives`) and the hard negatives the trainer sampled for that epoch.
Those are computed in the main process (mining needs the model), so with workers they are handed over in one
safetensors file per epoch and process, in ``_dexml_epoch_rows/`` under ``output_dir`` (the Trainer never pushes
``_*``), written atomically before the epoch's iterator starts and removed after training.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import numpy as np

from dexml_hf.errors import UsageError

__all__ = ["ROWS_FOLDER", "EpochKeysBatchSampler", "EpochRows", "EpochRowsDataset", "epoch_keys", "split_keys"]

ROWS_FOLDER = "_dexml_epoch_rows"


def epoch_keys(epoch: int, rows, num_rows: int) -> list[int]:
    """DataLoader keys of ``rows`` in ``epoch``: ``(epoch + 1) * num_rows + row`` (a bare row number is refused)."""
    offset = (int(epoch) + 1) * num_rows
    return [offset + int(r) for r in rows]


def split_keys(keys, num_rows: int) -> tuple[int, np.ndarray]:
    """``(epoch, rows)`` of one batch of keys from :func:`epoch_keys`."""
    keys = np.asarray(keys, dtype=np.int64)
    if keys.size and keys.min() < num_rows:
        raise UsageError(
            "the DEXML training rows were read with bare row numbers; their keys carry the epoch: read them through "
            "the trainer's get_batch_sampler (EpochKeysBatchSampler)"
        )
    epochs = keys // num_rows - 1
    if keys.size and epochs.min() != epochs.max():
        raise UsageError(f"one batch of training rows mixes epochs {sorted(set(epochs.tolist()))}")
    return (int(epochs[0]) if keys.size else 0), keys % num_rows


class EpochKeysBatchSampler:
    """Wraps a batch sampler of row numbers so that its batches carry the epoch (:func:`epoch_keys`).

    Runs in the main process, where ``epoch_of()`` (the trainer's epoch) is current; ``batch_size``, ``drop_last``,
    ``set_epoch`` and the rest are the wrapped sampler's (accelerate and the Trainer read them).
    """

    def __init__(self, batch_sampler, num_rows: int, epoch_of: Callable[[], int]) -> None:
        self.batch_sampler = batch_sampler
        self.num_rows = num_rows
        self.epoch_of = epoch_of

    def __getattr__(self, name: str):
        if name == "batch_sampler":  # not set yet (e.g. while copying): no recursion
            raise AttributeError(name)
        return getattr(self.batch_sampler, name)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batch_sampler, "set_epoch"):
            self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        epoch = int(self.epoch_of())
        for batch in self.batch_sampler:
            yield epoch_keys(epoch, batch, self.num_rows)


class EpochRows:
    """The training rows of any epoch, from the dataset and the settings alone (no trainer state).

    Args:
        xmc: the training :class:`~dexml_hf.data.XMCDataset` (its ``train`` split).
        seed, sampling, query_text, label_text: the positive draw and the texts (as ``XMCDataset.training_view``).
        negatives_from_epoch: the first epoch whose rows carry hard negatives (None: never).
        columns: the columns the DataLoader gets (None: all; 'all' negatives embed only the queries).
        store: the folder for the per-epoch negatives files (None: no workers, nothing written).
        process_index: this process's rank (each rank writes its own files).
    """

    def __init__(
        self,
        xmc,
        seed: int,
        sampling: str,
        query_text: str,
        label_text: str,
        negatives_from_epoch: int | None = None,
        columns: tuple[str, ...] | None = None,
        store: str | os.PathLike | None = None,
        process_index: int = 0,
    ) -> None:
        self.xmc = xmc
        self.seed, self.sampling = int(seed), sampling
        self.query_text, self.label_text = query_text, label_text
        self.negatives_from_epoch = negatives_from_epoch
        self.columns = columns
        self.store = Path(store) if store is not None else None
        self.process_index = int(process_index)
        self._clear_caches()

    def _clear_caches(self) -> None:
        self._texts = None  # (query texts, label texts) as Arrow arrays, built once per process
        self._positives: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, query_ids, label_ids)
        self._negatives: tuple[int, np.ndarray] | None = None  # (epoch, (num_queries, m) label ids)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()  # a spawned worker rebuilds the caches; the negatives come from the files
        state.update(_texts=None, _positives=None, _negatives=None)
        return state

    def __len__(self) -> int:
        return len(self.positives(0)[0])  # the queries with at least one positive (the same every epoch)

    # ------------------------------------------------------------------ the parts of an epoch's rows
    def positives(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(query_ids, label_ids)`` of the epoch's positive draw, one a row."""
        if self._positives is None or self._positives[0] != epoch:
            query_ids, label_ids = self.xmc.sample_positives("train", epoch, self.seed, self.sampling)
            self._positives = (epoch, query_ids, label_ids)
        return self._positives[1], self._positives[2]

    def set_negatives(self, epoch: int, negatives: np.ndarray) -> None:
        """The main process's hard negatives of ``epoch`` (by query id); written for the workers when ``store``."""
        negatives = np.ascontiguousarray(self.xmc.check_negatives(negatives))
        self._negatives = (epoch, negatives)
        if self.store is None:
            return
        from safetensors.numpy import save_file

        self.store.mkdir(parents=True, exist_ok=True)
        path = self._store_file(epoch)
        partial = path.with_name(path.name + ".partial")
        save_file({"negatives": negatives}, str(partial), metadata={"epoch": str(epoch)})
        os.replace(partial, path)  # a worker sees the whole file or none
        for old in self.store.glob(f"negatives-p{self.process_index}-e*.safetensors"):
            if old != path:
                old.unlink(missing_ok=True)

    def negatives(self, epoch: int, required: bool = True) -> np.ndarray | None:
        """The epoch's hard negatives, or None before ``negatives_from_epoch``; a missing set raises if ``required``."""
        if self.negatives_from_epoch is None or epoch < self.negatives_from_epoch:
            return None
        if self._negatives is not None and self._negatives[0] == epoch:
            return self._negatives[1]
        path = self._store_file(epoch) if self.store is not None else None
        if path is None or not path.is_file():
            if not required:
                return None
            raise UsageError(
                f"no hard negatives for epoch {epoch}"
                + (f" ({path} is missing)" if path is not None else "")
                + ": the rows of an epoch are read after the trainer's epoch start, which mines them"
            )
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            negatives = f.get_tensor("negatives")
        self._negatives = (epoch, negatives)
        return negatives

    def close(self) -> None:
        """Remove this process's negatives files (and the folder once empty)."""
        if self.store is None or not self.store.is_dir():
            return
        for path in self.store.glob(f"negatives-p{self.process_index}-e*.safetensors*"):
            path.unlink(missing_ok=True)
        try:
            self.store.rmdir()
        except OSError:  # another rank's files are still there: its close() removes the folder
            pass

    def _store_file(self, epoch: int) -> Path:
        return self.store / f"negatives-p{self.process_index}-e{int(epoch)}.safetensors"

    # ------------------------------------------------------------------ rows
    def table(self, epoch: int, rows=None, required: bool = True):
        """The epoch's rows (all columns) as an Arrow table, or only the rows numbered ``rows``."""
        from dexml_hf.data.dataset import training_table

        if self._texts is None:
            self._texts = (
                self.xmc.query_text_array("train", self.query_text),
                self.xmc.label_text_array(self.label_text),
            )
        query_ids, label_ids = self.positives(epoch)
        if rows is not None:
            rows = np.asarray(rows, dtype=np.int64)
            query_ids, label_ids = query_ids[rows], label_ids[rows]
        negatives = self.negatives(epoch, required=required)
        picked = negatives[query_ids] if negatives is not None else None
        return training_table(*self._texts, query_ids, label_ids, picked)

    def view(self, epoch: int, required: bool = True) -> datasets.Dataset:
        """All rows of ``epoch`` (what ``XMCDataset.training_view`` gives for the same settings and negatives)."""
        from dexml_hf.data.dataset import training_dataset

        return training_dataset(self.table(epoch, required=required))

    def batch(self, epoch: int, rows, required: bool = True) -> dict[str, list]:
        """The DataLoader columns of the rows numbered ``rows`` in ``epoch``."""
        columns = self.table(epoch, rows, required=required).to_pydict()
        if self.columns is not None:
            columns = {name: columns[name] for name in self.columns}
        return columns

    def first_epoch_transform(self, batch: dict[str, list]) -> dict[str, list]:
        """Plain indexing (``dataset[i]``, the model card's examples): the rows of epoch 0 as far as they exist."""
        return self.batch(0, batch["row"], required=False)


class EpochRowsDataset(datasets.Dataset):
    """The Trainer's ``train_dataset``: one row number a training row; a batch of :func:`epoch_keys` keys (what the
    DataLoader passes to ``__getitems__``) becomes that epoch's rows, built by :class:`EpochRows` in this process."""

    @classmethod
    def create(cls, rows: EpochRows) -> EpochRowsDataset:
        table = datasets.Dataset.from_dict({"row": np.arange(len(rows), dtype=np.int64)})
        dataset = cls(table.data, info=table.info)
        dataset.rows = rows
        dataset.set_transform(rows.first_epoch_transform)
        return dataset

    def __getitems__(self, keys: list) -> list[dict]:
        epoch, rows = split_keys(keys, self.num_rows)
        batch = self.rows.batch(epoch, rows)
        return [dict(zip(batch, values)) for values in zip(*batch.values())]
