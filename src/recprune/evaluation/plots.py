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
from recprune.store import atomic_path  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def method_colors(names) -> dict[str, tuple]:
    """A distinct colour per method name, in the given order (tab10, then the light half of
    tab20 for an 11th-20th method, then repeating), so that one method keeps its colour across
    a figure's panels and up to 20 methods never share one."""
    tab10 = plt.get_cmap("tab10").colors
    light = plt.get_cmap("tab20").colors[1::2]
    palette = list(tab10) + list(light)
    return {n: palette[i % len(palette)] for i, n in enumerate(dict.fromkeys(names))}


def metric_by_method(agg: pd.DataFrame, metric: str, path: Path, budget,
                     cells: pd.DataFrame | None = None, colors: dict | None = None) -> Path:
    """Write :func:`metric_by_method_figure` to ``path``."""
    return _save(metric_by_method_figure(agg, metric, budget, cells, colors), path)


def metric_by_method_figure(agg: pd.DataFrame, metric: str, budget,
                            cells: pd.DataFrame | None = None, colors: dict | None = None):
    """One panel per backend: the metric of every method (bar = mean over seeds, error bar =
    std) with each seed's value as a dot when ``cells`` (one row per cell) is given; a method
    with fewer finished seeds than the most complete one is labelled ``(n/N seeds)``;
    full-data and most-popular as horizontal reference lines. ``colors``: method -> colour
    (default :func:`method_colors` of the methods shown; a run passes one mapping to all its
    figures so that a method has the same colour in each)."""
    backends = [b for b in agg["backend"].unique() if b != "pop"]
    fig, axes = plt.subplots(1, max(1, len(backends)), figsize=(5.5 * max(1, len(backends)), 4),
                             squeeze=False)
    pop = agg[agg["method"] == "most-popular"]
    for ax, b in zip(axes[0], backends):
        sub = agg[(agg["backend"] == b) & (agg["budget"] == budget)]
        means = sub[f"{metric}_mean"].to_numpy(dtype=float)
        stds = np.nan_to_num(sub[f"{metric}_std"].to_numpy(dtype=float))
        x = np.arange(len(sub))
        col = {**method_colors(sub["method"]), **(colors or {})}
        ax.bar(x, means, yerr=stds, capsize=3, alpha=0.8, color=[col[m] for m in sub["method"]])
        n_seeds = sub["seeds"].to_numpy(dtype=int)
        most = int(n_seeds.max()) if len(sub) else 0
        labels = [m if n == most else f"{m} ({n}/{most} seeds)"
                  for m, n in zip(sub["method"], n_seeds)]
        if cells is not None and len(cells):
            cb = cells[(cells["backend"] == b) & (cells["budget"].astype(str) == str(budget))]
            pos = dict(zip(sub["method"], x))
            cb = cb[cb["method"].isin(pos)]
            if len(cb):
                ax.plot(cb["method"].map(pos).to_numpy(dtype=float),
                        cb[metric].to_numpy(dtype=float), "o", color="black", ms=3, zorder=3,
                        label="one seed")
        ax.set_xticks(x, labels, rotation=45, ha="right")
        full = agg[(agg["backend"] == b) & (agg["method"] == "all")]
        if len(full):
            ax.axhline(float(full[f"{metric}_mean"].iloc[0]), color="tab:green", ls="--",
                       label="full data")
        if len(pop):
            ax.axhline(float(pop[f"{metric}_mean"].iloc[0]), color="tab:red", ls=":",
                       label="most popular")
        ax.set_title(f"{b}, budget {budget}")
        ax.set_ylabel(metric)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.suptitle(f"{metric}: mean ± std over seeds")
    return fig


def coverage(ds: InteractionDataset, pool_rows: np.ndarray, selections: dict[str, np.ndarray],
             path: Path, colors: dict | None = None) -> Path:
    """CDFs of the selected users' training-sequence length and of the (log) popularity of their
    training items, against the whole pool."""
    pop = np.bincount(ds.train.items, minlength=ds.n_items + 1).astype(np.float64)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))

    def cdf(ax, v, label, **kw):
        v = np.sort(np.asarray(v, dtype=np.float64))
        if len(v):
            ax.step(v, np.arange(1, len(v) + 1) / len(v), where="post", label=label, **kw)

    colors = {**method_colors(selections), **(colors or {})}
    for name, rows in [("pool (full data)", pool_rows), *selections.items()]:
        kw = ({"color": "black", "lw": 2.5} if name.startswith("pool")
              else {"lw": 1.2, "color": colors[name]})
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
                        path: Path, bins: int = 40, colors: dict | None = None) -> Path:
    """One panel per score: its distribution over the pool and over each method's selection."""
    cols = [c for c in scores.columns if c != "row"]
    n = len(cols)
    ncol = min(3, n)
    nrow = int(np.ceil(n / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(5 * ncol, 3.6 * nrow), squeeze=False)
    rows = scores["row"].to_numpy()
    colors = {**method_colors(selections), **(colors or {})}
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
                ax.hist(v[m], bins=edges, density=True, histtype="step", lw=1.2, label=name,
                        color=colors[name])
        ax.set_title(c)
        ax.set_yscale("log")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
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
    groups = list(sub.groupby(["method", "backend"], sort=False))
    colors = method_colors(f"{m} ({b})" for (m, b), _ in groups)
    for (m, b), g in groups:
        ratio = 100 * g["budget"].astype(float).to_numpy() / pool_size
        o = np.argsort(ratio)
        ax.errorbar(ratio[o], g[f"{metric}_mean"].to_numpy(dtype=float)[o],
                    yerr=np.nan_to_num(g[f"{metric}_std"].to_numpy(dtype=float))[o],
                    marker="o", capsize=3, label=f"{m} ({b})", color=colors[f"{m} ({b})"])
        axt.errorbar(ratio[o], g["finetune_s_mean"].to_numpy(dtype=float)[o] / 60,
                     yerr=np.nan_to_num(g["finetune_s_std"].to_numpy(dtype=float))[o] / 60,
                     marker="o", capsize=3, label=f"{m} ({b})", color=colors[f"{m} ({b})"])
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
