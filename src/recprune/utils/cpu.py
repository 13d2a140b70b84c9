"""CPU numerics helpers."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

# bit pattern of a float32 subnormal (5.9e-39), written as an integer: converting 1e-39 from
# a Python float would itself be flushed to zero when this thread already flushes
_SUBNORMAL_BITS = 0x00400000
_PROBE_N = 1 << 20  # large enough that an elementwise op is split over every intra-op thread


def _probe() -> int:
    """How many of a large tensor's subnormal elements survive ``x * 1.0`` (0: all threads flush).

    Counted on the bit patterns, so the count itself is not affected by DAZ.
    """
    x = torch.full((_PROBE_N,), _SUBNORMAL_BITS, dtype=torch.int32)
    y = x.view(torch.float32) * 1.0
    return int((y.view(torch.int32) != 0).sum())


_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.cache
def _gomp_parallel():
    """``GOMP_parallel`` of the libgomp that torch runs its intra-op threads on, or None."""
    if "OpenMP" not in torch.__config__.parallel_info():
        return None
    bundled = os.path.join(os.path.dirname(torch.__file__), "lib", "libgomp.so.1")
    for name in (bundled, "libgomp.so.1"):
        try:
            fn = ctypes.CDLL(name).GOMP_parallel
        except (OSError, AttributeError):
            continue
        fn.argtypes = [_CB, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        fn.restype = None
        return fn
    return None


def _set_everywhere(on: bool) -> bool:
    """Set flush-denormal in this thread and in every intra-op (OpenMP) thread of torch.

    The FTZ/DAZ bits are per thread, and ``torch.set_flush_denormal`` sets them only in the
    calling one, so a multi-threaded op would still compute half of its elements the slow way.
    """
    ok = torch.set_flush_denormal(on)
    gomp = _gomp_parallel()
    if ok and gomp is not None and torch.get_num_threads() > 1:
        def run(_):  # runs once on each thread of an OpenMP team the size of torch's pool
            torch.set_flush_denormal(on)

        gomp(_CB(run), None, torch.get_num_threads(), 0)
    return ok


@contextlib.contextmanager
def flush_denormals(device: torch.device | str = "cpu") -> Iterator[bool]:
    """Treat subnormal floats as zero on the CPU, in every torch thread, for the block.

    A model that has trained for a while produces many subnormal values (e.g. softmax
    probabilities of tokens it has learnt to rule out); x86 CPUs handle those in microcode, and
    one training step of a trained TIGER T5 took 1.65x as long as with them flushed
    (docs/benchmarks.md, section 2.2). Flushing (FTZ/DAZ) changes values below 1.2e-38 only. Yields
    whether every thread flushes (checked on a probe tensor; a warning says when only some
    do). On exit flushing is off again in every thread, unless it was already on in every
    thread on entry (then the block changes nothing). A no-op off the CPU, and False where the
    CPU cannot flush.
    """
    if torch.device(device).type != "cpu":
        yield False
        return
    if _probe() == 0:  # already on everywhere (an enclosing block, or the user's own setting)
        yield True
        return
    ok = _set_everywhere(True)
    left = _probe() if ok else _PROBE_N
    if ok and left:
        log.warning("flush_denormals: %d of %d probe values were not flushed; some torch threads "
                    "compute subnormals the slow way", left, _PROBE_N)
    try:
        yield bool(ok and left == 0)
    finally:
        _set_everywhere(False)
