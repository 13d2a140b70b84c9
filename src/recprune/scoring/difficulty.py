"""Difficulty scores of the surrogate: GraNd and EL2N (Paul et al., NeurIPS'21).

Both are computed on the SASRec surrogate and its per-user samples
(:mod:`recprune.surrogate.samples`: input ``items[:-2]``, next-item targets ``items[1:-1]``).
A user without a target (<= 2 training items) has no loss: both scores are exactly 0.

GraNd
-----
``GraNd(s) = E_w || grad_theta L(s; w) ||_2``: the L2 norm of the gradient of the sample's loss
over **all** surrogate parameters, early in training, averaged over independent training runs
(the paper: CIFAR networks after 10 of 200 epochs, mean over 10 seeds; "at initialisation" is
its 0-epoch variant). ``L(s)`` is the full-softmax cross-entropy summed over the sample's target
positions (``reduction="sum"``, the sample's share of the training objective, as DEALRec's
influence uses it) or averaged over them (``"mean"``).

Per-sample gradient norms without per-sample gradients
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
``vmap(grad(.))`` over all 1.16M Games parameters costs ~25 ms per sample on one CPU thread (the
dense 17k x 64 item-embedding gradient of every sample is materialised); 20 minutes per seed.
:func:`per_sample_grad_norms` computes the same norms exactly from ONE batched forward and ONE
backward pass (samples in a batch do not interact, so the gradient of the summed loss w.r.t. a
sample's activations is that sample's own), with forward hooks that keep every parameterised
module's input and output:

* ``Linear`` (W: out x in, b): per sample ``G_W = sum_t go_t x_t^T`` -- with d = 64 the
  (B, out, in) per-sample matrices are small and formed directly; ``G_b = sum_t go_t``.
* ``LayerNorm`` (w, b): ``G_w = sum_t go_t * xhat_t``, ``G_b = sum_t go_t``.
* position embedding: every position row is used once per sample, so
  ``||G||^2 = sum_t ||dL/dx0_t||^2``.
* item embedding (shared by input and output): ``G = S + O`` with the input part
  ``S = sum_t onehot(seq_t) a_t^T`` and the output part ``O = sum_t (p_t - y_t) h_t^T``
  (softmax over all items). ``||G||^2 = ||S||^2 + ||O||^2 + 2<S, O>`` is expanded in
  L x L Gram matrices: ``||S||^2 = sum_tt' [seq_t = seq_t'] a_t.a_t'``,
  ``||O||^2 = sum_tt' (e_t.e_t') (h_t.h_t')`` and ``<S, O> = sum_tt' e_t'[seq_t] (h_t'.a_t)``;
  the dense (n_items x d) gradient is never formed.

The tests check the result against ``vmap(grad(.))`` to float precision. Cost: about one
training step per batch plus an ``L x L x n_items`` Gram product (<= the logits themselves for
L <= d): 49 s for all 49,156 Games users on one CPU thread of a 2-core machine shared with two
other jobs (``vmap(grad(.))``: ~20 min).

EL2N
----
``EL2N(s) = E_w || softmax(f(x; w)) - onehot(y) ||_2`` per target position, averaged over the
sample's target positions. DEALRec describes its EL2N baseline as computed "from the model
trained by the original dataset": ``mode="trained"`` (default) uses the pipeline's trained
surrogate. ``mode="early"`` follows the EL2N paper: the mean over the GraNd-style early
surrogates (``epochs`` epochs from ``seeds`` seeds).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recprune.data.dataset import InteractionDataset
from recprune.errors import ConfigError, ScoringError
from recprune.surrogate.samples import SurrogateSamples, build_samples
from recprune.surrogate.sasrec import SASRec
from recprune.surrogate.trainer import SurrogateTrainConfig, train_surrogate
from recprune.utils.progress import progress


@dataclass
class GrandConfig:
    """GraNd options.

    epochs: surrogate training epochs before the norms are taken (0 = at initialisation).
        Default 2: the Games surrogate peaks at ~18 epochs, the GraNd paper scores after 5 % of
        training (10 of 200 epochs); 1-2 epochs is "early" here.
    seeds: independent training runs averaged (paper: 10). Default 3: a Games run costs
        epochs x ~40 s of training (idle 2-core machine) + ~50 s of scoring on one thread, so
        the defaults take ~6 minutes, about the influence stage's cost (measured with two other
        jobs on the machine: 12.2 min, 97 s per epoch).
    reduction: the sample loss is the ``"sum"`` (default) or the ``"mean"`` of its positions.
    max_tokens: batch size of the scoring pass in target positions (memory: ~4 x max_tokens x
        n_items bytes for the softmax).
    seed: base seed; run k trains with ``seed + k``.
    """

    epochs: int = 2
    seeds: int = 3
    reduction: str = "sum"
    max_tokens: int = 2048
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"grand epochs must be >= 0, got {self.epochs}")
        if self.seeds < 1:
            raise ConfigError(f"grand seeds must be >= 1, got {self.seeds}")
        if self.reduction not in ("sum", "mean"):
            raise ConfigError(f"grand reduction must be 'sum' or 'mean', got {self.reduction!r}")
        if self.max_tokens < 1:
            raise ConfigError(f"grand max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class EL2NConfig:
    """EL2N options: ``mode="trained"`` (the trained surrogate; DEALRec's description) or
    ``"early"`` (mean over ``seeds`` surrogates trained ``epochs`` epochs; the EL2N paper)."""

    mode: str = "trained"
    epochs: int = 2
    seeds: int = 3
    max_tokens: int = 2048
    seed: int = 0

    def validate(self) -> None:
        if self.mode not in ("trained", "early"):
            raise ConfigError(f"el2n mode must be 'trained' or 'early', got {self.mode!r}")
        GrandConfig(epochs=self.epochs, seeds=self.seeds, max_tokens=self.max_tokens).validate()


# ----------------------------------------------------------------------------- batching

def _token_batches(samples: SurrogateSamples, rows: np.ndarray, max_tokens: int
                   ) -> list[np.ndarray]:
    """Length-sorted batches of ``rows`` with at most ``max_tokens`` padded positions each."""
    lens = samples.lengths.numpy()[rows]
    order = np.argsort(lens, kind="stable")
    out, start = [], 0
    while start < len(order):
        end = start + 1
        while end < len(order) and (end - start + 1) * max(int(lens[order[end]]), 1) <= max_tokens:
            end += 1
        out.append(order[start:end])
        start = end
    return out  # positions into rows


# ----------------------------------------------------------------------------- GraNd

class _Recorder:
    """Forward hooks keeping the input and output of every Linear / LayerNorm / Embedding."""

    def __init__(self, model: SASRec) -> None:
        self.model = model
        self.inputs: dict[nn.Module, torch.Tensor] = {}
        self.outputs: dict[nn.Module, torch.Tensor] = {}
        self.handles = []
        covered = set()
        for mod in model.modules():
            if isinstance(mod, (nn.Linear, nn.LayerNorm)):
                self.handles.append(mod.register_forward_hook(self._hook))
                covered.update(id(p) for p in mod.parameters(recurse=False))
        self.handles.append(model.item_emb.register_forward_hook(self._hook))
        covered.update({id(model.item_emb.weight), id(model.pos_emb.weight)})
        missing = [n for n, p in model.named_parameters() if id(p) not in covered]
        if missing:  # a new kind of layer in SASRec would silently be left out
            raise ScoringError(f"per-sample gradient norms do not cover parameters {missing}")

    def _hook(self, mod, inp, out) -> None:
        self.inputs[mod] = inp[0]
        self.outputs[mod] = out

    def clear(self) -> None:
        self.inputs.clear()
        self.outputs.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _sq(x: torch.Tensor) -> torch.Tensor:
    """Per-sample squared norm of a (B, ...) tensor."""
    return x.pow(2).flatten(1).sum(1)


def _softmax_(logits: torch.Tensor) -> torch.Tensor:
    """Row softmax computed in place (one buffer of logits -> probabilities)."""
    logits.sub_(logits.amax(-1, keepdim=True)).exp_()
    return logits.div_(logits.sum(-1, keepdim=True))


def per_sample_grad_norms(model: SASRec, samples: SurrogateSamples, rows: np.ndarray | None = None,
                          *, reduction: str = "sum", max_tokens: int = 2048,
                          on_batch=None) -> np.ndarray:
    """Exact L2 norm of the gradient of each sample's CE loss over all surrogate parameters
    (see the module docstring); float64, aligned with ``rows`` (default: all samples).

    The softmax part is done without autograd: with ``p`` the probabilities and ``y`` the
    targets, ``dL/dh_t = (p_t - y_t) W`` is fed to ONE ``autograd.grad`` call through the encoder,
    and the item-embedding Gram terms use ``e_t . e_t' = p_t . p_t' - p_t[y_t'] - p_t'[y_t] +
    [y_t = y_t']`` and ``e_t'[i] = p_t'[i] - [y_t' = i]``, so ``p`` is the only (B, L, n_items)
    array besides the logits it is computed in place from.
    """
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    rows = np.arange(samples.n) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows), dtype=np.float64)
    lens = samples.lengths.numpy()[rows]
    active = np.flatnonzero(lens > 0)
    model = model.eval()
    dev = next(model.parameters()).device
    d = model.cfg.hidden
    W1 = model.item_emb.weight[1:].detach()  # output embeddings of items 1..n
    rec = _Recorder(model)
    try:
        for pos_b in _token_batches(samples, rows[active], max_tokens):
            pos = active[pos_b]
            seq, tgt = samples.batch(rows[pos])
            seq, tgt = seq.to(dev), tgt.to(dev)
            B, L = seq.shape
            rec.clear()
            with torch.enable_grad():
                h = model.encode(seq)  # (B, L, d); hooks record every module
            with torch.no_grad():
                mask = tgt > 0
                mf = mask.to(h.dtype)
                y = (tgt - 1).clamp(min=0)
                hd = h.detach()
                p = _softmax_(hd.reshape(B * L, d) @ W1.T).view(B, L, -1)
                p.mul_(mf.unsqueeze(-1))  # no loss at padding positions
                dh = (p.reshape(B * L, -1) @ W1).view(B, L, d) - W1[y] * mf.unsqueeze(-1)
                # item embedding, output part: ||O||^2 = sum_tt' (e_t.e_t') (h_t.h_t')
                pyt = p.gather(-1, y.unsqueeze(1).expand(B, L, L))  # [b,t,t'] = p_t[y_t']
                same_y = (tgt.unsqueeze(2) == tgt.unsqueeze(1)).to(h.dtype)
                mm = mf.unsqueeze(2) * mf.unsqueeze(1)
                ee = (p @ p.transpose(1, 2) - pyt - pyt.transpose(1, 2) + same_y) * mm
                hh = hd @ hd.transpose(1, 2)
                o_sq = (ee * hh).sum((1, 2))
            outs = {m: o for m, o in rec.outputs.items()}
            grads = torch.autograd.grad(h, list(outs.values()), grad_outputs=dh,
                                        allow_unused=True)
            with torch.no_grad():
                go = {m: (g if g is not None else torch.zeros_like(o))
                      for (m, o), g in zip(outs.items(), grads)}
                sq = torch.zeros(B, dtype=torch.float64, device=dev)
                for m, g in go.items():
                    if m is model.item_emb:
                        continue
                    x = rec.inputs[m].detach()
                    if isinstance(m, nn.Linear):
                        sq += _sq(torch.einsum("blo,bli->boi", g, x)).double()
                        if m.bias is not None:
                            sq += _sq(g.sum(1)).double()
                    else:  # LayerNorm
                        xhat = F.layer_norm(x, m.normalized_shape, eps=m.eps)
                        sq += _sq((g * xhat).sum(1)).double()
                        sq += _sq(g.sum(1)).double()
                real = (seq > 0).to(h.dtype)
                a = go[model.item_emb] * real.unsqueeze(-1)  # dL/d(embedding rows), (B, L, d)
                sq += _sq(a / math.sqrt(d)).double()  # position embedding: dL/dx0 = a / sqrt(d)
                same_in = (seq.unsqueeze(2) == seq.unsqueeze(1)).to(h.dtype) * (
                    real.unsqueeze(2) * real.unsqueeze(1))
                s_sq = (same_in * (a @ a.transpose(1, 2))).sum((1, 2))
                # <S, O> = sum_tt' e_t'[seq_t] (h_t'.a_t), e_t'[i] = p_t'[i] - [y_t' = i]
                idx = (seq - 1).clamp(min=0).unsqueeze(1).expand(B, L, L)
                e_in = (p.gather(-1, idx) - (tgt.unsqueeze(2) == seq.unsqueeze(1)).to(h.dtype)
                        * mf.unsqueeze(2)) * real.unsqueeze(1)  # [b, t', t]
                cross = (e_in * (hd @ a.transpose(1, 2))).sum((1, 2))
                sq += (s_sq + o_sq + 2 * cross).double()
                norms = sq.clamp(min=0).sqrt().cpu().numpy()
            if reduction == "mean":
                norms = norms / lens[pos]
            out[pos] = norms
            if on_batch is not None:
                on_batch(len(pos))
            del p, h, outs, grads, go
    finally:
        rec.remove()
        rec.clear()
    if not np.isfinite(out).all():
        raise ScoringError(f"non-finite gradient norms for {int((~np.isfinite(out)).sum())} "
                           "samples")
    return out


# ----------------------------------------------------------------------------- EL2N

@torch.no_grad()
def el2n_scores(model: SASRec, samples: SurrogateSamples, rows: np.ndarray | None = None, *,
                max_tokens: int = 4096, on_batch=None) -> np.ndarray:
    """Mean over the sample's target positions of ``|| softmax(logits_t) - onehot(y_t) ||_2``
    (softmax over all items, padding excluded); 0 for samples without a target."""
    rows = np.arange(samples.n) if rows is None else np.asarray(rows, dtype=np.int64)
    out = np.zeros(len(rows), dtype=np.float64)
    lens = samples.lengths.numpy()[rows]
    active = np.flatnonzero(lens > 0)
    model = model.eval()
    dev = next(model.parameters()).device
    W = model.item_emb.weight[1:]
    for pos_b in _token_batches(samples, rows[active], max_tokens):
        pos = active[pos_b]
        seq, tgt = samples.batch(rows[pos])
        seq, tgt = seq.to(dev), tgt.to(dev)
        mask = tgt > 0
        h = model.encode(seq)[mask]  # (P, d): target positions only
        p = _softmax_(h @ W.T)
        py = p.gather(1, (tgt[mask] - 1).unsqueeze(1)).squeeze(1)
        # ||p - y||^2 = sum p^2 - 2 p_y + 1 (vector_norm: one fused pass)
        err = (torch.linalg.vector_norm(p, dim=1).double() ** 2 - 2 * py.double() + 1
               ).clamp(min=0).sqrt()
        who = torch.arange(len(pos), device=dev).unsqueeze(1).expand_as(mask)[mask]
        tot = torch.zeros(len(pos), dtype=torch.float64, device=dev).index_add_(0, who, err)
        out[pos] = (tot / mask.sum(1).double()).cpu().numpy()
        if on_batch is not None:
            on_batch(len(pos))
    return out


# ----------------------------------------------------------------------------- early training

def early_surrogate(ds: InteractionDataset, base: SurrogateTrainConfig, epochs: int, seed: int,
                    *, show_progress: bool = False) -> SASRec:
    """A surrogate with ``base``'s architecture and optimiser, trained ``epochs`` epochs from
    ``seed`` (no validation, no early stopping; ``epochs = 0``: the initialisation). GraNd's
    loss is the full-softmax cross-entropy, so a BCE ``base`` is trained with CE here."""
    cfg = replace(base, max_epochs=max(epochs, 1), seed=seed, loss="ce", max_minutes=None,
                  eval_every=10**9, patience=10**9)
    if epochs == 0:
        from recprune.utils.seed import seed_everything

        seed_everything(seed)
        model = SASRec(cfg.model_config(ds.n_items)).to(cfg.device)
        return model.eval()
    return train_surrogate(ds, cfg, show_progress=show_progress).model.eval()


def early_scores(ds: InteractionDataset, base: SurrogateTrainConfig, rows: np.ndarray, *,
                 epochs: int, seeds: int, seed: int, score, show_progress: bool = True,
                 label: str = "score", models: dict | None = None) -> tuple[np.ndarray, dict]:
    """Mean over ``seeds`` early surrogates of ``score(model, samples, rows, on_batch)``.

    ``models`` (optional) memoises the early surrogates by ``(epochs, seed)`` so that GraNd and
    EL2N (``mode="early"``) share them within a run."""
    samples = build_samples(ds, base.max_len, include_last=base.include_last)
    total = np.zeros(len(rows), dtype=np.float64)
    timing = {"train": 0.0, "score": 0.0}
    n_active = int((samples.lengths.numpy()[rows] > 0).sum())
    for k in range(seeds):
        key = (epochs, seed + k)
        t = time.perf_counter()
        if models is not None and key in models:
            model = models[key]
        else:
            model = early_surrogate(ds, base, epochs, seed + k, show_progress=show_progress)
            if models is not None:
                models[key] = model
        timing["train"] += time.perf_counter() - t
        t = time.perf_counter()
        with progress(show_progress) as prog:
            task = prog.add_task(f"{label} (seed {k + 1}/{seeds})", total=n_active, info="")
            total += score(model, samples, rows, lambda b, task=task: prog.advance(task, b))
        timing["score"] += time.perf_counter() - t
    return total / seeds, timing


def grand_scores(ds: InteractionDataset, base: SurrogateTrainConfig, rows: np.ndarray,
                 config: GrandConfig | None = None, *, show_progress: bool = True,
                 models: dict | None = None) -> tuple[np.ndarray, dict]:
    """GraNd of every row in ``rows`` (mean gradient norm over ``config.seeds`` early
    surrogates) and the seconds spent training / scoring."""
    cfg = config or GrandConfig()
    cfg.validate()

    def score(model, samples, r, on_batch):
        return per_sample_grad_norms(model, samples, r, reduction=cfg.reduction,
                                     max_tokens=cfg.max_tokens, on_batch=on_batch)

    return early_scores(ds, base, rows, epochs=cfg.epochs, seeds=cfg.seeds, seed=cfg.seed,
                        score=score, show_progress=show_progress, label="grand", models=models)


def el2n_early(ds: InteractionDataset, base: SurrogateTrainConfig, rows: np.ndarray,
               config: EL2NConfig, *, show_progress: bool = True,
               models: dict | None = None) -> tuple[np.ndarray, dict]:
    """EL2N averaged over early surrogates (``mode="early"``)."""
    def score(model, samples, r, on_batch):
        return el2n_scores(model, samples, r, max_tokens=config.max_tokens, on_batch=on_batch)

    return early_scores(ds, base, rows, epochs=config.epochs, seeds=config.seeds,
                        seed=config.seed, score=score, show_progress=show_progress, label="el2n",
                        models=models)
