"""A fresh, seeded peft LoRA adapter on a causal LM, and its modules by decoder layer.

:func:`attach_lora` wraps a model with a new adapter whose initialisation depends only on the
seed (``lora_A`` random, ``lora_B`` zero as peft initialises it, so the wrapped model computes
what the base model does). :func:`lora_modules` lists the adapter's modules with the index of
the decoder layer each belongs to, and :func:`select_layers` turns a layer choice (``"all"``,
``"last"`` or indices) into layer indices, so that a caller can train or score the adapter of
chosen layers only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from recprune.errors import ConfigError

#: name of the adapter that :func:`attach_lora` creates (peft's default)
ADAPTER = "default"
_LAYER_RE = re.compile(r"\.layers\.(\d+)\.")


def attach_lora(model: torch.nn.Module, *, r: int, alpha: float,
                target_modules: Iterable[str], seed: int, dropout: float = 0.0,
                what: str = ""):
    """Wrap ``model`` in place with a fresh LoRA adapter; return the peft model.

    ``target_modules``: names of the linear layers to adapt (e.g. ``q_proj``, ``v_proj``);
    the random ``lora_A`` initialisation is drawn under ``seed`` without touching the global
    random state. ``what`` prefixes the error message (e.g. ``"bigrec: "``). peft freezes the
    base model's parameters; the adapter's are trainable.
    """
    from peft import LoraConfig, get_peft_model

    targets = list(target_modules)
    lc = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                    bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            return get_peft_model(model, lc)
        except ValueError as e:
            raise ConfigError(f"{what}cannot attach LoRA to {targets}: {e}") from None


@dataclass(frozen=True)
class LoraModule:
    """One adapted linear layer: ``B(A(x))`` is added to its output."""

    layer: int  # index of the decoder layer it belongs to
    name: str  # its module name in the peft model
    module: torch.nn.Module  # the peft LoraLayer

    @property
    def A(self) -> torch.nn.Linear:
        return self.module.lora_A[ADAPTER]

    @property
    def B(self) -> torch.nn.Linear:
        return self.module.lora_B[ADAPTER]


def lora_modules(peft_model: torch.nn.Module) -> list[LoraModule]:
    """The adapter's modules in model order, each with its decoder layer index."""
    from peft.tuners.lora import LoraLayer

    out = []
    for name, mod in peft_model.named_modules():
        if isinstance(mod, LoraLayer) and ADAPTER in getattr(mod, "lora_A", {}):
            m = _LAYER_RE.search(name)
            if m is None:
                raise ConfigError(f"cannot tell the decoder layer of LoRA module {name}")
            out.append(LoraModule(int(m.group(1)), name, mod))
    if not out:
        raise ConfigError(f"the model has no module of LoRA adapter {ADAPTER!r}")
    return out


def select_layers(choice: str | Sequence[int], n_layers: int, *,
                  what: str = "lora_layers") -> list[int]:
    """Sorted layer indices of ``choice``: ``"all"``, ``"last"`` or indices (negative ones
    count from the end) of a model with ``n_layers`` decoder layers."""
    if choice == "all":
        return list(range(n_layers))
    if choice == "last":
        return [n_layers - 1]
    layers = set()
    for i in choice:
        j = i + n_layers if i < 0 else i
        if not 0 <= j < n_layers:
            raise ConfigError(f"{what}: no layer {i} (the model has {n_layers})")
        layers.add(j)
    return sorted(layers)


def lora_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The adapter parameters of a peft model (``lora_A`` and ``lora_B`` of every module)."""
    return [p for n, p in model.named_parameters() if "lora_" in n]


def base_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters of a peft model's base model (everything but the adapter)."""
    return [p for n, p in model.named_parameters() if "lora_" not in n]


__all__ = ["ADAPTER", "LoraModule", "attach_lora", "base_parameters", "lora_modules",
           "lora_parameters", "select_layers"]
