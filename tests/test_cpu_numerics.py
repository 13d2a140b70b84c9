import os
import subprocess
import sys

import pytest
import torch

from recprune.utils.cpu import flush_denormals

SUB = 1e-39  # subnormal in float32

# FTZ/DAZ need x86 SSE (or an equivalent); torch says whether this CPU has them (the call also
# leaves flushing off, its default)
pytestmark = pytest.mark.skipif(not torch.set_flush_denormal(False),
                                reason="this CPU cannot flush subnormals")


def _survives() -> bool:
    return (torch.tensor([SUB]) * 1.0).item() != 0.0


def test_flush_denormals_zeroes_subnormals_inside_and_restores_after():
    assert _survives()
    with flush_denormals("cpu") as on:
        assert on is True
        assert not _survives()
        with flush_denormals("cpu"):
            pass
        assert not _survives()  # an inner block restores the outer block's setting
    assert _survives()


def test_flush_denormals_restores_after_an_error():
    with pytest.raises(RuntimeError):
        with flush_denormals("cpu"):
            raise RuntimeError("boom")
    assert _survives()


def test_flush_denormals_is_a_no_op_off_the_cpu():
    with flush_denormals("meta") as on:
        assert on is False
        assert _survives()


def test_flush_denormals_reaches_every_intra_op_thread():
    # FTZ/DAZ are per-thread CPU flags, and torch.set_flush_denormal sets only the calling
    # thread's: once torch's OpenMP pool exists, half of a 2-thread op would not flush
    code = (
        "import torch\n"
        "from recprune.utils.cpu import flush_denormals, _probe, _PROBE_N\n"
        "torch.set_num_threads(2)\n"
        "assert _probe() == _PROBE_N  # creates the pool; nothing flushed\n"
        "torch.set_flush_denormal(True); part = _probe(); torch.set_flush_denormal(False)\n"
        "assert 0 < part < _PROBE_N, part  # the calling thread alone\n"
        "with flush_denormals('cpu') as on:\n"
        "    assert on is True and _probe() == 0\n"
        "assert _probe() == _PROBE_N\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "2"}, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
