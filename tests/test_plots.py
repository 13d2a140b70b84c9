"""What the benchmark figures draw, checked on small hand-made tables."""

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from recprune.evaluation import plots


def _tables():
    rows = []
    for m, vals in {"random": [0.01, 0.02, 0.03], "dealrec": [0.05], "goracs": [0.02, 0.04]}.items():
        for s, v in enumerate(vals):
            rows.append({"budget": 8, "method": m, "seed": s, "backend": "tiger", "ndcg@20": v})
    rows.append({"budget": "", "method": "most-popular", "seed": 0, "backend": "pop",
                 "ndcg@20": 0.005})
    cells = pd.DataFrame(rows)
    g = cells.groupby(["budget", "method", "backend"], sort=False)["ndcg@20"]
    agg = pd.DataFrame({"ndcg@20_mean": g.mean(), "ndcg@20_std": g.std(),
                        "seeds": g.size()}).reset_index()
    return agg, cells


def test_metric_by_method_shows_every_seed_and_incomplete_methods():
    agg, cells = _tables()
    fig = plots.metric_by_method_figure(agg, "ndcg@20", 8, cells)
    try:
        (ax,) = fig.axes
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["random", "dealrec (1/3 seeds)", "goracs (2/3 seeds)"]
        heights = [p.get_height() for p in ax.patches]
        np.testing.assert_allclose(heights, [0.02, 0.05, 0.03])
        dots = [ln for ln in ax.lines if ln.get_marker() == "o"]
        got = sorted(float(y) for ln in dots for y in ln.get_ydata())
        assert got == sorted(cells.loc[cells["backend"] == "tiger", "ndcg@20"])
        # one colour per method
        assert len({p.get_facecolor() for p in ax.patches}) == 3
        pop = [ln for ln in ax.lines if ln.get_label() == "most popular"]
        np.testing.assert_allclose(pop[0].get_ydata(), 0.005)
    finally:
        plt.close(fig)


def test_method_colors_are_distinct_for_twenty_methods():
    names = [f"m{i}" for i in range(20)]
    colors = plots.method_colors(names)
    assert len(set(colors.values())) == 20
    # stable: the same name keeps its colour whatever follows it
    assert plots.method_colors(names[:3]) == {n: colors[n] for n in names[:3]}


def test_a_run_passes_one_colour_per_method_to_every_figure():
    agg, cells = _tables()
    colors = plots.method_colors(["random", "grand", "dealrec", "goracs"])
    fig = plots.metric_by_method_figure(agg, "ndcg@20", 8, cells, colors)
    try:
        got = [p.get_facecolor()[:3] for p in fig.axes[0].patches]
        np.testing.assert_allclose(got, [colors[m] for m in ("random", "dealrec", "goracs")])
    finally:
        plt.close(fig)
