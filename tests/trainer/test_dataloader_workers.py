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


def _run(model, tmp_path, workers: int, persistent: bool, resume=None, **kw) -> dict[int, list]:
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
    trainer.train(resume_from_checkpoint=resume)
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


def test_a_run_resumed_with_persistent_workers_sees_the_rows_it_would_have_seen(no_dropout_path, tmp_path):
    """Killed after step 3 (mid epoch 1, after its mining) and resumed with persistent workers: step 4 and the final
    weights are those of the run without workers."""
    import torch
    from sentence_transformers import SentenceTransformer

    def model():
        return SentenceTransformer(str(no_dropout_path), device="cpu")

    reference = model()
    expected = _run(reference, tmp_path, 0, False)
    _run(model(), tmp_path, 2, True, save_strategy="steps", save_steps=3)
    resumed = model()
    checkpoint = tmp_path / "w2True" / "out" / "checkpoint-3"
    got = _run(resumed, tmp_path, 2, True, resume=str(checkpoint), save_strategy="steps", save_steps=3)
    assert got == {1: expected[1][1:]}  # the one step left: the second batch of epoch 1
    for (name, a), (_, b) in zip(resumed.named_parameters(), reference.named_parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def _epoch_rows(xmc, **kw):
    from dexml_hf.negatives.epoch_rows import EpochRows

    return EpochRows(xmc, seed=3, sampling="uniform", query_text="title", label_text="title", **kw)


def test_epoch_rows_equal_the_dataset_view_in_a_process_without_the_trainer_state(tmp_path):
    """What a worker builds from the keys and the negatives file is ``XMCDataset.training_view`` of that epoch."""
    import copy

    from dexml_hf.negatives.epoch_rows import EpochRowsDataset, epoch_keys

    xmc = make_xmc(num_train=16)
    store = tmp_path / "out" / "_dexml_epoch_rows"
    main = _epoch_rows(xmc, negatives_from_epoch=1, store=store)
    dataset = EpochRowsDataset.create(main)
    n = len(dataset)
    negatives = np.random.default_rng(0).integers(0, xmc.num_labels, size=(16, 2))
    main.set_negatives(1, negatives)
    assert [p.name for p in store.iterdir()] == ["negatives-p0-e1.safetensors"]
    worker = copy.deepcopy(dataset)  # a forked/pickled copy: the caches are dropped with the pickling state
    worker.rows._clear_caches()
    for epoch, expected_negatives in ((0, None), (1, negatives)):
        rows = [5, 0, 11]
        expected = xmc.training_view(epoch=epoch, seed=3, negatives=expected_negatives)[rows]
        got = worker.__getitems__(epoch_keys(epoch, rows, n))
        assert got == [{k: expected[k][i] for k in expected} for i in range(len(rows))]
    assert worker.rows._negatives[0] == 1  # read from the file, not inherited
    main.set_negatives(2, negatives[::-1])  # the previous epoch's file goes
    assert [p.name for p in store.iterdir()] == ["negatives-p0-e2.safetensors"]
    main.close()
    assert not store.exists()


def test_epoch_rows_refuse_bare_rows_and_missing_negatives(tmp_path):
    from dexml_hf.errors import UsageError
    from dexml_hf.negatives.epoch_rows import EpochRowsDataset, epoch_keys

    xmc = make_xmc(num_train=16)
    dataset = EpochRowsDataset.create(_epoch_rows(xmc, negatives_from_epoch=0, store=tmp_path / "rows"))
    with pytest.raises(UsageError, match="bare row numbers"):
        dataset.__getitems__([0, 1])
    with pytest.raises(UsageError, match="no hard negatives for epoch 0"):
        dataset.__getitems__(epoch_keys(0, [0, 1], len(dataset)))
    assert "negative_1" not in dataset[0]  # plain indexing shows epoch 0 as far as it exists
