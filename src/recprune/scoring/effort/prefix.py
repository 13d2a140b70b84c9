"""The prompt prefix shared by every sample, run once per scorer.

Every prompt starts with the same tokens (the template's header, instruction and the fixed
lead-in of its input). :func:`run_shared_prefix` runs them through the model once, without a
graph, and keeps what the batches reuse: the per-layer keys/values, the prefix's own
negative log-likelihood and the log-probabilities of the token after it (constant context in
prefix mode ``"fixed"``), and, when the prefix enters each sample at a decoder layer
(``"exact"``/``"none"``), that layer's input at the prefix positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from recprune.errors import ScoringError
from recprune.llm.causal_lm import CausalLMParts
from recprune.llm.kv_cache import KV, run_prefix
from recprune.scoring.effort.hooks import PrefixInsert


@dataclass
class SharedPrefix:
    kv: KV  # per layer (1, KVH, P, D), constants
    length: int
    const_all: torch.Tensor  # summed NLL of the prefix's own targets (loss_on='all')
    first_logp: torch.Tensor  # (V,) log-probs of the token after the prefix
    # prefix "exact"/"none": the prefix enters every sample's sequence at decoder layer `ins`
    # (None: "fixed", the whole prefix is constant context); the constant input of that layer
    # at the prefix positions (hidden states and the decoder's per-layer position arguments)
    ins: int | None = None
    h: torch.Tensor | None = None  # (1, P, d)
    pe: tuple[torch.Tensor, ...] | None = None  # position_embeddings, e.g. (cos, sin) (1, P, hd)
    pos: torch.Tensor | None = None  # position_ids (1, P)


def run_shared_prefix(lm: CausalLMParts, prefix_ids: np.ndarray, insert: PrefixInsert,
                      insert_layer: int | None) -> SharedPrefix:
    """Run the non-empty ``prefix_ids`` once; with ``insert_layer``, ``insert`` (the
    pre-hook on that layer) records the layer's input at the prefix positions."""
    device = lm.device
    insert.mode = "capture" if insert_layer is not None else None
    try:
        h, kv = run_prefix(lm.decoder, prefix_ids, device)
        cap = insert.captured
    finally:
        insert.reset()
    ids = torch.as_tensor(prefix_ids, device=device)
    with torch.no_grad():
        logp = lm.logits(h).log_softmax(-1)
        const_all = -logp[torch.arange(len(ids) - 1, device=device), ids[1:]].sum()
    pre = SharedPrefix(kv, len(ids), const_all, logp[-1])
    if insert_layer is not None:
        if cap.get("h") is None:
            raise ScoringError(f"decoder layer {insert_layer} was not run on the prompt prefix")
        pre.ins, pre.h, pre.pe, pre.pos = insert_layer, cap["h"], cap["pe"], cap["pos"]
    return pre
