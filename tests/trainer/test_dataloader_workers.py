"""The epoch's training rows reach the DataLoader workers: with workers (persistent or not) every step sees the rows
of the same run without workers, new positives each epoch and the freshly mined hard negatives."""

from __future__ import annotations

import numpy as np
import pytest

from dexml_hf.trainer import DEXMLTrainer
from tests.trainer.test_trainer import _args, make_xmc

EPOCHS = 2


class _RowSpy(DEXMLTrainer):
    """Records the ``label`` ids ``[query, positive, negatives...]`` of every batch the loss sees (main process)."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self.seen.setdefault(self.epoch, []).append(inputs["label"].tolist())
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


def _run(model, tmp_path, workers: int, persistent: bool, **kw) -> dict[int, list]:
    args = _args(
        tmp_path / f"w{workers}{persistent}",
        negatives="hard",
        num_hard_negatives=1,
        shortlist_size=4,
        max_steps=-1,
        num_train_epochs=EPOCHS,
        dataloader_num_workers=workers,
        dataloader_persistent_workers=persistent,
        dataloader_prefetch_factor=1 if workers else None,
        disable_tqdm=True,
        **kw,
    )
    trainer = _RowSpy(model=model, args=args, train_dataset=make_xmc(num_train=16))
    trainer.seen = {}
    trainer.train()
    assert not (tmp_path / f"w{workers}{persistent}" / "out" / "_dexml_epoch_rows").exists()  # removed after training
    return trainer.seen


@pytest.fixture(scope="module")
def no_dropout_path(tmp_path_factory, minilm_path):
    """Without dropout: the DataLoader iterators of the two runs draw from torch's RNG differently."""
    from tests._models import build_tiny_bert

    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert-no-dropout"), str(minilm_path), dropout=0.0)


@pytest.mark.parametrize("persistent,start", [(True, 0), (False, 1), pytest.param(True, 1, marks=pytest.mark.slow)])
def test_workers_see_the_rows_of_the_run_without_workers(no_dropout_path, tmp_path, persistent, start):
    from sentence_transformers import SentenceTransformer

    def run(workers):
        model = SentenceTransformer(str(no_dropout_path), device="cpu")
        return _run(model, tmp_path, workers, persistent and workers > 0, hard_negatives_start_epoch=start)

    expected, got = run(0), run(2)
    assert sorted(expected) == list(range(EPOCHS))
    # the reference is not vacuous: positives are redrawn each epoch, negatives are mined from the epoch's model
    positives = [np.concatenate([np.asarray(b)[:, 1] for b in expected[e]]) for e in range(EPOCHS)]
    assert not np.array_equal(positives[0], positives[1])
    for epoch in range(EPOCHS):
        width = 3 if epoch >= start else 2  # [query, positive, negative] once hard negatives start
        assert {len(row) for batch in expected[epoch] for row in batch} == {width}
    assert got == expected
