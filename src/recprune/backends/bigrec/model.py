"""The LLM BIGRec fine-tunes: a causal LM with a LoRA adapter, and its tokenizer.

A :class:`LoraLM` is loaded with a fresh seeded adapter (:meth:`LoraLM.fresh`) or with a saved
one (:meth:`LoraLM.saved`). It gives what training, generation and grounding run directly: the
decoder (final normed hidden states), the logits of hidden states, the keys and values of a
prompt prefix, the adapter's weights (reset, get, set, save) and a fingerprint of the base
weights, which keys the item-embedding cache and ties a saved adapter to its base model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from recprune.backends.bigrec.config import BigRecConfig
from recprune.backends.bigrec.lm_helpers import attach_lora, reset_lora
from recprune.llm.kv_cache import KV
from recprune.errors import ConfigError, DataError
from recprune.llm.loading import cache_kv, load_causal_lm
from recprune.store import Hasher, atomic_dir, digest


class LoraLM:
    """A peft model (base LM + LoRA adapter) and its tokenizer.

    Attributes
    ----------
    peft:
        The peft model (``peft.disable_adapter()`` runs the base model).
    base:
        The base causal LM (its ``config`` is the model configuration).
    decoder:
        The base model's decoder: token ids -> final normed hidden states.
    lora_params:
        The adapter's parameters (trainable).
    """

    def __init__(self, peft_model, tokenizer, target_modules: tuple[str, ...]) -> None:
        self.peft = peft_model
        self.tokenizer = tokenizer
        self.base = peft_model.get_base_model()
        self.decoder = (self.base.get_decoder() if hasattr(self.base, "get_decoder")
                        else self.base.model)
        self._head = self.base.get_output_embeddings()
        self._softcap = getattr(self.base.config, "final_logit_softcapping", None)
        self.device: torch.device = next(self.base.parameters()).device
        self.lora_params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        if not self.lora_params:
            raise ConfigError(f"bigrec: no LoRA module was created for {list(target_modules)}")
        for p in self.lora_params:
            p.requires_grad_(True)
        peft_model.eval()
        self._base_fp: str | None = None

    @classmethod
    def fresh(cls, config: BigRecConfig) -> LoraLM:
        """``config.model`` with a new adapter (seeded by ``config.seed``)."""
        model, tokenizer = load_causal_lm(config.model, device=config.device)
        peft_model = attach_lora(model, r=config.r, alpha=config.alpha, dropout=config.dropout,
                                 target_modules=config.target_modules, seed=config.seed)
        return cls(peft_model, tokenizer, config.target_modules)

    @classmethod
    def saved(cls, config: BigRecConfig, adapter_dir: Path) -> LoraLM:
        """``config.model`` with the adapter saved in ``adapter_dir`` (:meth:`save_adapter`)."""
        from peft import PeftModel

        base, tokenizer = load_causal_lm(config.model, device=config.device)
        try:
            peft_model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
        except Exception as e:  # noqa: BLE001 - peft/safetensors raise many kinds
            raise DataError(f"cannot load the LoRA adapter: {e}", path=str(adapter_dir)) from None
        return cls(peft_model, tokenizer, config.target_modules)

    @property
    def source(self) -> str | None:
        """Where the base model was loaded from (recorded beside caches and saved adapters)."""
        return getattr(self.base, "recprune_source", None)

    # -- running -------------------------------------------------------------------------------

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """float32 next-token logits of final hidden states ``h`` (..., hidden)."""
        logits = self._head(h)
        if self._softcap:
            logits = torch.tanh(logits / self._softcap) * self._softcap
        return logits.float()

    @torch.no_grad()
    def prefix_kv(self, prefix_ids: np.ndarray) -> KV:
        """Per-layer keys and values of the one-row prompt prefix ``prefix_ids``."""
        ids = torch.as_tensor(prefix_ids, device=self.device)[None]
        out = self.decoder(input_ids=ids, use_cache=True)
        return [(k.detach(), v.detach()) for k, v in cache_kv(out.past_key_values)]

    def base_fingerprint(self) -> str:
        """Fingerprint of the base model (architecture, dtype and a sample of every 8th weight
        tensor, LoRA excluded)."""
        if self._base_fp is None:
            mc = self.base.config
            arch = {k: getattr(mc, k, None) for k in ("model_type", "hidden_size", "vocab_size",
                                                      "num_hidden_layers",
                                                      "num_attention_heads",
                                                      "num_key_value_heads", "rope_theta")}
            params = [p for n, p in self.peft.named_parameters() if "lora_" not in n]
            sample = [p.detach().flatten()[:4096].float().cpu().numpy() for p in params[::8]]
            sample.append(params[-1].detach().flatten()[-4096:].float().cpu().numpy())
            h = Hasher().update(json.dumps(arch, sort_keys=True, default=str),
                                str(next(self.base.parameters()).dtype),
                                str(sum(p.numel() for p in params)), digest(*sample))
            self._base_fp = h.hexdigest()[:16]
        return self._base_fp

    # -- the adapter ---------------------------------------------------------------------------

    def reset_adapter(self, seed: int) -> None:
        """A fresh adapter (seeded; ``lora_B`` = 0: the model equals the base model)."""
        reset_lora(self.peft, seed)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """A copy of the adapter's weights (peft's state-dict keys)."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.peft).items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        res = set_peft_model_state_dict(self.peft, state)
        bad = [k for k in getattr(res, "unexpected_keys", []) if "lora_" in k]
        if bad:
            raise DataError(f"bigrec: adapter weights do not fit the model ({bad[:3]})")

    def save_adapter(self, dst: Path) -> None:
        """Write the adapter in peft's format into directory ``dst`` (replaced atomically)."""
        with atomic_dir(dst) as tmp:
            self.peft.save_pretrained(str(tmp))
