"""BIGRec's seeded LoRA adapter (the key/value cache helpers are :mod:`recprune.llm.kv_cache`).

:func:`attach_lora` wraps a model with a fresh peft LoRA adapter whose initialisation depends
only on the seed (``lora_A`` random, ``lora_B`` zero: the wrapped model computes what the base
model does); :func:`reset_lora` draws that same initialisation again.
"""

from __future__ import annotations

import torch

from recprune.errors import ConfigError



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
