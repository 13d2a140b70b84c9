"""Forward hooks of the effort scorer: the prefix insertion and the LoRA recording.

:class:`PrefixInsert` (pre-hooks on the decoder layers from the insertion layer up) records
the input of the insertion layer at the prompt prefix's positions once, and in every batch
prepends those constant states to each sample's sequence, so that from that layer on the
prefix positions are inside each sample's autograd graph. :class:`LoraCapture` (forward hooks
on the scored ``lora_A`` / ``lora_B`` modules) keeps what the per-sample gradient norms need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from recprune.scoring.effort.prefix import SharedPrefix


class PrefixInsert:
    """Forward pre-hook state of the decoder layer where the prefix enters the samples
    (prefix modes "exact"/"none").

    ``mode="capture"`` (the prefix's own forward) records that layer's input at the prefix
    positions; ``mode="insert"`` (a batch) prepends those constant prefix states to every
    sample's sequence: the hidden states and the per-layer position arguments
    (``position_embeddings``, ``position_ids``) become those of [prefix, sample tokens]
    (packed: per sample inside the row, via ``gather``). The decoder passes the same position
    arguments to every layer, so :meth:`hook_above` (on the layers above) swaps in the
    extended ones too. ``mode=None``: the hooks do nothing.
    """

    def __init__(self) -> None:
        self.mode: str | None = None
        self.prefix: SharedPrefix | None = None
        self.gather: torch.Tensor | None = None
        self.captured: dict[str, Any] = {}
        self.extended: dict[str, Any] = {}  # the extended position arguments of the batch

    def reset(self) -> None:
        self.mode = None
        self.prefix = self.gather = None
        self.captured = {}
        self.extended = {}

    @contextmanager
    def inserting(self, prefix: SharedPrefix, gather: torch.Tensor | None) -> Iterator[None]:
        """Context of one batch's forward: prepend ``prefix`` to every sample (``gather``:
        the packed layout's index into cat([prefix, row]), ``None`` for padded rows)."""
        self.prefix, self.gather, self.mode = prefix, gather, "insert"
        try:
            yield
        finally:
            self.reset()

    def _join(self, pre: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        pre = pre.to(cur.dtype)
        if self.gather is None:  # padded rows: [prefix, row] for every row
            if pre.shape[0] != cur.shape[0]:
                pre = pre.expand(cur.shape[0], *pre.shape[1:])
            return torch.cat([pre, cur], dim=1)
        return torch.cat([pre, cur], dim=1).index_select(1, self.gather)

    def hook(self, mod: torch.nn.Module, args: tuple, kwargs: dict):
        """Pre-hook of the insertion layer."""
        if self.mode is None:
            return None
        h = args[0] if args else kwargs["hidden_states"]
        pe = kwargs.get("position_embeddings")
        pos = kwargs.get("position_ids")
        if self.mode == "capture":
            self.captured = {"h": h.detach(),
                             "pe": tuple(t.detach() for t in pe) if pe is not None else None,
                             "pos": pos.detach() if pos is not None else None}
            return None
        p = self.prefix
        h = self._join(p.h, h)
        if args:
            args = (h, *args[1:])
        else:
            kwargs["hidden_states"] = h
        ext = self.extended = {}
        if pe is not None:
            ext["position_embeddings"] = tuple(self._join(a, b) for a, b in zip(p.pe, pe))
        if pos is not None:
            pre = p.pos if p.pos is not None else \
                torch.arange(p.length, device=pos.device)[None]
            ext["position_ids"] = self._join(pre, pos)
        if "attention_mask" in kwargs:  # masks are made by the packed attention kernel
            ext["attention_mask"] = None
        kwargs.update(ext)
        return args, kwargs

    def hook_above(self, mod: torch.nn.Module, args: tuple, kwargs: dict):
        """Pre-hook of the layers above the insertion layer."""
        if self.mode != "insert":
            return None
        kwargs.update({k: v for k, v in self.extended.items() if k in kwargs})
        return args, kwargs


class LoraCapture:
    """What the LoRA forward hooks record during a gradient batch (while ``on``), by the index
    of the scored LoRA module."""

    def __init__(self, keep_x: bool) -> None:
        self.on = False
        self.keep_x = keep_x  # x is only needed for the lora_A gradient (lora_B != 0)
        self.xs: dict[int, torch.Tensor] = {}  # lora_A inputs
        self.us: dict[int, torch.Tensor] = {}  # lora_A outputs
        self.outs: dict[int, torch.Tensor] = {}  # lora_B outputs

    def clear(self) -> None:
        self.xs.clear()
        self.us.clear()
        self.outs.clear()

    def hook_a(self, k: int) -> Callable:
        def hook(mod, inp, out):
            if self.on:
                if self.keep_x:
                    self.xs[k] = inp[0]
                self.us[k] = out
        return hook

    def hook_b(self, k: int) -> Callable:
        def hook(mod, inp, out):
            if self.on:
                self.outs[k] = out
        return hook
