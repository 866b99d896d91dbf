"""MovieLens 100K converter: counts and positives recomputed here from the raw files with plain Python."""

from __future__ import annotations

from collections import defaultdict

import pytest

from dexml_hf.data.movielens import load_movielens, movielens_tables, read_items, read_ratings


def _raw(path):
    rows = []
    with open(path) as handle:
        for line in handle:
            user, item, rating, stamp = line.split("\t")
            rows.append((int(user), int(item), int(rating), int(stamp)))
    return rows


@pytest.fixture(scope="module")
def ml(shared_data):
    return shared_data / "movielens-100k"


@pytest.fixture(scope="module")
def tables(ml):
    return movielens_tables(ml, max_titles=5)


def test_counts_reproduce_the_u1_split(ml, tables):
    base, test, full = _raw(ml / "u1.base"), _raw(ml / "u1.test"), _raw(ml / "u.data")
    assert len(tables.ratings["train"]) == len(base) == 80_000
    assert len(tables.ratings["test"]) == len(test) == 20_000
    assert sorted(map(tuple, tables.ratings["train"].tolist())) == sorted(base)
    with open(ml / "u.item", encoding="latin-1") as handle:
        items = [line.split("|") for line in handle if line.strip()]
    assert len(tables.label_titles) == len(items) == 1682 == len({i for _, i, _, _ in full})
    assert len({u for u, _, _, _ in full}) == 943
    assert tables.label_titles[0] == items[0][1] == "Toy Story (1995)"
    assert tables.label_titles[-1] == items[-1][1]

    liked_base = {(u, i) for u, i, r, _ in base if r >= 4}
    liked_test = {(u, i) for u, i, r, _ in test if r >= 4}
    for split, liked in (("train", liked_base), ("test", liked_test)):
        users = sorted({u for u, _ in liked})
        assert tables.query_users[split].tolist() == users
        matrix = tables.label_matrices[split].tocoo()
        got = {(int(tables.query_users[split][r]), int(c) + 1) for r, c in zip(matrix.row, matrix.col)}
        assert got == liked and matrix.nnz == len(liked)
    assert tables.label_matrices["train"].nnz == 44_140 and tables.label_matrices["test"].nnz == 11_235
    assert len(tables.query_users["test"]) == 456


def test_query_text_is_recent_liked_train_titles(ml, tables):
    base = _raw(ml / "u1.base")
    titles = [line.split("|")[1] for line in open(ml / "u.item", encoding="latin-1") if line.strip()]
    history = defaultdict(list)
    for u, i, r, t in base:
        if r >= 4:
            history[u].append((-t, i))
    for row in (0, 7, len(tables.query_users["test"]) - 1):
        user = int(tables.query_users["test"][row])
        expected = "; ".join(titles[i - 1] for _, i in sorted(history[user])[:5])
        assert tables.query_texts["test"][row] == expected


def test_test_filters_are_the_seen_movies_and_drop_no_positive(ml, tables):
    base = _raw(ml / "u1.base")
    row_of = {int(u): r for r, u in enumerate(tables.query_users["test"])}
    expected = {(row_of[u], i - 1) for u, i, _, _ in base if u in row_of}
    got = set(map(tuple, tables.filters["test"].tolist()))
    assert got == expected
    truth = tables.label_matrices["test"].tocoo()
    assert not got & set(zip(truth.row.tolist(), truth.col.tolist()))


def test_held_out_mode_hides_its_positives_from_the_text(ml):
    t = movielens_tables(ml, max_titles=1000, train_positives="held_out", held_out_fraction=0.3, seed=1)
    matrix = t.label_matrices["train"]
    assert 0.2 * 44_140 < matrix.nnz < 0.4 * 44_140
    # u.item repeats a few titles under two ids (e.g. 'Chasing Amy (1997)'): check the unambiguous ones
    counts = defaultdict(int)
    for title in t.label_titles:
        counts[title] += 1
    checked = 0
    for row in range(0, matrix.shape[0], 50):
        text = t.query_texts["train"][row].split("; ")
        for label in matrix[row].indices:
            if counts[t.label_titles[label]] == 1:
                assert t.label_titles[label] not in text
                checked += 1
    assert checked > 50


def test_xmc_dataset(ml):
    ds = load_movielens(ml, max_titles=3)
    assert ds.num_labels == 1682
    assert ds.num_queries("train") == 942 and ds.num_queries("test") == 456
    assert ds.label_matrices["test"].nnz == 11_235
    view = ds.training_view(seed=0)
    assert len(view) == 942 and view.column_names[:2] == ["query", "positive"]


def test_bad_rating_line_names_file_and_line(tmp_path):
    bad = tmp_path / "u1.base"
    bad.write_text("1\t2\t5\t874965758\n1\tx\t3\t876893171\n")
    with pytest.raises(ValueError, match=r"u1.base, line 2, field 'item'"):
        read_ratings(bad)
    items = tmp_path / "u.item"
    items.write_text("1|Toy Story (1995)|01-Jan-1995||url|0|0\n")
    with pytest.raises(ValueError, match=r"u.item, line 1"):
        read_items(items)


def test_unseen_mode_makes_every_liked_movie_outside_the_text_a_positive(ml):
    base = _raw(ml / "u1.base")
    titles = [line.split("|")[1] for line in open(ml / "u.item", encoding="latin-1") if line.strip()]
    history = defaultdict(list)
    for u, i, r, t in base:
        if r >= 4:
            history[u].append((-t, i))
    t = movielens_tables(ml, max_titles=4, train_positives="unseen", views=3, seed=5)
    users, texts, matrix = t.query_users["train"], t.query_texts["train"], t.label_matrices["train"]
    assert len(users) == len(texts) == matrix.shape[0]
    # users with <= 4 liked movies have nothing left to predict; every other user gets 3 views
    expected_rows = {u: 3 for u, items in history.items() if len(items) > 4}
    got_rows = defaultdict(int)
    for u in users.tolist():
        got_rows[u] += 1
    assert got_rows == expected_rows
    duplicated = {title for title in titles if titles.count(title) > 1}
    first_row, checked = {}, 0
    for row, user in enumerate(users.tolist()):
        first_row.setdefault(user, row)
        ordered = [i for _, i in sorted(history[user])]
        if any(titles[i - 1] in duplicated for i in ordered):
            continue  # a title shared by two ids cannot be mapped back to one id
        shown_titles = texts[row].split("; ")
        shown = [i for i in ordered if titles[i - 1] in shown_titles]
        # 4 liked movies shown, most recent first; the positives are exactly the liked movies not shown
        assert len(shown) == 4 and texts[row] == "; ".join(titles[i - 1] for i in shown)
        assert set((matrix[row].indices + 1).tolist()) == set(ordered) - set(shown)
        if row == first_row[user]:  # view 0 is the test-time text: the 4 most recent
            assert shown == ordered[:4]
        checked += 1
    assert checked > 1500  # of 2,778 rows
    # the random views differ from view 0 for most users
    differing = sum(texts[r] != texts[r + 1] for r in first_row.values())
    assert differing > 0.9 * len(first_row)
    with pytest.raises(ValueError, match="views=2"):
        movielens_tables(ml, train_positives="held_out", views=2)
