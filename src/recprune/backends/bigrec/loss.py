"""The training loss of BIGRec samples, with the shared prompt prefix computed once.

A batch of samples is cut into length-sorted micro-batches (:func:`micro_batches`: at most
``max_n`` samples and ``max_tokens`` padded tokens each; padding is then ~1 % of the tokens).
:func:`loss_pass` sums the NLL of their loss tokens and, for training, backpropagates it into
the LoRA parameters, micro-batch by micro-batch (gradient accumulation).

Shared prefix (``share_prefix=True``): the Alpaca header, the instruction and the fixed lead-in
of the input are identical for every prompt (for Games about half of an average sample). Once
per call the prefix is run through the model with batch size 1, *with* the LoRA adapter and
autograd; its per-layer key/value cache is detached into leaf tensors, expanded over each
micro-batch and the sample-specific tokens run on top of it (positions continue after the
prefix). Each micro-batch's backward accumulates the LoRA gradients of its own tokens and the
gradients w.r.t. the prefix keys/values; after the last micro-batch one backward through the
prefix graph adds the LoRA gradients at the prefix positions. Loss and gradients equal those of
the plain full-sequence forward (tested to 1e-5 relative); with ``loss_on="all"`` the prefix
tokens' own NLL and the first sample token (predicted from the last prefix position) are
included. With LoRA dropout active, the prefix positions of the samples of one batch share a
dropout mask (the plain computation would draw one per sample): a different but equally valid
stochastic regulariser. Without gradients (validation) the prefix is shared the same way.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from recprune.llm.kv_cache import expanded_cache
from recprune.backends.bigrec.model import LoraLM
from recprune.errors import ScoringError
from recprune.llm.loading import cache_kv
from recprune.llm.prompts import TokenizedSamples


@dataclass
class MicroBatch:
    """Sample indices (into a :class:`~recprune.llm.prompts.TokenizedSamples`) run together,
    and their padded length ``T``."""

    idx: np.ndarray
    T: int


def micro_batches(ts: TokenizedSamples, idx: np.ndarray, max_n: int,
                  max_tokens: int) -> list[MicroBatch]:
    """Length-sorted micro-batches of ``idx``: at most ``max_n`` samples and ``max_tokens``
    padded tokens each (always at least one sample)."""
    lens = ts.lengths[idx]
    order = idx[np.argsort(lens, kind="stable")]
    lens = ts.lengths[order]
    out, s = [], 0
    while s < len(order):
        e = s + 1
        while e < len(order) and e - s < max_n and (e - s + 1) * lens[e] <= max_tokens:
            e += 1
        out.append(MicroBatch(order[s:e], int(lens[e - 1])))
        s = e
    return out


def _batch_arrays(ts: TokenizedSamples, mb: MicroBatch, *, with_prefix: bool, loss_on: str,
                  pad_id: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids (B, T[+P]) and the mask of the loss targets among them."""
    lens = ts.lengths[mb.idx]
    B, T = len(mb.idx), mb.T
    cols = np.arange(T)
    valid = cols[None, :] < lens[:, None]
    src = np.minimum(ts.indptr[mb.idx][:, None] + cols[None, :], max(len(ts.ids) - 1, 0))
    ids = np.where(valid, ts.ids[src], pad_id if pad_id is not None else 0)
    tgt = valid & ts.target[src]
    if with_prefix:  # the full sequence [prefix, sample]
        P = len(ts.prefix_ids)
        ptgt = np.zeros((B, P), dtype=bool)
        if loss_on == "all" and P:
            ptgt[:, 1:] = True
        ids = np.concatenate([np.broadcast_to(ts.prefix_ids, (B, P)), ids], axis=1)
        tgt = np.concatenate([ptgt, tgt], axis=1)
        tgt[:, 0] = False
    return ids, tgt


def _check_finite(value: float, where: str) -> None:
    if not math.isfinite(value):
        raise ScoringError(f"bigrec: non-finite loss ({value}) {where}; check the learning "
                           "rate, the model weights and its dtype")


def loss_pass(lm: LoraLM, ts: TokenizedSamples, batches: list[MicroBatch], *, grad: bool,
              denom: float, share_prefix: bool, loss_on: str, where: str = ""
              ) -> tuple[float, int]:
    """Summed NLL of the loss tokens of ``batches`` (one optimizer batch, or the whole
    validation set); with ``grad``, backpropagates ``sum / denom`` into the LoRA parameters
    (accumulating into ``.grad``). Returns (summed NLL, tokens run through the model)."""
    dev = lm.device
    P = len(ts.prefix_ids)
    share = share_prefix and P > 0
    total = 0.0
    run = 0
    n_samples = int(sum(len(mb.idx) for mb in batches))
    with contextlib.nullcontext() if grad else torch.no_grad():
        if share:
            pre_ids = torch.as_tensor(ts.prefix_ids, device=dev)[None]
            out = lm.decoder(input_ids=pre_ids, use_cache=True)
            kv = cache_kv(out.past_key_values)
            h_pre = out.last_hidden_state[0]  # (P, d)
            run += P
            if grad:
                # leaves where the prefix graph can take a gradient (e.g. layer 0's keys
                # do not depend on q/v LoRA parameters)
                kv_leaf = [tuple(t.detach().requires_grad_(t.requires_grad) for t in kvl)
                           for kvl in kv]
                h_last = h_pre[-1].detach().requires_grad_(h_pre.requires_grad)
            else:
                kv_leaf, h_last = kv, h_pre[-1]
            pre_loss = None
            if loss_on == "all" and P > 1:
                pre_nll = F.cross_entropy(lm.logits(h_pre[:-1]), pre_ids[0, 1:], reduction="sum")
                pre_loss = pre_nll * n_samples
                total += float(pre_loss.detach())
        for mb in batches:
            B = len(mb.idx)
            ids_np, tgt_np = _batch_arrays(ts, mb, with_prefix=not share, loss_on=loss_on,
                                           pad_id=lm.tokenizer.pad_token_id)
            ids = torch.as_tensor(ids_np, device=dev)
            T = ids.shape[1]
            if share:
                cache = expanded_cache(kv_leaf, B, lm.base.config)
                pos = torch.arange(P, P + T, device=dev)[None].expand(B, T)
                h = lm.decoder(input_ids=ids, position_ids=pos, past_key_values=cache,
                               use_cache=True).last_hidden_state
            else:
                h = lm.decoder(input_ids=ids, use_cache=False).last_hidden_state
            run += B * T
            bi, tj = np.nonzero(tgt_np)
            first = tj == 0  # only with a shared prefix: predicted by its last position
            nll = torch.zeros((), device=dev)
            if (~first).any():
                b_t = torch.as_tensor(bi[~first], device=dev)
                t_t = torch.as_tensor(tj[~first] - 1, device=dev)
                labels = torch.as_tensor(ids_np[bi[~first], tj[~first]], device=dev)
                nll = nll + F.cross_entropy(lm.logits(h[b_t, t_t]), labels, reduction="sum")
            if first.any():
                lp = lm.logits(h_last[None]).log_softmax(-1)[0]
                labels = torch.as_tensor(ids_np[bi[first], 0], device=dev)
                nll = nll - lp[labels].sum()
            val = float(nll.detach())
            _check_finite(val, where)
            total += val
            if grad and nll.requires_grad:
                (nll / denom).backward()
            del h, nll
        if grad and share:
            roots, grads = [], []
            for (k, v), (kl, vl) in zip(kv, kv_leaf):
                for t, leaf in ((k, kl), (v, vl)):
                    if leaf.grad is not None:
                        roots.append(t)
                        grads.append(leaf.grad)
            if h_last.grad is not None:
                roots.append(h_pre[-1])
                grads.append(h_last.grad)
            if pre_loss is not None:
                roots.append(pre_loss / denom)
                grads.append(torch.ones((), device=dev))
            if roots:
                torch.autograd.backward(roots, grads)
    _check_finite(total, where)  # e.g. the prefix's own NLL (loss_on="all")
    return total, run
