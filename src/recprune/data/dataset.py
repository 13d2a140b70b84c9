"""The in-memory dataset every stage works on.

Ids
---
Items are integers ``1..n_items`` (0 is reserved for padding, as in the DEALRec files and in
SASRec). Users are rows ``0..n_users-1``; ``user_ids[row]`` is the user's external id (the first
field of a line of ``sequential_train.txt``, or the index given by :func:`recprune.data.split_log`).

Sequences are stored in CSR form (``indptr`` + ``items``) as numpy arrays: no Python lists of
lists, so the 49k-user Games data costs a few MB and loads in well under a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from recprune.errors import DataError
from recprune.store.fingerprint import digest


@dataclass(frozen=True)
class Sequences:
    """Variable-length integer sequences, one per user, in CSR layout.

    ``items[indptr[u]:indptr[u + 1]]`` is user ``u``'s sequence in time order.
    """

    indptr: np.ndarray  # int64, shape (n_users + 1,)
    items: np.ndarray  # int32, shape (nnz,)

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or self.indptr[0] != 0 or self.indptr[-1] != len(self.items):
            raise ValueError("malformed CSR sequences")

    @classmethod
    def from_lists(cls, seqs: list[list[int]] | list[np.ndarray]) -> Sequences:
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        indptr = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = (np.concatenate([np.asarray(s, dtype=np.int32) for s in seqs])
                 if len(seqs) and indptr[-1] else np.zeros(0, dtype=np.int32))
        return cls(indptr, items.astype(np.int32, copy=False))

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def __len__(self) -> int:
        return self.n_users

    def __getitem__(self, u: int) -> np.ndarray:
        return self.items[self.indptr[u]:self.indptr[u + 1]]

    def row_ids(self) -> np.ndarray:
        """The user row of every stored item (length ``nnz``)."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.lengths)

    def subset(self, rows: np.ndarray) -> Sequences:
        rows = np.asarray(rows, dtype=np.int64)
        lengths = self.lengths[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if indptr[-1] == 0:
            return Sequences(indptr, np.zeros(0, dtype=np.int32))
        starts = self.indptr[rows]
        # gather all slices at once: position within each slice + its start
        offs = np.arange(indptr[-1], dtype=np.int64) - np.repeat(indptr[:-1], lengths)
        return Sequences(indptr, self.items[np.repeat(starts, lengths) + offs])

    def concat(self, other: Sequences) -> Sequences:
        """Per-user concatenation ``self[u] + other[u]`` (e.g. train + valid history)."""
        if other.n_users != self.n_users:
            raise ValueError("sequence sets have different numbers of users")
        lengths = self.lengths + other.lengths
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        out = np.empty(indptr[-1], dtype=np.int32)
        # destination positions of each part
        a_dst = np.repeat(indptr[:-1], self.lengths) + (
            np.arange(self.nnz) - np.repeat(self.indptr[:-1], self.lengths))
        b_dst = np.repeat(indptr[:-1] + self.lengths, other.lengths) + (
            np.arange(other.nnz) - np.repeat(other.indptr[:-1], other.lengths))
        out[a_dst] = self.items
        out[b_dst] = other.items
        return Sequences(indptr, out)

    def to_padded(self, max_len: int, *, rows: np.ndarray | None = None,
                  drop_last: int = 0, pad_left: bool = True) -> np.ndarray:
        """Last ``max_len`` items of each sequence (after dropping ``drop_last`` items),
        padded with 0.

        Returns an ``int64`` array of shape ``(len(rows), max_len)``; left padding keeps the most
        recent item in the last column, as SASRec expects.
        """
        rows = np.arange(self.n_users) if rows is None else np.asarray(rows, dtype=np.int64)
        ends = self.indptr[rows + 1] - drop_last
        starts = np.maximum(self.indptr[rows], ends - max_len)
        lens = np.maximum(ends - starts, 0)
        out = np.zeros((len(rows), max_len), dtype=np.int64)
        col = np.arange(max_len)
        if pad_left:
            first = max_len - lens  # first filled column
            src = starts[:, None] + (col[None, :] - first[:, None])
            mask = col[None, :] >= first[:, None]
        else:
            src = starts[:, None] + col[None, :]
            mask = col[None, :] < lens[:, None]
        out[mask] = self.items[src[mask]]
        return out


@dataclass(frozen=True)
class InteractionDataset:
    """Users' train / valid / test period interactions plus item titles.

    Attributes
    ----------
    train, valid, test:
        Per-user sequences of the three time periods (same users, same row order).
    n_items:
        Items are ``1..n_items``.
    titles:
        ``titles[i]`` is item ``i``'s title (``titles[0]`` is unused); ``None`` for an item
        without a title. Titles need not be unique: items that share one stay distinct items.
    user_ids:
        External id of each user row.
    item_raw_ids:
        Optional raw (source) id of each item, e.g. the Amazon ASIN; index 0 unused.
    """

    name: str
    train: Sequences
    valid: Sequences
    test: Sequences
    n_items: int
    titles: np.ndarray  # object array of str | None, length n_items + 1
    user_ids: np.ndarray  # int64, length n_users
    item_raw_ids: np.ndarray | None = None
    source: str = ""
    meta: dict = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return self.train.n_users

    @property
    def n_interactions(self) -> int:
        return self.train.nnz + self.valid.nnz + self.test.nnz

    def validate(self) -> None:
        """Check internal consistency; raise :class:`DataError` on the first problem."""
        for name, seqs in (("train", self.train), ("valid", self.valid), ("test", self.test)):
            if seqs.n_users != self.n_users:
                raise DataError(f"{name} period has {seqs.n_users} users, train has {self.n_users}",
                                path=self.source)
            if seqs.nnz and (seqs.items.min() < 1 or seqs.items.max() > self.n_items):
                bad = int(np.flatnonzero((seqs.items < 1) | (seqs.items > self.n_items))[0])
                row = int(np.searchsorted(seqs.indptr, bad, side="right") - 1)
                raise DataError(f"unknown item id {int(seqs.items[bad])} for user "
                                f"{int(self.user_ids[row])} (items are 1..{self.n_items})",
                                path=self.source, field=name)
        if len(self.titles) != self.n_items + 1:
            raise DataError("title table does not match the number of items", path=self.source)

    def fingerprint(self) -> dict:
        """What identifies this dataset in cache keys: name, sizes, a digest of the training
        sequences."""
        return {"name": self.name, "users": self.n_users, "items": self.n_items,
                "train": self.train.nnz, "checksum": digest(self.train.items)[:16]}

    def eval_rows(self, period: str = "test") -> np.ndarray:
        """Rows of users that have at least one interaction in ``period`` ('valid' or 'test')."""
        seqs = {"valid": self.valid, "test": self.test}[period]
        return np.flatnonzero(seqs.lengths > 0)
