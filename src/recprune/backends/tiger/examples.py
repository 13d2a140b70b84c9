"""TIGER's training and evaluation examples, their T5 inputs, and length-bucketed batches.

An example is a history (a slice of a flat item array) and a target item. Training examples
(:func:`train_examples`) come from the users' *training* sequences: by default (``samples=
"all"``) every next-item position, i.e. for train items ``i_1..i_n`` the examples
``(i_1..i_{t-1}) -> i_t`` for ``t = 2..n``, which is how TIGER is trained; ``samples="last"``
keeps only the DEALRec / BIGRec sample ``items[:-1] -> items[-1]``. The arrays are built with
numpy from the CSR sequences, without a Python loop over examples.

T5 inputs (:func:`encoder_inputs`): the last ``max_history`` history items (oldest first) as
their ID tokens, then eos (so an empty history is still a non-empty input), right-padded to the
batch's longest history. Labels (:func:`labels`): the target's ``n_levels + 1`` tokens + eos,
always the same length, so labels are never padded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recprune.backends.tiger.vocab import EOS
from recprune.data.dataset import Sequences


@dataclass
class Examples:
    """Histories as slices ``items[end - hist_len:end]`` of a flat item array, plus targets."""

    items: np.ndarray
    end: np.ndarray
    hist_len: np.ndarray
    target: np.ndarray

    def __len__(self) -> int:
        return len(self.end)


def train_examples(train: Sequences, rows: np.ndarray, max_history: int,
                   samples: str) -> Examples:
    """Next-item examples of the rows' sequences, vectorised over all positions."""
    sub = train.subset(rows)
    lengths = sub.lengths
    if samples == "all":
        cnt = np.clip(lengths - 1, 0, None)
        n = int(cnt.sum())
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        t = np.arange(n, dtype=np.int64) - first + 1  # target position inside its sequence
        tgt = np.repeat(sub.indptr[:-1], cnt) + t
    else:
        ok = lengths >= 2
        tgt = sub.indptr[1:][ok] - 1
        t = lengths[ok] - 1
    items = sub.items.astype(np.int64)
    return Examples(items, tgt, np.minimum(t, max_history), items[tgt])


def history_examples(hist: Sequences, rows: np.ndarray, max_history: int,
                     target: np.ndarray | None = None) -> Examples:
    """One example per row: its whole (capped) history; ``target`` optional."""
    sub = hist.subset(rows)
    items = sub.items.astype(np.int64)
    tgt = np.zeros(len(rows), np.int64) if target is None else np.asarray(target, np.int64)
    return Examples(items, sub.indptr[1:].copy(), np.minimum(sub.lengths, max_history), tgt)


def encoder_inputs(ex: Examples, idx: np.ndarray,
                   item_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(input_ids, attention_mask)`` of examples ``idx``, padded to the batch's longest."""
    n_pos = item_tokens.shape[1]
    hl = ex.hist_len[idx]
    m = int(hl.max(initial=0))
    col = np.arange(m)
    valid = col[None, :] < hl[:, None]
    pos = ex.end[idx, None] - hl[:, None] + col[None, :]
    it = np.where(valid, ex.items[np.where(valid, pos, 0)] if len(ex.items) else 0, 0)
    width = m * n_pos + 1
    ids = np.zeros((len(idx), width), dtype=np.int64)
    ids[:, :m * n_pos] = item_tokens[it].reshape(len(idx), m * n_pos)
    ids[np.arange(len(idx)), hl * n_pos] = EOS
    mask = np.arange(width)[None, :] <= (hl * n_pos)[:, None]
    return ids, mask


def labels(ex: Examples, idx: np.ndarray, item_tokens: np.ndarray) -> np.ndarray:
    """Decoder labels of examples ``idx``: the target's ID tokens, then eos."""
    tok = item_tokens[ex.target[idx]]
    return np.concatenate([tok, np.full((len(idx), 1), EOS, dtype=np.int64)], 1)


def bucketed_batches(hist_len: np.ndarray, batch_size: int,
                     rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar history length: shuffle, sort by length inside chunks of
    50 batches, cut, shuffle the batch order."""
    n = len(hist_len)
    perm = rng.permutation(n)
    chunk = np.arange(n) // (batch_size * 50)
    order = perm[np.lexsort((hist_len[perm], chunk))]
    batches = [order[s:s + batch_size] for s in range(0, n, batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))]
