"""The surrogate's empirical risk as a function of a parameter subset, for influence functions.

Per-sample loss ``L(s)`` = the sum of the next-item losses at the sample's target positions
divided by the mean number of target positions per sample, so that the empirical risk
``(1/n) sum_s L(s)`` equals the per-position mean loss the surrogate was trained on. Dropout is
off (``eval`` mode): the loss is a deterministic function of the parameters. With
``loss="bce"`` the negative items are drawn once from a seeded generator and kept fixed, so the
per-sample loss is deterministic too (the reference draws fresh negatives at every call).

All derivatives use ``torch.func``: per-sample gradients are ``vmap(grad(.))``, Hessian-vector
products are forward-over-reverse ``jvp(grad(.))``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap

from recprune.errors import ConfigError
from recprune.surrogate.samples import SurrogateSamples
from recprune.surrogate.sasrec import SASRec, sequence_losses

# The reference implementation's single tensor: output projection of the 2nd attention block.
REFERENCE_PARAMS = ("blocks.1.out.weight",)


def resolve_params(model: nn.Module, spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Parameter names selected by ``spec``: 'all', 'reference', or names / glob patterns."""
    names = [n for n, _ in model.named_parameters()]
    if spec == "all":
        return names
    if spec == "reference":
        spec = list(REFERENCE_PARAMS)
    if isinstance(spec, str):
        spec = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in spec)]
    unknown = [p for p in spec if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if unknown or not chosen:
        raise ConfigError(f"no surrogate parameter matches {unknown or spec}; parameters are: "
                          f"{', '.join(names)}")
    return chosen


class _LossModule(nn.Module):
    def __init__(self, model: SASRec, loss: str) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, seq: torch.Tensor, tgt: torch.Tensor, neg: torch.Tensor,
                compact: bool = False) -> torch.Tensor:
        return sequence_losses(self.model, seq, tgt, loss=self.loss,
                               neg=neg if self.loss == "bce" else None, compact=compact)


class SurrogateObjective:
    """Empirical risk of a trained surrogate over ``samples``, differentiable in a parameter subset.

    Parameters
    ----------
    model: the trained surrogate (put in eval mode).
    samples: the per-user training samples.
    params: which parameters the influence is taken over (see :func:`resolve_params`).
    loss: 'ce' or 'bce' (as the surrogate was trained).
    """

    def __init__(self, model: SASRec, samples: SurrogateSamples, *,
                 params: str | list[str] = "all", loss: str = "ce", seed: int = 0) -> None:
        self.model = model.eval()
        self.samples = samples
        self.loss = loss
        self.names = resolve_params(model, params)
        self._mod = _LossModule(model, loss).eval()
        all_params = {f"model.{n}": p.detach() for n, p in model.named_parameters()}
        self.theta = {n: all_params[f"model.{n}"] for n in self.names}
        self._fixed = {k: v for k, v in all_params.items() if k[6:] not in self.theta}
        self.shapes = [self.theta[n].shape for n in self.names]
        self.numel = [self.theta[n].numel() for n in self.names]
        self.dim = int(sum(self.numel))
        lengths = samples.lengths.numpy()
        self.n = samples.n
        self.active_rows = np.flatnonzero(lengths > 0)  # samples with a target (others: L = 0)
        self.norm = max(float(lengths.mean()), 1e-12)  # mean target positions per sample
        self.device = next(model.parameters()).device
        if loss == "bce":
            g = torch.Generator().manual_seed(seed)
            self.neg = torch.randint(1, model.cfg.n_items + 1, samples.tgt.shape, generator=g)
        else:
            self.neg = torch.zeros_like(samples.tgt)

    # ---- flat <-> dict -------------------------------------------------------------------
    def flat(self, d: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([d[n].reshape(-1) for n in self.names])

    def unflat(self, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.view(s) for n, t, s in zip(self.names, v.split(self.numel), self.shapes)}

    def theta_flat(self) -> torch.Tensor:
        return self.flat(self.theta)

    # ---- losses --------------------------------------------------------------------------
    def _call(self, sub: dict[str, torch.Tensor], seq, tgt, neg, compact: bool = True
              ) -> torch.Tensor:
        """Per-position losses; ``compact`` (logits at target positions only) except under vmap."""
        params = {**self._fixed, **{f"model.{n}": t for n, t in sub.items()}}
        return functional_call(self._mod, params, (seq, tgt, neg), {"compact": compact})

    def _batch(self, rows) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows_t = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        seq, tgt = self.samples.batch(rows_t)
        neg = self.neg[rows_t, -seq.shape[1]:]
        return seq.to(self.device), tgt.to(self.device), neg.to(self.device)

    def batch_loss_sum(self, sub: dict[str, torch.Tensor], rows) -> torch.Tensor:
        """``sum_{s in rows} L(s)``."""
        seq, tgt, neg = self._batch(rows)
        return self._call(sub, seq, tgt, neg).sum() / self.norm

    def sample_losses(self, rows) -> torch.Tensor:
        seq, tgt, neg = self._batch(rows)
        with torch.no_grad():
            return self._call(self.theta, seq, tgt, neg).sum(1) / self.norm

    def batches(self, rows: np.ndarray | None = None, batch_size: int = 512) -> list[np.ndarray]:
        rows = self.active_rows if rows is None else np.asarray(rows)
        return self.samples.length_buckets(rows, batch_size)

    # ---- first order ---------------------------------------------------------------------
    def mean_grad(self, batch_size: int = 512) -> torch.Tensor:
        """``v = (1/n) sum_s grad L(s)`` over all n samples (flat)."""
        total = torch.zeros(self.dim, device=self.device)
        for rows in self.batches(batch_size=batch_size):
            g = grad(self.batch_loss_sum)(self.theta, rows)
            total += self.flat(g)
        return total / self.n

    def per_sample_grads(self, rows) -> torch.Tensor:
        """Per-sample gradients ``grad L(s)`` for ``rows``: (len(rows), dim), via vmap(grad)."""
        seq, tgt, neg = self._batch(rows)

        def one(sub, s, t, n):
            return self._call(sub, s[None], t[None], n[None], compact=False).sum() / self.norm

        g = vmap(grad(one), in_dims=(None, 0, 0, 0))(self.theta, seq, tgt, neg)
        return torch.cat([g[n].reshape(len(seq), -1) for n in self.names], dim=1)

    def per_sample_jvp(self, h: torch.Tensor, rows) -> torch.Tensor:
        """``grad L(s) . h`` for a batch of samples in ONE forward-mode pass: the directional
        derivative of the vector of per-sample losses along ``h`` (no per-sample gradient is
        materialised; same values as ``per_sample_grads(rows) @ h``)."""
        seq, tgt, neg = self._batch(rows)

        def losses(sub):
            return self._call(sub, seq, tgt, neg).sum(1) / self.norm

        _, d = jvp(losses, (self.theta,), (self.unflat(h),))
        return d

    def per_sample_dot(self, h: torch.Tensor, rows=None, *, batch_size: int = 64,
                       method: str = "jvp",
                       on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        """``grad L(s) . h`` for every sample in ``rows`` (default: all).

        ``method="vmap"``: explicit per-sample gradients (``vmap(grad(.))``) contracted with
        ``h``; ``method="jvp"``: one forward-mode pass per batch (much cheaper when the parameter
        subset is large, e.g. the item embedding table). Samples without a target have zero
        gradient and get exactly 0.
        """
        if method not in ("jvp", "vmap"):
            raise ConfigError(f"per-sample method must be 'jvp' or 'vmap', got {method!r}")
        rows = np.arange(self.n) if rows is None else np.asarray(rows)
        out = np.zeros(len(rows), dtype=np.float64)
        lens = self.samples.lengths.numpy()[rows]
        # positions into ``rows`` of samples with a target, length-sorted into batches
        order = np.flatnonzero(lens > 0)
        order = order[np.argsort(lens[order], kind="stable")]
        for i in range(0, len(order), batch_size):
            pos = order[i:i + batch_size]
            b = rows[pos]
            with torch.no_grad():
                d = (self.per_sample_grads(b) @ h if method == "vmap"
                     else self.per_sample_jvp(h, b)).double().cpu().numpy()
            out[pos] = d
            if on_batch is not None:
                on_batch(len(b))
        return out

    # ---- second order --------------------------------------------------------------------
    def hvp(self, vec: torch.Tensor, rows, *, weight: float | None = None) -> torch.Tensor:
        """``(sum_{s in rows} hess L(s)) vec * weight`` (default weight 1/len(rows))."""
        w = 1.0 / len(rows) if weight is None else weight
        # reverse-over-reverse: the VJP of the gradient map (H is symmetric, so H^T vec = H vec);
        # on CPU it is about twice as fast as forward-over-reverse jvp(grad(.)) here.
        _, vjp_fn = vjp(grad(lambda sub: self.batch_loss_sum(sub, rows)), self.theta)
        (hv,) = vjp_fn(self.unflat(vec))
        return self.flat(hv) * w

    def hvp_full(self, vec: torch.Tensor, *, batch_size: int = 512) -> torch.Tensor:
        """``H vec`` with ``H = (1/n) sum_s hess L(s)`` over all samples."""
        total = torch.zeros_like(vec)
        for rows in self.batches(batch_size=batch_size):
            total += self.hvp(vec, rows, weight=1.0)
        return total / self.n

    def hvp_sampler(self, batch_size: int, rng: np.random.Generator
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
        """A stochastic, unbiased estimator ``vec -> H_hat vec`` from ``batch_size`` random samples.

        Samples are drawn among those with a target and reweighted by their share of all n
        (the others have a zero Hessian), so ``E[H_hat] = H``.
        """
        active = self.active_rows
        share = len(active) / self.n

        def f(vec: torch.Tensor) -> torch.Tensor:
            rows = rng.choice(active, size=batch_size, replace=len(active) < batch_size)
            return self.hvp(vec, rows, weight=share / batch_size)
        return f

    def dense_hessian(self, *, batch_size: int = 512) -> torch.Tensor:
        """The full (dim x dim) Hessian of the empirical risk; only for small parameter subsets."""
        if self.dim > 20_000:
            raise ConfigError(f"the exact solver builds a dense {self.dim}x{self.dim} Hessian; "
                              "choose a smaller parameter subset (e.g. params='reference')")
        if getattr(self, "_dense", None) is not None:
            return self._dense
        total = torch.zeros(self.dim, self.dim, device=self.device)
        theta = self.theta_flat()
        eye = torch.eye(self.dim, device=self.device)
        for rows in self.batches(batch_size=batch_size):
            g = grad(lambda flat, rows=rows: self.batch_loss_sum(self.unflat(flat), rows))
            total += vmap(lambda e, g=g: jvp(g, (theta,), (e,))[1], chunk_size=256)(eye)
        self._dense = total / self.n
        return self._dense
