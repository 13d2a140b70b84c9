"""The parts of a transformers causal LM that a scorer or trainer drives itself.

Running the decoder and the LM head separately lets a caller apply the head only at the
positions whose logits a loss needs. :class:`CausalLMParts` finds the decoder (input ids to
last hidden states) and the head of a causal LM, with or without a peft wrapper, and turns
hidden states into float32 logits the way the model's own forward does (including a final
logit soft-capping where the model has one).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class CausalLMParts:
    """Decoder and LM head of a causal LM.

    Attributes
    ----------
    model:
        The causal LM itself (a peft wrapper's base model).
    decoder:
        The transformer stack: ``decoder(input_ids=...).last_hidden_state``.
    head:
        The output embedding: hidden states to vocabulary logits.
    softcap:
        The model's final logit soft-capping (``tanh(logits / c) * c``), ``None`` for none.
    """

    model: torch.nn.Module
    decoder: torch.nn.Module
    head: torch.nn.Module
    softcap: float | None

    @classmethod
    def of(cls, model: torch.nn.Module) -> CausalLMParts:
        """The parts of ``model`` (a transformers causal LM, or a peft model around one)."""
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = base.get_decoder() if hasattr(base, "get_decoder") else base.model
        return cls(model=base, decoder=decoder, head=base.get_output_embeddings(),
                   softcap=getattr(base.config, "final_logit_softcapping", None))

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Float32 logits (..., vocab) of hidden states ``h`` (..., hidden)."""
        logits = self.head(h)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits.float()

    def token_nll(self, h: torch.Tensor, labels: torch.Tensor, *,
                  reduction: str = "none") -> torch.Tensor:
        """Negative log-likelihood of ``labels`` (n,) predicted from hidden states ``h``
        (n, hidden), per token (``reduction="none"``) or summed (``"sum"``)."""
        return F.cross_entropy(self.logits(h), labels, reduction=reduction)


__all__ = ["CausalLMParts"]
