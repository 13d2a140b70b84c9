"""Data layer: the in-memory dataset, loaders and the synthetic generator."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from recprune.data.dataset import InteractionDataset, Sequences
from recprune.data.dealrec_format import clean_title, load_dealrec_dir
from recprune.data.raw_log import load_raw_log, read_item_table, split_log
from recprune.data.stats import dataset_stats, format_stats
from recprune.data.synthetic import make_synthetic
from recprune.errors import DataError

__all__ = ["InteractionDataset", "Sequences", "clean_title", "dataset_stats", "format_stats",
           "load_dataset", "load_dealrec_dir", "load_raw_log", "make_synthetic",
           "read_item_table", "split_log"]

_SYNTHETIC = re.compile(r"^synthetic(?::(.*))?$")


def load_dataset(spec: str | Path, **kwargs: Any) -> InteractionDataset:
    """Load a dataset from a spec.

    * ``"synthetic"`` or ``"synthetic:N_USERS"``: :func:`make_synthetic` (``kwargs`` go to it);
    * a directory: :func:`load_dealrec_dir` (DEALRec ``sequential_*.txt`` + ``items.tsv``);
    * a file: :func:`load_raw_log` (CSV / TSV / Parquet interaction log).
    """
    if isinstance(spec, str):
        m = _SYNTHETIC.match(spec.strip())
        if m:
            if m.group(1) is not None:
                try:
                    n_users = int(m.group(1))
                except ValueError:
                    n_users = 0
                if n_users < 1:
                    raise DataError(f"bad dataset spec {spec!r}: expected 'synthetic' or "
                                    f"'synthetic:N_USERS' with a positive integer N_USERS")
                kwargs["n_users"] = n_users
            return make_synthetic(**kwargs)
    path = Path(spec)
    if path.is_dir():
        return load_dealrec_dir(path, **kwargs)
    if path.is_file():
        return load_raw_log(path, **kwargs)
    raise DataError("no such dataset: not a directory (DEALRec format), a log file "
                    "(.csv / .tsv / .parquet) or 'synthetic[:N_USERS]'", path=path)
