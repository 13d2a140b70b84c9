import pytest
import torch

from recprune.utils.cpu import flush_denormals

SUB = 1e-39  # subnormal in float32


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
