"""Trainer options that used to be accepted and ignored or misreported: each changes the result or is refused."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from datasets import Dataset
from sentence_transformers.base.sampler import DefaultBatchSampler

from dexml_hf.errors import UsageError
from dexml_hf.model_card import DEXMLModelCardCallback, DEXMLModelCardData
from dexml_hf.negatives.epoch_rows import split_keys
from dexml_hf.trainer import DEXMLTrainer
from tests.trainer.test_trainer import _args, make_xmc


# ---------------------------------------------------------------------------------------------- batch_sampler
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_sampler": "group_by_label"}, "batch_sampler='group_by_label' does not apply to XMCDataset"),
        (
            {"batch_sampler": "no_duplicates", "avoid_duplicate_labels_in_batch": False},
            "contradicts avoid_duplicate_labels_in_batch=False",
        ),
        ({"batch_sampler": DefaultBatchSampler}, "batch_sampler='DefaultBatchSampler' does not apply"),
    ],
)
def test_batch_samplers_that_cannot_apply_to_xmc_data_are_refused(tiny_model, tmp_path, kwargs, match):
    with pytest.raises(UsageError, match=match):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path, **kwargs), train_dataset=make_xmc())


@pytest.mark.parametrize("sampler", ["no_duplicates", "no_duplicates_hashed"])
def test_no_duplicates_sampler_means_no_positive_label_twice_in_a_batch(tiny_model, tmp_path, sampler):
    xmc = make_xmc(num_labels=16, num_train=48)  # 48 queries on 16 labels: a plain shuffle repeats labels
    trainer = DEXMLTrainer(model=tiny_model, args=_args(tmp_path, batch_sampler=sampler), train_dataset=xmc)
    # the sampler's keys carry the epoch (DataLoader workers build that epoch's rows): decode the rows
    batches = [split_keys(b, 48)[1] for b in trainer.get_batch_sampler(trainer.train_dataset, 4, False, seed=1)]
    positives = trainer._positive_ids(0)
    assert sorted(i for b in batches for i in b) == list(range(48))
    assert all(len(set(positives[b].tolist())) == len(b) for b in batches)
    plain = DEXMLTrainer(
        model=tiny_model, args=_args(tmp_path, avoid_duplicate_labels_in_batch=False), train_dataset=xmc
    )
    shuffled = [split_keys(b, 48)[1] for b in plain.get_batch_sampler(plain.train_dataset, 4, False, seed=1)]
    assert any(len(set(positives[b].tolist())) < len(b) for b in shuffled)  # the check above can fail


def _pairs_together(trainer, rows, seeds=range(20)) -> int:
    """In how many seeded epochs rows 0 and 2 (the same positive "x") share one of the two batches."""
    return sum(
        any({0, 2} <= set(b) for b in trainer.get_batch_sampler(rows, 2, False, valid_label_columns=["label"], seed=s))
        for s in seeds
    )


@pytest.mark.parametrize("sampler", [None, "no_duplicates"])
def test_ready_made_rows_avoid_duplicate_positives_through_the_upstream_sampler(tiny_model, tmp_path, sampler):
    """Rows given ready-made: ``avoid_duplicate_labels_in_batch`` (the default) or ``no_duplicates`` keeps the two
    rows with positive "x" apart; ``avoid_duplicate_labels_in_batch=False`` is a plain shuffle that does not."""
    rows = Dataset.from_dict({"query": ["a", "b", "c", "d"], "positive": ["x", "y", "x", "z"], "label": [[0, 0]] * 4})
    kw = {} if sampler is None else {"batch_sampler": sampler}
    trainer = DEXMLTrainer(model=tiny_model, args=_args(tmp_path, **kw), train_dataset=rows)
    assert _pairs_together(trainer, trainer.train_dataset) == 0
    plain = DEXMLTrainer(
        model=tiny_model, args=_args(tmp_path, avoid_duplicate_labels_in_batch=False), train_dataset=rows
    )
    assert _pairs_together(plain, plain.train_dataset) > 0


# ---------------------------------------------------------------------------------------------- evaluator
def test_in_training_psp_equals_the_final_evaluation(tiny_model, tmp_path):
    """The evaluator used while training takes the args' propensity A, B and ``top_k``, as the test evaluation."""
    xmc = make_xmc()
    args = _args(tmp_path, test_split="test", propensity_a=0.9, propensity_b=0.2, top_k=20)
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=xmc, eval_dataset="test")
    np.testing.assert_allclose(trainer.evaluator.inv_propensity, xmc.inv_propensity(0.9, 0.2))
    assert not np.allclose(xmc.inv_propensity(0.9, 0.2), xmc.inv_propensity())  # the family default differs
    during = trainer.evaluate()
    final = trainer.evaluate_test(build_index=False)
    assert {f"eval_test_{k}" for k in final} == {k for k in during if k.startswith("eval_test_")}
    assert "recall@20" in final and "recall@50" not in final  # top_k = 20 labels a query in both
    for key, value in final.items():
        assert during[f"eval_test_{key}"] == pytest.approx(value, abs=1e-9), key


# ---------------------------------------------------------------------------------------------- user-given loss
def test_user_loss_is_what_the_card_and_settings_show(tiny_model, tmp_path):
    from dexml_hf.losses import SoftmaxLoss

    args = _args(tmp_path, max_steps=1)  # loss='decoupled_softmax', temperature=0.05: not what trains
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=make_xmc(), loss=SoftmaxLoss(tiny_model, 8.0))
    settings = args.effective_settings(loss=trainer.loss)
    assert settings["loss"] == "SoftmaxLoss" and settings["temperature"] == pytest.approx(1 / 8)
    assert args.effective_settings()["loss"] == "DecoupledSoftmaxLoss"  # without the object: what args build
    trainer.train()
    card = tiny_model.model_card_data
    assert card.effective_settings["loss"] == "SoftmaxLoss"
    assert card.effective_settings["temperature"] == pytest.approx(0.125)
    text = card.render()
    assert "| Temperature τ | 0.125 |" in text and "| Loss | `SoftmaxLoss` |" in text


# ---------------------------------------------------------------------------------------------- augmentation
def test_label_text_rows_fill_the_field_the_query_mode_reads(tiny_model, tmp_path):
    xmc = make_xmc()
    args = _args(tmp_path, augment_with_label_texts=True, query_text_mode="content", negatives="all")
    xmc = xmc.__class__(
        {s: q.map(lambda r: {"content": "body of " + r["title"]}) for s, q in xmc.queries.items()},
        xmc.labels,
        xmc.label_matrices,
        name="toy",
    )
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=xmc)
    queries = trainer.training_view(0)["query"]
    n = xmc.num_queries("train")
    assert queries[:n] == xmc.query_texts("train", "content")
    assert queries[:n] != xmc.query_texts("train", "title")  # the mode is read, not the title by default
    label_rows = trainer.xmc.label_matrices["train"][n:].indices  # each label's row, label order
    assert trainer.training_view(0)["query"][n:] == [xmc.label_texts()[i] for i in label_rows]
    assert all(q.strip() for q in queries)


# ---------------------------------------------------------------------------------------------- secrets
def test_only_credentials_are_secret():
    from dexml_hf.script_args import is_secret

    for key in ("hub_token", "token", "push_to_hub_token", "use_auth_token", "wandb_api_key", "db_password"):
        assert is_secret(key), key
    for key in (
        "average_tokens_across_devices",
        "include_num_input_tokens_seen",
        "mini_batch_num_tokens",
        "pad_token",
    ):
        assert not is_secret(key), key


def test_token_options_reach_the_card_and_config_but_the_token_reaches_no_file(tiny_model, tmp_path, caplog):
    """A token-named setting is carded and written to train_config.yaml; the hub token is in no file of the run
    (checkpoints: training_args.bin, trainer_state.json), no card and no log."""
    from dexml_hf.script_args import DataArguments, ModelArguments, public_args_dict

    secret = "hf_neverWrittenAnywhere42"
    args = _args(
        tmp_path,
        max_steps=2,
        save_strategy="steps",
        save_steps=1,
        hub_token=secret,
        average_tokens_across_devices=False,
        test_split="test",
    )
    config = public_args_dict(ModelArguments(), DataArguments(), args)
    assert config["average_tokens_across_devices"] is False and "hub_token" not in config
    with caplog.at_level(logging.INFO):
        trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=make_xmc())
        trainer.train()
        trainer.save_model()
    out = tmp_path / "out"
    assert (out / "checkpoint-1" / "training_args.bin").is_file()
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        assert secret.encode() not in path.read_bytes(), path
    assert secret not in caplog.text
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "`average_tokens_across_devices`: `False`" in readme and "hub_token" not in readme


# ---------------------------------------------------------------------------------------------- the card
def test_the_card_is_filled_by_its_callback_only(tiny_model, tmp_path):
    """``evaluate_test`` returns metrics and writes no card; the card callback (last, after the test evaluation)
    puts the final metrics, their query count and the runtime on the card."""
    xmc = make_xmc()
    args = _args(tmp_path, max_steps=2, test_split="test", max_test_samples=10, evaluate_untrained=True)
    trainer = DEXMLTrainer(model=tiny_model, args=args, train_dataset=xmc)
    assert isinstance(trainer.callback_handler.callbacks[-1], DEXMLModelCardCallback)
    card = tiny_model.model_card_data
    assert isinstance(card, DEXMLModelCardData) and card.num_labels == 30 and card.num_train_queries == 48
    direct = trainer.evaluate_test(build_index=True)
    assert card.metrics is None and set(direct) >= {"precision@1", "psp@5"}
    trainer.train()
    assert card.metrics == trainer.test_metrics and card.baseline_metrics == trainer.baseline_metrics
    assert card.num_eval_queries == 10 and card.train_runtime.endswith("(2 steps)")
    assert card.effective_settings["loss"] == "DecoupledSoftmaxLoss"


def test_top_k_below_the_reported_cutoffs_is_refused(tmp_path):
    with pytest.raises(UsageError, match="top_k=3: evaluation reports P@5"):
        _args(tmp_path, top_k=3)


def test_an_eval_dataset_beside_xmc_training_gets_upstreams_sampler(tiny_model, tmp_path):
    """Upstream asks get_batch_sampler for eval/test dataloaders too: a plain dataset there must not get the training
    rows' epoch keys (out of its range) nor the training positives."""
    import datasets
    from sentence_transformers.base.sampler import DefaultBatchSampler

    from dexml_hf.negatives.epoch_rows import EpochKeysBatchSampler

    trainer = DEXMLTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=make_xmc())
    other = datasets.Dataset.from_dict({"anchor": ["a", "b", "c"], "positive": ["x", "y", "z"]})
    sampler = trainer.get_batch_sampler(other, 2, False, seed=0)
    assert isinstance(sampler, DefaultBatchSampler)
    assert sorted(i for b in sampler for i in b) == [0, 1, 2]
    assert isinstance(trainer.get_batch_sampler(trainer.train_dataset, 2, False, seed=0), EpochKeysBatchSampler)
