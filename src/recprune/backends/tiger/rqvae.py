"""Semantic IDs: item embeddings -> RQ-VAE codes -> a unique tuple of tokens per item.

1. **RQ-VAE** (:class:`RQVAE`, :func:`train_rqvae`): encoder MLP -> ``n_levels`` residual
   quantisation levels (codebooks of ``codebook_size`` vectors of ``code_dim``) -> decoder MLP.
   Loss = reconstruction (squared error per item) + for every level the codebook term
   ``||sg[r_l] - e_l||^2`` and the commitment term ``beta * ||r_l - sg[e_l]||^2``; gradients pass
   the quantiser with the straight-through estimator. Codebooks are k-means initialised (scikit-
   learn) level by level on the residuals of the first batch; training uses Adam, seeded.
2. **Unique IDs** (:func:`assign_unique_ids`): items whose ``n_levels`` codes collide get an
   extra token ``0, 1, 2, ...`` (in item-id order) so every ID is unique; the extra token exists
   for *every* item (0 for a non-colliding one), so all IDs have ``n_levels + 1`` tokens.

:func:`semantic_ids` runs both and caches the codes (with their stats) in the embedding store
(:func:`recprune.llm.text_encoder.embedding_store`), keyed by a digest of the embeddings and
the RQ-VAE configuration.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recprune.errors import ConfigError, DataError
from recprune.llm.text_encoder import embedding_store
from recprune.store import digest, fingerprint
from recprune.utils.progress import progress as progress_bar

_FORMAT = 1  # part of the cache spec: bump when the RQ-VAE / ID assignment recipe changes


@dataclass
class RQVAEConfig:
    """RQ-VAE hyper-parameters (TIGER: 3 levels x 256 codes of dim 32, beta 0.25).

    The TIGER paper uses a 512-256-128 encoder for 768-d sentence-T5 embeddings and trains for
    20k epochs with Adagrad. For the 384-d MiniLM embeddings the defaults are a 256-128 encoder
    and 50 epochs of Adam at 3e-3: on Games they use every code of every level and leave about
    13% of the items sharing their 3 codes with another item (at least the 4.9% of items whose
    title is duplicated must); longer training or the paper's wider encoder does not lower that.
    """

    codebook_size: int = 256
    n_levels: int = 3
    code_dim: int = 32
    hidden: tuple[int, ...] = (256, 128)
    epochs: int = 50
    batch_size: int = 1024
    lr: float = 3e-3
    beta: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)

    def validate(self) -> None:
        for name in ("codebook_size", "n_levels", "code_dim", "epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"rqvae {name} must be a positive integer, got {v!r}")
        if self.codebook_size < 2:
            raise ConfigError(f"codebook_size must be >= 2, got {self.codebook_size}")
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"rqvae hidden sizes must be positive, got {self.hidden}")
        if not self.lr > 0:
            raise ConfigError(f"rqvae lr must be > 0, got {self.lr}")
        if not self.beta >= 0:
            raise ConfigError(f"rqvae beta must be >= 0, got {self.beta}")


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    """Residual-quantised autoencoder: ``x -> z -> (e_1 + ... + e_L) -> x_hat``."""

    def __init__(self, in_dim: int, cfg: RQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = _mlp([in_dim, *cfg.hidden, cfg.code_dim])
        self.decoder = _mlp([cfg.code_dim, *reversed(cfg.hidden), in_dim])
        self.codebooks = nn.Parameter(torch.randn(cfg.n_levels, cfg.codebook_size,
                                                  cfg.code_dim) * 0.1)

    @staticmethod
    def _nearest(r: torch.Tensor, cb: torch.Tensor) -> torch.Tensor:
        d = (r * r).sum(1, keepdim=True) - 2 * r @ cb.T + (cb * cb).sum(1)[None, :]
        return d.argmin(1)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(z_q, codes (n, L), quantisation loss)`` (loss summed over levels, mean over
        items, squared errors summed over code dimensions)."""
        r = z
        zq = torch.zeros_like(z)
        codes = []
        qloss = z.new_zeros(())
        for lvl in range(self.cfg.n_levels):
            cb = self.codebooks[lvl]
            c = self._nearest(r.detach(), cb.detach())
            e = cb[c]
            qloss = qloss + ((r.detach() - e) ** 2).sum(1).mean() \
                + self.cfg.beta * ((r - e.detach()) ** 2).sum(1).mean()
            zq = zq + e
            r = r - e.detach()
            codes.append(c)
        return zq, torch.stack(codes, 1), qloss

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        z = self.encoder(x)
        zq, codes, qloss = self.quantize(z)
        zst = z + (zq - z).detach()  # straight-through estimator
        return self.decoder(zst), codes, qloss

    @torch.no_grad()
    def kmeans_init(self, x: torch.Tensor, seed: int) -> None:
        """Initialise every codebook with k-means on the residuals of ``x`` (level by level).

        With fewer distinct residuals than codes, k-means finds as many centres as there are
        distinct points and the remaining codes are random points plus a little noise.
        """
        from sklearn.cluster import KMeans

        r = self.encoder(x).double().cpu().numpy()
        rng = np.random.default_rng(seed)
        K = self.cfg.codebook_size
        for lvl in range(self.cfg.n_levels):
            n_distinct = len(np.unique(r.round(8), axis=0))
            k = min(K, n_distinct)
            km = KMeans(n_clusters=k, n_init=1, random_state=seed + lvl, max_iter=100).fit(r)
            centres = km.cluster_centers_
            if k < K:
                extra = r[rng.integers(0, len(r), K - k)]
                scale = float(r.std()) * 0.01 + 1e-6
                centres = np.concatenate([centres, extra + rng.normal(0, scale, extra.shape)])
            self.codebooks.data[lvl] = torch.as_tensor(centres, dtype=self.codebooks.dtype)
            r = r - centres[km.labels_]


@dataclass
class SemanticIDs:
    """Per-item codes ``(n_items + 1, n_levels + 1)`` int64 (row 0 unused, zeros) and stats."""

    codes: np.ndarray
    stats: dict[str, Any] = field(default_factory=dict)


def assign_unique_ids(codes: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """Append the disambiguation token to ``codes`` (n, L) of items ``1..n``.

    Items sharing the same L codes get ``0, 1, 2, ...`` in item order; the others get 0.
    Returns the ``(n, L + 1)`` codes and collision statistics. Vectorised (one lexsort).
    """
    codes = np.asarray(codes, dtype=np.int64)
    n = len(codes)
    if n == 0:
        return np.zeros((0, codes.shape[1] + 1), np.int64), {"collision_rate": 0.0,
                                                             "max_collisions": 0}
    order = np.lexsort((np.arange(n),) + tuple(codes[:, j] for j in
                                               range(codes.shape[1] - 1, -1, -1)))
    srt = codes[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = (srt[1:] != srt[:-1]).any(1)
    starts = np.flatnonzero(new_group)
    sizes = np.diff(np.append(starts, n))
    group_start = np.repeat(starts, sizes)
    extra = np.empty(n, dtype=np.int64)
    extra[order] = np.arange(n) - group_start
    in_collision = np.repeat(sizes > 1, sizes)
    stats = {"n_unique_prefixes": int(len(starts)),
             "collision_rate": float(in_collision.mean()),  # items sharing their L codes
             "max_collisions": int(sizes.max())}  # largest group = size of the extra level
    return np.concatenate([codes, extra[:, None]], 1), stats


def train_rqvae(emb: np.ndarray, cfg: RQVAEConfig, *, progress: bool = True,
                device: str = "cpu") -> tuple[RQVAE, np.ndarray, dict[str, Any]]:
    """Train an RQ-VAE on ``emb`` (n, dim) and return ``(model, codes (n, L), stats)``.

    Deterministic for a seed on a given device / thread count (shuffling and initialisation use
    private generators; the global RNG states are restored afterwards).
    """
    cfg.validate()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        raise DataError(f"need a non-empty (n_items, dim) embedding array, got shape {emb.shape}")
    if not np.isfinite(emb).all():
        raise DataError("item embeddings contain NaN / inf")
    t0 = time.perf_counter()
    x_all = torch.from_numpy(emb).to(device)
    n = len(emb)
    bs = min(cfg.batch_size, n)
    history = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = RQVAE(emb.shape[1], cfg).to(device)
        rng = np.random.default_rng(cfg.seed)
        perm = rng.permutation(n)
        model.kmeans_init(x_all[torch.from_numpy(perm[:bs]).to(device)], cfg.seed)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        with progress_bar(progress) as prog:
            task = prog.add_task("RQ-VAE", total=cfg.epochs, info="")
            for _ in range(cfg.epochs):
                perm = torch.from_numpy(rng.permutation(n)).to(device)
                tot_r = tot_q = 0.0
                for s in range(0, n, bs):
                    x = x_all[perm[s:s + bs]]
                    x_hat, _, qloss = model(x)
                    rec = ((x_hat - x) ** 2).sum(1).mean()
                    loss = rec + qloss
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot_r += float(rec.detach()) * len(x)
                    tot_q += float(qloss.detach()) * len(x)
                history.append((tot_r / n, tot_q / n))
                prog.update(task, advance=1,
                            info=f"recon {tot_r / n:.4f} quant {tot_q / n:.4f}")
    model.eval()
    with torch.no_grad():
        x_hat, codes, qloss = model(x_all)
        recon = float(((x_hat - x_all) ** 2).sum(1).mean())
    codes_np = codes.cpu().numpy().astype(np.int64)
    usage = [float(len(np.unique(codes_np[:, j])) / cfg.codebook_size)
             for j in range(cfg.n_levels)]
    stats = {"recon_loss": recon, "quant_loss": float(qloss),
             "first_epoch_recon_loss": history[0][0] if history else None,
             "codebook_usage": usage, "rqvae_seconds": time.perf_counter() - t0,
             "rqvae_epochs": cfg.epochs}
    return model, codes_np, stats


def semantic_ids(emb: np.ndarray, cfg: RQVAEConfig | None = None, *,
                 cache_dir: str | Path | None = None, use_cache: bool = True,
                 progress: bool = True, device: str = "cpu") -> SemanticIDs:
    """Unique semantic IDs of items ``1..n`` from their embeddings ``emb`` (n + 1, dim).

    Row 0 of ``emb`` (padding) is ignored. Returns codes ``(n + 1, n_levels + 1)`` (row 0 zeros)
    and stats: ``collision_rate`` (fraction of items whose ``n_levels`` codes are shared with
    another item, before the extra token), ``max_collisions`` (largest such group = size of the
    extra level), ``n_unique_prefixes``, ``recon_loss`` (mean squared error per item of the
    reconstruction), ``codebook_usage`` (fraction of codes used per level), timings, and
    ``cached`` (whether they came from the cache in ``cache_dir``, see
    :func:`~recprune.llm.text_encoder.embedding_store`).
    """
    cfg = cfg or RQVAEConfig()
    cfg.validate()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) < 2:
        raise DataError(f"need an (n_items + 1, dim) embedding array with n_items >= 1, "
                        f"got shape {emb.shape}")
    spec = {"format": _FORMAT, "rqvae": cfg, "embeddings": digest(emb)}
    name = f"semantic-ids-{fingerprint(spec)}"
    store = embedding_store(cache_dir) if use_cache else None
    if store is not None:
        codes = store.load_array(name, spec)
        if codes is not None:
            return SemanticIDs(codes, {**store.manifest(name)["stats"], "cached": True})
    _, codes, stats = train_rqvae(emb[1:], cfg, progress=progress, device=device)
    full, cstats = assign_unique_ids(codes)
    out = np.zeros((len(emb), cfg.n_levels + 1), dtype=np.int64)
    out[1:] = full
    stats = {**cstats, **stats, "n_items": int(len(emb) - 1)}
    if store is not None:
        store.save_array(name, out, spec, stats=stats)
    return SemanticIDs(out, {**stats, "cached": False})
