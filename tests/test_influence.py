"""Influence score: per-sample gradients and inverse-HVP solvers on a small real problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recprune.data.synthetic import make_synthetic
from recprune.errors import ConfigError, ScoringError
from recprune.scoring import (InfluenceConfig, SurrogateObjective, get_solver, influence_scores,
                              resolve_params)
from recprune.surrogate import SurrogateTrainConfig, build_samples, train_surrogate


@pytest.fixture(scope="module")
def trained():
    ds = make_synthetic(n_users=300, n_items=60, seed=3)
    cfg = SurrogateTrainConfig(hidden=16, max_len=20, max_epochs=8, patience=100, seed=0,
                               batch_size=64, lr=3e-3, dropout=0.2)
    res = train_surrogate(ds, cfg, show_progress=False)
    return ds, res.model, build_samples(ds, cfg.max_len)


@pytest.fixture(scope="module")
def small_obj(trained):
    _, model, samples = trained
    # a small subset (last block's FFN output + final norm) so the dense Hessian is cheap
    return SurrogateObjective(model, samples, params=["blocks.1.ff2.weight", "ln_out.*"])


def test_resolve_params(trained):
    _, model, _ = trained
    assert resolve_params(model, "reference") == ["blocks.1.out.weight"]
    assert len(resolve_params(model, "all")) == len(list(model.parameters()))
    with pytest.raises(ConfigError, match="no surrogate parameter"):
        resolve_params(model, ["nope.*"])


def test_vmap_per_sample_grads_equal_backward_loop(trained):
    _, model, samples = trained
    obj = SurrogateObjective(model, samples, params="all")
    rows = obj.active_rows[:12]
    g = obj.per_sample_grads(rows)
    params = dict(model.named_parameters())
    for i, r in enumerate(rows):
        model.zero_grad()
        seq, tgt = samples.batch(np.array([r]))
        from recprune.surrogate.sasrec import sequence_losses
        loss = sequence_losses(model, seq, tgt).sum() / obj.norm
        loss.backward()
        ref = torch.cat([params[n].grad.reshape(-1) for n in obj.names])
        assert torch.allclose(g[i], ref, rtol=1e-4, atol=1e-6), f"row {r}"
    model.zero_grad()


def test_mean_grad_is_mean_of_per_sample(trained):
    _, model, samples = trained
    obj = SurrogateObjective(model, samples, params="reference")
    per = obj.per_sample_grads(obj.active_rows)
    assert torch.allclose(obj.mean_grad(), per.sum(0) / obj.n, rtol=1e-4, atol=1e-7)


def test_samples_without_target_score_zero(trained):
    _, model, samples = trained
    obj = SurrogateObjective(model, samples, params="reference")
    h = torch.randn(obj.dim)
    d = obj.per_sample_dot(h)
    no_target = samples.lengths.numpy() == 0
    assert no_target.any() and (d[no_target] == 0).all()
    assert (d[~no_target] != 0).all()


@pytest.mark.parametrize("damping", [0.05, 0.5])
def test_cg_and_lissa_agree_with_exact(small_obj, damping):
    obj = small_obj
    v = obj.mean_grad()
    x_exact, rep = get_solver("exact", damping=damping).solve(obj, v)
    assert rep.residual < 1e-6
    x_cg, rep_cg = get_solver("cg", damping=damping, tol=1e-8, max_iter=500).solve(obj, v)
    err_cg = float((x_cg - x_exact).norm() / x_exact.norm())
    print(f"damping {damping}: CG rel. error {err_cg:.2e} in {rep_cg.iterations} iterations")
    assert err_cg < 1e-4
    # LiSSA with exact (full-batch) Hessians is the deterministic Neumann series
    eig_max = float(torch.linalg.eigvalsh(obj.dense_hessian()).max())
    scale = 1.2 * eig_max + damping
    n_all = len(obj.active_rows)
    lissa = get_solver("lissa", damping=damping / scale, scale=scale, depth=300, report_every=20,
                       batch_size=n_all, check_residual=True)
    # batch = every active sample, drawn without replacement -> exact H each step
    x_l, rep_l = lissa.solve(obj, v)
    err_l = float((x_l - x_exact).norm() / x_exact.norm())
    print(f"damping {damping}: full-batch LiSSA rel. error {err_l:.2e}, residual {rep_l.residual:.2e}")
    assert err_l < 1e-3
    assert rep_l.converged


def test_stochastic_lissa_is_close_to_exact(small_obj):
    obj = small_obj
    v = obj.mean_grad()
    damping = 0.1
    x_exact, _ = get_solver("exact", damping=damping).solve(obj, v)
    eig_max = float(torch.linalg.eigvalsh(obj.dense_hessian()).max())
    scale = 4.0 * eig_max
    x, rep = get_solver("lissa", damping=damping / scale, scale=scale, depth=300, repeats=4, report_every=50,
                        batch_size=16, seed=1).solve(obj, v)
    err = float((x - x_exact).norm() / x_exact.norm())
    cos = float(x @ x_exact / (x.norm() * x_exact.norm()))
    print(f"stochastic LiSSA: rel. error {err:.3f}, cosine {cos:.4f}, residual {rep.residual:.3f}")
    assert err < 0.25 and cos > 0.97


def test_lissa_divergence_is_reported(small_obj):
    obj = small_obj
    v = obj.mean_grad()
    eig_max = float(torch.linalg.eigvalsh(obj.dense_hessian()).max())
    bad = get_solver("lissa", damping=0.0, scale=eig_max / 10, depth=400,
                     batch_size=len(obj.active_rows), check_residual=False)
    with pytest.raises(ScoringError, match="increase scale"):
        bad.solve(obj, v)


def test_influence_scores_end_to_end(trained):
    _, model, samples = trained
    res = influence_scores(model, samples, InfluenceConfig(
        params="reference", solver="cg", solver_options={"damping": 0.5, "tol": 1e-6}),
        show_progress=False)
    assert res.scores.shape == (samples.n,)
    assert np.isfinite(res.scores).all()
    obj = SurrogateObjective(model, samples, params="reference")
    # score = (1/n) grad L(s) . x, checked against explicit per-sample gradients
    rows = obj.active_rows[:20]
    ref = (obj.per_sample_grads(rows) @ res.ihvp).numpy() / obj.n
    np.testing.assert_allclose(res.scores[rows], ref, rtol=1e-4, atol=1e-9)
    # deterministic
    res2 = influence_scores(model, samples, InfluenceConfig(
        params="reference", solver="cg", solver_options={"damping": 0.5, "tol": 1e-6}),
        show_progress=False)
    np.testing.assert_array_equal(res.scores, res2.scores)


def test_unknown_solver(trained):
    with pytest.raises(ConfigError, match="unknown iHVP solver"):
        get_solver("newton")
    with pytest.raises(ConfigError, match="bad options"):
        get_solver("lissa", depht=3)


def test_jvp_and_vmap_per_sample_scores_agree(trained):
    _, model, samples = trained
    obj = SurrogateObjective(model, samples, params="all")
    h = torch.randn(obj.dim)
    a = obj.per_sample_dot(h, method="vmap", batch_size=32)
    b = obj.per_sample_dot(h, method="jvp", batch_size=32)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6 * np.abs(a).max())
    # a permuted subset of rows keeps its order
    rows = np.random.default_rng(0).permutation(samples.n)[:40]
    np.testing.assert_allclose(obj.per_sample_dot(h, rows), b[rows], rtol=1e-5,
                               atol=1e-7 * np.abs(b).max())
    with pytest.raises(ConfigError, match="per-sample method"):
        obj.per_sample_dot(h, method="loop")
