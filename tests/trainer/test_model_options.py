"""The model's own options reach training or are refused before it: similarity, prompts, sequence lengths.

Expectations are independent of ``dexml_hf.model_options``: the prompted tokens are what ``encode_texts`` / the label
index actually feed the model (recorded at ``model.preprocess``), the limits are the tiny BERT's 128 positions.
"""

from __future__ import annotations

import pytest

from dexml_hf import DEXMLTrainer, DEXMLTrainingArguments
from dexml_hf.data.synthetic import generate_synthetic_xmc
from dexml_hf.errors import UsageError


@pytest.fixture(scope="module")
def xmc():
    return generate_synthetic_xmc(num_labels=40, num_train=64, num_test=16, seed=1)


def _args(tmp_path, **kw):
    base = {"per_device_train_batch_size": 8, "max_steps": 1, "report_to": "none", "save_strategy": "no"}
    return DEXMLTrainingArguments(str(tmp_path / "out"), **{**base, **kw})


def _record_tokens(model) -> dict[str, list[int]]:
    """Wrap ``model.preprocess``: every text it tokenises -> its unpadded input ids (what the encoder sees)."""
    seen: dict[str, list[int]] = {}
    original = model.preprocess

    def recording(inputs, prompt=None, **kwargs):
        out = original(inputs, prompt=prompt, **kwargs)
        for text, ids, mask in zip(inputs, out["input_ids"], out["attention_mask"], strict=True):
            seen[text] = ids[mask.bool()].tolist()
        return out

    model.preprocess = recording
    return seen


def _unpadded(batch, column):
    ids, mask = batch[f"{column}_input_ids"], batch[f"{column}_attention_mask"]
    return [row[m.bool()].tolist() for row, m in zip(ids, mask, strict=True)]


# ---------------------------------------------------------------------------------------------- prompts
@pytest.mark.parametrize(
    ("prompts", "default"),
    [({"query": "query: ", "document": "passage: "}, None), ({"query": "", "document": "", "both": "text: "}, "both")],
    ids=["role-prompts", "default-prompt"],
)
def test_training_rows_get_the_prompts_the_index_encodes(tmp_path, tiny_model, xmc, prompts, default):
    from dexml_hf.index import LabelIndex, encode_texts

    tiny_model.prompts, tiny_model.default_prompt_name = prompts, default
    trainer = DEXMLTrainer(
        model=tiny_model,
        args=_args(tmp_path, negatives="hard", shortlist_size=10, num_hard_negatives=1),
        train_dataset=xmc,
    )
    trainer._begin_epoch(0)  # mine the hard negatives the rows carry
    batch = next(iter(trainer.get_train_dataloader()))
    query_texts, label_texts = xmc.query_texts("train", "title"), xmc.label_texts("title")
    queries = [query_texts[int(i)] for i in batch["label"][:, 0]]
    positives = [label_texts[int(i)] for i in batch["label"][:, 1]]
    negatives = [label_texts[int(i)] for i in batch["label"][:, 2]]

    seen = _record_tokens(tiny_model)
    encode_texts(tiny_model, queries, "query")
    LabelIndex.from_texts(tiny_model, positives + negatives)
    assert _unpadded(batch, "query") == [seen[t] for t in queries]
    assert _unpadded(batch, "positive") == [seen[t] for t in positives]
    assert _unpadded(batch, "negative_1") == [seen[t] for t in negatives]
    # not vacuous: the prompts change the tokens
    unprompted = type(tiny_model).preprocess(tiny_model, queries[:1])
    assert unprompted["input_ids"][0].tolist() != seen[queries[0]]

    # the 'all' engine's label chunks go through the trainer's preprocess: the same tokens as the index
    chunk = label_texts[:5]
    features = trainer._training_preprocess(chunk)
    LabelIndex.from_texts(tiny_model, chunk)
    assert _unpadded({f"c_{k}": v for k, v in features.items()}, "c") == [seen[t] for t in chunk]


def test_prompts_option_that_disagrees_with_the_model_is_refused(tmp_path, tiny_model, xmc):
    tiny_model.prompts = {"query": "query: ", "document": "passage: "}
    with pytest.raises(UsageError, match="prompts=.*model.prompts"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path, prompts={"query": "q: "}), train_dataset=xmc)
    same = {"query": "query: ", "positive": "passage: "}
    DEXMLTrainer(model=tiny_model, args=_args(tmp_path, prompts=same), train_dataset=xmc)


# ---------------------------------------------------------------------------------------------- similarity
@pytest.mark.parametrize("name", ["euclidean", "manhattan"])
def test_non_inner_product_similarity_is_refused_at_setup(tmp_path, tiny_model, xmc, name):
    from dexml_hf.factory import build_loss

    tiny_model.similarity_fn_name = name
    with pytest.raises(UsageError, match=f"similarity_fn_name='{name}' is not supported"):
        build_loss("decoupled_softmax", tiny_model)
    with pytest.raises(UsageError, match=f"similarity_fn_name='{name}'"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=xmc)


def test_dot_model_gets_a_dot_loss_and_a_mismatched_loss_is_refused(tmp_path, tiny_model, xmc):
    from sentence_transformers.util import cos_sim, dot_score

    from dexml_hf.losses import DecoupledSoftmaxLoss

    tiny_model.similarity_fn_name = "dot"
    trainer = DEXMLTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=xmc)
    assert trainer.loss.similarity_fct is dot_score
    with pytest.raises(UsageError, match="similarity_fct=cos_sim.*'dot'"):
        DEXMLTrainer(
            model=tiny_model,
            args=_args(tmp_path),
            train_dataset=xmc,
            loss=DecoupledSoftmaxLoss(tiny_model, similarity_fct=cos_sim),
        )


def test_saved_euclidean_model_is_refused_when_loaded(tmp_path, tiny_model):
    from dexml_hf.factory import load_model

    tiny_model.similarity_fn_name = "euclidean"
    tiny_model.save(str(tmp_path / "m"))
    with pytest.raises(UsageError, match="'euclidean' is not supported"):
        load_model(str(tmp_path / "m"))
    # normalize given: the similarity becomes cosine, which is honoured
    assert load_model(str(tmp_path / "m"), normalize=True).similarity_fn_name == "cosine"


# ---------------------------------------------------------------------------------------------- lengths and data
def test_lengths_beyond_the_position_table_are_refused_before_training(tmp_path, tiny_model, xmc):
    from dexml_hf.factory import load_model

    with pytest.raises(UsageError, match=r"max_length=200 exceeds the 128 positions"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path, max_length=200), train_dataset=xmc)
    DEXMLTrainer(model=tiny_model, args=_args(tmp_path, max_length=128), train_dataset=xmc)  # the limit itself
    tiny_model.max_seq_length = 300
    with pytest.raises(UsageError, match=r"max_seq_length=300 exceeds the 128 positions"):
        DEXMLTrainer(model=tiny_model, args=_args(tmp_path), train_dataset=xmc)
    # what the check prevents: the encoder's forward fails at that length
    with pytest.raises(RuntimeError):
        tiny_model.encode(["word " * 400])
    tiny_model.max_seq_length = 64
    tiny_model.save(str(tmp_path / "m"))
    with pytest.raises(UsageError, match=r"max_seq_length=129 exceeds the 128 positions"):
        load_model(str(tmp_path / "m"), max_seq_length=129)


def test_soft_topk_k_and_retrieval_metric_checked_against_the_label_count(tmp_path, tiny_model, xmc):
    with pytest.raises(UsageError, match=r"topk_k=40 but the dataset has 40 labels"):
        DEXMLTrainer(
            model=tiny_model, args=_args(tmp_path, loss="soft_topk", negatives="all", topk_k=40), train_dataset=xmc
        )
    with pytest.raises(UsageError, match=r"retrieval_metric='psp@50' ranks 50 labels but the dataset has 40"):
        DEXMLTrainer(
            model=tiny_model,
            args=_args(tmp_path, retrieval_memory=True, test_split="test", retrieval_metric="psp@50"),
            train_dataset=xmc,
        )


def test_cli_prints_one_line_for_a_length_beyond_the_encoder(tmp_path, tiny_model_path, capsys):
    from dexml_hf.cli import main

    argv = ["train", "--model_name_or_path", str(tiny_model_path), "--dataset", "synthetic"]
    argv += ["--synthetic_num_labels", "30", "--synthetic_num_train", "40", "--synthetic_num_test", "10"]
    argv += ["--output_dir", str(tmp_path / "out"), "--report_to", "none", "--max_length", "512"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line.lower()]  # upstream progress bars aside
    assert len(errors) == 1 and "max_length=512 exceeds the 128 positions" in errors[0]
    assert "Traceback" not in err


def test_position_limit_of_absolute_relative_and_offset_tables():
    """BERT: its table; RoBERTa: less the padding offset (positions start at pad_token_id + 1); rotary: no limit."""
    from types import SimpleNamespace

    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, RobertaConfig, RobertaModel

    from dexml_hf.model_options import position_limit

    small = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 8}
    bert = BertModel(BertConfig(vocab_size=50, max_position_embeddings=40, **small))
    roberta = RobertaModel(RobertaConfig(vocab_size=50, max_position_embeddings=66, pad_token_id=1, **small))
    llama = LlamaModel(LlamaConfig(vocab_size=50, max_position_embeddings=32, **small))
    assert position_limit([SimpleNamespace(model=bert)]) == 40
    assert position_limit([SimpleNamespace(model=roberta)]) == 64
    assert position_limit([SimpleNamespace(model=llama)]) is None
