"""The synthetic generator, dataset statistics and load_dataset."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from rich.table import Table

from recprune.data import (InteractionDataset, dataset_stats, format_stats, load_dataset,
                           make_synthetic)
from recprune.errors import ConfigError


def _same(a: InteractionDataset, b: InteractionDataset) -> bool:
    return (all(np.array_equal(getattr(a, p).indptr, getattr(b, p).indptr)
                and np.array_equal(getattr(a, p).items, getattr(b, p).items)
                for p in ("train", "valid", "test"))
            and list(a.titles) == list(b.titles) and np.array_equal(a.user_ids, b.user_ids))


@pytest.fixture(scope="module")
def syn() -> InteractionDataset:
    return make_synthetic()


def test_default_shape_and_ranges(syn: InteractionDataset) -> None:
    syn.validate()
    assert syn.n_users == 2000 and syn.n_items == 500
    assert (syn.train.lengths >= 1).all()
    for seqs in (syn.train, syn.valid, syn.test):
        assert seqs.items.min() >= 1 and seqs.items.max() <= syn.n_items
    assert sorted(syn.user_ids.tolist()) == list(range(1, 2001))
    # periods follow the 8:1:1 split of the generated log (no cold users to drop)
    n = syn.n_interactions
    assert syn.train.nnz == int(0.8 * n) and syn.valid.nnz == int(0.9 * n) - int(0.8 * n)
    assert len(syn.eval_rows("test")) > 100


def test_deterministic_per_seed() -> None:
    a, b = make_synthetic(n_users=300, seed=3), make_synthetic(n_users=300, seed=3)
    assert _same(a, b)
    assert not _same(a, make_synthetic(n_users=300, seed=4))


def test_titles_missing_and_duplicated_as_asked(syn: InteractionDataset) -> None:
    titles = list(syn.titles[1:])
    assert sum(t is None for t in titles) == 2
    counts = Counter(t for t in titles if t is not None)
    assert sum(c - 1 for c in counts.values()) == 5  # 5 items copy another item's title
    assert all(" - " in t for t in counts)  # "Name - Platform"
    ds = make_synthetic(n_users=200, n_items=80, missing_titles=7, duplicate_titles=3, seed=1)
    st = dataset_stats(ds)
    assert st["items_without_title"] == 7
    assert st["distinct_titles"] == ds.n_items - 7 - 3


def test_structure_is_learnable(syn: InteractionDataset) -> None:
    cluster = syn.meta["item_cluster"]
    tr = syn.train
    rows = tr.row_ids()
    same_user = rows[1:] == rows[:-1]
    same_genre = cluster[tr.items[1:]] == cluster[tr.items[:-1]]
    assert same_genre[same_user].mean() > 0.5  # vs 0.1 by chance with 10 genres
    counts = np.sort(np.bincount(tr.items, minlength=syn.n_items + 1)[1:])[::-1]
    assert counts[:50].sum() > 0.3 * counts.sum()  # popularity skew: top 10% of items


def test_fast() -> None:
    t = time.perf_counter()
    make_synthetic(seed=11)
    assert time.perf_counter() - t < 1.0


def test_small_and_bad_configs() -> None:
    ds = make_synthetic(n_users=1, n_items=3, missing_titles=1, duplicate_titles=1)
    assert ds.n_users == 1 and ds.train.nnz >= 1
    with pytest.raises(ConfigError):
        make_synthetic(n_users=0)
    with pytest.raises(ConfigError):
        make_synthetic(n_items=5, missing_titles=2, duplicate_titles=2)
    with pytest.raises(ConfigError):
        make_synthetic(mean_length=0.5)


def test_stats_and_table(syn: InteractionDataset) -> None:
    st = dataset_stats(syn)
    assert st["users"] == 2000 and st["items"] == 500
    assert st["interactions"] == st["train_interactions"] + st["valid_interactions"] + \
        st["test_interactions"]
    assert st["density"] == pytest.approx(st["interactions"] / (2000 * 500))
    assert st["valid_users"] == len(syn.eval_rows("valid"))
    assert st["train_len_min"] >= 1 and st["train_len_min"] <= st["train_len_median"] \
        <= st["train_len_p90"] <= st["train_len_max"]
    assert st["users_le2_train"] == int((syn.train.lengths <= 2).sum())
    table = format_stats(st)
    assert isinstance(table, Table)
    console = Console(width=100, record=True)
    console.print(table)
    text = console.export_text()
    assert "Density" in text and "2,000" in text


def test_load_dataset_synthetic(tmp_path: Path) -> None:
    assert load_dataset("synthetic:150").n_users == 150
    assert load_dataset("synthetic", n_users=120, seed=2).n_users == 120
