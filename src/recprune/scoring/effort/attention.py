"""Per-sample attention for the effort score's batches, plugged into a transformers model.

:func:`batch_attention` computes causal attention so that the samples of a batch never see
each other: in a packed row (all samples one after the other, no padding) each sample attends
to its own tokens only, with one batched SDPA call per run of equal-length samples; in padded
rows plain causal attention per row suffices (right padding comes after the real tokens). In
the decoder layers below a split layer, every sample may also attend to the constant
keys/values of the shared prompt prefix, placed before its own tokens.

The kernel is registered once with transformers' ``AttentionInterface`` under
:data:`KERNEL_NAME`. :func:`packed_attention` switches a model to it for one forward by setting
the private ``_attn_implementation`` attribute of its configs, which transformers' attention
layers read at every call, and restoring it afterwards; the batch's layout travels in a
thread-local :class:`AttnState`. Outside such a forward the kernel is plain SDPA.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from recprune.scoring.effort.layout import Layout, Segment
from recprune.scoring.effort.prefix import SharedPrefix

KERNEL_NAME = "recprune_packed"
_STATE = threading.local()
_registered = False


@dataclass
class AttnState:
    """Layout of one forward for :func:`batch_attention`.

    Decoder layers with index < ``split`` see ``low``, the others ``high``; a layout is a list
    of packed segments (one row) or ``None`` (right-padded rows). ``prefix_kv`` (constant
    per-layer keys/values of the shared prefix) is attended to by the low layers only.
    """

    split: int
    low: list[Segment] | None
    high: list[Segment] | None
    prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None
    masks: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)


def batch_state(lay: Layout, prefix: SharedPrefix | None, n_layers: int) -> AttnState:
    """The attention layout of a packed batch, or of one with the prefix inserted: below the
    insertion layer the samples' own tokens attend to the constant prefix keys/values, from it
    on the extended sequences [prefix, own tokens] attend to themselves."""
    if lay.inserted:
        return AttnState(split=prefix.ins, low=lay.segments, high=lay.segments_high,
                         prefix_kv=prefix.kv)
    return AttnState(split=n_layers, low=lay.segments, high=None,
                     prefix_kv=prefix.kv if prefix is not None else None)


def attention_configs(model: torch.nn.Module) -> list:
    """The distinct configs in ``model`` that choose its attention implementation."""
    return list({id(m.config): m.config for m in model.modules()
                 if hasattr(m, "config") and hasattr(m.config, "_attn_implementation")}.values())


@contextmanager
def packed_attention(configs: list, state: AttnState) -> Iterator[None]:
    """Make the model's attention layers use :func:`batch_attention` for one forward."""
    _register()
    saved = [c._attn_implementation for c in configs]
    _STATE.state = state
    try:
        for c in configs:
            c._attn_implementation = KERNEL_NAME
        yield
    finally:
        for c, a in zip(configs, saved):
            c._attn_implementation = a
        _STATE.state = None


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(KERNEL_NAME, batch_attention)
        _registered = True


def _repeat_kv(k: torch.Tensor, n_rep: int) -> torch.Tensor:
    n, kvh, s, d = k.shape
    return k[:, :, None].expand(n, kvh, n_rep, s, d).reshape(n, kvh * n_rep, s, d)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
          scaling: float | None, n_rep: int) -> torch.Tensor:
    causal = mask is None
    # Fused GQA: on CPU always; on accelerators only without a mask (CUDA's fused kernels
    # do not take a mask together with GQA and would fall back to the math kernel).
    gqa = n_rep > 1 and (mask is None or q.device.type == "cpu")
    if n_rep > 1 and not gqa:
        k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
    try:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                              is_causal=causal, enable_gqa=gqa)
    except TypeError:  # torch < 2.5: no enable_gqa
        if gqa:
            k, v = _repeat_kv(k, n_rep), _repeat_kv(v, n_rep)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                              is_causal=causal)


def _prefix_mask(masks: dict, P: int, ln: int, device: torch.device) -> torch.Tensor:
    """(ln, P + ln) bool: a query sees the whole prefix and causally its own tokens."""
    mask = masks.get((P, ln))
    if mask is None:
        mask = masks[(P, ln)] = (torch.arange(P + ln, device=device)[None, :] <=
                                 torch.arange(ln, device=device)[:, None] + P)
    return mask


def batch_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                    value: torch.Tensor, attention_mask: torch.Tensor | None,
                    dropout: float = 0.0, scaling: float | None = None, **kwargs
                    ) -> tuple[torch.Tensor, None]:
    """Per-sample causal attention for one batch (layout from the thread's :class:`AttnState`).

    ``query``: (rows, H, L, D); ``key``/``value``: (rows, KVH, L, D); returns (rows, L, H, D).
    The transformers ``attention_mask`` is not used.
    """
    state = getattr(_STATE, "state", None)
    if state is None:  # not inside one of our forwards: plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      dropout=dropout, scaling=scaling, **kwargs)
    n_rep = getattr(module, "num_key_value_groups", 1)
    low = module.layer_idx < state.split
    segs = state.low if low else state.high
    kp = vp = None
    P = 0
    if low and state.prefix_kv is not None:
        kp, vp = state.prefix_kv[module.layer_idx]
        P = kp.shape[2]
    if segs is None:  # right-padded rows
        rows, T = query.shape[0], query.shape[2]
        mask = None
        if P:
            key = torch.cat([kp.expand(rows, -1, -1, -1), key], dim=2)
            value = torch.cat([vp.expand(rows, -1, -1, -1), value], dim=2)
            mask = _prefix_mask(state.masks, P, T, query.device)
        o = _sdpa(query, key, value, mask, scaling, n_rep)  # (rows, H, T, D)
        return o.transpose(1, 2).contiguous(), None
    H, D = query.shape[1], query.shape[-1]
    KVH = key.shape[1]
    sizes = [n * ln for _, n, ln in segs]
    # One split per tensor (its backward is one concatenation), not one slice per sample.
    qs = torch.split(query.squeeze(0), sizes, dim=1)
    ks = torch.split(key.squeeze(0), sizes, dim=1)
    vs = torch.split(value.squeeze(0), sizes, dim=1)
    outs = []
    for (_, n, ln), q, k, v in zip(segs, qs, ks, vs):
        q = q.reshape(H, n, ln, D).transpose(0, 1)
        k = k.reshape(KVH, n, ln, D).transpose(0, 1)
        v = v.reshape(KVH, n, ln, D).transpose(0, 1)
        mask = None
        if P:
            k = torch.cat([kp.expand(n, -1, -1, -1), k], dim=2)
            v = torch.cat([vp.expand(n, -1, -1, -1), v], dim=2)
            mask = _prefix_mask(state.masks, P, ln, query.device)
        o = _sdpa(q, k, v, mask, scaling, n_rep)
        outs.append(o.transpose(0, 1).reshape(H, n * ln, D))  # (H, n*ln, D)
    out = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    return out.transpose(0, 1).unsqueeze(0).contiguous(), None  # (1, L, H, D)
