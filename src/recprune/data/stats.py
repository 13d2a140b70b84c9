"""Dataset statistics: the columns of the DEALRec paper's Table 1 and a few more."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table

from recprune.data.dataset import InteractionDataset

_LABELS = {
    "name": "Dataset",
    "users": "Users",
    "items": "Items",
    "interactions": "Interactions (train + valid + test)",
    "density": "Density",
    "train_interactions": "Train interactions",
    "valid_interactions": "Valid interactions",
    "test_interactions": "Test interactions",
    "valid_users": "Valid evaluation users",
    "test_users": "Test evaluation users",
    "train_len_min": "Train length: min",
    "train_len_median": "Train length: median",
    "train_len_mean": "Train length: mean",
    "train_len_p90": "Train length: p90",
    "train_len_max": "Train length: max",
    "users_le2_train": "Users with <= 2 train items",
    "cold_items": "Items only in valid / test",
    "items_without_title": "Items without title",
    "distinct_titles": "Distinct titles",
}


def dataset_stats(ds: InteractionDataset) -> dict[str, Any]:
    """Summary statistics of a dataset (plain Python numbers, JSON-serialisable).

    ``interactions`` counts all three periods and ``density = interactions / (users * items)``,
    as in Table 1 of the paper; evaluation users are those with a non-empty valid / test line.
    """
    lengths = ds.train.lengths
    n_users, n_items = ds.n_users, ds.n_items
    inter = ds.n_interactions
    titles = ds.titles[1:]
    have = [t for t in titles if t is not None]
    in_train = np.zeros(n_items + 1, dtype=bool)
    in_train[ds.train.items] = True
    seen = np.zeros(n_items + 1, dtype=bool)
    seen[ds.valid.items] = True
    seen[ds.test.items] = True
    empty = len(lengths) == 0
    return {
        "name": ds.name,
        "users": int(n_users),
        "items": int(n_items),
        "interactions": int(inter),
        "density": float(inter / (n_users * n_items)) if n_users and n_items else 0.0,
        "train_interactions": int(ds.train.nnz),
        "valid_interactions": int(ds.valid.nnz),
        "test_interactions": int(ds.test.nnz),
        "valid_users": int(np.count_nonzero(ds.valid.lengths)),
        "test_users": int(np.count_nonzero(ds.test.lengths)),
        "train_len_min": 0 if empty else int(lengths.min()),
        "train_len_median": 0.0 if empty else float(np.median(lengths)),
        "train_len_mean": 0.0 if empty else float(lengths.mean()),
        "train_len_p90": 0.0 if empty else float(np.percentile(lengths, 90)),
        "train_len_max": 0 if empty else int(lengths.max()),
        "users_le2_train": int(np.count_nonzero(lengths <= 2)),
        "cold_items": int(np.count_nonzero(seen & ~in_train)),
        "items_without_title": int(len(titles) - len(have)),
        "distinct_titles": int(len(set(have))),
    }


def _fmt(key: str, value: Any) -> str:
    if key == "density":
        return f"{value * 100:.4f}%"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def format_stats(stats: dict[str, Any]) -> Table:
    """A two-column rich table of :func:`dataset_stats` output (unknown keys are shown too)."""
    table = Table(title=f"Dataset statistics: {stats.get('name', '')}".rstrip(": "))
    table.add_column("Statistic")
    table.add_column("Value", justify="right")
    for key, value in stats.items():
        if key == "name":
            continue
        table.add_row(_LABELS.get(key, key), _fmt(key, value))
    return table
