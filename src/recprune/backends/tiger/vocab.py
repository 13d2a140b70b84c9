"""The token vocabulary of semantic IDs and the trie of valid IDs.

``0`` = pad (also T5's decoder start token), ``1`` = eos, then one distinct token per (level,
code): level ``l`` code ``c`` is token ``offsets[l] + c`` with ``offsets[0] = 2`` and level sizes
``codebook_size`` for the RQ-VAE levels and ``max_collisions`` for the disambiguation level.

The trie is dense: one table per level mapping (prefix id, code) to the child prefix id (or, at
the last level, to the item id; ``-1`` = no such ID), so that looking up the allowed tokens of
every beam is a single tensor gather.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from recprune.errors import DataError

PAD, EOS = 0, 1
FIRST_CODE_TOKEN = 2


@dataclass
class Vocab:
    """Token layout of the semantic IDs and the constrained-decoding trie."""

    sizes: tuple[int, ...]  # tokens per ID level (RQ-VAE levels, then the disambiguation level)
    offsets: tuple[int, ...]  # first token of each level
    vocab_size: int
    item_tokens: np.ndarray  # (n_items + 1, n_pos) int64 tokens of each item; row 0 = PAD
    children: list[torch.Tensor]  # per level: (n_prefixes, size) -> child prefix / item, -1 none
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_pos(self) -> int:
        return len(self.sizes)

    def children_on(self, device: torch.device) -> list[torch.Tensor]:
        """The trie tables on ``device`` (copied once per device)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = [c.to(device) for c in self.children]
        return self._on_device[key]

    @classmethod
    def build(cls, codes: np.ndarray, codebook_size: int) -> Vocab:
        """The vocabulary of ``codes`` (n_items + 1, n_pos) (row 0 unused)."""
        codes = np.asarray(codes, dtype=np.int64)
        n_items, n_pos = len(codes) - 1, codes.shape[1]
        c = codes[1:]
        sizes = tuple([int(codebook_size)] * (n_pos - 1) + [int(c[:, -1].max()) + 1])
        if (c[:, :-1] >= codebook_size).any() or (c < 0).any():
            raise DataError("semantic ID codes out of range of the codebook")
        offsets = tuple(int(x) for x in FIRST_CODE_TOKEN + np.concatenate(
            ([0], np.cumsum(sizes)[:-1])))
        item_tokens = np.zeros((n_items + 1, n_pos), dtype=np.int64)
        item_tokens[1:] = c + np.asarray(offsets)[None, :]
        # dense trie, built level by level with np.unique over integer prefix keys
        children: list[torch.Tensor] = []
        pid = np.zeros(n_items, dtype=np.int64)
        n_prefix = 1
        for lvl in range(n_pos):
            table = np.full((n_prefix, sizes[lvl]), -1, dtype=np.int64)
            if lvl < n_pos - 1:
                uniq, new_pid = np.unique(pid * sizes[lvl] + c[:, lvl], return_inverse=True)
                table[pid, c[:, lvl]] = new_pid
                pid, n_prefix = new_pid.reshape(-1), len(uniq)
            else:
                if len(np.unique(pid * sizes[lvl] + c[:, lvl])) != n_items:
                    raise DataError("semantic IDs are not unique")
                table[pid, c[:, lvl]] = np.arange(1, n_items + 1)
            dtype = torch.int32 if table.max(initial=0) < 2**31 - 1 else torch.int64
            children.append(torch.from_numpy(table).to(dtype))
        return cls(sizes, offsets, FIRST_CODE_TOKEN + int(sum(sizes)), item_tokens, children)
