"""Training views (sampling properties), text modes, propensities and families."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.data import XMCDataset, infer_family, text_table
from tests.data._helpers import make_dataset


@pytest.fixture(scope="module")
def ds():
    return make_dataset(seed=11, sizes=(("train", 200), ("test", 20)))


def test_rows_are_true_positives_with_matching_texts(ds):
    view = ds.training_view(epoch=0, seed=0)
    assert view.column_names == ["query", "positive", "label"]
    m = ds.label_matrices["train"]
    with_labels = [i for i in range(m.shape[0]) if m.indptr[i + 1] > m.indptr[i]]
    labels = np.asarray(view["label"])
    assert labels.shape == (len(with_labels), 2)
    assert labels[:, 0].tolist() == with_labels  # one row per query with >= 1 positive, in order
    dense = m.toarray()
    assert (dense[labels[:, 0], labels[:, 1]] > 0).all()
    queries, names = ds.query_texts("train"), ds.label_texts()
    assert list(view["query"]) == [queries[q] for q in labels[:, 0]]
    assert list(view["positive"]) == [names[j] for j in labels[:, 1]]


def test_draws_change_with_epoch_and_are_deterministic(ds):
    def draw(epoch, seed):
        return np.asarray(ds.training_view(epoch=epoch, seed=seed)["label"])[:, 1]

    a = draw(0, 0)
    np.testing.assert_array_equal(a, draw(0, 0))
    assert (a != draw(1, 0)).any()
    assert (a != draw(0, 1)).any()
    # over many epochs every positive of a multi-label query is drawn
    m = ds.label_matrices["train"]
    row = next(i for i in range(m.shape[0]) if m.indptr[i + 1] - m.indptr[i] >= 3)
    pos = list(np.asarray(ds.training_view(epoch=0)["label"])[:, 0]).index(row)
    seen = {int(np.asarray(ds.training_view(epoch=e)["label"])[pos, 1]) for e in range(60)}
    assert seen == set(m.indices[m.indptr[row] : m.indptr[row + 1]].tolist())


def _frequency_dataset(n=3000):
    # every query has labels 0, 1, 2 with relevance 1, 2, 7 (and label 3 never)
    dense = np.tile(np.array([[1.0, 2.0, 7.0, 0.0]], dtype=np.float32), (n, 1))
    queries = text_table(uid=[str(i) for i in range(n)], title=["q"] * n)
    labels = text_table(uid=list("abcd"), title=list("abcd"))
    return XMCDataset({"train": queries}, labels, {"train": sp.csr_matrix(dense)})


@pytest.mark.parametrize("sampling,expected", [("uniform", [1 / 3, 1 / 3, 1 / 3]), ("relevance", [0.1, 0.2, 0.7])])
def test_sampling_frequencies(sampling, expected):
    ds = _frequency_dataset()
    _, picked = ds.sample_positives(sampling=sampling, seed=3)
    freq = np.bincount(picked, minlength=4) / len(picked)
    np.testing.assert_allclose(freq[:3], expected, atol=0.03)
    assert freq[3] == 0


def test_bad_sampling_and_modes(ds):
    with pytest.raises(ValueError, match="sampling"):
        ds.training_view(sampling="bogus")
    with pytest.raises(ValueError, match="query text mode"):
        ds.query_texts("train", mode="abstract")
    with pytest.raises(ValueError, match="label text mode"):
        ds.label_texts(mode="desc")


def test_text_modes():
    queries = text_table(
        uid=["0", "1", "2"], title=["Title one", "", "Τίτλος"], content=["body text", "only body", ""]
    )
    labels = text_table(uid=["a", "b"], title=["glue", "retail trade"], content=["adhesive", ""])
    ds = XMCDataset({"train": queries}, labels, {"train": sp.csr_matrix(np.eye(3, 2, dtype=np.float32))})
    assert ds.query_texts("train", "title") == ["Title one", "", "Τίτλος"]
    assert ds.query_texts("train", "content") == ["body text", "only body", ""]
    assert ds.query_texts("train", "title_content") == ["Title one body text", "only body", "Τίτλος"]
    assert ds.query_texts("train", "title_content", max_chars=12) == ["Title one bo", "only body", "Τίτλος"]
    assert ds.query_texts("train", "title", max_chars=3) == ["Tit", "", "Τίτ"]
    assert ds.label_texts("title") == ["glue", "retail trade"]
    assert ds.label_texts("title_alt") == ["glue; adhesive", "retail trade"]
    view = ds.training_view(query_text="title_content", label_text="title_alt", max_chars=12)
    assert list(view["query"]) == ["Title one bo", "only body"]
    assert list(view["positive"]) == ["glue; adhesive", "retail trade"]


def test_negatives_columns(ds):
    rng = np.random.default_rng(0)
    negatives = rng.integers(0, ds.num_labels, size=(ds.num_queries("train"), 2))
    view = ds.training_view(negatives=negatives)
    assert view.column_names == ["query", "positive", "negative_1", "negative_2", "label"]
    labels = np.asarray(view["label"])
    np.testing.assert_array_equal(labels[:, 2:], negatives[labels[:, 0]])
    names = ds.label_texts()
    assert list(view["negative_2"]) == [names[j] for j in labels[:, 3]]


def test_view_works_after_select(ds):
    """Query tables that carry an indices mapping (after .select) are read through the mapping."""
    shuffled = ds.queries["train"].select(list(range(len(ds.queries["train"])))[::-1])
    other = XMCDataset({"train": shuffled}, ds.labels, {"train": ds.label_matrices["train"][::-1]})
    assert other.query_texts("train") == ds.query_texts("train")[::-1]


def test_propensity_matches_hand_formula():
    # 4 train queries, label frequencies 3, 1, 0
    dense = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    q = text_table(uid=list("abcd"), title=list("abcd"))
    lab = text_table(uid=list("xyz"), title=list("xyz"))
    ds = XMCDataset({"train": q}, lab, {"train": sp.csr_matrix(dense)})
    np.testing.assert_array_equal(ds.label_frequencies(), [3, 1, 0])
    for (a, b), got in [((0.55, 1.5), ds.inv_propensity()), ((0.6, 2.6), ds.inv_propensity(0.6, 2.6))]:
        c = (math.log(4) - 1) * (b + 1) ** a
        expected = [1 + c * (n + b) ** (-a) for n in (3, 1, 0)]
        np.testing.assert_allclose(got, expected, rtol=1e-12)
    wiki = XMCDataset({"train": q}, lab, {"train": sp.csr_matrix(dense)}, family="wikipedia")
    c = (math.log(4) - 1) * 1.4**0.5
    np.testing.assert_allclose(wiki.inv_propensity()[2], 1 + c * 0.4**-0.5)
    assert ds.summary()["labels_unseen_in_train"] == 1
    assert ds.summary()["splits"]["train"]["queries_without_labels"] == 1


@pytest.mark.parametrize(
    "name,family",
    [
        ("LF-AmazonTitles-131K", "amazon"),
        ("AmazonCat-13K", "amazon"),
        ("LF-Wikipedia-500K", "wikipedia"),
        ("WikiSeeAlsoTitles-350K", "generic"),  # the reference's get_inv_prop: WikiSeeAlso is not "wikipedia"
        ("EURLex-4K", "generic"),
        (None, "generic"),
    ],
)
def test_family_inference(name, family):
    assert infer_family(name) == family


def test_family_override_and_validation():
    ds = make_dataset(name="LF-AmazonTitles-131K")
    assert ds.family == "amazon"
    other = XMCDataset(ds.queries, ds.labels, ds.label_matrices, family="generic", name=ds.name)
    assert other.family == "generic"
    with pytest.raises(ValueError, match="unknown family"):
        XMCDataset(ds.queries, ds.labels, ds.label_matrices, family="books")
    with pytest.raises(ValueError, match="shape"):
        XMCDataset(ds.queries, ds.labels, {**ds.label_matrices, "test": ds.label_matrices["train"]})
