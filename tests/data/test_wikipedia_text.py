"""The ``wikipedia`` text mode (the DEXML reference's LF-Wikipedia-500K preprocessing) and the WikiSeeAlso family.

Expected strings are written out by hand; the random check compares with a character-by-character tokenizer
written here (lower-case with ``str.lower``, keep runs of ``a-z``, ``0-9`` and ``.``), not with the package's code.
"""

from __future__ import annotations

import math
import random
import string

import numpy as np
import pytest
import scipy.sparse as sp

from dexml_hf.data import XMCDataset, infer_family, text_table, wikipedia_text, wikipedia_text_array
from dexml_hf.factory import build_evaluator

KEPT = set(string.ascii_lowercase + string.digits + ".")


def _by_hand(text: str) -> str:
    words, current = [], ""
    for char in text.lower():
        if char in KEPT:
            current += char
        elif current:
            words.append(current)
            current = ""
    if current:
        words.append(current)
    return " ".join(words)


@pytest.mark.parametrize(
    "raw,expected",
    [
        (
            "Albert_Einstein (1879–1955): Physicist, Nobel-Prize 1921.",
            "albert einstein 1879 1955 physicist nobel prize 1921.",
        ),
        ("  U.S.A. vs. e.g.  ", "u.s.a. vs. e.g."),
        ("Café Zürich", "caf z rich"),  # non-ASCII letters separate, as in the reference
        ("İstanbul", "i stanbul"),  # Python lower-cases İ to i + a combining dot
        ("\u212aelvin", "kelvin"),  # the Kelvin sign lower-cases to k
        ("tab\tnew\nline\r\nend", "tab new line end"),
        ("C++ & C#", "c c"),
        ("", ""),
        ("--- ___ !!!", ""),
        ("日本 Tokyo", "tokyo"),
    ],
)
def test_wikipedia_text_by_hand(raw, expected):
    assert wikipedia_text(raw) == expected
    assert _by_hand(raw) == expected  # the test's own tokenizer agrees on the hand-written cases


def test_wikipedia_text_matches_the_rule_on_random_strings():
    rng = random.Random(0)
    pool = list(string.printable) + list("ÀéüßİıΣσς\u212a\u0307\u00a0\u2028日本—…·") + ["\U0001f600"]
    texts = ["".join(rng.choice(pool) for _ in range(rng.randint(0, 40))) for _ in range(2000)]
    import pyarrow as pa

    got = wikipedia_text_array(pa.array(texts, type=pa.string())).to_pylist()
    assert got == [_by_hand(t) for t in texts]


def _wiki_dataset() -> XMCDataset:
    queries = text_table(
        uid=["0", "1", "2"],
        title=["Anarchism", "Ada Lovelace", "X"],
        content=["Anarchism is a political_philosophy (see: Anarchy).", "", "  "],
    )
    labels = text_table(uid=["a", "b"], title=["Political_philosophy", "Women_in_Computing,_19th-century"])
    matrix = sp.csr_matrix(np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32))
    return XMCDataset({"train": queries, "test": queries}, labels, {"train": matrix, "test": matrix}, name="tiny-wiki")


WIKI_QUERIES = [
    "anarchism anarchism anarchism is a political philosophy see anarchy .",  # ")." leaves a lone "."
    "ada lovelace ada lovelace",
    "x x",
]
WIKI_LABELS = ["political philosophy", "women in computing 19th century"]


def test_wikipedia_modes_of_queries_labels_views_and_evaluators():
    ds = _wiki_dataset()
    assert ds.query_texts("train", "wikipedia") == WIKI_QUERIES
    assert ds.label_texts("wikipedia") == WIKI_LABELS
    assert ds.query_texts("train", "wikipedia", max_chars=12) == ["anarchism an", "ada lovelace", "x x"]
    view = ds.training_view(query_text="wikipedia", label_text="wikipedia")
    ids = np.asarray(view["label"])
    assert list(view["query"]) == [WIKI_QUERIES[q] for q in ids[:, 0]]
    assert list(view["positive"]) == [WIKI_LABELS[j] for j in ids[:, 1]]
    evaluator = build_evaluator(ds, "test", query_text_mode="wikipedia", label_text_mode="wikipedia", ks=(1,))
    assert evaluator.queries == WIKI_QUERIES and evaluator.label_texts == WIKI_LABELS
    # the other modes are untouched
    assert (
        ds.query_texts("train", "title_content")[0] == "Anarchism Anarchism is a political_philosophy (see: Anarchy)."
    )


def test_wikipedia_is_a_choice_of_the_training_options():
    from dexml_hf.script_args import parse_train_args

    _, _, args = parse_train_args(["--query_text_mode", "wikipedia", "--label_text_mode", "wikipedia"])
    assert (args.query_text_mode, args.label_text_mode) == ("wikipedia", "wikipedia")


@pytest.mark.parametrize(
    "name,family",
    [
        ("LF-WikiSeeAlso-320K", "generic"),
        ("WikiSeeAlsoTitles-350K", "generic"),
        ("LF-WikiSeeAlsoTitles-320K", "generic"),
        ("lf_wiki_see_also", "generic"),
        ("LF-Wikipedia-500K", "wikipedia"),
        ("WikiTitles-500K", "wikipedia"),
        ("LF-AmazonTitles-131K", "amazon"),
    ],
)
def test_family_inference_follows_the_reference(name, family):
    assert infer_family(name) == family


def test_wikiseealso_propensities_use_a_055_b_15():
    # 4 train queries, label frequencies 3, 1, 0
    dense = np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    q = text_table(uid=list("abcd"), title=list("abcd"))
    lab = text_table(uid=list("xyz"), title=list("xyz"))
    ds = XMCDataset({"train": q}, lab, {"train": sp.csr_matrix(dense)}, name="LF-WikiSeeAlso-320K")
    assert ds.family == "generic"
    a, b = 0.55, 1.5
    c = (math.log(4) - 1) * (b + 1) ** a
    np.testing.assert_allclose(ds.inv_propensity(), [1 + c * (n + b) ** (-a) for n in (3, 1, 0)], rtol=1e-12)
