"""MovieLens 100K as an XMC problem: a user (described by text) -> the movies they will like.

The DEXML authors' follow-ups cast recommendation as multi-label retrieval: every movie is a label
(its title is the label text), a user is a query. The query text is built from the user's history
in the *train* part only, so nothing of the test part leaks into the input:

- **query text**: the titles of the movies the user rated >= ``min_rating`` in ``u1.base``, most
  recent first (ties by item id), truncated to ``max_titles``, joined with ``"; "``;
- **labels**: all 1,682 movies of ``u.item`` (title; ``content`` = genres and release date);
- **train positives**: the user's ``u1.base`` movies rated >= ``min_rating`` (``train_positives="all"``,
  so the encoder learns user -> movie; the most recent ones are also in the text); with
  ``train_positives="held_out"``, a seeded random ``held_out_fraction`` of them that is *removed*
  from that user's train text; with ``train_positives="unseen"`` (the recipe's choice), every liked
  movie that is *not* in the text, which is the test task (predict liked movies beyond the history
  shown) and never makes a liked movie a negative. ``views`` > 1 (``"unseen"`` only) adds rows with
  seeded random subsets of the liked movies as the text: more distinct (history, rest) pairs per user;
- **test positives**: the user's ``u1.test`` movies rated >= ``min_rating``; test users with none
  are dropped (they would score zero whatever the model does);
- **test filters**: every movie the user rated in ``u1.base`` (any rating): a recommender should
  not predict what the user has already seen, and ``u1.base`` / ``u1.test`` never share a
  (user, movie) pair, so the filter removes no test positive.

Query ids are row indices, label id = MovieLens item id - 1. ``u.item`` lists a few movies twice
under two ids with the same title (e.g. "Chasing Amy (1997)"); both are kept, as the ratings use both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from dexml_hf.data._utils import data_error
from dexml_hf.data.registry import register_format
from dexml_hf.errors import DataError

__all__ = ["MovieLensTables", "load_movielens", "movielens_tables", "read_items", "read_ratings"]

_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
]  # fmt: skip


def read_ratings(path: str | os.PathLike) -> np.ndarray:
    """``u.data`` / ``u1.base`` / ``u1.test``: an ``(n, 4)`` int64 array of user, item, rating, timestamp."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: MovieLens ratings file not found")
    lines = path.read_text(encoding="ascii", errors="replace").splitlines()
    rows = [line.split() for line in lines if line.strip()]
    try:
        ratings = np.array(rows, dtype=np.int64)
        if ratings.ndim != 2 or ratings.shape[1] != 4:
            raise ValueError
    except ValueError:
        for number, line in enumerate(lines, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 4:
                raise data_error(path, number, None, f"expected 4 tab-separated fields, got {len(fields)}") from None
            for name, value in zip(("user", "item", "rating", "timestamp"), fields):
                if not value.lstrip("-").isdigit():
                    raise data_error(path, number, name, f"expected an integer, got {value!r}") from None
        raise
    bad = np.flatnonzero((ratings[:, 0] < 1) | (ratings[:, 1] < 1))
    if len(bad):
        raise data_error(path, _line_of(lines, bad[0]), "user/item", f"ids start at 1, got {ratings[bad[0], :2]}")
    return ratings


def _line_of(lines: list[str], row: int) -> int:
    """1-based file line of the ``row``-th non-blank line."""
    seen = -1
    for number, line in enumerate(lines, 1):
        seen += bool(line.strip())
        if seen == row:
            return number
    return len(lines)


def read_items(path: str | os.PathLike) -> tuple[list[str], list[str]]:
    """``u.item`` (latin-1, ``|``-separated): movie titles and a genre / release-date description, by item id."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: MovieLens item file not found")
    titles: list[str] = []
    contents: list[str] = []
    for number, line in enumerate(path.read_bytes().decode("latin-1").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 5 + len(_GENRES):
            raise data_error(
                path, number, None, f"expected {5 + len(_GENRES)} '|'-separated fields, got {len(fields)}"
            )
        if not fields[0].isdigit() or int(fields[0]) != len(titles) + 1:
            raise data_error(
                path, number, "movie id", f"expected {len(titles) + 1} (ids are 1..n in order), got {fields[0]!r}"
            )
        flags = fields[5 : 5 + len(_GENRES)]
        if any(flag not in ("0", "1") for flag in flags):
            raise data_error(path, number, "genres", f"expected 0/1 flags, got {flags}")
        genres = [genre for genre, flag in zip(_GENRES, flags) if flag == "1" and genre != "unknown"]
        titles.append(fields[1].strip())
        released = f"released {fields[2]}" if fields[2] else ""
        contents.append("; ".join(part for part in (", ".join(genres), released) if part))
    return titles, contents


@dataclass
class MovieLensTables:
    """The converted pieces before they become an ``XMCDataset`` (plain Python / scipy, for tests and scripts)."""

    label_titles: list[str]
    label_contents: list[str]
    query_users: dict[str, np.ndarray]  # split -> MovieLens user id of each row
    query_texts: dict[str, list[str]]
    label_matrices: dict[str, sp.csr_matrix]  # split -> users x movies, 1.0 for a positive
    filters: dict[str, np.ndarray]  # split -> (k, 2) int64 (row, label id) pairs to drop before top-k
    ratings: dict[str, np.ndarray]  # "train" / "test" -> the raw (n, 4) ratings


def _liked_histories(train: np.ndarray, users: np.ndarray, min_rating: int) -> list[np.ndarray]:
    """Per user: the item ids of their liked train movies, most recent first (ties by item id)."""
    liked = train[train[:, 2] >= min_rating]
    liked = liked[np.lexsort((liked[:, 1], -liked[:, 3], liked[:, 0]))]
    starts = np.searchsorted(liked[:, 0], users, side="left")
    ends = np.searchsorted(liked[:, 0], users, side="right")
    return [liked[start:end, 1] for start, end in zip(starts, ends)]


def _titles_text(titles: list[str], items) -> str:
    return "; ".join(titles[int(i) - 1] for i in items)


def _user_texts(
    train: np.ndarray,
    titles: list[str],
    users: np.ndarray,
    min_rating: int,
    max_titles: int,
    drop: set[tuple[int, int]] | None = None,
) -> list[str]:
    """Per user: titles of liked train movies, most recent first (ties by item), at most ``max_titles``."""
    texts = []
    for user, items in zip(users, _liked_histories(train, users, min_rating)):
        kept = [i for i in items if drop is None or (int(user), int(i)) not in drop]
        texts.append(_titles_text(titles, kept[:max_titles]))
    return texts


def _unseen_views(
    train: np.ndarray, titles: list[str], users: np.ndarray, min_rating: int, max_titles: int, views: int, seed: int
) -> tuple[np.ndarray, list[str], sp.csr_matrix]:
    """``views`` rows per user: shown liked titles in the text, every other liked train movie a positive.

    View 0 shows the ``max_titles`` most recent liked movies (the test queries' text); view v >= 1 a seeded random
    ``max_titles`` of them, still most recent first. Rows left without a positive (a user whose every liked movie
    fits in the text) are dropped.
    """
    rng = np.random.default_rng(seed)
    row_users, texts, rows, cols = [], [], [], []
    for user, items in zip(users, _liked_histories(train, users, min_rating)):
        for view in range(views):
            if view == 0:
                shown = np.arange(min(max_titles, len(items)))
            else:
                shown = np.sort(rng.choice(len(items), size=min(max_titles, len(items)), replace=False))
            hidden = np.setdiff1d(np.arange(len(items)), shown)
            if len(hidden) == 0:
                continue
            rows.extend([len(texts)] * len(hidden))
            cols.extend(items[hidden] - 1)
            row_users.append(user)
            texts.append(_titles_text(titles, items[shown]))
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64))),
        shape=(len(texts), len(titles)),
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    matrix.sort_indices()
    return np.array(row_users, dtype=np.int64), texts, matrix


def _positives(ratings: np.ndarray, users: np.ndarray, num_labels: int, min_rating: int) -> sp.csr_matrix:
    liked = ratings[ratings[:, 2] >= min_rating]
    row_of = {int(u): r for r, u in enumerate(users)}
    keep = np.array([int(u) in row_of for u in liked[:, 0]], dtype=bool)
    liked = liked[keep]
    rows = np.array([row_of[int(u)] for u in liked[:, 0]], dtype=np.int64)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, liked[:, 1] - 1)), shape=(len(users), num_labels)
    )
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    matrix.sort_indices()
    return matrix


def movielens_tables(
    path: str | os.PathLike,
    fold: int = 1,
    min_rating: int = 4,
    max_titles: int = 20,
    train_positives: str = "all",
    held_out_fraction: float = 0.2,
    seed: int = 0,
    views: int = 1,
) -> MovieLensTables:
    """Convert ``u.item`` + ``u{fold}.base`` / ``u{fold}.test`` (see the module docstring for the choices)."""
    if train_positives not in ("all", "held_out", "unseen"):
        raise ValueError(f"train_positives must be 'all', 'held_out' or 'unseen', got {train_positives!r}")
    if views < 1 or (views > 1 and train_positives != "unseen"):
        raise ValueError(f"views={views}: more than one text view per user needs train_positives='unseen'")
    if not 0 < held_out_fraction < 1:
        raise ValueError(f"held_out_fraction must be in (0, 1), got {held_out_fraction}")
    path = Path(path)
    titles, contents = read_items(path / "u.item")
    train = read_ratings(path / f"u{fold}.base")
    test = read_ratings(path / f"u{fold}.test")
    for name, ratings in ((f"u{fold}.base", train), (f"u{fold}.test", test)):
        if ratings[:, 1].max() > len(titles):
            row = int(np.argmax(ratings[:, 1]))
            raise data_error(
                path / name, row + 1, "item", f"item {ratings[row, 1]} is not in u.item ({len(titles)} movies)"
            )

    liked_train = train[train[:, 2] >= min_rating]
    train_users = np.unique(liked_train[:, 0])
    test_users = np.unique(test[test[:, 2] >= min_rating, 0])
    train_matrix = _positives(train, train_users, len(titles), min_rating)
    drop = None
    if train_positives == "held_out":
        # hide a random part of each user's liked movies from the text and make only those the positives
        rng = np.random.default_rng(seed)
        hidden = rng.random(train_matrix.nnz) < held_out_fraction
        rows = np.repeat(np.arange(train_matrix.shape[0]), np.diff(train_matrix.indptr))
        drop = {(int(train_users[r]), int(c) + 1) for r, c in zip(rows[hidden], train_matrix.indices[hidden])}
        keep = hidden
        train_matrix = sp.csr_matrix(
            (train_matrix.data[keep], (rows[keep], train_matrix.indices[keep])), shape=train_matrix.shape
        )
        train_matrix.sort_indices()
        has = np.diff(train_matrix.indptr) > 0
        train_users, train_matrix = train_users[has], train_matrix[has]
    if train_positives == "unseen":
        train_users, train_texts, train_matrix = _unseen_views(
            train, titles, train_users, min_rating, max_titles, views, seed
        )
    else:
        train_texts = _user_texts(train, titles, train_users, min_rating, max_titles, drop)
    test_matrix = _positives(test, test_users, len(titles), min_rating)

    # filters: (test row, label id) for every movie the test user rated in the train part
    row_of = {int(u): r for r, u in enumerate(test_users)}
    seen = train[np.isin(train[:, 0], test_users)]
    test_filters = np.unique(
        np.stack([np.array([row_of[int(u)] for u in seen[:, 0]], dtype=np.int64), seen[:, 1] - 1], axis=1), axis=0
    )
    return MovieLensTables(
        label_titles=titles,
        label_contents=contents,
        query_users={"train": train_users, "test": test_users},
        query_texts={
            "train": train_texts,
            "test": _user_texts(train, titles, test_users, min_rating, max_titles),
        },
        label_matrices={"train": train_matrix, "test": test_matrix},
        filters={"test": test_filters.reshape(-1, 2)},
        ratings={"train": train, "test": test},
    )


def load_movielens(
    path: str | os.PathLike,
    name: str | None = None,
    family: str | None = None,
    fold: int = 1,
    min_rating: int = 4,
    max_titles: int = 20,
    train_positives: str = "all",
    held_out_fraction: float = 0.2,
    seed: int = 0,
    views: int = 1,
):
    """MovieLens 100K (``../shared/data/movielens-100k``) as an :class:`~dexml_hf.data.XMCDataset`.

    The other arguments are :func:`movielens_tables`'; ``name`` / ``family`` as for the other readers.
    """
    from datasets import Dataset

    from dexml_hf.data.dataset import XMCDataset

    tables = movielens_tables(
        path,
        fold=fold,
        min_rating=min_rating,
        max_titles=max_titles,
        train_positives=train_positives,
        held_out_fraction=held_out_fraction,
        seed=seed,
        views=views,
    )
    queries = {
        split: Dataset.from_dict(
            {
                "uid": [f"user{u}" for u in tables.query_users[split]],
                "title": tables.query_texts[split],
                "content": [""] * len(tables.query_texts[split]),
            }
        )
        for split in ("train", "test")
    }
    labels = Dataset.from_dict(
        {
            "uid": [str(i + 1) for i in range(len(tables.label_titles))],
            "title": tables.label_titles,
            "content": tables.label_contents,
        }
    )
    return XMCDataset(
        queries=queries,
        labels=labels,
        label_matrices=tables.label_matrices,
        filters=tables.filters,
        family=family or "generic",
        name=name or f"movielens-100k-u{fold}",
    )


def _is_movielens(path: Path) -> bool:
    return path.is_dir() and all((path / n).is_file() for n in ("u.item", "u1.base", "u1.test"))


register_format("movielens", load_movielens, None, _is_movielens, "MovieLens 100K folder (u.item, u1.base, u1.test)")
