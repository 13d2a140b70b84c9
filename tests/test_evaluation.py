"""Evaluation: metrics against hand-computed cases, deterministic top-k, CIs, paired tests,
selection files, the most-popular baseline and the evaluate workflow."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from recprune.backends import create_backend, exclude_and_pad, load_backend
from recprune.cli import app
from recprune.data import load_dataset
from recprune.data.dataset import Sequences
from recprune.errors import ConfigError, DataError
from recprune.evaluation import (EvalResult, eval_user_rows, evaluate_backend,
                                 evaluate_rankings, mean_ci, paired_test, recall_ndcg,
                                 topk_items)
from recprune.pipeline import EvaluateConfig, load_selection, run_evaluate

D = [1 / math.log2(i + 2) for i in range(10)]  # discounts of ranks 1..10


def test_recall_ndcg_multi_item_truth_hand_computed():
    truth = Sequences.from_lists([[5, 7, 9], [3], [4, 4]])  # user 2: a repeated item counts once
    topk = np.array([[7, 1, 9, 2], [1, 2, 3, 4], [8, 6, 2, 1]])
    m = recall_ndcg(topk, truth, np.arange(3), ks=(2, 4))
    assert m["recall@2"][0] == pytest.approx(1 / 3)
    assert m["recall@4"][0] == pytest.approx(2 / 3)
    assert m["ndcg@2"][0] == pytest.approx(D[0] / (D[0] + D[1]))
    assert m["ndcg@4"][0] == pytest.approx((D[0] + D[2]) / (D[0] + D[1] + D[2]))
    assert m["recall@2"][1] == 0 and m["recall@4"][1] == 1
    assert m["ndcg@4"][1] == pytest.approx(D[2] / D[0])
    assert m["recall@4"][2] == 0 and m["ndcg@4"][2] == 0


def test_metrics_k_larger_than_candidates_and_padding():
    truth = Sequences.from_lists([[2, 6]])
    # a generative ranking with 2 candidates, padded with -1: -1 never hits, even item 0 rows
    ranked = np.array([[6, -1]])
    res = evaluate_rankings(ranked, _tiny_ds(truth), np.array([0]), ks=(1, 5))
    assert res.per_user["recall@1"][0] == pytest.approx(0.5)
    assert res.per_user["recall@5"][0] == pytest.approx(0.5)
    assert res.per_user["ndcg@5"][0] == pytest.approx(D[0] / (D[0] + D[1]))
    assert res.ranked.shape == (1, 5)
    # -1 must not match the previous row's last item through the key arithmetic
    truth2 = Sequences.from_lists([[3], [1]])
    m = recall_ndcg(np.array([[3, -1], [-1, -1]]), truth2, np.arange(2), ks=(2,))
    assert m["recall@2"].tolist() == [1.0, 0.0]


def test_users_without_truth_are_nan_and_ignored_in_means():
    truth = Sequences.from_lists([[1], []])
    m = recall_ndcg(np.array([[1], [1]]), truth, np.arange(2), ks=(1,))
    assert m["recall@1"][0] == 1 and np.isnan(m["recall@1"][1])
    assert mean_ci(m["recall@1"])[0] == 1.0


def test_topk_ties_broken_by_item_id_and_history_excluded():
    scores = torch.tensor([[0.0, 1, 1, 1, 1, 0.5], [0.0, 0.2, 0.9, 0.9, 0.1, 0.9]])
    assert topk_items(scores.clone(), 2).tolist() == [[1, 2], [2, 3]]
    assert topk_items(scores.clone(), 3).tolist() == [[1, 2, 3], [2, 3, 5]]
    hist = Sequences.from_lists([[2], [3, 5]])
    got = topk_items(scores.clone(), 3, exclude=hist, rows=np.array([0, 1]))
    assert got.tolist() == [[1, 3, 4], [2, 1, 4]]
    # a large random case agrees with a stable full sort
    g = torch.Generator().manual_seed(0)
    s = torch.randint(0, 5, (64, 300), generator=g).float()
    ref = torch.sort(s, dim=1, descending=True, stable=True).indices[:, :20]
    assert torch.equal(topk_items(s.clone(), 20), ref)


def test_exclude_and_pad():
    hist = Sequences.from_lists([[1, 2], [3]])
    cand = np.array([[1, 5, 5, 2, 7, -1, 8], [3, 3, 4, 1, -1, -1, -1]])
    assert exclude_and_pad(cand, hist, np.array([0, 1]), 4).tolist() == [[5, 7, 8, -1],
                                                                          [4, 1, -1, -1]]


def test_mean_ci_matches_t_interval():
    x = np.array([0.0, 1, 0, 0, 1, 1, 0, 1])
    m, lo, hi = mean_ci(x)
    assert m == 0.5
    half = 2.3646242510102993 * x.std(ddof=1) / math.sqrt(8)  # t_{0.975, 7}
    assert lo == pytest.approx(0.5 - half) and hi == pytest.approx(0.5 + half)


def _tiny_ds(test: Sequences):
    from recprune.data.dataset import InteractionDataset

    n = test.n_users
    empty = Sequences.from_lists([[] for _ in range(n)])
    train = Sequences.from_lists([[1] for _ in range(n)])
    return InteractionDataset(name="tiny", train=train, valid=empty, test=test, n_items=9,
                              titles=np.array([None] + [f"t{i}" for i in range(1, 10)],
                                              dtype=object),
                              user_ids=np.arange(100, 100 + n))


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic:400")


def test_eval_user_rows_seeded_subset(ds):
    a = eval_user_rows(ds, "test", 50, seed=1)
    assert len(a) == 50 and np.array_equal(a, eval_user_rows(ds, "test", 50, seed=1))
    assert not np.array_equal(a, eval_user_rows(ds, "test", 50, seed=2))
    assert (ds.test.lengths[a] > 0).all()
    assert np.array_equal(eval_user_rows(ds, "test"), ds.eval_rows("test"))
    with pytest.raises(ConfigError):
        eval_user_rows(ds, "train")


def test_popularity_backend_ranks_by_count_and_excludes_history(ds):
    pop = create_backend("pop")
    pop.fit(ds, np.arange(ds.n_users))
    rows = ds.eval_rows("test")[:30]
    ranked = pop.rank(ds, rows, 20)
    counts = np.bincount(ds.train.items, minlength=ds.n_items + 1)
    hist = ds.train.concat(ds.valid)
    for b, r in enumerate(rows):
        assert not set(ranked[b]) & set(hist[r].tolist())
        c = counts[ranked[b]]
        assert (np.diff(c) <= 0).all()  # non-increasing popularity
        assert len(set(ranked[b])) == 20


def test_paired_test_and_eval_roundtrip(ds, tmp_path):
    full = create_backend("pop")
    full.fit(ds, np.arange(ds.n_users))
    few = create_backend("pop")
    few.fit(ds, np.arange(20))
    a = evaluate_backend(full, ds, eval_users=60, seed=3, progress=False)
    b = evaluate_backend(few, ds, eval_users=60, seed=3, progress=False)
    a.save(tmp_path / "a")
    a2 = EvalResult.load(tmp_path / "a")
    for k in a.per_user:
        np.testing.assert_allclose(a2.per_user[k], a.per_user[k])
    assert np.array_equal(a2.ranked, a.ranked) and np.array_equal(a2.user_ids, a.user_ids)
    t = paired_test(a, b, "ndcg@20")
    d = a.per_user["ndcg@20"] - b.per_user["ndcg@20"]
    assert t["n_users"] == 60 and t["diff"] == pytest.approx(np.nanmean(d))
    assert 0 <= t["p_ttest"] <= 1 and t["diff_ci_low"] <= t["diff"] <= t["diff_ci_high"]
    same = paired_test(a, a2, "recall@10")
    assert same["diff"] == 0 and same["p_ttest"] == 1.0
    c = evaluate_backend(full, ds, eval_users=60, seed=4, progress=False)
    with pytest.raises(DataError, match="same users|share"):
        paired_test(a, EvalResult(**{**c.__dict__, "user_ids": c.user_ids + 10**6}))


def test_load_selection_errors(ds, tmp_path):
    f = tmp_path / "sel.txt"
    uid = ds.user_ids
    f.write_text(f"# chosen\n{uid[3]}\n\n{uid[7]}\n")
    assert load_selection(f, ds).tolist() == [3, 7]
    f.write_text(f"{uid[3]}\n999999999\n")
    with pytest.raises(DataError, match=r"sel.txt.*line 2.*unknown user id 999999999"):
        load_selection(f, ds)
    f.write_text(f"{uid[3]}\nabc\n")
    with pytest.raises(DataError, match="line 2.*not a user id"):
        load_selection(f, ds)
    f.write_text(f"{uid[3]}\n{uid[3]}\n")
    with pytest.raises(DataError, match="listed twice"):
        load_selection(f, ds)
    f.write_text("# nothing\n\n")
    with pytest.raises(DataError, match="empty selection"):
        load_selection(f, ds)
    with pytest.raises(DataError, match="not found"):
        load_selection(tmp_path / "missing.txt", ds)


def test_run_evaluate_writes_outputs_and_reuses(ds, tmp_path):
    cfg = EvaluateConfig(data="synthetic:400", out=str(tmp_path / "ev"), backend="pop",
                         eval_users=80, ks=(5, 10))
    r1 = run_evaluate(cfg, dataset=ds, progress=False)
    out = tmp_path / "ev"
    meta = json.loads((out / "metrics.json").read_text())
    assert meta["n_users"] == 80 and set(meta["metrics"]) == {"recall@5", "recall@10",
                                                             "ndcg@5", "ndcg@10"}
    assert (out / "per_user.csv").exists() and np.load(out / "ranked.npy").shape == (80, 10)
    mtime = (out / "metrics.json").stat().st_mtime_ns
    r2 = run_evaluate(cfg, dataset=ds, progress=False)
    assert (out / "metrics.json").stat().st_mtime_ns == mtime  # reused, not recomputed
    np.testing.assert_allclose(r2.per_user["ndcg@10"], r1.per_user["ndcg@10"])
    with pytest.raises(ConfigError, match="exactly one"):
        run_evaluate(EvaluateConfig(data="x", out=str(tmp_path / "e2")), dataset=ds)


def test_pop_save_load(ds, tmp_path):
    p = create_backend("pop")
    p.fit(ds, np.arange(ds.n_users))
    p.save(tmp_path / "m")
    q = load_backend(tmp_path / "m")
    rows = ds.eval_rows("test")[:10]
    assert np.array_equal(p.rank(ds, rows, 10), q.rank(ds, rows, 10))
    with pytest.raises(DataError, match="backend.json"):
        load_backend(tmp_path)


def test_cli_evaluate_compare_and_errors(tmp_path):
    r = CliRunner()
    res = r.invoke(app, ["evaluate", "--data", "synthetic:300", "--out", str(tmp_path / "a"),
                         "--backend", "pop", "--eval-users", "50", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "recall@20" in json.loads(res.stdout.strip().splitlines()[-1])
    res = r.invoke(app, ["compare", str(tmp_path / "a"), str(tmp_path / "a"), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)[0]["diff"] == 0
    res = r.invoke(app, ["evaluate", "--data", "synthetic:300", "--out", str(tmp_path / "b"),
                         "--model", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "backend.json" in res.output
    res = r.invoke(app, ["evaluate", "--data", "synthetic:300", "--out", str(tmp_path / "b"),
                         "--backend", "nosuch"])
    assert res.exit_code == 2 and "unknown backend" in res.output
    res = r.invoke(app, ["evaluate", "--data", "synthetic:300", "--out", str(tmp_path / "c"),
                         "--backend", "pop", "--chunk-users", "0"])
    assert res.exit_code == 2 and "chunk_users must be a positive integer" in res.output
    assert not (tmp_path / "c").exists()
    sel = tmp_path / "sel.txt"
    sel.write_text("")
    res = r.invoke(app, ["finetune", "--data", "synthetic:300", "--out", str(tmp_path / "f"),
                         "--backend", "pop", "--selection", str(sel)])
    assert res.exit_code == 2 and "empty selection" in res.output


def test_cli_run_end_to_end_with_popularity(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--data", "synthetic:300", "--method", "random",
                                   "--budget", "40", "--backend", "pop", "--out", str(out),
                                   "--quiet", "--eval-users", "40"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["selection"]["n_selected"] == 40 and rep["evaluation"]["n_users"] == 40
    assert len((out / "select" / "selected_users.txt").read_text().split()) == 40
    assert "| ndcg@20 |" in (out / "report.md").read_text()
    fit = json.loads((out / "finetune" / "fit.json").read_text())
    assert sorted(fit["selected_user_ids"]) == sorted(
        int(x) for x in (out / "select" / "selected_users.txt").read_text().split())


def test_cli_run_with_a_baseline_selector_and_its_options(tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["run", "--data", "synthetic:300", "--method", "recranker",
                                   "-o", "n_clusters=5", "--budget", "30", "--backend", "pop",
                                   "--out", str(out), "--quiet", "--eval-users", "40"])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "report.json").read_text())
    assert rep["selection"]["n_selected"] == 30
    sel = json.loads((out / "select" / "selection.json").read_text())
    assert sel["method"] == "recranker" and sel["selector"]["n_clusters"] == 5


class _Counting:
    """Wraps a backend and records which users it ranked; can crash after n calls."""

    name = "counting"

    def __init__(self, inner, crash_after=None):
        self.inner, self.calls, self.crash_after = inner, [], crash_after

    def rank(self, ds, rows, k, period="test", progress=True):
        if self.crash_after is not None and len(self.calls) >= self.crash_after:
            raise KeyboardInterrupt
        self.calls.append(np.asarray(rows).copy())
        self.last_generations = [f"gen {r}" for r in rows]
        return self.inner.rank(ds, rows, k, period=period, progress=False)


def test_chunked_evaluation_resumes_after_a_crash(ds, tmp_path):
    pop = create_backend("pop")
    pop.fit(ds, np.arange(ds.n_users))
    rows = eval_user_rows(ds, "test", 95, seed=0)
    plain = evaluate_backend(pop, ds, rows=rows, progress=False)
    crashing = _Counting(pop, crash_after=2)
    with pytest.raises(KeyboardInterrupt):
        evaluate_backend(crashing, ds, rows=rows, chunk_dir=tmp_path / "c", chunk_users=20,
                         progress=False)
    assert len(list((tmp_path / "c").glob("chunk_*.npz"))) == 2
    again = _Counting(pop)
    res = evaluate_backend(again, ds, rows=rows, chunk_dir=tmp_path / "c", chunk_users=20,
                           progress=False)
    # only the 3 unfinished chunks (20 + 20 + 15 users) were ranked again
    assert [len(c) for c in again.calls] == [20, 20, 15]
    assert np.array_equal(np.concatenate(again.calls), rows[40:])
    assert np.array_equal(res.ranked, plain.ranked)
    for m in plain.per_user:
        assert np.allclose(res.per_user[m], plain.per_user[m], equal_nan=True)
    assert res.generations == [f"gen {r}" for r in rows]
    with pytest.raises(ConfigError):
        evaluate_backend(pop, ds, rows=rows, chunk_dir=tmp_path / "d", chunk_users=0)
