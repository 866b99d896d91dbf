"""A batch sampler whose batches never repeat a sampled positive label (when the data allows it).

Two rows with the same sampled positive put the same label twice among the batch's candidates; the loss dedupes and
masks it, so the slot is wasted. The order is a pure function of ``(seed, epoch)`` so a resumed run replays it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator

import numpy as np
from sentence_transformers.base.sampler import DefaultBatchSampler

__all__ = ["NoDuplicateLabelsBatchSampler"]


class NoDuplicateLabelsBatchSampler(DefaultBatchSampler):
    """Shuffle rows, then fill each batch skipping rows whose sampled positive is already in it.

    Skipped rows wait in a queue and go first into the next batches. Every row is yielded exactly once per epoch and
    the number of batches is fixed (``ceil(n / batch_size)``, or ``floor`` with ``drop_last``), so the Trainer's step
    count never changes; only when the remaining rows cannot avoid it does a batch repeat a label.

    Args:
        dataset: the training rows (only its length is used).
        positive_ids: ``positive_ids(epoch) -> ndarray (n,)`` the sampled positive label of each row that epoch.
        epoch_of: optional ``() -> int`` overriding ``set_epoch`` (the trainer's epoch, robust to dataloader wrappers).
        avoid_duplicates: False gives a plain seeded shuffle.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        drop_last: bool,
        positive_ids: Callable[[int], np.ndarray] | None = None,
        epoch_of: Callable[[], int] | None = None,
        avoid_duplicates: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last, seed=seed)
        self.num_rows = len(dataset)
        self.positive_ids = positive_ids
        self.epoch_of = epoch_of
        self.avoid_duplicates = avoid_duplicates and positive_ids is not None

    def _epoch(self) -> int:
        return int(self.epoch_of()) if self.epoch_of is not None else int(getattr(self, "epoch", 0))

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_rows // self.batch_size
        return (self.num_rows + self.batch_size - 1) // self.batch_size

    def batches(self, epoch: int) -> list[list[int]]:
        """The epoch's batches (deterministic in ``(seed, epoch)``)."""
        order = np.random.default_rng([int(self.seed), int(epoch), 7]).permutation(self.num_rows)
        size, n_batches = self.batch_size, len(self)
        if not self.avoid_duplicates:
            return [order[i * size : (i + 1) * size].tolist() for i in range(n_batches)]
        labels = np.asarray(self.positive_ids(epoch))
        if len(labels) != self.num_rows:
            raise ValueError(f"positive_ids gave {len(labels)} labels for {self.num_rows} rows")
        pending: deque[int] = deque()
        stream = iter(order.tolist())
        exhausted = False
        out = []
        for _ in range(n_batches):
            batch: list[int] = []
            seen: set[int] = set()
            for _ in range(len(pending)):
                row = pending.popleft()
                if len(batch) < size and labels[row] not in seen:
                    batch.append(row)
                    seen.add(labels[row])
                else:
                    pending.append(row)
            while len(batch) < size and not exhausted:
                row = next(stream, None)
                if row is None:
                    exhausted = True
                elif labels[row] in seen:
                    pending.append(row)
                else:
                    batch.append(row)
                    seen.add(labels[row])
            while len(batch) < size and pending:  # no duplicate-free row left: fill anyway
                batch.append(pending.popleft())
            out.append(batch)
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self._epoch())
