"""Loader for the DEALRec directory format.

A directory with ``sequential_train.txt``, ``sequential_valid.txt``, ``sequential_test.txt``
(one line per user: ``user_id item_id item_id ...``, the same users in the same order in all
three) and an item table: ``items.tsv`` (``item_id``, ``raw_id``, ``title``; tab-separated with a
header, CSV quoting) or, only when explicitly trusted, the pickled ``title_maps.npy``.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from recprune.data.dataset import InteractionDataset, Sequences
from recprune.errors import DataError

log = logging.getLogger(__name__)

PERIOD_FILES = {"train": "sequential_train.txt", "valid": "sequential_valid.txt",
                "test": "sequential_test.txt"}


def _read_sequence_file(path: Path) -> tuple[np.ndarray, Sequences]:
    """Parse ``user item item ...`` lines into (user ids, sequences), naming the line on errors."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text ({e.reason} at byte {e.start})", path=path) from None
    lines = text.splitlines()
    # Tolerate one trailing empty line, nothing else empty.
    while lines and not lines[-1].strip():
        lines.pop()
    users = np.empty(len(lines), dtype=np.int64)
    lengths = np.empty(len(lines), dtype=np.int64)
    tokens: list[str] = []
    for i, line in enumerate(lines):
        parts = line.split()
        if not parts:
            raise DataError("empty line (expected 'user_id item_id ...')", path=path, line=i + 1)
        tokens.extend(parts)
        lengths[i] = len(parts)
    try:
        flat = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        # Find the first offending token to name its line and field.
        for i, line in enumerate(lines):
            for j, tok in enumerate(line.split()):
                try:
                    int(tok)
                except ValueError:
                    field = "user_id" if j == 0 else f"item {j}"
                    raise DataError(f"not an integer id: {tok!r}", path=path, line=i + 1,
                                    field=field) from None
        raise  # pragma: no cover - np.array failed for another reason
    starts = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    users[:] = flat[starts[:-1]]
    is_item = np.ones(len(flat), dtype=bool)
    is_item[starts[:-1]] = False
    items = flat[is_item]
    indptr = np.zeros(len(lines) + 1, dtype=np.int64)
    np.cumsum(lengths - 1, out=indptr[1:])
    if items.size and (items.min() < 1 or items.max() > np.iinfo(np.int32).max):
        bad = int(np.flatnonzero((items < 1) | (items > np.iinfo(np.int32).max))[0])
        row = int(np.searchsorted(indptr, bad, side="right") - 1)
        raise DataError(f"item id {int(items[bad])} out of range (ids are positive integers)",
                        path=path, line=row + 1, field=f"item {bad - indptr[row] + 1}")
    return users, Sequences(indptr, items.astype(np.int32))


def _read_items_tsv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Return (titles, raw_ids) object arrays indexed by item id (index 0 unused)."""
    try:
        fh = path.open(encoding="utf-8", newline="")
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    with fh:
        reader = csv.reader(fh, delimiter="\t")
        try:
            header = next(reader)
        except StopIteration:
            raise DataError("empty item table (expected header 'item_id<TAB>raw_id<TAB>title')",
                            path=path, line=1) from None
        cols = [c.strip().lower() for c in header]
        if "item_id" not in cols or "title" not in cols:
            raise DataError(f"header must name columns 'item_id' and 'title', got {header!r}",
                            path=path, line=1)
        c_id, c_title = cols.index("item_id"), cols.index("title")
        c_raw = cols.index("raw_id") if "raw_id" in cols else None
        rows: dict[int, tuple[str | None, str | None, int]] = {}
        for rec in reader:
            ln = reader.line_num
            if not rec or (len(rec) == 1 and not rec[0].strip()):
                continue
            if len(rec) != len(cols):
                raise DataError(f"expected {len(cols)} tab-separated fields, found {len(rec)}",
                                path=path, line=ln)
            try:
                iid = int(rec[c_id])
            except ValueError:
                raise DataError(f"not an integer id: {rec[c_id]!r}", path=path, line=ln,
                                field="item_id") from None
            if iid < 1:
                raise DataError(f"item ids are 1-based positive integers, got {iid}", path=path,
                                line=ln, field="item_id")
            if iid in rows:
                raise DataError(f"duplicate item id {iid} (first on line {rows[iid][2]})",
                                path=path, line=ln, field="item_id")
            title = clean_title(rec[c_title])
            raw = rec[c_raw] if c_raw is not None else None
            rows[iid] = (title, raw, ln)
    if not rows:
        raise DataError("item table has no items", path=path)
    n_items = max(rows)
    titles = np.full(n_items + 1, None, dtype=object)
    raw_ids = np.full(n_items + 1, None, dtype=object)
    for iid, (t, r, _) in rows.items():
        titles[iid] = t
        raw_ids[iid] = r
    missing_ids = [i for i in range(1, n_items + 1) if i not in rows]
    if missing_ids:
        raise DataError(f"item ids must be 1..{n_items} without gaps; missing {missing_ids[:5]}"
                        f"{' ...' if len(missing_ids) > 5 else ''}", path=path, field="item_id")
    return titles, raw_ids


def _read_title_maps(path: Path) -> tuple[np.ndarray, None]:
    try:
        maps = np.load(path, allow_pickle=True).item()
    except FileNotFoundError:
        raise DataError("file not found", path=path) from None
    except Exception as e:  # unpickling can fail in many ways
        raise DataError(f"cannot read pickled title map: {e}", path=path) from None
    if not isinstance(maps, dict) or "seqid2title" not in maps:
        raise DataError("expected a dict with key 'seqid2title'", path=path)
    s2t = maps["seqid2title"]
    try:
        ids = {int(k): v for k, v in s2t.items()}
    except (ValueError, AttributeError):
        raise DataError("keys of 'seqid2title' must be integer ids", path=path,
                        field="seqid2title") from None
    n_items = max(ids)
    titles = np.full(n_items + 1, None, dtype=object)
    for k, v in ids.items():
        t = clean_title(str(v)) if v is not None else None
        # the published map holds a placeholder 'title_<id>' for items without a title
        titles[k] = None if t is not None and t == f"title_{k}" else t
    return titles, None


def clean_title(title: str | None) -> str | None:
    """Collapse whitespace (newlines, tabs) in a title; empty titles become ``None``."""
    if title is None:
        return None
    t = " ".join(title.split())
    return t or None


def load_dealrec_dir(path: str | Path, *, trust_pickle: bool = False,
                     name: str | None = None) -> InteractionDataset:
    """Load a dataset in the DEALRec directory format.

    Parameters
    ----------
    path:
        Directory holding ``sequential_{train,valid,test}.txt`` and ``items.tsv``.
    trust_pickle:
        Allow reading titles from the pickled ``title_maps.npy`` when there is no ``items.tsv``.
        Unpickling runs code from the file: only for files you trust.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError("dataset directory not found", path=root)
    tsv, pkl = root / "items.tsv", root / "title_maps.npy"
    if tsv.exists():
        titles, raw_ids = _read_items_tsv(tsv)
        title_src = tsv
    elif pkl.exists():
        if not trust_pickle:
            raise DataError(
                "titles are only in this pickle file, and unpickling runs code from the file; "
                "pass trust_pickle=True (CLI: --trust-pickle) if you trust it, or provide "
                "items.tsv (item_id<TAB>raw_id<TAB>title)", path=pkl)
        titles, raw_ids = _read_title_maps(pkl)
        title_src = pkl
    else:
        raise DataError("no item table: expected items.tsv (or title_maps.npy)", path=root)
    n_items = len(titles) - 1

    periods: dict[str, Sequences] = {}
    user_ids = None
    train_path = root / PERIOD_FILES["train"]
    for period, fname in PERIOD_FILES.items():
        fpath = root / fname
        users, seqs = _read_sequence_file(fpath)
        if seqs.nnz and seqs.items.max() > n_items:
            bad = int(np.argmax(seqs.items > n_items))
            row = int(np.searchsorted(seqs.indptr, bad, side="right") - 1)
            raise DataError(f"unknown item id {int(seqs.items[bad])}: not in {title_src.name} "
                            f"(items 1..{n_items})", path=fpath, line=row + 1,
                            field=f"item {bad - seqs.indptr[row] + 1}")
        if period == "train":
            uniq, first = np.unique(users, return_index=True)
            if len(uniq) != len(users):
                dup_rows = np.setdiff1d(np.arange(len(users)), first)
                r = int(dup_rows[0])
                raise DataError(f"user {int(users[r])} appears twice", path=fpath, line=r + 1,
                                field="user_id")
            empty = np.flatnonzero(seqs.lengths == 0)
            if len(empty):
                r = int(empty[0])
                raise DataError(f"user {int(users[r])} has an empty training sequence "
                                f"({len(empty)} such users); every user needs at least one "
                                f"training interaction", path=fpath, line=r + 1, field="items")
            user_ids = users
        else:
            assert user_ids is not None
            if len(users) != len(user_ids) or not np.array_equal(users, user_ids):
                known = np.isin(users, user_ids)
                if not known.all():
                    r = int(np.flatnonzero(~known)[0])
                    raise DataError(f"user {int(users[r])} is absent from the training period "
                                    f"({train_path.name})", path=fpath, line=r + 1,
                                    field="user_id")
                if len(users) != len(user_ids):
                    raise DataError(f"{len(users)} lines but {len(user_ids)} users in "
                                    f"{train_path.name}: every user needs a line (possibly only "
                                    f"the user id)", path=fpath)
                r = int(np.flatnonzero(users != user_ids)[0])
                raise DataError(f"user order differs from {train_path.name}: expected user "
                                f"{int(user_ids[r])}, found {int(users[r])}", path=fpath,
                                line=r + 1, field="user_id")
        periods[period] = seqs

    no_title = np.flatnonzero(np.array([t is None for t in titles[1:]])) + 1
    if len(no_title):
        log.warning("%s: %d items have no title (e.g. item %s); prompts list them as "
                    "'Item <id>'", title_src, len(no_title), ", ".join(map(str, no_title[:5])))
    ds = InteractionDataset(
        name=name or root.name, train=periods["train"], valid=periods["valid"],
        test=periods["test"], n_items=n_items, titles=titles, user_ids=user_ids,
        item_raw_ids=raw_ids, source=str(root),
        meta={"format": "dealrec", "items_without_title": int(len(no_title))})
    ds.validate()
    return ds
