"""DEXMLTrainer: every negatives mode trains, bad configurations fail before training, sampler order."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from datasets import Dataset

from dexml_hf.data import XMCDataset
from dexml_hf.trainer import DEXMLTrainer
from dexml_hf.training_args import DEXMLTrainingArguments

TOPICS = ["river boat", "mountain snow", "city traffic", "forest bird", "desert sand", "ocean wave"]


def make_xmc(num_labels=30, num_train=48, num_test=12, seed=0) -> XMCDataset:
    """A small XMC problem: labels are topic phrases, queries mention the words of 1-3 of their labels."""
    rng = np.random.default_rng(seed)
    label_titles = [f"{TOPICS[i % len(TOPICS)]} {i}" for i in range(num_labels)]

    def split(n):
        rows, cols, texts = [], [], []
        for i in range(n):
            labs = rng.choice(num_labels, size=1 + i % 3, replace=False)
            rows += [i] * len(labs)
            cols += labs.tolist()
            texts.append(" ".join(label_titles[j] for j in labs) + " query")
        matrix = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, num_labels))
        table = Dataset.from_dict({"uid": [str(i) for i in range(n)], "title": texts, "content": [""] * n})
        return table, matrix

    train, test = split(num_train), split(num_test)
    labels = Dataset.from_dict(
        {"uid": [str(i) for i in range(num_labels)], "title": label_titles, "content": [""] * num_labels}
    )
    return XMCDataset({"train": train[0], "test": test[0]}, labels, {"train": train[1], "test": test[1]}, name="toy")


def _args(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=8,
        max_steps=3,
        learning_rate=5e-3,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        label_chunk_size=7,
        seed=1,
        use_cpu=True,
    )
    base.update(kw)
    return DEXMLTrainingArguments(**base)


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "mode,extra",
    [
        ("in_batch", {}),
        ("all", {}),
        ("all_cached", {"label_refresh_steps": 2}),
        ("hard", {"num_hard_negatives": 2, "shortlist_size": 5}),
    ],
)
def test_each_mode_trains(tiny_model, tmp_path, mode, extra):
    xmc = make_xmc()
    before = _params(tiny_model)
    trainer = DEXMLTrainer(model=tiny_model, args=_args(tmp_path, negatives=mode, **extra), train_dataset=xmc)
    out = trainer.train()
    assert np.isfinite(out.training_loss) and out.training_loss > 0
    after = _params(tiny_model)
    changed = [n for n in before if not torch.equal(before[n], after[n])]
    assert len(changed) > len(before) // 2, f"{mode}: only {len(changed)} of {len(before)} tensors changed"
    if mode == "hard":
        # the mined shortlists exclude each query's positives, and the rows carry the extra columns
        shortlists = trainer._shortlists
        assert shortlists.shape == (48, 5)
        truth = xmc.label_matrices["train"]
        for q in range(48):
            assert not set(shortlists[q][shortlists[q] >= 0]) & set(truth[q].indices)
        row = trainer.training_view(0)[0]
        assert "negative_2" in row and len(row["label"]) == 4


@pytest.mark.parametrize("mini_batch", [None, 3])
def test_all_mode_loss_matches_one_piece(tiny_model, tmp_path, mini_batch):
    """The trainer's 'all' step reports the decoupled softmax over every label, computed here in one piece."""
    from dexml_hf.losses.functional import decoupled_softmax

    xmc = make_xmc()
    trainer = DEXMLTrainer(
        model=tiny_model,
        args=_args(tmp_path, negatives="all", avoid_duplicate_labels_in_batch=False, label_mini_batch_size=mini_batch),
        train_dataset=xmc,
    )
    assert trainer._all_labels_engine(tiny_model).mini_batch_size == mini_batch
    trainer._begin_epoch(0)
    batch = next(iter(trainer.get_train_dataloader()))
    tiny_model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(tiny_model, dict(batch))
        ids = batch["label"][:, 0].numpy()
        texts = xmc.query_texts("train")
        q = tiny_model.encode([texts[i] for i in ids], convert_to_tensor=True, normalize_embeddings=True)
        e = tiny_model.encode(xmc.label_texts(), convert_to_tensor=True, normalize_embeddings=True)
        positives = torch.as_tensor(xmc.label_matrices["train"][ids].toarray() > 0)
        ref = decoupled_softmax(trainer.loss.scale * q @ e.T, positives)
    torch.testing.assert_close(loss, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("loss_name", ["decoupled", "pal"])
def test_all_cached_loss_scores_every_positive_against_every_label(tiny_model, tmp_path, loss_name):
    """'all_cached' with a fresh cache: every positive of the row's query is a term (weight 1/|P|), over every label.

    The decoupled denominator leaves out the query's other positives; PAL's keeps them. Computed here by hand from
    the label texts (one logsumexp per positive), independently of the trainer's masks.
    """
    from dexml_hf.losses import SoftmaxLoss

    xmc = make_xmc()
    loss = SoftmaxLoss(tiny_model) if loss_name == "pal" else None
    trainer = DEXMLTrainer(
        model=tiny_model,
        args=_args(tmp_path, negatives="all_cached", label_refresh_steps=1, avoid_duplicate_labels_in_batch=False),
        train_dataset=xmc,
        loss=loss,
    )
    trainer._begin_epoch(0)
    batch = next(iter(trainer.get_train_dataloader()))
    tiny_model.eval()
    with torch.no_grad():
        got = trainer.compute_loss(tiny_model, dict(batch))
        ids, sampled = batch["label"][:, 0].tolist(), batch["label"][:, 1].tolist()
        texts = xmc.query_texts("train")
        q = tiny_model.encode([texts[i] for i in ids], convert_to_tensor=True, normalize_embeddings=True)
        e = tiny_model.encode(xmc.label_texts(), convert_to_tensor=True, normalize_embeddings=True)
        scores = trainer.loss.scale * q @ e.T
        truth = xmc.label_matrices["train"]
        expected = []
        for row, (query, positive) in enumerate(zip(ids, sampled)):
            mine = set(truth[query].indices.tolist())
            assert positive in mine
            terms = []
            for p in sorted(mine):
                keep = [c for c in range(xmc.num_labels) if loss_name == "pal" or c not in mine or c == p]
                terms.append(torch.logsumexp(scores[row, keep], 0) - scores[row, p])
            expected.append(torch.stack(terms).mean())
    torch.testing.assert_close(got, torch.stack(expected).mean(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"negatives": "everything"}, "negatives='everything' is unknown"),
        ({"label_chunk_size": 0}, "label_chunk_size must be a positive integer"),
        ({"label_refresh_steps": -1}, "label_refresh_steps"),
        ({"label_mini_batch_size": 0}, "label_mini_batch_size"),
        ({"negatives": "hard", "num_hard_negatives": 0}, "num_hard_negatives"),
        ({"temperature": 0.0}, "temperature"),
        ({"positive_sampling": "random"}, "positive_sampling"),
        ({"query_text_mode": "body"}, "query_text_mode"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **kwargs)


def test_bad_datasets(tiny_model, tmp_path):
    xmc = make_xmc()
    empty = XMCDataset(
        dict(xmc.queries),
        xmc.labels,
        {"train": sp.csr_matrix(xmc.label_matrices["train"].shape), "test": xmc.label_matrices["test"]},
    )
    with pytest.raises(ValueError, match="empty"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=empty)
    rows = Dataset.from_dict({"query": ["a"], "positive": ["b"]})
    with pytest.raises(ValueError, match="'label' column"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=rows)
    with pytest.raises(ValueError, match="needs the label texts"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path, negatives="all"), train_dataset=rows)
    with pytest.raises(ValueError, match="not a split"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=xmc, eval_dataset="dev")


@pytest.mark.parametrize("mode", ["all", "all_cached"])
def test_logq_correction_is_refused_where_every_label_is_scored(tiny_model, tmp_path, mode):
    from dexml_hf.losses import DecoupledSoftmaxLoss

    loss = DecoupledSoftmaxLoss(tiny_model, logq_correction=True)
    with pytest.raises(ValueError, match="logq_correction corrects the sampling bias"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path, negatives=mode), train_dataset=make_xmc(), loss=loss)


def test_sampler_avoids_duplicate_labels_and_is_seeded():
    from dexml_hf.negatives.sampler import NoDuplicateLabelsBatchSampler

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 12, size=100)  # many repeats: 100 rows, 12 labels
    rows = list(range(100))
    sampler = NoDuplicateLabelsBatchSampler(rows, 8, False, positive_ids=lambda e: labels, seed=3)
    batches = sampler.batches(0)
    assert len(batches) == len(sampler) == 13
    assert sorted(i for b in batches for i in b) == rows  # every row exactly once
    # all but the tail batches (where the leftovers must go) have distinct labels
    assert all(len(set(labels[b])) == len(b) for b in batches[:8])
    plain = NoDuplicateLabelsBatchSampler(
        rows, 8, False, positive_ids=lambda e: labels, seed=3, avoid_duplicates=False
    )
    dup_plain = sum(len(b) - len(set(labels[b])) for b in plain.batches(0))
    dup = sum(len(b) - len(set(labels[b])) for b in batches)
    assert dup < dup_plain
    assert sampler.batches(0) == batches and sampler.batches(1) != batches


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["hard", "all_cached"])
def test_resume_continues_exactly(tiny_model, tmp_path, mode):
    """Stop after a checkpoint, resume from it: the final weights equal an uninterrupted run's (same seed).

    Crosses an epoch boundary (6 steps an epoch) so the per-epoch positive draw, the sampler order, the mined
    shortlists and the label cache all have to be restored or rebuilt identically."""
    import copy

    xmc = make_xmc()
    extra = {"num_hard_negatives": 1, "shortlist_size": 4} if mode == "hard" else {"label_refresh_steps": 3}
    start = copy.deepcopy(tiny_model)

    full = DEXMLTrainer(
        model=tiny_model, args=_args(tmp_path / "a", negatives=mode, max_steps=8, **extra), train_dataset=xmc
    )
    full.train()
    reference = _params(tiny_model)

    part_model = copy.deepcopy(start)
    kw = dict(negatives=mode, max_steps=8, save_strategy="steps", save_steps=4, **extra)
    first = DEXMLTrainer(model=part_model, args=_args(tmp_path / "b", **kw), train_dataset=xmc)
    first.train()  # writes checkpoint-4 (and -8); we resume from 4 with a fresh model and trainer
    resumed_model = copy.deepcopy(start)
    second = DEXMLTrainer(model=resumed_model, args=_args(tmp_path / "b", **kw), train_dataset=xmc)
    second.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-4"))
    resumed = _params(resumed_model)
    for name, value in reference.items():
        torch.testing.assert_close(resumed[name], value, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("scale", [True, False])
def test_learning_rate_scales_with_world_size_when_asked(tiny_model, tmp_path, monkeypatch, scale):
    """The reference optimises with num_gpu x lr; ``scale_lr_with_world_size`` does the same, visibly."""
    args = _args(tmp_path, learning_rate=1e-3, scale_lr_with_world_size=scale)
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=make_xmc())
    monkeypatch.setattr(DEXMLTrainingArguments, "world_size", property(lambda self: 4))
    optimizer = trainer.create_optimizer()
    expected = 4e-3 if scale else 1e-3
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([expected] * len(optimizer.param_groups))
    settings = args.effective_settings(num_training_steps=100)
    assert settings["effective_learning_rate"] == pytest.approx(expected) and settings["global_batch_size"] == 32


def test_loss_subclass_and_cached_loss_take_their_parents_path(tiny_model, tmp_path):
    """The trainer dispatches on the loss's capability (``all_labels_objective``), not on its class name."""
    from dexml_hf.losses import CachedDecoupledSoftmaxLoss, DecoupledSoftmaxLoss, OvABCELoss

    class MyLoss(DecoupledSoftmaxLoss):
        pass

    xmc = make_xmc()
    for loss in (
        MyLoss(tiny_model, scale=20.0),
        CachedDecoupledSoftmaxLoss(tiny_model, scale=20.0, mini_batch_size=4),
    ):
        args = _args(tmp_path, negatives="all", max_steps=1)
        trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=xmc, loss=loss)
        engine = trainer._all_labels_engine(tiny_model)
        assert engine.loss == "decoupled_softmax"
        assert trainer.loss.label_matrix is not None  # the trainer gave it the training label matrix
        trainer.train()
    with pytest.raises(ValueError, match="no exact chunked form"):
        DEXMLTrainer(
            model=tiny_model, args=_args(tmp_path, negatives="all"), train_dataset=xmc, loss=OvABCELoss(tiny_model)
        )


def _first_loss(model, xmc, tmp_path, mode, **kw):
    extra = {"label_refresh_steps": 1} if mode == "all_cached" else {}
    trainer = DEXMLTrainer(model=model, args=_args(tmp_path, negatives=mode, **extra, **kw), train_dataset=xmc)
    trainer._begin_epoch(0)
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()
    with torch.no_grad():
        return trainer.compute_loss(model, dict(batch)), batch


def _cut_texts(xmc: XMCDataset, tokenizer, words: int) -> XMCDataset:
    """The same dataset with every query and label text cut to its first ``words`` word pieces."""

    def cut(table):
        titles = [
            tokenizer.decode(tokenizer(t, add_special_tokens=False)["input_ids"][:words]) for t in table["title"]
        ]
        return table.remove_columns("title").add_column("title", titles)

    queries = {split: cut(table) for split, table in xmc.queries.items()}
    return XMCDataset(queries, cut(xmc.labels), xmc.label_matrices, name=xmc.name)


@pytest.mark.parametrize("mode", ["in_batch", "all", "all_cached"])
def test_max_length_limits_training_tokens_only(tiny_model, tmp_path, mode):
    """``max_length`` = 4 ([CLS] + 2 pieces + [SEP]) trains exactly as the texts cut to 2 pieces would, in every
    mode (queries, positives, all-label chunks, the label cache); the model keeps its own max_seq_length."""
    import copy

    xmc = make_xmc()
    cut = _cut_texts(xmc, tiny_model.tokenizer, 2)
    assert cut.query_texts("train") != xmc.query_texts("train")
    limited, batch = _first_loss(copy.deepcopy(tiny_model), xmc, tmp_path, mode, max_length=4)
    expected, _ = _first_loss(copy.deepcopy(tiny_model), cut, tmp_path, mode)
    full, _ = _first_loss(copy.deepcopy(tiny_model), xmc, tmp_path, mode)
    assert batch["query_input_ids"].shape[1] == 4
    torch.testing.assert_close(limited, expected, rtol=1e-5, atol=1e-5)
    assert abs(limited.item() - full.item()) > 1e-3

    before = tiny_model.max_seq_length
    trainer = DEXMLTrainer(model=tiny_model, args=_args(tmp_path, negatives=mode, max_length=4), train_dataset=xmc)
    trainer.train()
    trainer.save_model()
    assert tiny_model.max_seq_length == before
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "out"), device="cpu").max_seq_length == before


def test_max_length_is_validated(tmp_path):
    for bad in (0, -3, True):
        with pytest.raises(ValueError, match="max_length must be a positive integer"):
            _args(tmp_path, max_length=bad)
