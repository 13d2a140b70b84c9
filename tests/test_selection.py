"""Selection: Eq. 13, Algorithm 2 and the simple selectors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from recprune.errors import ConfigError
from recprune.selection import (ScoreTable, equal_width_groups, get_selector, minmax,
                                overall_score, stratified_sample)


def _table(n=1000, seed=0, skew=True):
    rng = np.random.default_rng(seed)
    inf = rng.standard_t(2, n) if skew else rng.normal(size=n)
    eff = rng.gamma(2.0, 1.0, n)
    return ScoreTable(rows=np.arange(100, 100 + n),
                      columns={"influence": inf, "effort": eff})


def test_overall_score_eq13():
    inf = np.array([0.0, 1.0, 3.0])
    eff = np.array([10.0, 20.0, 30.0])
    np.testing.assert_allclose(overall_score(inf, eff, 0.5), [0, 1 / 3 + 0.25, 1.5])
    np.testing.assert_allclose(overall_score(inf, None, 0.0), [0, 1 / 3, 1])
    # a constant effort score does not poison the overall score with NaN
    np.testing.assert_allclose(overall_score(inf, np.ones(3), 1.0), [0, 1 / 3, 1])
    with pytest.raises(ConfigError, match="lambda must be >= 0"):
        overall_score(inf, eff, -0.1)


def test_equal_width_groups():
    g = equal_width_groups(np.array([0.0, 0.09, 0.1, 0.55, 1.0]), 10)
    assert g.tolist() == [0, 0, 1, 5, 9]
    assert equal_width_groups(np.ones(4), 10).tolist() == [0, 0, 0, 0]


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(0, 40), min_size=1, max_size=12), data=st.data())
def test_algorithm2_exact_budget_and_rule(sizes, data):
    pool = sum(sizes)
    if pool == 0:
        return
    budget = data.draw(st.integers(1, pool))
    groups = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(0)
    pos, log = stratified_sample(groups, len(sizes), budget, rng)
    assert len(pos) == budget
    assert len(np.unique(pos)) == budget
    # every group drawn from per its rule: min(B at its turn, |group|)
    by_group = np.bincount(groups[pos], minlength=len(sizes))
    taken = 0
    left = len(sizes)
    B = budget // len(sizes)
    for step in log:
        assert step["size"] == sizes[step["group"]]
        assert step["budget"] == B
        assert step["drawn"] == min(B, step["size"]) == by_group[step["group"]]
        taken += step["drawn"]
        left -= 1
        if left:
            B = (budget - taken) // left
    # groups are visited smallest first
    assert [s["size"] for s in log] == sorted(s["size"] for s in log)


def test_dealrec_budget_determinism_and_coverage():
    t = _table()
    sel = get_selector("dealrec", lam=0.3, n_groups=50)
    a = sel.select(t, 128, seed=7)
    b = sel.select(t, 128, seed=7)
    c = sel.select(t, 128, seed=8)
    assert len(a.rows) == 128 and len(np.unique(a.rows)) == 128
    np.testing.assert_array_equal(a.rows, b.rows)
    assert not np.array_equal(np.sort(a.rows), np.sort(c.rows))
    assert set(a.rows) <= set(t.rows)
    # every non-empty group contributes (budget 128 over <= 50 groups => B >= 2)
    groups = a.extras["group"]
    chosen_groups = set(groups[np.searchsorted(t.rows, a.rows)])
    assert chosen_groups == set(np.unique(groups))
    assert a.info["nonempty_groups"] == len(chosen_groups)


def test_dealrec_hard_prune_and_greedy():
    t = _table()
    sel = get_selector("dealrec", lam=1.0, hard_prune=0.1)
    s = sel.select(t, 200, seed=0)
    overall = s.extras["overall"]
    top = t.rows[np.argsort(-overall)[:100]]
    assert not set(s.rows) & set(top)
    assert (s.extras["group"][np.argsort(-overall)[:100]] == -1).all()
    g = get_selector("dealrec", lam=1.0, strategy="greedy").select(t, 50)
    np.testing.assert_array_equal(np.sort(g.rows), np.sort(t.rows[np.argsort(-overall)[:50]]))


def test_lambda_zero_needs_no_effort():
    t = ScoreTable(rows=np.arange(10), columns={"influence": np.arange(10.0)})
    sel = get_selector("dealrec", lam=0.0, n_groups=2)
    assert sel.requires == ("influence",)
    assert len(sel.select(t, 4).rows) == 4


@pytest.mark.parametrize("budget", [0, -3, 1001])
def test_budget_out_of_range(budget):
    t = _table()
    for m in ("dealrec", "random", "greedy"):
        with pytest.raises(ConfigError, match="budget"):
            get_selector(m).select(t, budget)


def test_bad_options_and_scores():
    with pytest.raises(ConfigError, match="lambda"):
        get_selector("dealrec", lam=-1)
    with pytest.raises(ConfigError, match="unknown selection method"):
        get_selector("nope")
    with pytest.raises(ConfigError, match="non-finite"):
        ScoreTable(rows=np.arange(3), columns={"influence": np.array([1.0, np.nan, 2.0])})


def test_random_and_greedy():
    t = _table()
    r1 = get_selector("random").select(t, 100, seed=1)
    r2 = get_selector("random").select(t, 100, seed=1)
    np.testing.assert_array_equal(r1.rows, r2.rows)
    g = get_selector("greedy", score="effort").select(t, 10)
    assert set(g.rows) == set(t.rows[np.argsort(-t["effort"])[:10]])


def test_minmax():
    np.testing.assert_allclose(minmax(np.array([2.0, 4.0, 3.0])), [0, 1, 0.5])
    assert (minmax(np.full(5, 3.0)) == 0).all()
