"""Ranking by beam search over valid semantic IDs only.

:func:`constrained_beam_search` keeps ``n_beams`` beams per user. At each ID level the allowed
tokens of every beam come from the dense trie of :class:`~recprune.backends.tiger.vocab.Vocab`
(one tensor gather for all users and beams), so the decoder can never emit an ID that is not an
item. Items that may not be recommended (a user's history) can be masked at the last level, so
that no beam is spent on them. The result is the beam order (sequence log-probability).

The decoder steps run on the T5's own modules with a custom cache (:class:`StepDecoder`):
cross-attention keys/values are computed once per *user*, not per beam, and all beams of a user
attend to them as extra query rows; self-attention keys/values are cached and reordered by beam
parent. That is ``n_beams`` times less cross-attention work than expanding the encoder output
per beam (what ``generate`` does); a test checks that the step logits equal the plain T5
forward.
"""

from __future__ import annotations

import math

import torch

from recprune.backends.tiger.vocab import PAD, Vocab


class StepDecoder:
    """Incremental T5 decoding with beams as extra query rows (see the module docstring).

    ``step(tokens, parent)`` feeds the newest token of every beam (``tokens`` (B, R)) whose
    previous beam was ``parent`` (B, R) (``None`` at the first step) and returns the logits
    (B, R, vocab) of the next token.
    """

    def __init__(self, model, enc_hidden: torch.Tensor, enc_mask: torch.Tensor) -> None:
        self.model = model
        self.dec = model.decoder
        cfg = model.config
        self.h, self.dk = cfg.num_heads, cfg.d_kv
        b, n_enc, _ = enc_hidden.shape
        self.cross_k, self.cross_v = [], []
        for blk in self.dec.block:
            att = blk.layer[1].EncDecAttention
            self.cross_k.append(att.k(enc_hidden).view(b, n_enc, self.h, self.dk).transpose(1, 2))
            self.cross_v.append(att.v(enc_hidden).view(b, n_enc, self.h, self.dk).transpose(1, 2))
        neg = torch.finfo(enc_hidden.dtype).min
        self.cross_bias = torch.zeros(enc_mask.shape, dtype=enc_hidden.dtype,
                                      device=enc_hidden.device).masked_fill(~enc_mask.bool(),
                                                                            neg)[:, None, None, :]
        self.self_k: list[torch.Tensor | None] = [None] * len(self.dec.block)
        self.self_v: list[torch.Tensor | None] = [None] * len(self.dec.block)
        self.t = 0
        # T5ForConditionalGeneration rescales the decoder output before a tied lm_head
        # (transformers 5: config.scale_decoder_outputs; 4.x: config.tie_word_embeddings)
        scaled = getattr(cfg, "scale_decoder_outputs", getattr(cfg, "tie_word_embeddings", False))
        self.scale = cfg.d_model ** -0.5 if scaled else None

    def step(self, tokens: torch.Tensor, parent: torch.Tensor | None) -> torch.Tensor:
        b, r = tokens.shape
        h, dk = self.h, self.dk
        if parent is not None and self.t > 0:
            bi = torch.arange(b, device=tokens.device)[:, None]
            self.self_k = [k[bi, parent] for k in self.self_k]
            self.self_v = [v[bi, parent] for v in self.self_v]
        x = self.dec.embed_tokens(tokens)
        # decoder relative position bias of query position t over key positions 0..t
        att0 = self.dec.block[0].layer[0].SelfAttention
        rel = torch.arange(self.t + 1, device=x.device) - self.t
        bucket = att0._relative_position_bucket(
            rel, bidirectional=False, num_buckets=att0.relative_attention_num_buckets,
            max_distance=att0.relative_attention_max_distance)
        bias = att0.relative_attention_bias(bucket).T  # (H, t + 1)
        for i, blk in enumerate(self.dec.block):
            sa = blk.layer[0]
            y = sa.layer_norm(x)
            att = sa.SelfAttention
            q = att.q(y).view(b, r, h, dk)
            k = att.k(y).view(b, r, h, 1, dk)
            v = att.v(y).view(b, r, h, 1, dk)
            k = k if self.self_k[i] is None else torch.cat([self.self_k[i], k], 3)
            v = v if self.self_v[i] is None else torch.cat([self.self_v[i], v], 3)
            self.self_k[i], self.self_v[i] = k, v
            s = torch.einsum("brhd,brhtd->brht", q, k) + bias
            o = torch.einsum("brht,brhtd->brhd", s.softmax(-1), v).reshape(b, r, h * dk)
            x = x + att.o(o)
            ca = blk.layer[1]
            y = ca.layer_norm(x)
            att = ca.EncDecAttention
            q = att.q(y).view(b, r, h, dk).transpose(1, 2)  # (B, H, R, dk)
            s = q @ self.cross_k[i].transpose(-1, -2) + self.cross_bias
            o = (s.softmax(-1) @ self.cross_v[i]).transpose(1, 2).reshape(b, r, h * dk)
            x = x + att.o(o)
            x = blk.layer[2](x)
        x = self.dec.final_layer_norm(x)
        if self.scale is not None:
            x = x * self.scale
        self.t += 1
        return self.model.lm_head(x)


@torch.no_grad()
def constrained_beam_search(model, vocab: Vocab, input_ids: torch.Tensor,
                            attention_mask: torch.Tensor, n_beams: int,
                            banned: tuple[torch.Tensor, int] | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``n_beams`` valid item IDs per input, best first: ``(items, log_probs)`` (B, n_beams).

    ``items`` holds item ids (``-1`` where fewer valid IDs exist); ``banned`` = (sorted keys
    ``row * width + item``, width) of items that may not be generated for a row.
    """
    device = input_ids.device
    enc = model.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    dec = StepDecoder(model, enc, attention_mask)
    b = input_ids.shape[0]
    tokens = torch.full((b, 1), PAD, dtype=torch.long, device=device)
    scores = torch.zeros((b, 1), device=device)
    pid = torch.zeros((b, 1), dtype=torch.long, device=device)
    parent = None
    rows = torch.arange(b, device=device)[:, None, None]
    children = vocab.children_on(device)
    for lvl in range(vocab.n_pos):
        logits = dec.step(tokens, parent)
        off, size = vocab.offsets[lvl], vocab.sizes[lvl]
        logp = torch.log_softmax(logits.float(), -1)[..., off:off + size]  # (B, R, S)
        child = children[lvl][pid.clamp(min=0)].long()  # (B, R, S)
        cand = (scores[..., None] + logp).masked_fill(child < 0, -math.inf)
        if lvl == vocab.n_pos - 1 and banned is not None and len(banned[0]):
            keys, width = banned
            q = rows * width + child.clamp(min=0)
            pos = torch.searchsorted(keys, q.reshape(-1)).clamp(max=len(keys) - 1)
            hit = (keys[pos] == q.reshape(-1)).view_as(q) & (child >= 0)
            cand = cand.masked_fill(hit, -math.inf)
        flat = cand.reshape(b, -1)
        nb = min(n_beams, flat.shape[1])
        scores, top = flat.topk(nb, dim=1)
        parent = torch.div(top, size, rounding_mode="floor")
        tokens = top % size + off
        pid = child.reshape(b, -1).gather(1, top)
    items = torch.where(torch.isfinite(scores), pid, torch.full_like(pid, -1))
    if items.shape[1] < n_beams:
        pad = n_beams - items.shape[1]
        items = torch.nn.functional.pad(items, (0, pad), value=-1)
        scores = torch.nn.functional.pad(scores, (0, pad), value=-math.inf)
    return items, scores
