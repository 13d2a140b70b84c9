"""The two causal-LM helpers BIGRec uses: a seeded LoRA adapter and a key/value cache.

* :func:`attach_lora` wraps a model with a fresh peft LoRA adapter whose initialisation depends
  only on the seed (``lora_A`` random, ``lora_B`` zero: the wrapped model computes what the base
  model does); :func:`reset_lora` draws that same initialisation again.
* :func:`make_cache` / :func:`expanded_cache` turn per-layer ``(keys, values)`` tensors into the
  transformers cache object a decoder continues from, whatever the transformers version.

They are kept apart from the backend's own logic so that shared versions can replace them here.
"""

from __future__ import annotations

import torch

from recprune.errors import ConfigError

#: per decoder layer: (keys, values), each (batch, kv_heads, positions, head_dim)
KV = list[tuple[torch.Tensor, torch.Tensor]]


def attach_lora(model: torch.nn.Module, *, r: int, alpha: float, dropout: float,
                target_modules: tuple[str, ...], seed: int):
    """Wrap ``model`` with a fresh LoRA adapter drawn under ``seed`` (the global random state
    is left alone); return the peft model."""
    from peft import LoraConfig, get_peft_model

    lc = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                    target_modules=list(target_modules), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, lc)
        except ValueError as e:
            raise ConfigError(f"bigrec: cannot attach LoRA to {list(target_modules)}: "
                              f"{e}") from None


def reset_lora(peft_model: torch.nn.Module, seed: int) -> None:
    """Re-draw every LoRA module's initialisation under ``seed`` (as :func:`attach_lora`)."""
    from peft.tuners.lora import LoraLayer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for mod in peft_model.modules():
            if isinstance(mod, LoraLayer):
                for name in list(mod.lora_A.keys()):
                    mod.reset_lora_parameters(name, True)


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
