"""A causal LM's attention key/value cache as plain per-layer tensors.

transformers keeps a decoder's keys and values in a cache object whose constructor differs
between versions. These helpers work with the version-independent form, a list of per-layer
``(keys, values)`` tensors of shape (batch, kv_heads, positions, head_dim): run a prompt prefix
once (:func:`run_prefix`), then give its keys and values to every batch that continues it
(:func:`expanded_cache`).
"""

from __future__ import annotations

import numpy as np
import torch

from recprune.llm.loading import cache_kv

#: per decoder layer: (keys, values), each (batch, kv_heads, positions, head_dim)
KV = list[tuple[torch.Tensor, torch.Tensor]]


def make_cache(kv: KV, config):
    """A transformers ``DynamicCache`` holding ``kv`` (``config``: the model's config)."""
    from transformers import DynamicCache

    try:
        return DynamicCache(ddp_cache_data=kv, config=config)
    except TypeError:  # older transformers
        return DynamicCache.from_legacy_cache(tuple(kv))


def expanded_cache(kv: KV, batch: int, config):
    """A cache of ``batch`` rows that all hold the one-row ``kv`` (broadcast views, no copy)."""
    return make_cache([(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
                       for k, v in kv], config)


def detached_kv(cache) -> KV:
    """The per-layer keys and values of a transformers cache, cut from any autograd graph."""
    return [(k.detach(), v.detach()) for k, v in cache_kv(cache)]


def run_prefix(decoder: torch.nn.Module, prefix_ids: np.ndarray | torch.Tensor,
               device: torch.device) -> tuple[torch.Tensor, KV]:
    """Run one token sequence through ``decoder`` without a graph: its last hidden states
    (positions, hidden) and its keys/values (one row per layer)."""
    ids = torch.as_tensor(prefix_ids, device=device)[None]
    with torch.no_grad():
        out = decoder(input_ids=ids, use_cache=True)
    return out.last_hidden_state[0], detached_kv(out.past_key_values)


__all__ = ["KV", "cache_kv", "detached_kv", "expanded_cache", "make_cache", "run_prefix"]
