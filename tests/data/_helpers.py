"""Small generated XMC datasets and an equality assertion that says what differs."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from dexml_hf.data import XMCDataset, text_table


def make_dataset(
    seed: int = 0,
    n_labels: int = 12,
    sizes=(("train", 30), ("test", 10), ("validation", 6)),
    relevance: bool = True,
    content: bool = True,
    tag_names: bool = False,
    filters: bool = True,
    name: str = "tiny",
) -> XMCDataset:
    """Random queries with 0-4 labels (some queries without labels; label n_labels-1 never in train)."""
    rng = np.random.default_rng(seed)
    words = ["alpha", "béta", "gamma", "δέλτα", "e\u0301psilon", "zeta", 'quote"d', "tab\tbed", "日本"]
    if tag_names:
        label_titles = [f"tag-{i:02d}" for i in range(n_labels)]
    else:
        label_titles = [f"label {i} " + " ".join(rng.choice(words, 2)) for i in range(n_labels)]
    labels = text_table(
        uid=[f"L{i}" for i in range(n_labels)],
        title=label_titles,
        content=[("alt; name " + str(i)) if content and i % 2 else "" for i in range(n_labels)],
    )
    queries, matrices, pairs = {}, {}, {}
    for split, n in sizes:
        titles = [f"{split} {i} " + " ".join(rng.choice(words, 3)) for i in range(n)]
        contents = [" ".join(rng.choice(words, 5)) if content else "" for _ in range(n)]
        queries[split] = text_table(uid=[f"{split[0]}{i}" for i in range(n)], title=titles, content=contents)
        dense = np.zeros((n, n_labels), dtype=np.float32)
        for i in range(n):
            if i % 7 == 3:
                continue  # a query without labels
            k = rng.integers(1, 5)
            pool = n_labels - 1 if split == "train" else n_labels
            ids = rng.choice(pool, size=k, replace=False)
            dense[i, ids] = rng.choice([0.5, 1.0, 2.0, 3.0], size=k) if relevance else 1.0
        matrices[split] = sp.csr_matrix(dense)
        if filters and split != "validation":
            pairs[split] = np.array([[0, 1], [2, 5], [n - 1, 0]])
    return XMCDataset(queries, labels, matrices, pairs, name=name)


def assert_same(a: XMCDataset, b: XMCDataset, check_meta: bool = True) -> None:
    assert a.splits == b.splits
    assert a.num_labels == b.num_labels
    if check_meta:
        assert (a.name, a.family) == (b.name, b.family)
    assert a.labels.select_columns(["uid", "title", "content"]).to_dict() == b.labels.to_dict()
    for split in a.splits:
        assert a.queries[split].to_dict() == b.queries[split].to_dict(), split
        ma, mb = a.label_matrices[split], b.label_matrices[split]
        assert ma.shape == mb.shape, split
        assert ma.dtype == mb.dtype == np.float32
        np.testing.assert_array_equal(ma.indptr, mb.indptr)
        np.testing.assert_array_equal(ma.indices, mb.indices)
        np.testing.assert_array_equal(ma.data, mb.data)
    assert sorted(a.filters) == sorted(b.filters)
    for split in a.filters:
        np.testing.assert_array_equal(a.filters[split], b.filters[split])
