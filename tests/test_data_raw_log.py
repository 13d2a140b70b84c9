"""The raw-log loader and the DEALRec time split on tiny hand-made logs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recprune.data import load_dataset, load_raw_log, split_log
from recprune.data.raw_log import split_bounds

# user, item, rating, timestamp in file order. Split 0.6 / 0.2 / 0.2 of the 10 kept rows:
# train = 6 earliest, valid = next 2, test = last 2. bob's first row ties with alice's at t=10
# and comes first in the file, so bob is user 1.
ROWS = [
    ("bob", "B", 4, 10),
    ("alice", "A", 5, 10),
    ("alice", "X", 3, 11),  # rating < 4: dropped before the split
    ("alice", "C", 4, 12),
    ("carol", "B", 5, 13),
    ("bob", "D", 4, 14),
    ("alice", "B", 5, 15),
    ("carol", "A", 5, 19),  # test
    ("bob", "F", 4, 16),  # valid; F never occurs in training (a cold item)
    ("dave", "A", 5, 17),  # valid; dave has no training interaction: dropped
    ("alice", "D", 4, 18),  # test
]
SPLIT = (0.6, 0.2, 0.2)
ITEMS = "item,title\nA,Alpha\nB,\nC,Alpha\nD,\"Delta, \"\"the\"\" game\"\nX,Ex\n"


def _frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=["user", "item", "rating", "timestamp"])


def _check(ds, *, items_expected=True) -> None:
    assert ds.n_users == 3 and ds.n_items == 5
    assert list(ds.meta["raw_user_ids"]) == ["bob", "alice", "carol"]
    np.testing.assert_array_equal(ds.user_ids, [1, 2, 3])
    assert list(ds.item_raw_ids) == [None, "B", "D", "F", "A", "C"]
    seqs = {p: [list(getattr(ds, p)[u]) for u in range(3)] for p in ("train", "valid", "test")}
    assert seqs["train"] == [[1, 2], [4, 5, 1], [1]]
    assert seqs["valid"] == [[3], [], []]
    assert seqs["test"] == [[], [2], [4]]
    assert ds.meta["period_sizes"] == [6, 2, 2]
    assert ds.meta["dropped_cold_users"] == {"valid": 1, "test": 0}
    assert ds.meta["dropped_low_rating"] == 1
    if items_expected:
        assert list(ds.titles) == [None, None, 'Delta, "the" game', None, "Alpha", "Alpha"]


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".txt", ".parquet", ".pq"])
def test_formats_give_the_same_split(tmp_path: Path, suffix: str) -> None:
    df = _frame()
    path = tmp_path / f"log{suffix}"
    items = tmp_path / "items.csv"
    items.write_text(ITEMS)
    if suffix in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False, sep="," if suffix == ".csv" else "\t")
    ds = load_raw_log(path, items=items, split=SPLIT)
    _check(ds)
    assert ds.name == "log" and ds.source == str(path)


def test_drop_cold_items(tmp_path: Path) -> None:
    kept = _frame()
    kept = kept[kept["rating"] >= 4]
    ds = split_log(kept["user"].to_numpy(dtype=object), kept["item"].to_numpy(dtype=object),
                   kept["timestamp"].to_numpy(), split=SPLIT, drop_cold_items=True)
    assert list(ds.item_raw_ids) == [None, "B", "D", "A", "C"]
    assert [list(ds.valid[u]) for u in range(3)] == [[], [], []]
    assert [list(ds.test[u]) for u in range(3)] == [[], [2], [3]]
    assert ds.meta["dropped_cold_items"] == {"valid": 1, "test": 0}


def test_integer_user_ids_are_kept(tmp_path: Path) -> None:
    df = _frame()
    df["user"] = df["user"].map({"bob": 7, "alice": 3, "carol": 12, "dave": 99})
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    ds = load_raw_log(path, split=SPLIT)
    np.testing.assert_array_equal(ds.user_ids, [7, 3, 12])
    assert "raw_user_ids" not in ds.meta
    # "007" and "7" are different users: ids that would collide as integers stay raw
    df["user"] = df["user"].map({7: "007", 3: "7", 12: "12", 99: "99"})
    df.to_csv(path, index=False)
    ds = load_raw_log(path, split=SPLIT)
    assert list(ds.meta["raw_user_ids"]) == ["007", "7", "12"]


def test_item_ids_keep_leading_zeros_and_titles_default(tmp_path: Path, caplog) -> None:
    df = _frame()
    df["item"] = "0" + df["item"].map({"A": "1", "B": "2", "C": "3", "D": "4", "F": "5",
                                       "X": "6"})
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        ds = load_raw_log(path, split=SPLIT)
    assert list(ds.item_raw_ids[1:]) == ["02", "04", "05", "01", "03"]
    assert all(t is None for t in ds.titles)
    assert "untitled" in caplog.text


def test_titles_from_a_log_column(tmp_path: Path) -> None:
    df = _frame()
    df["title"] = df["item"].map({"A": "Alpha", "B": "Beta", "C": "", "D": "Delta",
                                  "F": "Foxtrot", "X": "Ex"})
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    ds = load_raw_log(path, split=SPLIT)
    assert list(ds.titles) == [None, "Beta", "Delta", "Foxtrot", "Alpha", None]


def test_no_rating_column_means_no_filter(tmp_path: Path) -> None:
    df = _frame().drop(columns="rating")
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    ds = load_raw_log(path, split=(0.5, 0.25, 0.25))
    assert ds.meta["n_interactions_split"] == len(ROWS)
    ds2 = load_raw_log(tmp_path / "log.csv", rating_col=None, split=(0.5, 0.25, 0.25))
    assert ds2.meta["n_interactions_split"] == len(ROWS)


def test_custom_columns_and_min_rating(tmp_path: Path) -> None:
    df = _frame().rename(columns={"user": "uid", "item": "iid", "timestamp": "ts",
                                  "rating": "stars"})
    path = tmp_path / "log.csv"
    df.to_csv(path, index=False)
    ds = load_raw_log(path, user_col="uid", item_col="iid", time_col="ts", rating_col="stars",
                      min_rating=5, split=SPLIT)
    assert ds.meta["dropped_low_rating"] == 6
    assert ds.meta["n_interactions_split"] == 5


def test_parquet_datetime_timestamps(tmp_path: Path) -> None:
    df = _frame()
    df["timestamp"] = pd.to_datetime(df["timestamp"], unit="D", utc=True)
    path = tmp_path / "log.parquet"
    df.to_parquet(path, index=False)
    items = tmp_path / "items.csv"
    items.write_text(ITEMS)
    _check(load_raw_log(path, items=items, split=SPLIT))


def test_split_bounds() -> None:
    assert split_bounds(374_984) == (299_987, 337_485)
    assert split_bounds(10, (0.6, 0.2, 0.2)) == (6, 8)
    assert split_bounds(100, (0.29, 0.01, 0.70)) == (29, 30)  # 0.29 * 100 = 28.999999999999996
    assert split_bounds(1) == (0, 0)


def test_split_is_stable_and_time_ordered() -> None:
    # all timestamps equal: file order decides everything
    users = np.array([5, 6, 5, 6, 5, 6, 5, 6, 5, 6])
    items = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    ds = split_log(users, items, np.zeros(10))
    assert list(ds.user_ids) == [5, 6]
    assert list(ds.item_raw_ids[ds.train[0]]) == [1, 3, 5, 7]
    assert list(ds.item_raw_ids[ds.train[1]]) == [2, 4, 6, 8]
    assert list(ds.train[0]) == [1, 2, 3, 4]  # numbered by user, then time
    assert list(ds.item_raw_ids[ds.valid[0]]) == [9] and list(ds.item_raw_ids[ds.test[1]]) == [10]


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    path = tmp_path / "log.csv"
    _frame().to_csv(path, index=False)
    ds = load_dataset(path, split=SPLIT)
    _check(ds, items_expected=False)
    ds = load_dataset(str(path), split=SPLIT)
    assert ds.n_users == 3
