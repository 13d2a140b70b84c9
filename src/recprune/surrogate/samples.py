"""Training samples of the surrogate: one per user, as in the DEALRec reference.

For a user's training items ``items``: input ``items[:-2]``, targets ``items[1:-1]`` (every
next-item position, the last ``max_len`` kept). The last training item is never a surrogate
target: it is the LLM's target. Users with <= 2 training items have no target, zero loss and
zero gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recprune.data.dataset import InteractionDataset


@dataclass(frozen=True)
class SurrogateSamples:
    """Left-padded (n_users, max_len) input and target id matrices, one row per user."""

    seq: torch.Tensor  # int64
    tgt: torch.Tensor  # int64, 0 = no target
    lengths: torch.Tensor  # number of target positions per user

    @property
    def n(self) -> int:
        return self.seq.shape[0]

    def batch(self, rows: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``rows`` cut to their longest sequence (see :mod:`recprune.surrogate.sasrec`)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        width = max(int(self.lengths[rows].max()), 1)
        return self.seq[rows, -width:], self.tgt[rows, -width:]

    def length_buckets(self, rows: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """Split ``rows`` into batches of similar length (sorted), to avoid padding work."""
        rows = np.asarray(rows)
        order = rows[np.argsort(self.lengths.numpy()[rows], kind="stable")]
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def build_samples(ds: InteractionDataset, max_len: int = 50, *,
                  include_last: bool = False) -> SurrogateSamples:
    """Build the per-user surrogate samples.

    ``include_last=True`` also uses the last training item as a target (input ``items[:-1]``,
    targets ``items[1:]``), a choice the reference does not make.
    """
    drop = 0 if include_last else 1
    tgt = ds.train.to_padded(max_len, drop_last=drop)
    seq = ds.train.to_padded(max_len, drop_last=drop + 1)
    # targets exist only where an input item precedes them
    lengths = np.minimum(np.maximum(ds.train.lengths - drop - 1, 0), max_len)
    col = np.arange(max_len)
    tgt[col[None, :] < (max_len - lengths)[:, None]] = 0
    seq[col[None, :] < (max_len - lengths)[:, None]] = 0
    return SurrogateSamples(torch.from_numpy(seq), torch.from_numpy(tgt),
                            torch.from_numpy(lengths.astype(np.int64)))
