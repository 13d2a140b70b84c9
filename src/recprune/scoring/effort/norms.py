"""Per-sample squared gradient norms of the LoRA parameters from one backward of a batch.

For a LoRA module ``y = W x + B (A x)`` with recorded input ``x``, ``u = A x`` and the
gradient ``g`` of the batch loss with respect to the ``lora_B`` output ``B u``, the gradients
of sample ``s`` alone are ``grad_B = sum_t g_t u_t^T`` and ``grad_A = sum_t (B^T g_t) x_t^T``
over that sample's positions ``t``. Samples of a batch do not interact (each has its own loss
term and attends only to its own tokens), so these are exactly the per-sample gradients; the
sums are batched matrix products over a (samples, positions, features) view.
"""

from __future__ import annotations

import torch

from recprune.llm.lora import LoraModule
from recprune.scoring.effort.hooks import LoraCapture
from recprune.scoring.effort.layout import Layout


@torch.no_grad()
def squared_norms(cap: LoraCapture, keys: list[int], grads: tuple[torch.Tensor | None, ...],
                  lay: Layout, modules: list[LoraModule], *, with_a: bool,
                  device: torch.device) -> torch.Tensor:
    """Sum over the scored LoRA modules ``keys`` (indices into ``modules``, their recorded
    tensors in ``cap``) of each sample's squared gradient norm, (B,) float32; ``grads``: the
    gradients w.r.t. ``cap.outs[k]``. ``with_a``: include ``lora_A`` (zero while B = 0)."""
    B, T = lay.B, lay.T
    dst = None if lay.dst is None else torch.as_tensor(lay.dst, device=device)

    def padded(t: torch.Tensor) -> torch.Tensor:  # (rows, L, d) -> (B, T, d)
        t = t.float()
        if dst is None:
            return t
        out = t.new_zeros(B * T, t.shape[-1])
        out[dst] = t.reshape(-1, t.shape[-1])
        return out.view(B, T, -1)

    sq = torch.zeros(B, device=device, dtype=torch.float32)
    for k, g in zip(keys, grads):
        if g is None:
            continue
        g = padded(g)
        gb = torch.bmm(g.transpose(1, 2), padded(cap.us[k]))  # (B, d_out, r): grad lora_B
        sq = sq + gb.pow(2).sum((1, 2))
        if with_a:
            bw = modules[k].B.weight.float()
            v = g @ bw  # (B, T, r): grad w.r.t. u = A x
            ga = torch.bmm(v.transpose(1, 2), padded(cap.xs[k]))  # (B, r, d_in): lora_A
            sq = sq + ga.pow(2).sum((1, 2))
    return sq
