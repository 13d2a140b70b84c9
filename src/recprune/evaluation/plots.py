"""Plots of a benchmark run (matplotlib, Agg backend: no screen needed).

Every function writes one PNG atomically and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from recprune.data.dataset import InteractionDataset  # noqa: E402
from recprune.utils.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def metric_by_method(agg: pd.DataFrame, metric: str, path: Path, budget) -> Path:
    """One panel per backend: the metric of every method (mean over seeds, error bar = std);
    full-data and most-popular as horizontal reference lines."""
    backends = [b for b in agg["backend"].unique() if b != "pop"]
    fig, axes = plt.subplots(1, max(1, len(backends)), figsize=(5.5 * max(1, len(backends)), 4),
                             squeeze=False)
    pop = agg[agg["method"] == "most-popular"]
    for ax, b in zip(axes[0], backends):
        sub = agg[(agg["backend"] == b) & (agg["budget"] == budget)]
        means = sub[f"{metric}_mean"].to_numpy(dtype=float)
        stds = np.nan_to_num(sub[f"{metric}_std"].to_numpy(dtype=float))
        x = np.arange(len(sub))
        ax.bar(x, means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(x, sub["method"].tolist(), rotation=45, ha="right")
        full = agg[(agg["backend"] == b) & (agg["method"] == "all")]
        if len(full):
            ax.axhline(float(full[f"{metric}_mean"].iloc[0]), color="tab:green", ls="--",
                       label="full data")
        if len(pop):
            ax.axhline(float(pop[f"{metric}_mean"].iloc[0]), color="tab:red", ls=":",
                       label="most popular")
        ax.set_title(f"{b}, budget {budget}")
        ax.set_ylabel(metric)
        if len(full) or len(pop):
            ax.legend(fontsize=8)
    fig.suptitle(f"{metric}: mean ± std over seeds")
    return _save(fig, path)


def coverage(ds: InteractionDataset, pool_rows: np.ndarray, selections: dict[str, np.ndarray],
             path: Path) -> Path:
    """CDFs of the selected users' training-sequence length and of the (log) popularity of their
    training items, against the whole pool."""
    pop = np.bincount(ds.train.items, minlength=ds.n_items + 1).astype(np.float64)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))

    def cdf(ax, v, label, **kw):
        v = np.sort(np.asarray(v, dtype=np.float64))
        if len(v):
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label, **kw)

    for name, rows in [("pool (full data)", pool_rows), *selections.items()]:
        kw = {"color": "black", "lw": 2.5} if name.startswith("pool") else {"lw": 1.2}
        rows = np.asarray(rows, dtype=np.int64)
        cdf(a1, ds.train.lengths[rows], name, **kw)
        items = ds.train.subset(rows).items
        cdf(a2, np.log10(pop[items]), name, **kw)
    a1.set_xscale("log")
    a1.set_xlabel("training sequence length (log)")
    a1.set_ylabel("fraction of users")
    a2.set_xlabel("log10 popularity of the training items")
    a2.set_ylabel("fraction of interactions")
    a2.legend(fontsize=7, loc="lower right")
    fig.suptitle("What each selection covers (seed 0) vs the full pool")
    return _save(fig, path)


def score_distributions(scores: pd.DataFrame, selections: dict[str, np.ndarray],
                        path: Path, bins: int = 40) -> Path:
    """One panel per score: its distribution over the pool and over each method's selection."""
    cols = [c for c in scores.columns if c != "row"]
    n = len(cols)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
    rows = scores["row"].to_numpy()
    for ax, c in zip(axes.ravel(), cols):
        v = scores[c].to_numpy(dtype=np.float64)
        ok = np.isfinite(v)
        if not ok.any():
            ax.set_visible(False)
            continue
        edges = np.histogram_bin_edges(v[ok], bins=bins)
        ax.hist(v[ok], bins=edges, density=True, color="lightgray", label="pool")
        for name, sel in selections.items():
            m = np.isin(rows, sel) & ok
            if m.sum() > 1:
                ax.hist(v[m], bins=edges, density=True, histtype="step", lw=1.2, label=name)
        ax.set_title(c)
        ax.set_yscale("log")
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle("Score distributions: pool vs each method's selection (seed 0, density)")
    return _save(fig, path)


def sweep(agg: pd.DataFrame, metric: str, pool_size: int, path: Path) -> Path:
    """The paper's Figure 5: ``metric`` (left) and fine-tuning wall time (right) vs selection
    ratio (budget / pool), one line per (method, backend), with full-data fine-tuning and
    most-popular as horizontal references."""
    return _save(sweep_figure(agg, metric, pool_size), path)


def sweep_figure(agg: pd.DataFrame, metric: str, pool_size: int):
    """The figure :func:`sweep` writes (returned open, so that its data can be inspected)."""
    fig, (ax, axt) = plt.subplots(1, 2, figsize=(11, 4.2))
    sub = agg[(agg["budget"] != "") & (agg["method"] != "most-popular")]
    for (m, b), g in sub.groupby(["method", "backend"], sort=False):
        ratio = 100 * g["budget"].astype(float).to_numpy() / pool_size
        o = np.argsort(ratio)
        ax.errorbar(ratio[o], g[f"{metric}_mean"].to_numpy(dtype=float)[o],
                    yerr=np.nan_to_num(g[f"{metric}_std"].to_numpy(dtype=float))[o],
                    marker="o", capsize=3, label=f"{m} ({b})")
        axt.errorbar(ratio[o], g["finetune_s_mean"].to_numpy(dtype=float)[o] / 60,
                     yerr=np.nan_to_num(g["finetune_s_std"].to_numpy(dtype=float))[o] / 60,
                     marker="o", capsize=3, label=f"{m} ({b})")
    for _, r in agg[agg["method"].isin(["all", "most-popular"])].iterrows():
        full = r["method"] == "all"
        style = dict(ls="--" if full else ":", color="tab:green" if full else "tab:red",
                     label=f"{r['method']} ({r['backend']})")
        ax.axhline(float(r[f"{metric}_mean"]), **style)
        if full:
            axt.axhline(float(r["finetune_s_mean"]) / 60, **style)
    ax.set_xlabel("selection ratio (% of the pool)")
    ax.set_ylabel(metric)
    ax.legend(fontsize=8)
    ax.set_title("Accuracy")
    axt.set_xlabel("selection ratio (% of the pool)")
    axt.set_ylabel("fine-tuning wall time (min)")
    if len(sub) and (sub["finetune_s_mean"] > 0).all():
        axt.set_yscale("log")
    axt.legend(fontsize=8)
    axt.set_title("Fine-tuning cost")
    fig.suptitle("Selection-ratio sweep")
    return fig
