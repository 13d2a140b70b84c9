"""The effort score computed the plain way, to check the batched scorer against.

One full forward and ``loss.backward()`` per sample through the standard peft model (the LM
head on every position), and the norm of the scored LoRA parameters' ``.grad`` (``lora_A``
and ``lora_B``). Slow; for tests and benchmarks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from recprune.llm.kv_cache import expanded_cache
from recprune.llm.prompts import TokenizedSamples

if TYPE_CHECKING:
    from recprune.scoring.effort.scorer import EffortScorer


def reference_scores(scorer: EffortScorer, ts: TokenizedSamples) -> np.ndarray:
    """Effort score of every sample of ``ts`` by one backward pass per sample.

    The full prompt (prefix included) is run for every sample, except with ``prefix="fixed"``,
    where the same constant prefix cache as the batched scorer's is the context. The scorer's
    gradient settings are restored afterwards and no ``.grad`` is left behind.
    """
    params = []
    for m in scorer._scored:
        params += [m.A.weight, m.B.weight]
    fixed = scorer.insert_layer is None
    prefix = scorer._prefix(ts) if fixed else None
    device, loss_on = scorer.device, scorer.config.loss_on
    out = np.zeros(ts.n)
    try:
        for p in params:
            p.requires_grad_(True)
        for i in range(ts.n):
            ids_np, tgt_np = ts.sample(i) if fixed else ts.full(i)
            ids = torch.as_tensor(ids_np, device=device)[None]
            kw = {"past_key_values": expanded_cache(prefix.kv, 1, scorer._lm.config),
                  "use_cache": True} if prefix is not None else {"use_cache": False}
            logits = scorer.model(input_ids=ids, **kw).logits[0].float()
            logp = logits.log_softmax(-1)
            j = torch.as_tensor(np.flatnonzero(tgt_np[1:]) + 1, device=device)
            nll = -logp[j - 1, ids[0, j]].sum()
            const = 0.0
            if prefix is not None:
                if loss_on == "all":
                    const += float(prefix.const_all)
                if tgt_np[0]:
                    const -= float(prefix.first_logp[int(ids_np[0])])
            loss = (nll + const) / max(int(ts.n_targets[i]), 1)
            for p in params:
                p.grad = None
            loss.backward()
            grads = [p.grad for p in params if p.grad is not None]
            out[i] = float(torch.nn.utils.get_total_norm(grads, 2.0)) if grads else 0.0
    finally:
        for p in params:
            p.grad = None
            p.requires_grad_(False)
        for m in scorer._scored:
            m.B.weight.requires_grad_(True)
    return out
