"""The loaders on the real Games data (skipped when the shared data is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from recprune.data import dataset_stats, load_dealrec_dir, load_raw_log, split_log
from recprune.data.dataset import InteractionDataset


N_USERS, N_ITEMS = 49_156, 17_332
N_TRAIN, N_VALID, N_TEST = 299_987, 22_609, 19_733

pytestmark = pytest.mark.needs_games


def test_dealrec_loader_on_games(games_dir) -> None:
    ds = load_dealrec_dir(games_dir)
    assert (ds.n_users, ds.n_items) == (N_USERS, N_ITEMS)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (N_TRAIN, N_VALID, N_TEST)
    assert len(ds.eval_rows("valid")) == 9_609
    assert len(ds.eval_rows("test")) == 8_696
    st = dataset_stats(ds)
    assert st["items_without_title"] == 19
    # 16,845 distinct real titles; the README's "16,846 distinct titles" counts the empty title
    # of the 19 untitled items as one more value
    assert st["distinct_titles"] == 16_845
    assert len(set(ds.titles[1:])) == 16_846
    assert st["interactions"] == 342_329
    assert st["train_len_min"] == 1 and st["train_len_max"] == 658 and st["train_len_median"] == 5
    # a quirk of the published split: 746 items occur only in the valid / test periods
    assert st["cold_items"] == 746


def _raw_log(ds: InteractionDataset, asin: np.ndarray, seed: int = 0) -> pd.DataFrame:
    """An Amazon-like raw log whose DEALRec processing gives back the published split.

    Users' train interactions come before all valid ones, which come before all test ones; users
    interleave in time but keep their own order, and user u's first training interaction comes
    before user u+1's. Cold-start interactions of new users pad the valid and test periods to the
    8:1:1 sizes of N = 374,984 kept interactions; rating-3 rows must be dropped before the split.
    """
    rng = np.random.default_rng(seed)
    parts = []
    t_offset = 0.0
    for period, seqs in (("train", ds.train), ("valid", ds.valid), ("test", ds.test)):
        rows = seqs.row_ids()
        pos = np.arange(seqs.nnz) - np.repeat(seqs.indptr[:-1], seqs.lengths)
        gaps = rng.exponential(3_000.0, size=seqs.nnz)
        gaps[pos == 0] = 0.0
        # cumulative gaps within each user, starting at the user's row (first-interaction order)
        csum = np.cumsum(gaps)
        nonempty = seqs.lengths > 0
        csum -= np.repeat(csum[seqs.indptr[:-1][nonempty]], seqs.lengths[nonempty])
        t = t_offset + rows + csum
        user = ds.user_ids[rows]
        item = asin[seqs.items]
        parts.append(pd.DataFrame({"user": user, "item": item, "t": t,
                                   "rating": rng.choice([4, 5], size=seqs.nnz)}))
        lo, hi = t_offset, t.max() + 1.0
        if period != "train":
            n_extra = {"valid": 37_498 - N_VALID, "test": 37_499 - N_TEST}[period]
            new_user = 10_000_000 + rng.integers(0, 20_000, size=n_extra)
            new_item = np.where(rng.random(n_extra) < 0.5, asin[rng.integers(1, N_ITEMS + 1,
                                                                              size=n_extra)],
                                np.char.add("NEW", rng.integers(0, 5_000, size=n_extra)
                                            .astype(str)).astype(object))
            parts.append(pd.DataFrame({"user": new_user, "item": new_item,
                                       "t": rng.uniform(lo, hi, size=n_extra),
                                       "rating": rng.choice([4, 5], size=n_extra)}))
        # low ratings everywhere, from known and unknown users, on known and unknown items
        n_low = 3_000
        low_user = np.where(rng.random(n_low) < 0.5, ds.user_ids[rng.integers(0, N_USERS,
                                                                               size=n_low)],
                            20_000_000 + rng.integers(0, 1_000, size=n_low))
        low_item = np.where(rng.random(n_low) < 0.8, asin[rng.integers(1, N_ITEMS + 1,
                                                                       size=n_low)],
                            np.char.add("LOW", np.arange(n_low).astype(str)).astype(object))
        parts.append(pd.DataFrame({"user": low_user, "item": low_item,
                                   "t": rng.uniform(lo, hi, size=n_low),
                                   "rating": rng.choice([1, 2, 3], size=n_low)}))
        t_offset = hi + 10.0
    df = pd.concat(parts, ignore_index=True)
    df = df.iloc[rng.permutation(len(df))].reset_index(drop=True)  # file order != time order
    # integer timestamps, all distinct
    df["timestamp"] = 1_000_000_000 + np.argsort(np.argsort(df["t"].to_numpy(), kind="stable"))
    return df[["user", "item", "rating", "timestamp"]]


def test_raw_log_split_reproduces_published_games(games: InteractionDataset, games_dir,
                                                  tmp_path: Path) -> None:
    pub = games
    asin = pub.item_raw_ids.astype(object)
    assert len(set(asin[1:])) == N_ITEMS
    df = _raw_log(pub, asin)
    assert int((df["rating"] >= 4).sum()) == 374_984
    path = tmp_path / "games_log.csv"
    df.to_csv(path, index=False)

    ds = load_raw_log(path, items=games_dir / "items.tsv", item_table_item_col="raw_id")

    assert (ds.n_users, ds.n_items) == (N_USERS, N_ITEMS)
    assert (ds.train.nnz, ds.valid.nnz, ds.test.nnz) == (N_TRAIN, N_VALID, N_TEST)
    assert ds.meta["period_sizes"] == [N_TRAIN, 37_498, 37_499]
    assert ds.meta["dropped_low_rating"] == 9_000
    assert ds.meta["dropped_cold_users"] == {"valid": 37_498 - N_VALID, "test": 37_499 - N_TEST}

    # every user's sequences equal the published ones, in raw-id space
    pub_row = pd.Index(pub.user_ids).get_indexer(ds.user_ids)
    assert (pub_row >= 0).all() and len(np.unique(pub_row)) == N_USERS
    for mine, theirs in ((ds.train, pub.train), (ds.valid, pub.valid), (ds.test, pub.test)):
        theirs = theirs.subset(pub_row)
        np.testing.assert_array_equal(mine.indptr, theirs.indptr)
        np.testing.assert_array_equal(ds.item_raw_ids[mine.items], asin[theirs.items])
    # ... and the ids themselves are the published ones (same first-appearance numbering)
    np.testing.assert_array_equal(ds.user_ids, pub.user_ids)
    np.testing.assert_array_equal(ds.train.items, pub.train.items)
    np.testing.assert_array_equal(ds.test.items, pub.test.items)
    assert list(ds.titles) == list(pub.titles)

    # dropping cold items as well removes the valid / test interactions of the 746 items that
    # the published split keeps although they never occur in its training period
    kept = df[df["rating"] >= 4]
    cold = split_log(kept["user"].to_numpy(), kept["item"].to_numpy(dtype=object),
                     kept["timestamp"].to_numpy(), drop_cold_items=True)
    assert cold.n_items == N_ITEMS - 746
    assert (cold.train.nnz, cold.valid.nnz, cold.test.nnz) == (N_TRAIN, N_VALID - 5_000,
                                                               N_TEST - 5_650)
