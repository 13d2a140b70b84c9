"""SASRec (Kang & McAuley, 2018), the DEALRec surrogate.

Written with plain tensor ops (no ``nn.MultiheadAttention``) so that ``torch.func`` transforms
(``vmap``, ``grad``, ``jvp``) apply to it directly for per-sample gradients and Hessian-vector
products.

Sequences are left-padded with item 0. A batch may be cut to its longest sequence ``L <= max_len``:
positions are then ``max_len - L .. max_len - 1``, which gives exactly the result of the full
``max_len`` padding (padding keys are masked out), so short sequences cost little.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class SASRecConfig:
    n_items: int
    hidden: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.5
    max_len: int = 50
    ffn_mult: int = 1  # inner size of the point-wise feed-forward = ffn_mult * hidden (SASRec: 1)

    def to_dict(self) -> dict:
        return asdict(self)


class _Block(nn.Module):
    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        d = cfg.hidden
        self.n_heads = cfg.n_heads
        self.ln_attn = nn.LayerNorm(d, eps=1e-8)
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.ln_ffn = nn.LayerNorm(d, eps=1e-8)
        self.ff1 = nn.Linear(d, cfg.ffn_mult * d)
        self.ff2 = nn.Linear(cfg.ffn_mult * d, d)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attn_bias: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        # x: (B, L, d); attn_bias: (B, 1, L, L) additive; keep: (B, L, 1) 1 for real items
        b, n, d = x.shape
        h = self.n_heads
        q_in = self.ln_attn(x)
        q = self.q(q_in).view(b, n, h, d // h).transpose(1, 2)
        k = self.k(x).view(b, n, h, d // h).transpose(1, 2)
        v = self.v(x).view(b, n, h, d // h).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // h) + attn_bias
        att = self.drop(torch.softmax(att, dim=-1))
        a = (att @ v).transpose(1, 2).reshape(b, n, d)
        x = q_in + self.drop(self.out(a))  # SASRec: residual from the normalised query
        y = self.ln_ffn(x)
        y = y + self.drop(self.ff2(self.drop(F.relu(self.ff1(y)))))
        return y * keep


class SASRec(nn.Module):
    """Self-attentive sequential recommender with item embeddings shared by input and output."""

    def __init__(self, cfg: SASRecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.item_emb = nn.Embedding(cfg.n_items + 1, cfg.hidden, padding_idx=0)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.hidden)
        self.emb_drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(_Block(cfg) for _ in range(cfg.n_layers))
        self.ln_out = nn.LayerNorm(cfg.hidden, eps=1e-8)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
            elif "ln" not in name:
                nn.init.zeros_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def encode(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden state of every position: ``seq`` (B, L) left-padded item ids -> (B, L, d)."""
        b, n = seq.shape
        keep = (seq > 0).unsqueeze(-1).to(self.item_emb.weight.dtype)
        pos = torch.arange(self.cfg.max_len - n, self.cfg.max_len, device=seq.device)
        x = self.item_emb(seq) * math.sqrt(self.cfg.hidden) + self.pos_emb(pos)
        x = self.emb_drop(x) * keep
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
        # (B, L, L): the key is a real item and not in the future
        allowed = causal.unsqueeze(0) & (seq > 0).unsqueeze(1)
        # a large finite negative (not -inf) keeps fully-masked padding rows finite
        bias = torch.where(allowed, 0.0, -1e9).to(x.dtype).unsqueeze(1)
        for blk in self.blocks:
            x = blk(x, bias, keep)
        return self.ln_out(x) * keep

    def last_hidden(self, seq: torch.Tensor) -> torch.Tensor:
        """User representation = hidden state at the last (most recent) position: (B, d)."""
        return self.encode(seq)[:, -1]

    def score_all(self, seq: torch.Tensor) -> torch.Tensor:
        """Scores of all items (index 0 = padding, set to -inf): (B, n_items + 1)."""
        s = self.last_hidden(seq) @ self.item_emb.weight.T
        s[:, 0] = -torch.inf
        return s


def sequence_losses(model: nn.Module, seq: torch.Tensor, tgt: torch.Tensor, *,
                    loss: str = "ce", neg: torch.Tensor | None = None,
                    compact: bool = False) -> torch.Tensor:
    """Per-position next-item losses (B, L); 0 where ``tgt == 0``.

    ``loss="ce"``: softmax cross-entropy over all items (deterministic). ``compact=True`` computes
    logits only at target positions (same values; not for use under ``vmap``).
    ``loss="bce"``: the original SASRec loss, binary cross-entropy of the positive against the
    negative item ``neg`` (B, L) drawn by the caller.
    """
    h = model.encode(seq)  # (B, L, d)
    w = model.item_emb.weight
    mask = tgt > 0
    if loss == "ce" and compact:
        # logits only where there is a target (far less work and memory for padded batches);
        # data-dependent shapes, so not usable under vmap
        idx = mask.flatten().nonzero().squeeze(1)
        ce = F.cross_entropy(h.flatten(0, 1)[idx] @ w[1:].T, tgt.flatten()[idx] - 1,
                             reduction="none")
        return torch.zeros(tgt.numel(), dtype=ce.dtype, device=ce.device).index_add(
            0, idx, ce).view(tgt.shape)
    if loss == "ce":
        logits = h @ w[1:].T  # padding item excluded from the softmax
        ce = F.cross_entropy(logits.flatten(0, 1), (tgt - 1).clamp(min=0).flatten(),
                             reduction="none").view(tgt.shape)
        return ce * mask
    if loss == "bce":
        if neg is None:
            raise ValueError("loss='bce' needs negative items")
        pos_logit = (h * w[tgt]).sum(-1)
        neg_logit = (h * w[neg]).sum(-1)
        out = F.softplus(-pos_logit) + F.softplus(neg_logit)  # -log s(p) - log(1 - s(n))
        return out * mask
    raise ValueError(f"unknown loss {loss!r} (expected 'ce' or 'bce')")
