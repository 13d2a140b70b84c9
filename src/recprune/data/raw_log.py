"""Raw interaction logs (CSV / TSV / Parquet) and the DEALRec time split.

The DEALRec paper (SIGIR'24, Sec. 4.1.1) processes Amazon logs as follows, and :func:`split_log`
does the same:

1. drop interactions with rating < 4 (when there is a rating);
2. sort *all* interactions by their global timestamp (a stable sort: ties keep file order);
3. split the sorted log by count 8:1:1 into train / valid / test periods: train holds the first
   ``int(0.8 * N)`` interactions, valid the next ones up to ``int(0.9 * N)``, test the rest;
4. keep only the users that have at least one training interaction; their valid / test
   interactions are the evaluation data. Interactions of users unseen in training are dropped.

Items that first occur in the valid or test period ("cold" items) are *kept* by default: that is
what the published Games files do (746 of its 17,332 items occur only in valid / test; 5,000 valid
and 5,650 test interactions use one), and an LLM recommender can still name such an item from its
title. ``drop_cold_items=True`` drops them as well, for ID-only models.

Ids are then assigned as in the published files: users in the order of their first training
interaction, items ``1..n`` in the order of first appearance when scanning the users in that order
and, per user, the train, valid and test items in time order.

Everything is vectorised (numpy / pandas): the 375k-interaction Games log loads and splits in well
under a second.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recprune.data.dataset import InteractionDataset, Sequences
from recprune.data.dealrec_format import clean_title
from recprune.errors import DataError

log = logging.getLogger(__name__)

DEFAULT_SPLIT = (0.8, 0.1, 0.1)
TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".txt": "\t"}
PARQUET_SUFFIXES = {".parquet", ".pq"}
_EPS = 1e-9  # tolerance for float products such as 0.29 * 100 = 28.999999999999996
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_EXTRA = "\x00recprune-extra-field"


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------

def check_split(split: Any, *, source: str | Path | None = None) -> tuple[float, float, float]:
    """Validate train / valid / test fractions: three positive numbers summing to 1."""
    try:
        fracs = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        raise DataError(f"split must be three numbers (train, valid, test), got {split!r}",
                        path=source, field="split") from None
    if len(fracs) != 3:
        raise DataError(f"split must be three fractions (train, valid, test), got {len(fracs)}: "
                        f"{split!r}", path=source, field="split")
    if not all(math.isfinite(f) and f > 0 for f in fracs):
        raise DataError(f"split fractions must be positive, got {split!r}", path=source,
                        field="split")
    if abs(sum(fracs) - 1.0) > 1e-6:
        raise DataError(f"split fractions must sum to 1, got {split!r} (sum {sum(fracs):g})",
                        path=source, field="split")
    return fracs  # type: ignore[return-value]


def split_bounds(n: int, split: Sequence[float] = DEFAULT_SPLIT) -> tuple[int, int]:
    """End positions ``(int(f_train * n), int((f_train + f_valid) * n))`` of train and valid."""
    f_train, f_valid, _ = split
    n_train = int(math.floor(f_train * n + _EPS))
    n_valid_end = int(math.floor((f_train + f_valid) * n + _EPS))
    return min(n_train, n), min(max(n_valid_end, n_train), n)


def _int_ids(values: np.ndarray) -> np.ndarray | None:
    """``values`` as int64 if they are all integers (written canonically, so no two collapse)."""
    if values.dtype.kind in "iu":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        if len(values) and np.all(np.isfinite(values)) and np.all(values == np.round(values)) \
                and np.abs(values).max() < 2**53:
            return values.astype(np.int64)
        return None
    if values.dtype.kind not in "OUS" or not len(values):
        return None
    ser = pd.Series(values, dtype=object)
    is_str = ser.map(type).eq(str).to_numpy()
    if is_str.all():
        if not ser.str.fullmatch(_INT_RE.pattern).all():
            return None
        try:
            ints = pd.to_numeric(ser, errors="raise").to_numpy()
        except (ValueError, OverflowError):
            return None
        if ints.dtype.kind not in "iu" or (ints.dtype.kind == "u" and ints.max() > 2**63 - 1):
            return None
        ints = ints.astype(np.int64)
    elif all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        try:
            ints = np.array(values, dtype=np.int64)
        except OverflowError:
            return None
    else:
        return None
    # "007" and "7" are distinct raw users: keep ints only if the conversion is injective
    if len(np.unique(ints)) != len(values):
        return None
    return ints


def _titles_for(raw_items: np.ndarray, titles: Any) -> np.ndarray:
    """Object array ``[None, title(raw_items[0]), ...]`` from a mapping raw id -> title."""
    out = np.full(len(raw_items) + 1, None, dtype=object)
    if titles is None:
        return out
    if isinstance(titles, pd.Series):
        series = titles
    elif isinstance(titles, Mapping):
        series = pd.Series(list(titles.values()), index=pd.Index(list(titles.keys()),
                                                                 dtype=object), dtype=object)
    else:
        raise TypeError("titles must be a mapping raw item id -> title (or a pandas Series)")
    if not series.index.is_unique:
        dup = series.index[series.index.duplicated()][0]
        raise DataError(f"duplicate item id {dup!r} in the title table", field="item")
    pos = series.index.get_indexer(pd.Index(raw_items, dtype=object))
    vals = series.to_numpy(dtype=object)
    for k in np.flatnonzero(pos >= 0):  # loop over items (not interactions)
        out[k + 1] = _title_value(vals[pos[k]])
    return out


def _title_value(v: Any) -> str | None:
    """A cleaned title, or ``None`` for a missing / empty one."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    return clean_title(v if isinstance(v, str) else str(v))


def split_log(users: Any, items: Any, timestamps: Any, *,
              split: Sequence[float] = DEFAULT_SPLIT,
              titles: Mapping[Any, str | None] | pd.Series | None = None,
              drop_cold_items: bool = False, name: str = "log", source: str | Path = "",
              meta: dict | None = None) -> InteractionDataset:
    """Split an interaction log by global time into train / valid / test periods (DEALRec).

    Parameters
    ----------
    users, items, timestamps:
        One entry per interaction (already filtered by rating), in file order. Raw ids may be
        integers or strings; timestamps must be numeric (any unit).
    split:
        Train / valid / test fractions of the interactions, by count, in time order.
    titles:
        Mapping raw item id -> title (``None`` / empty for none). Items absent from it get ``None``.
    drop_cold_items:
        Also drop valid / test interactions of items that never occur in the training period.
        The published DEALRec files keep them (default).
    name, source, meta:
        Stored on the returned dataset (``meta`` is merged into the split's own statistics).

    Returns
    -------
    InteractionDataset
        Users ordered by their first training interaction; items numbered ``1..n`` by first
        appearance scanning users in that order (train, valid, test items, each in time order).
        ``user_ids`` are the raw user ids when they are integers, else ``1..n_users`` with the
        raw ones in ``meta["raw_user_ids"]``; ``item_raw_ids[i]`` is item ``i``'s raw id.
    """
    src = str(source) if source else None
    fracs = check_split(split, source=src)
    users = np.asarray(users)
    items = np.asarray(items)
    ts = np.asarray(timestamps)
    if not (users.ndim == items.ndim == ts.ndim == 1) or not (len(users) == len(items) == len(ts)):
        raise DataError(f"users, items and timestamps must be 1-D and of equal length, got "
                        f"{users.shape}, {items.shape}, {ts.shape}", path=src)
    n = len(ts)
    if n == 0:
        raise DataError("the interaction log is empty", path=src)
    if ts.dtype.kind not in "iuf":
        raise DataError(f"timestamps must be numeric, got dtype {ts.dtype}", path=src,
                        field="timestamp")
    if ts.dtype.kind == "f" and not np.all(np.isfinite(ts)):
        bad = int(np.flatnonzero(~np.isfinite(ts))[0])
        raise DataError(f"timestamp of interaction {bad + 1} is not a finite number ({ts[bad]})",
                        path=src, field="timestamp")

    for what, arr in (("user", users), ("item", items)):
        missing = pd.isna(arr) if arr.dtype.kind in "Of" else None
        if missing is not None and missing.any():
            bad = int(np.flatnonzero(missing)[0])
            raise DataError(f"missing {what} id for interaction {bad + 1}", path=src, field=what)

    order = np.argsort(ts, kind="stable")
    n_train, n_valid_end = split_bounds(n, fracs)
    if n_train == 0:
        raise DataError(f"the training period is empty: {n} interaction(s) and a train fraction "
                        f"of {fracs[0]:g}", path=src, field="split")
    u_sorted = users[order]
    i_sorted = items[order]
    period = np.full(n, 2, dtype=np.int8)
    period[:n_train] = 0
    period[n_train:n_valid_end] = 1

    # users: those with a training interaction, in order of their first one
    train_codes, uniq_users = pd.factorize(u_sorted[:n_train], sort=False)
    n_users = len(uniq_users)
    ucode = np.empty(n, dtype=np.int64)
    ucode[:n_train] = train_codes
    ucode[n_train:] = pd.Index(uniq_users).get_indexer(u_sorted[n_train:])
    keep = ucode >= 0
    n_cold_user = np.bincount(period[~keep], minlength=3)
    n_cold_item = np.zeros(3, dtype=np.int64)
    if drop_cold_items:
        warm = np.ones(n, dtype=bool)
        warm[n_train:] = pd.Index(pd.unique(i_sorted[:n_train])).get_indexer(
            i_sorted[n_train:]) >= 0
        n_cold_item = np.bincount(period[keep & ~warm], minlength=3)
        keep &= warm

    # user-major, time order within user (the arrays are in time order: a stable sort suffices)
    kept = np.flatnonzero(keep)
    by_user = kept[np.argsort(ucode[kept], kind="stable")]
    rows = ucode[by_user]
    icode, uniq_items = pd.factorize(i_sorted[by_user], sort=False)
    item_ids = (icode + 1).astype(np.int32)
    per = period[by_user]
    n_items = len(uniq_items)

    seqs = {}
    for p, pname in enumerate(("train", "valid", "test")):
        m = per == p
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows[m], minlength=n_users), out=indptr[1:])
        seqs[pname] = Sequences(indptr, item_ids[m])

    raw_users = np.asarray(uniq_users)
    int_users = _int_ids(raw_users)
    info: dict[str, Any] = {
        "format": "raw_log", "split": list(fracs), "n_interactions_split": n,
        "period_sizes": [n_train, n_valid_end - n_train, n - n_valid_end],
        "dropped_cold_users": {"valid": int(n_cold_user[1]), "test": int(n_cold_user[2])},
        "drop_cold_items": bool(drop_cold_items),
        "dropped_cold_items": {"valid": int(n_cold_item[1]), "test": int(n_cold_item[2])},
        "time_boundaries": [ts[order[n_train]].item() if n_train < n else None,
                            ts[order[n_valid_end]].item() if n_valid_end < n else None],
    }
    if int_users is None:
        user_ids = np.arange(1, n_users + 1, dtype=np.int64)
        info["raw_user_ids"] = raw_users.astype(object)
    else:
        user_ids = int_users
    item_raw = np.empty(n_items + 1, dtype=object)
    item_raw[0] = None
    item_raw[1:] = np.asarray(uniq_items, dtype=object)
    title_arr = _titles_for(item_raw[1:], titles)
    n_no_title = int(sum(t is None for t in title_arr[1:]))
    info["items_without_title"] = n_no_title
    info["cold_items"] = int(n_items - len(np.unique(seqs["train"].items)))
    if meta:
        info.update(meta)
    ds = InteractionDataset(name=name, train=seqs["train"], valid=seqs["valid"],
                            test=seqs["test"], n_items=n_items, titles=title_arr,
                            user_ids=user_ids, item_raw_ids=item_raw, source=str(source),
                            meta=info)
    ds.validate()
    return ds


# --------------------------------------------------------------------------------------------
# Reading tables
# --------------------------------------------------------------------------------------------

def _where(path: Path, idx: int, text: bool) -> tuple[dict, str]:
    """Location kwargs and message suffix for data row ``idx`` (0-based) of a table file."""
    if text:
        return {"path": path, "line": idx + 2}, ""  # +1 for 1-based, +1 for the header
    return {"path": path}, f" (row {idx + 1})"


def _table_kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in TEXT_SEPARATORS:
        return "text"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    raise DataError(f"unknown file type {path.suffix!r}: expected .csv, .tsv / .txt "
                    f"(tab-separated) or .parquet / .pq", path=path)


def _read_table(path: Path, required: list[str], optional: list[str],
                str_cols: list[str], what: str) -> tuple[pd.DataFrame, bool]:
    """Read the wanted columns of a CSV / TSV / Parquet file; ``str_cols`` verbatim as text.

    Returns ``(frame, is_text)``. Optional columns absent from the file are left out.
    """
    kind = _table_kind(path)
    if not path.exists():
        raise DataError(f"{what} file not found", path=path)
    if not path.is_file():
        raise DataError(f"{what} path is not a file", path=path)
    try:
        if kind == "text":
            sep = TEXT_SEPARATORS[path.suffix.lower()]
            try:
                header = pd.read_csv(path, sep=sep, nrows=0, dtype=str, encoding="utf-8-sig")
            except pd.errors.EmptyDataError:
                raise DataError(f"empty {what} file (expected a header line naming the columns)",
                                path=path, line=1) from None
            found = {str(c).strip(): c for c in header.columns}
        else:
            import pyarrow.parquet as pq

            found = {str(c).strip(): c for c in pq.read_schema(path).names}
        missing = [c for c in required if c not in found]
        if missing:
            cols = ", ".join(repr(c) for c in found) or "none"
            raise DataError(f"missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(repr(c) for c in missing)} (columns found: {cols})",
                            path=path, line=1 if kind == "text" else None, field=missing[0])
        wanted = [c for c in required + optional if c in found]
        wanted = list(dict.fromkeys(wanted))
        raw_names = [found[c] for c in wanted]
        if kind == "text":
            # An extra, unnamed column catches rows with more fields than the header (pandas
            # silently drops them when reading selected columns), e.g. an unquoted separator
            # inside a title that shifts the following fields.
            # pandas reports "Too many columns specified" when no row is longer than the
            # header (it tokenises the file first, which is quick): then read it plainly.
            names = [str(c) for c in header.columns] + [_EXTRA]
            dtypes = {found[c]: str for c in str_cols if c in found}
            opts = dict(sep=sep, encoding="utf-8-sig", keep_default_na=False, na_filter=False,
                        low_memory=False)
            try:
                df = pd.read_csv(path, header=0, names=names, usecols=raw_names + [_EXTRA],
                                 dtype={**dtypes, _EXTRA: str}, **opts)
            except pd.errors.ParserError as e:
                if "Too many columns specified" not in str(e):
                    raise
                df = pd.read_csv(path, usecols=raw_names, dtype=dtypes, **opts)
                df[_EXTRA] = ""
            extra = df.pop(_EXTRA)
            long_rows = np.flatnonzero(extra.astype(str).str.len().to_numpy() > 0)
            if len(long_rows):
                raise DataError(f"more fields than the {len(names) - 1} columns of the header "
                                f"(an unquoted {'tab' if sep == chr(9) else repr(sep)} inside "
                                f"a value?)", path=path, line=int(long_rows[0]) + 2)
        else:
            df = pd.read_parquet(path, columns=raw_names)
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None
    except pd.errors.ParserError as e:
        msg = str(e).strip()
        m = re.search(r"line (\d+)", msg)
        raise DataError(f"cannot parse {what} file: {msg}", path=path,
                        line=int(m.group(1)) if m else None) from None
    except (OSError, ValueError, ImportError) as e:
        raise DataError(f"cannot read {what} file: {type(e).__name__}: {e}", path=path) from None
    except Exception as e:  # pyarrow raises its own error types for corrupt files
        raise DataError(f"cannot read {what} file: {type(e).__name__}: {e}", path=path) from None
    df.columns = [str(c).strip() for c in df.columns]
    return df, kind == "text"


def _id_column(df: pd.DataFrame, col: str, path: Path, text: bool, what: str) -> np.ndarray:
    """A column of raw ids; missing / empty ids are errors."""
    s = df[col]
    if s.dtype.kind == "O" or isinstance(s.dtype, pd.StringDtype):
        vals = s.to_numpy(dtype=object)
        if text:
            bad = np.flatnonzero(np.array([not v.strip() for v in vals], dtype=bool)) \
                if len(vals) else np.zeros(0, dtype=np.int64)
        else:
            bad = np.flatnonzero(pd.isna(s).to_numpy() | np.array(
                [isinstance(v, str) and not v.strip() for v in vals], dtype=bool))
        if len(bad):
            where, suffix = _where(path, int(bad[0]), text)
            raise DataError(f"missing {what}{suffix}", field=col, **where)
        return vals
    if s.dtype.kind == "f":
        nan = np.flatnonzero(np.isnan(s.to_numpy()))
        if len(nan):
            where, suffix = _where(path, int(nan[0]), text)
            raise DataError(f"missing {what}{suffix}", field=col, **where)
    return s.to_numpy()


def _numeric_column(df: pd.DataFrame, col: str, path: Path, text: bool,
                    what: str) -> np.ndarray:
    """A numeric column (timestamps, ratings); names the first non-numeric or missing cell."""
    s = df[col]
    if isinstance(s.dtype, pd.DatetimeTZDtype):
        s = s.dt.tz_convert("UTC").dt.tz_localize(None)
    if s.dtype.kind == "M":
        if s.isna().any():
            where, suffix = _where(path, int(np.flatnonzero(s.isna().to_numpy())[0]), text)
            raise DataError(f"missing {what}{suffix}", field=col, **where)
        return s.to_numpy(dtype="datetime64[ns]").view(np.int64)
    if s.dtype.kind == "b" or s.dtype.kind not in "iuf":
        num = pd.to_numeric(s, errors="coerce")
        if s.dtype.kind == "b" or num.dtype.kind not in "iuf":
            bad = 0
        else:
            nan = np.flatnonzero(num.isna().to_numpy())
            bad = int(nan[0]) if len(nan) else -1
        if bad >= 0:
            where, suffix = _where(path, bad, text)
            val = s.iloc[bad]
            desc = "missing" if (isinstance(val, str) and not val.strip()) or val is None \
                else f"non-numeric ({val!r})"
            raise DataError(f"{desc} {what}{suffix}", field=col, **where)
        s = num
    arr = s.to_numpy()
    if arr.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(arr))
        if len(bad):
            where, suffix = _where(path, int(bad[0]), text)
            raise DataError(f"missing or non-finite {what} ({arr[bad[0]]}){suffix}", field=col,
                            **where)
    return arr


def read_item_table(path: str | Path, *, item_col: str = "item",
                    title_col: str = "title") -> pd.Series:
    """Read an item table (CSV / TSV / Parquet) into a Series raw item id -> title (or None)."""
    p = Path(path)
    df, text = _read_table(p, [item_col, title_col], [], [item_col, title_col], "item table")
    ids = _id_column(df, item_col, p, text, "item id")
    dup = pd.Index(ids).duplicated(keep="first")
    if dup.any():
        second = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(pd.Index(ids) == ids[second])[0])
        where, suffix = _where(p, second, text)
        first_at = f"line {first + 2}" if text else f"row {first + 1}"
        raise DataError(f"duplicate item id {ids[second]!r}{suffix} (first on {first_at})",
                        field=item_col, **where)
    raw_titles = df[title_col].to_numpy(dtype=object)
    titles = [_title_value(t) for t in raw_titles]
    return pd.Series(titles, index=pd.Index(ids, dtype=object), dtype=object)


def _align_keys(log_items: np.ndarray, table: pd.Series) -> tuple[np.ndarray, pd.Series]:
    """Make the log's item ids and the table's keys comparable (as text if their types differ)."""
    log_text = log_items.dtype == object and len(log_items) and isinstance(log_items[0], str)
    idx = table.index
    table_text = len(idx) and isinstance(idx[0], str)
    if bool(log_text) == bool(table_text):
        return log_items, table
    if not log_text:
        log_items = log_items.astype(str).astype(object)
    if not table_text:
        table = pd.Series(table.to_numpy(), index=pd.Index(idx.astype(str), dtype=object),
                          dtype=object)
    return log_items, table


def load_raw_log(path: str | Path, *, items: str | Path | None = None, user_col: str = "user",
                 item_col: str = "item", time_col: str = "timestamp",
                 rating_col: str | None = "rating", title_col: str = "title",
                 item_table_item_col: str = "item", min_rating: float = 4.0,
                 split: Sequence[float] = DEFAULT_SPLIT, drop_cold_items: bool = False,
                 name: str | None = None) -> InteractionDataset:
    """Load a raw interaction log and split it as DEALRec does (see the module docstring).

    Parameters
    ----------
    path:
        ``.csv``, ``.tsv`` / ``.txt`` (tab-separated) or ``.parquet`` / ``.pq`` file with a header,
        one interaction per row.
    items:
        Optional item table (same formats) with columns ``item_table_item_col`` and
        ``title_col``. Without it, titles come from a ``title_col`` column of the log if there is
        one, else every item is untitled (with a warning).
    user_col, item_col, time_col:
        Required columns. Ids are kept verbatim as text (``"0700026657"`` keeps its zero);
        timestamps must be numeric (or a Parquet datetime column).
    rating_col, min_rating:
        Interactions with rating < ``min_rating`` are dropped. ``rating_col=None`` disables the
        filter; a log without the default ``"rating"`` column is not filtered either (a warning
        is logged), but a non-default ``rating_col`` that is missing is an error.
    split, drop_cold_items:
        See :func:`split_log`.
    """
    p = Path(path)
    check_split(split, source=p)
    required = [user_col, item_col, time_col]
    explicit_rating = rating_col is not None and rating_col != "rating"
    if explicit_rating:
        required.append(rating_col)  # type: ignore[arg-type]
    optional = ([rating_col] if rating_col is not None and not explicit_rating else []) + (
        [title_col] if items is None else [])
    df, text = _read_table(p, required, optional, [user_col, item_col, title_col], "log")
    n_read = len(df)
    if n_read == 0:
        raise DataError("the log has no interactions (only a header)", path=p)

    users = _id_column(df, user_col, p, text, "user id")
    item_vals = _id_column(df, item_col, p, text, "item id")
    ts = _numeric_column(df, time_col, p, text, "timestamp")
    keep = None
    if rating_col is not None and rating_col in df.columns:
        ratings = _numeric_column(df, rating_col, p, text, "rating")
        keep = ratings >= min_rating
    elif rating_col is not None:
        log.warning("%s: no %r column, so no interactions are dropped by rating", p, rating_col)

    titles: pd.Series | None = None
    if items is not None:
        titles = read_item_table(items, item_col=item_table_item_col, title_col=title_col)
    elif title_col in df.columns:
        t = pd.DataFrame({"item": item_vals, "title": df[title_col].to_numpy(dtype=object)})
        t = t[t["title"].map(lambda v: isinstance(v, str) and bool(v.strip()))]
        t = t.drop_duplicates("item", keep="first")
        titles = pd.Series(t["title"].to_numpy(dtype=object),
                           index=pd.Index(t["item"].to_numpy(dtype=object), dtype=object),
                           dtype=object)
    else:
        log.warning("%s: no item table given and no %r column: all items are untitled", p,
                    title_col)

    if keep is not None:
        n_low = int((~keep).sum())
        if n_low == n_read:
            raise DataError(f"no interactions left after dropping the {n_low} with "
                            f"{rating_col} < {min_rating:g}", path=p, field=rating_col)
        if n_low:
            users, item_vals, ts = users[keep], item_vals[keep], ts[keep]
    else:
        n_low = 0
    if titles is not None:
        item_vals, titles = _align_keys(item_vals, titles)

    ds = split_log(users, item_vals, ts, split=split, titles=titles,
                   drop_cold_items=drop_cold_items, name=name or p.stem, source=p,
                   meta={"n_rows_read": n_read, "dropped_low_rating": n_low,
                         "min_rating": min_rating if keep is not None else None,
                         "item_table": None if items is None else str(items)})
    if titles is not None:
        unknown = int(len(ds.item_raw_ids) - 1 - np.count_nonzero(
            titles.index.get_indexer(pd.Index(ds.item_raw_ids[1:], dtype=object)) >= 0))
        if unknown and items is not None:
            log.warning("%s: %d items of the log are not in the item table %s (left untitled)",
                        p, unknown, items)
        ds.meta["items_not_in_table"] = unknown
    if ds.meta["items_without_title"]:
        log.info("%s: %d of %d items have no title", p, ds.meta["items_without_title"],
                 ds.n_items)
    return ds
