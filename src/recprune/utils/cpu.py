"""CPU numerics helpers."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def flush_denormals(device: torch.device | str = "cpu") -> Iterator[bool]:
    """Treat subnormal floats as zero on the CPU for the duration of the block.

    A model that has trained for a while produces many subnormal values (e.g. softmax
    probabilities of tokens it has learnt to rule out); x86 CPUs handle those in microcode, and
    TIGER's fine-tuning got ~1.65x slower per step as it trained (docs/benchmarks.md (f)).
    Flushing them (FTZ/DAZ) changes values below 1.2e-38 only. Yields whether flushing is on;
    the previous setting is restored on exit. A no-op off the CPU or where unsupported.
    """
    if torch.device(device).type != "cpu":
        yield False
        return
    # torch has no getter: setting returns whether the CPU supports it; the previous value is
    # probed by checking how a subnormal survives a multiply
    before = bool((torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0)
    supported = torch.set_flush_denormal(True)
    try:
        yield supported
    finally:
        torch.set_flush_denormal(before)
