"""Token layout of the effort score's batches: which tokens run where, and which logits the
loss reads.

Samples are sorted by length and cut into batches under a token budget
(:func:`plan_batches`). A batch is laid out (:func:`build_layout`) either *packed*, all its
samples one after the other in a single row with no padding (the attention kernel keeps them
apart, run by run of equal-length samples: :func:`segments`), or *padded*, one right-padded
row per sample.

When the shared prompt prefix enters every sample at a decoder layer (prefix modes
``"exact"`` and ``"none"``), the layers below see the samples' own tokens only and the layers
from there on see ``[prefix, own tokens]`` per sample; the layout then describes both: the
token ids and positions of the lower layers, and the loss targets, gradient scatter and
attention runs of the extended sequences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from recprune.llm.prompts import TokenizedSamples

#: a run of consecutive equal-length samples in a packed row: (start, n_samples, length)
Segment = tuple[int, int, int]


@dataclass
class Layout:
    """Where the tokens of one batch go."""

    ids: np.ndarray  # (rows, L) token ids
    positions: np.ndarray | None  # (1, L) position ids (packed, or prefix inserted)
    flat: np.ndarray  # flat index (into the output hidden states) predicting each loss target
    labels: np.ndarray  # target token ids
    bi: np.ndarray  # sample (in the batch) of each loss target
    w: np.ndarray  # 1 / number of loss targets, per sample
    first_tgt: np.ndarray  # per sample: its first token is a target (predicted by the prefix)
    first_ids: np.ndarray  # per sample: its first token
    B: int
    T: int  # longest sample (incl. the prefix when it is inserted)
    dst: np.ndarray | None  # packed position (of the output) -> b * T + t
    segments: list[Segment] | None  # packed: the runs of equal length
    # prefix inserted at a decoder layer (exact/none modes): from that layer on, every sample's
    # sequence is [prefix, own tokens]
    inserted: bool = False
    gather: np.ndarray | None = None  # packed: row index into cat([prefix, row]) per position
    segments_high: list[Segment] | None = None  # packed: the segments of the extended row


@dataclass
class Batch:
    idx: np.ndarray  # sample indices (into the TokenizedSamples)
    # tokens run through the model, averaged over the layers (incl. padding when not packed,
    # and the prefix copies in the layers where the prefix is inserted)
    tokens: int


def segments(starts: np.ndarray, lens: np.ndarray) -> list[Segment]:
    """Runs of consecutive equal-length samples in a packed row: (start, count, length)."""
    out = []
    i = 0
    while i < len(lens):
        j = i
        while j + 1 < len(lens) and lens[j + 1] == lens[i]:
            j += 1
        out.append((int(starts[i]), j - i + 1, int(lens[i])))
        i = j + 1
    return out


def plan_batches(lengths: np.ndarray, idx: np.ndarray, *, budget: int, packing: bool,
                 extra: float = 0.0) -> list[Batch]:
    """Split length-sorted samples ``idx`` into batches of at most ``budget`` tokens (real
    tokens when packing, padded batch size x longest length otherwise), each sample counting
    ``extra`` tokens more (the layer-averaged prefix copy of an inserted prefix)."""
    lens = lengths[idx].astype(np.float64) + extra
    out, start = [], 0
    while start < len(idx):
        end, longest, total = start + 1, lens[start], lens[start]
        while end < len(idx):
            nl = max(longest, lens[end])
            cost = total + lens[end] if packing else (end - start + 1) * nl
            if cost > budget:
                break
            longest, total, end = nl, total + lens[end], end + 1
        tokens = total if packing else (end - start) * longest
        out.append(Batch(idx[start:end], int(round(tokens))))
        start = end
    return out


def build_layout(ts: TokenizedSamples, idx: np.ndarray, *, packing: bool, inserted: bool,
                 loss_on: str, pad_id: int | None) -> Layout:
    """Token layout of the batch ``idx``: packed into one row, or right-padded to (B, T).

    With ``inserted`` (the prefix enters the samples at a decoder layer), ``ids`` and
    ``positions`` are those of the samples' own tokens (the layers below), everything else
    refers to the extended sequences [prefix, own tokens] of the layers from there on.
    """
    lens = ts.lengths[idx]
    B, T = len(idx), int(lens.max())
    cols = np.arange(T)
    valid = cols[None, :] < lens[:, None]
    src = np.minimum(ts.indptr[idx][:, None] + cols[None, :], max(len(ts.ids) - 1, 0))
    tgt = valid & ts.target[src]
    ntg = ts.n_targets[idx].astype(np.float64)
    w = np.where(ntg > 0, 1.0 / np.maximum(ntg, 1.0), 0.0)
    first_ids = ts.ids[ts.indptr[idx]] if len(ts.ids) else np.zeros(B, dtype=np.int64)
    P = len(ts.prefix_ids)
    starts = np.zeros(B, dtype=np.int64)
    np.cumsum(lens[:-1], out=starts[1:])
    if packing:
        ids = np.concatenate([ts.ids[ts.indptr[i]:ts.indptr[i + 1]] for i in idx])[None]
        within = np.arange(ids.shape[1]) - np.repeat(starts, lens)
        positions = (within + P)[None]
        segs = segments(starts, lens)
    else:
        ids = np.where(valid, ts.ids[src], pad_id if pad_id is not None else 0)
        positions, segs = None, None
    if inserted:
        # The full sequences [prefix, sample]: every loss target, those in the prefix and
        # the first sample token included, is predicted by a position in the graph.
        Tf = P + T
        ptgt = np.zeros((B, P), dtype=bool)
        if P and loss_on == "all":
            ptgt[ts.n_targets[idx] > tgt.sum(1), 1:] = True
        ftgt = np.concatenate([ptgt, tgt], axis=1)
        ftgt[:, 0] = False
        fids = np.concatenate([np.broadcast_to(ts.prefix_ids, (B, P)), ts.ids[src]], axis=1)
        bi, tj = np.nonzero(ftgt)
        kw = {"labels": fids[bi, tj], "bi": bi, "w": w, "first_tgt": np.zeros(B, dtype=bool),
              "first_ids": first_ids, "B": B, "T": Tf, "inserted": True}
        if packing:
            hl = lens + P
            sh = np.zeros(B, dtype=np.int64)
            np.cumsum(hl[:-1], out=sh[1:])
            kk = np.arange(int(hl.sum())) - np.repeat(sh, hl)  # position in [prefix, sample]
            # index into cat([prefix, low row]): prefix k -> k, sample token -> P + start + k-P
            gather = np.where(kk < P, kk, kk + np.repeat(starts, hl))
            return Layout(ids=ids, positions=positions, flat=sh[bi] + tj - 1,
                          dst=np.repeat(np.arange(B), hl) * Tf + kk, segments=segs,
                          gather=gather, segments_high=segments(sh, hl), **kw)
        return Layout(ids=ids, positions=(P + cols)[None], flat=bi * Tf + tj - 1, dst=None,
                      segments=None, **kw)
    first_tgt = tgt[:, 0].copy()  # predicted from the (constant) last prefix position
    tgt[:, 0] = False
    bi, tj = np.nonzero(tgt)
    if packing:
        flat = starts[bi] + tj - 1  # position (in the row) whose logits predict the target
        dst = np.repeat(np.arange(B), lens) * T + within
    else:
        flat, dst = bi * T + tj - 1, None
    return Layout(ids=ids, positions=positions, flat=flat, labels=ts.ids[src][bi, tj],
                  bi=bi, w=w, first_tgt=first_tgt, first_ids=first_ids, B=B, T=T, dst=dst,
                  segments=segs)
