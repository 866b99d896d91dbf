"""Released-checkpoint loading: DistilBERT repos pushed to the loopback Hub load with CLS pooling and the right norm.

Expectations are written here independently of ``dexml_hf.hub``'s registry (DESIGN.md §1): the reference
embedding is ``AutoModel(...).last_hidden_state[:, 0]`` (L2-normalised where the checkpoint was trained so),
with the tokenizer truncating at the checkpoint's max length.
"""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

# repo id -> (trained with L2-normalised embeddings, max length), from DESIGN.md §1
RELEASED = {
    "quicktensor/dexml_eurlex-4k": (True, 128),
    "quicktensor/dexml_lf-amazontitles-131k": (True, 32),
    "quicktensor/dexml_lf-amazontitles-1.3m": (False, 32),
    "quicktensor/dexml_lf-wikipedia-500k": (False, 128),
}

# long enough (> 32 word pieces) that the 32 / 128 truncation changes the CLS vector
TEXTS = [
    "extreme multi label classification",
    "a dual encoder embeds " + " ".join(f"word{i}" for i in range(60)),
    "EURLex documents about fisheries",
]


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory, minilm_path):
    """A tiny random DistilBertModel in the released layout: config.json, model.safetensors, BERT-uncased tokenizer."""
    from transformers import AutoTokenizer, DistilBertConfig, DistilBertModel

    path = tmp_path_factory.mktemp("dexml-distilbert")
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_path))
    config = DistilBertConfig(
        vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2, hidden_dim=64, max_position_embeddings=256
    )
    torch.manual_seed(0)
    DistilBertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    assert (path / "model.safetensors").is_file()
    return path


def _with_pooling_folder(src, dst, mode="cls"):
    shutil.copytree(src, dst)
    (dst / "1_Pooling").mkdir()
    legacy = {
        "word_embedding_dimension": 32,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    (dst / "1_Pooling" / "config.json").write_text(json.dumps(legacy))
    return dst


def _reference(path, texts, max_length, normalize):
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModel.from_pretrained(str(path)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        cls = model(**batch).last_hidden_state[:, 0]
    return torch.nn.functional.normalize(cls, dim=-1) if normalize else cls


def _push(folder, repo_id):
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, exist_ok=True)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id).oid


@pytest.mark.parametrize(
    ("repo_id", "pooling_folder"),
    [(repo, i % 2 == 1) for i, repo in enumerate(RELEASED)],
    ids=lambda v: str(v).split("/")[-1],
)
def test_released_checkpoint_from_hub(hub_server, distilbert_dir, tmp_path, repo_id, pooling_folder):
    from dexml_hf.hub import load_dexml_model

    folder = _with_pooling_folder(distilbert_dir, tmp_path / "repo") if pooling_folder else distilbert_dir
    commit = _push(folder, repo_id)
    cache = tmp_path / "hf-cache"
    model = load_dexml_model(repo_id, revision=commit, device="cpu", cache_folder=str(cache))

    normalize, max_length = RELEASED[repo_id]
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Transformer", "Pooling"] + (["Normalize"] if normalize else [])
    assert model[1].pooling_mode == "cls"
    assert model.max_seq_length == max_length
    # went through the Hub client into our own cache, not a reused one
    assert any(cache.rglob("model.safetensors"))

    got = model.encode(TEXTS, convert_to_tensor=True, batch_size=2)
    expected = _reference(distilbert_dir, TEXTS, max_length, normalize)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    # the truncation length matters for the long text, so the check above is not vacuous
    other = _reference(distilbert_dir, TEXTS, 160 - max_length, normalize)
    assert not torch.allclose(other[1], expected[1], atol=1e-4)


def test_explicit_arguments_override_registry(hub_server, distilbert_dir, tmp_path):
    from dexml_hf.hub import load_dexml_model

    repo_id = "quicktensor/dexml_eurlex-4k"
    commit = _push(distilbert_dir, repo_id)
    model = load_dexml_model(
        repo_id, revision=commit, device="cpu", normalize=False, max_seq_length=16, cache_folder=str(tmp_path)
    )
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling"]
    got = model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(got, _reference(distilbert_dir, TEXTS, 16, False), atol=1e-5, rtol=1e-4)


def test_unknown_repo_is_inspected_and_logged(hub_server, hub_repo_id, distilbert_dir, tmp_path, caplog):
    """An unknown repo with modules.json (Normalize) and a mean-pooling folder keeps what it declares."""
    from dexml_hf.hub import load_dexml_model

    folder = _with_pooling_folder(distilbert_dir, tmp_path / "repo", mode="mean")
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    commit = _push(folder, hub_repo_id)
    with caplog.at_level(logging.INFO, logger="dexml_hf.hub"):
        model = load_dexml_model(hub_repo_id, revision=commit, device="cpu", cache_folder=str(tmp_path / "c"))
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Normalize"]
    assert model[1].pooling_mode == "mean"
    log = caplog.text
    assert "pooling=mean (1_Pooling/config.json)" in log and "normalize=True (modules.json)" in log


def test_unknown_local_folder_defaults_to_cls_unnormalised(distilbert_dir, caplog):
    from dexml_hf.hub import load_dexml_model

    with caplog.at_level(logging.INFO, logger="dexml_hf.hub"):
        model = load_dexml_model(str(distilbert_dir), device="cpu")
    assert "pooling=cls (default)" in caplog.text and "normalize=False (default)" in caplog.text
    assert model.max_seq_length == 128
    got = model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(got, _reference(distilbert_dir, TEXTS, 128, False), atol=1e-5, rtol=1e-4)


def test_saved_model_reloads_with_plain_sentence_transformer(distilbert_dir, tmp_path):
    """After ``save`` the pipeline is a regular SentenceTransformer folder: same embeddings, no helper needed."""
    from sentence_transformers import SentenceTransformer

    from dexml_hf.hub import load_dexml_model

    model = load_dexml_model(str(distilbert_dir), device="cpu", normalize=True, max_seq_length=32)
    model.save(str(tmp_path / "st"))
    reloaded = SentenceTransformer(str(tmp_path / "st"), device="cpu")
    assert reloaded.max_seq_length == 32
    torch.testing.assert_close(
        reloaded.encode(TEXTS, convert_to_tensor=True),
        _reference(distilbert_dir, TEXTS, 32, True),
        atol=1e-5,
        rtol=1e-4,
    )


def test_broken_pooling_config_names_the_file(distilbert_dir, tmp_path):
    from dexml_hf.hub import load_dexml_model

    folder = _with_pooling_folder(distilbert_dir, tmp_path / "repo")
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"1_Pooling/config.json"):
        load_dexml_model(str(folder))


def test_registry_lists_the_released_checkpoints():
    from dexml_hf.hub import DEXML_CHECKPOINTS, get_checkpoint

    assert set(DEXML_CHECKPOINTS) == set(RELEASED)
    for repo_id, (normalize, max_length) in RELEASED.items():
        entry = get_checkpoint(repo_id.upper() + "/")
        assert (entry.normalize, entry.max_seq_length, entry.pooling_mode) == (normalize, max_length, "cls")
    assert get_checkpoint("quicktensor/dexml_eurlex-4k").precision_at_1 == pytest.approx(86.78)
    assert get_checkpoint("someone/else") is None


def test_registry_records_the_text_each_checkpoint_was_trained_on():
    from dexml_hf.data import LABEL_TEXT_MODES, QUERY_TEXT_MODES
    from dexml_hf.hub import DEXML_CHECKPOINTS, resolve_text_modes

    wiki = "quicktensor/dexml_lf-wikipedia-500k"
    assert resolve_text_modes(wiki) == ("wikipedia", "wikipedia")
    assert resolve_text_modes(wiki.upper() + "@main") == ("wikipedia", "wikipedia")
    assert resolve_text_modes(wiki, query_text_mode="title") == ("title", "wikipedia")  # explicit wins
    assert resolve_text_modes("quicktensor/dexml_lf-amazontitles-131k") == ("title", "title")
    assert resolve_text_modes("someone/else") == (None, None)  # unknown: the evaluator's default
    assert resolve_text_modes("someone/else", "content", "title_alt") == ("content", "title_alt")
    for entry in DEXML_CHECKPOINTS.values():
        assert entry.query_text_mode in QUERY_TEXT_MODES and entry.label_text_mode in LABEL_TEXT_MODES


def test_wikipedia_checkpoint_is_evaluated_on_the_reference_text(hub_server, distilbert_dir, tmp_path):
    """The evaluation path of the released Wikipedia checkpoint: registry text modes -> evaluator -> scores of the
    lower-cased, split texts (written out by hand here), not of the raw ones."""
    import numpy as np
    import scipy.sparse as sp

    from dexml_hf.data import XMCDataset, text_table
    from dexml_hf.factory import build_evaluator
    from dexml_hf.hub import load_dexml_model, resolve_text_modes

    repo_id = "quicktensor/dexml_lf-wikipedia-500k"
    commit = _push(distilbert_dir, repo_id)
    model = load_dexml_model(repo_id, revision=commit, device="cpu", cache_folder=str(tmp_path / "c"))
    queries = text_table(uid=["0", "1"], title=["Ada_Lovelace", "C++"], content=["Mathematician (1815–1852).", ""])
    labels = text_table(uid=["a", "b"], title=["English_mathematicians", "Programming_languages"])
    truth = sp.csr_matrix(np.array([[1, 0], [0, 1]], dtype=np.float32))
    dataset = XMCDataset({"train": queries, "test": queries}, labels, {"train": truth, "test": truth}, name="wiki")

    query_mode, label_mode = resolve_text_modes(repo_id)
    evaluator = build_evaluator(dataset, "test", query_mode, label_mode, ks=(1,))
    expected_queries = ["ada lovelace ada lovelace mathematician 1815 1852 .", "c c"]
    expected_labels = ["english mathematicians", "programming languages"]
    assert evaluator.queries == expected_queries and evaluator.label_texts == expected_labels
    scores, ids = evaluator.compute_topk(model)
    q = _reference(distilbert_dir, expected_queries, 128, False)
    lab = _reference(distilbert_dir, expected_labels, 128, False)
    reference = (q @ lab.T).numpy()
    np.testing.assert_array_equal(ids, np.argsort(-reference, axis=1))
    np.testing.assert_allclose(scores, np.sort(reference, axis=1)[:, ::-1], rtol=1e-4, atol=1e-4)
    raw = _reference(distilbert_dir, ["Ada_Lovelace Mathematician (1815–1852)."], 128, False)
    assert not torch.allclose(raw[0], q[0], atol=1e-4)  # the preprocessing changes what the model sees


def test_extra_modules_pipeline_takes_the_options_given(distilbert_dir, tmp_path):
    """A pipeline with a Dense head loads as it is, then pooling / normalize / max_seq_length given are applied."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer

    from dexml_hf.hub import load_dexml_model

    transformer = Transformer(str(distilbert_dir), max_seq_length=64)
    torch.manual_seed(1)
    dense = Dense(32, 16)
    SentenceTransformer(modules=[transformer, Pooling(32, "mean"), dense]).save(str(tmp_path / "st"))
    model = load_dexml_model(str(tmp_path / "st"), device="cpu", normalize=True, max_seq_length=16, pooling_mode="cls")
    assert [type(m).__name__ for m in model] == ["Transformer", "Pooling", "Dense", "Normalize"]
    assert model[1].pooling_mode == "cls" and model.max_seq_length == 16 and model.similarity_fn_name == "cosine"
    with torch.no_grad():
        head = dense({"sentence_embedding": _reference(distilbert_dir, TEXTS, 16, False)})["sentence_embedding"]
    expected = torch.nn.functional.normalize(head, dim=-1)
    torch.testing.assert_close(model.encode(TEXTS, convert_to_tensor=True), expected, atol=1e-5, rtol=1e-4)
    # without options the pipeline is unchanged
    plain = load_dexml_model(str(tmp_path / "st"), device="cpu")
    assert [type(m).__name__ for m in plain] == ["Transformer", "Pooling", "Dense"] and plain[1].pooling_mode == "mean"


def test_rebuilt_sentence_transformers_repo_keeps_prompts_and_similarity(
    hub_server, hub_repo_id, distilbert_dir, tmp_path
):
    """A saved DEXML model reloaded from the Hub keeps its prompts, default prompt and similarity through the rebuild."""
    from dexml_hf.hub import load_dexml_model

    model = load_dexml_model(str(distilbert_dir), device="cpu", max_seq_length=32)
    model.prompts = {"query": "query: ", "document": "passage: "}
    model.default_prompt_name = "query"
    model.similarity_fn_name = "cosine"  # cosine on unnormalised embeddings: what normalize=False alone would not say
    model.save(str(tmp_path / "saved"))
    commit = _push(tmp_path / "saved", hub_repo_id)
    loaded = load_dexml_model(hub_repo_id, revision=commit, device="cpu", cache_folder=str(tmp_path / "c"))
    assert [type(m).__name__ for m in loaded] == ["Transformer", "Pooling"]
    assert loaded.prompts["query"] == "query: " and loaded.prompts["document"] == "passage: "
    assert loaded.default_prompt_name == "query" and loaded.similarity_fn_name == "cosine"
    short = [TEXTS[0], TEXTS[2]]  # (under the 32-token limit, where prompt + text is simply the concatenation)
    torch.testing.assert_close(
        loaded.encode(short, prompt_name="query", convert_to_tensor=True),
        _reference(distilbert_dir, ["query: " + t for t in short], 32, False),
        atol=1e-5,
        rtol=1e-4,
    )
    # normalize given: the similarity follows it
    dot = load_dexml_model(hub_repo_id, revision=commit, normalize=False, cache_folder=str(tmp_path / "c"))
    assert dot.similarity_fn_name == "dot" and dot.prompts["query"] == "query: "


def test_max_seq_length_beyond_the_position_table_is_refused(distilbert_dir):
    from dexml_hf.errors import UsageError
    from dexml_hf.hub import load_dexml_model

    with pytest.raises(UsageError, match=r"max_seq_length=300 exceeds the 256 positions"):
        load_dexml_model(str(distilbert_dir), max_seq_length=300)
