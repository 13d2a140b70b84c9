"""The benchmark harness: grid, resumability, aggregation, significance, plots and errors.

The grids use the most-popular backend fitted on each selection (fine-tuning in milliseconds)
and cheap surrogate options, so the harness itself is what is tested; one small TIGER grid
checks the integration with a real fine-tuned backend.
"""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import recprune.pipeline.benchmark as bm
import recprune.pipeline.benchmark.grid as grid
from recprune.evaluation.statistics import seed_test
from recprune.evaluation import plots
from recprune.cli import app
from recprune.data import load_dataset
from recprune.errors import ConfigError, RecpruneError
from recprune.pipeline.benchmark import (BenchmarkConfig, pool_scores, resolve_budget,
                                         run_benchmark)

CHEAP = {"surrogate": {"max_epochs": 2}, "influence": {"solver": "cg"}}


@pytest.fixture(scope="module")
def ds():
    return load_dataset("synthetic:240")


def _cfg(tmp, **kw) -> BenchmarkConfig:
    base = dict(data="synthetic:240", out=str(tmp), methods=("random", "el2n", "all"),
                backends=("pop",), budgets=(16,), seeds=2, eval_users=50,
                select_options=CHEAP)
    base.update(kw)
    return BenchmarkConfig(**base)


def test_grid_outputs_and_aggregation(ds, tmp_path):
    res = run_benchmark(_cfg(tmp_path), dataset=ds, progress=False)
    c = res.cells
    # most-popular + 2 methods x 2 seeds + 1 full-data cell
    assert len(c) == 1 + 2 * 2 + 1
    assert set(c["method"]) == {"most-popular", "random", "el2n", "all"}
    for f in ("cells.csv", "table.csv", "table.md", "significance.csv", "coverage.csv",
              "report.md", "metric_by_method.png", "coverage.png", "config.json"):
        assert (tmp_path / f).exists(), f
    # the table's mean/std are those of the seeds' cells
    for m in ("random", "el2n"):
        sub = c[c["method"] == m]["ndcg@20"].to_numpy()
        row = res.table[res.table["method"] == m].iloc[0]
        assert row["ndcg@20_mean"] == pytest.approx(sub.mean())
        assert row["ndcg@20_std"] == pytest.approx(sub.std(ddof=1))
        assert row["seeds"] == 2
    # full data = the whole pool; a selection = the budget
    assert int(c[c["method"] == "all"]["n_train_users"].iloc[0]) == ds.n_users
    assert set(c[c["method"] == "random"]["n_train_users"]) == {16}
    # the best few-shot method per column is bold
    md = (tmp_path / "table.md").read_text()
    best = res.table[res.table["method"].isin(["random", "el2n"])]["ndcg@20_mean"].max()
    assert f"**{best:.4f}" in md
    # significance: every method except the baseline, p-values in [0, 1]
    s = res.significance
    assert "random" not in set(s["method"]) and {"el2n", "all"} <= set(s["method"])
    assert ((s["p_ttest"] >= 0) & (s["p_ttest"] <= 1)).all()
    # the seed-level test is Welch's t-test on the per-seed means of cells.csv, and is
    # undefined (NaN, '-' in the report) for a single-seed method such as full data
    from scipy import stats
    e = s[(s["method"] == "el2n") & (s["metric"] == "ndcg@20")].iloc[0]
    per_seed = lambda m: c[c["method"] == m]["ndcg@20"].to_numpy()
    assert e["seeds"] == 2 and e["baseline_seeds"] == 2
    want = stats.ttest_ind(per_seed("el2n"), per_seed("random"), equal_var=False).pvalue
    if np.isfinite(want):
        assert e["p_seeds"] == pytest.approx(want)
    else:  # both methods constant over seeds: undefined
        assert np.isnan(e["p_seeds"])
    assert s[s["method"] == "all"]["p_seeds"].isna().all()
    assert "| p (seeds) |" in (tmp_path / "report.md").read_text()
    # the table marks a per-user p < 0.05 with * and a seed-level p < 0.05 with a dagger
    marked = s.copy()
    marked["p_ttest"], marked["p_seeds"] = 0.5, np.where(marked["method"] == "el2n", 0.01, 0.5)
    rows = {ln.split(" | ")[0].strip("| "): ln.replace("**", "")  # without the bold marks
            for ln in bm.markdown_table(_cfg(tmp_path), res.table, marked, 16).splitlines()}
    assert "†" in rows["el2n"] and "*" not in rows["el2n"]
    assert "†" not in rows["random"] and "†" not in rows["all (full data)"]
    # random seeds differ, EL2N is deterministic in its selection
    sel = lambda m, k: json.loads((tmp_path / f"cells/b16/{m}/s{k}/select/done.json"
                                   ).read_text())["rows"]
    assert sel("random", 0) != sel("random", 1)
    assert sel("el2n", 0) == sel("el2n", 1)
    # the EL2N selection holds the highest EL2N scores of the pool
    scores = pd.read_csv(tmp_path / "cells/b16/el2n/s0/select/scores.csv")
    top = set(scores.sort_values("el2n", ascending=False, kind="stable")["row"][:16])
    assert np.isclose(np.sort(scores["el2n"])[-16],
                      scores.set_index("row").loc[sel("el2n", 0), "el2n"].min())
    assert len(top) == 16
    # scores were computed once, in the shared cache
    assert (tmp_path / "cache" / "scores" / "el2n.npy").exists()
    assert not (tmp_path / "cells/b16/el2n/s1/select/scores").exists()


def test_rerun_recomputes_nothing_and_new_seeds_only_add(ds, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, methods=("random", "el2n"))
    run_benchmark(cfg, dataset=ds, progress=False)
    marks = {p: p.stat().st_mtime_ns for p in tmp_path.glob("cells/**/*.json")}
    calls = []
    real = grid.run_select
    monkeypatch.setattr(grid, "run_select", lambda *a, **k: calls.append(1) or real(*a, **k))
    res = run_benchmark(cfg, dataset=ds, progress=False)
    assert calls == []
    assert {p: p.stat().st_mtime_ns for p in marks} == marks
    # one more seed: only that seed's cells are selected / fitted / evaluated
    res3 = run_benchmark(_cfg(tmp_path, methods=("random", "el2n"), seeds=3), dataset=ds,
                         progress=False)
    assert len(calls) == 2  # random s2, el2n s2
    assert {p: p.stat().st_mtime_ns for p in marks} == marks
    old = res.cells.set_index(["method", "seed"])["ndcg@20"]
    new = res3.cells.set_index(["method", "seed"])["ndcg@20"]
    for k in old.index:
        assert new[k] == old[k]


def test_changed_cell_settings_in_a_run_directory_are_refused(ds, tmp_path, monkeypatch):
    """Continuing a run with a forgotten option must not silently recompute (or mix) its cells:
    settings the cells depend on are compared with OUT/config.json before any work."""
    opts = {**CHEAP, "effort_cache": "elsewhere/effort"}
    (tmp_path / "config.json").write_text(json.dumps(_cfg(tmp_path, select_options=opts).to_dict()))
    # extending the grid (methods, seeds, budgets, backends) or reading it differently is fine
    same = _cfg(tmp_path, select_options=opts, methods=("random", "ccs"), seeds=5, budgets=(8, 16),
                table_metrics=("recall@10",))
    assert bm.changed_settings(tmp_path, same) == {}
    # a dropped option, another test subset: named, with both values, before the data is even
    # loaded, and nothing is computed
    monkeypatch.setattr(grid, "run_select", lambda *a, **k: pytest.fail("selected"))
    bad = _cfg(tmp_path, eval_users=60)
    assert bm.changed_settings(tmp_path, bad) == {
        "eval_users": (50, 60), "select_options.effort_cache": ("elsewhere/effort", None)}
    with pytest.raises(ConfigError, match=r"(?s)eval_users: 50 -> 60.*effort_cache: "
                                          r"\"elsewhere/effort\" -> null.*--recompute"):
        run_benchmark(bad, dataset=ds, progress=False)
    monkeypatch.setattr(grid, "load_dataset", lambda *a, **k: pytest.fail("data loaded first"))
    r = CliRunner().invoke(app, ["benchmark", "--data", "synthetic:240", "--out", str(tmp_path),
                                 "--methods", "random", "--backends", "pop", "--budget", "16",
                                 "--eval-users", "60", "--quiet"])
    assert r.exit_code != 0 and "eval_users: 50 -> 60" in r.output and "Traceback" not in r.output
    # fields an older config.json lacks count as their defaults
    old = json.loads((tmp_path / "config.json").read_text())
    del old["cache_dir"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert bm.changed_settings(tmp_path, same) == {}
    # --recompute: the run proceeds and records the new settings
    monkeypatch.undo()
    run_benchmark(bad, dataset=ds, progress=False, recompute=True)
    assert json.loads((tmp_path / "config.json").read_text())["eval_users"] == 60
    assert bm.changed_settings(tmp_path, bad) == {}


def test_budget_sweep_fractions_and_plot(ds, tmp_path):
    cfg = _cfg(tmp_path, methods=("random", "all"), budgets=(0.05, 24), seeds=1,
               popularity=False)
    res = run_benchmark(cfg, dataset=ds, progress=False)
    sizes = res.cells.loc[res.cells["method"] == "random", "n_train_users"]
    assert sorted(sizes) == [12, 24]
    assert (tmp_path / "sweep.png").exists()
    assert (tmp_path / "table_b12.md").exists() and (tmp_path / "table_b24.md").exists()
    # what the figure draws: the sweep's points at budget / pool, and the full-data reference
    pool = int(res.table.loc[res.table["method"] == "all", "n_train_users"].iloc[0])
    fig = plots.sweep_figure(res.table, cfg.metric, pool)
    try:
        ax, axt = fig.axes
        rnd = res.table[res.table["method"] == "random"].sort_values("n_train_users")
        (acc,), (cost,) = ([c.lines[0] for c in a.containers] for a in (ax, axt))
        np.testing.assert_allclose(acc.get_xdata(), [100 * 12 / pool, 100 * 24 / pool])
        np.testing.assert_allclose(acc.get_ydata(), rnd[f"{cfg.metric}_mean"])
        np.testing.assert_allclose(cost.get_ydata(), rnd["finetune_s_mean"] / 60)
        full = res.table[res.table["method"] == "all"].iloc[0]
        hlines = [ln for ln in ax.lines if ln.get_label().startswith("all")]
        assert len(hlines) == 1
        np.testing.assert_allclose(hlines[0].get_ydata(), float(full[f"{cfg.metric}_mean"]))
        assert [ln.get_label() for ln in axt.lines if ln.get_label().startswith("all")]
    finally:
        plt.close(fig)


def test_seed_test_treats_seeds_as_the_random_unit():
    from recprune.evaluation import EvalResult

    def ev(v):  # one seed's evaluation: 50 users, per-user values around v
        r = np.random.default_rng(int(v * 1e6))
        x = np.clip(v + 0.01 * r.standard_normal(50), 0, None)
        return EvalResult(period="test", ks=(20,), rows=np.arange(50), user_ids=np.arange(50),
                          per_user={"ndcg@20": x})

    far = seed_test([ev(0.5), ev(0.51), ev(0.52)], [ev(0.1), ev(0.11), ev(0.12)], "ndcg@20")
    near = seed_test([ev(0.10), ev(0.2)], [ev(0.11), ev(0.19)], "ndcg@20")
    assert far < 0.01 < 0.5 < near <= 1.0
    assert np.isnan(seed_test([ev(0.5)], [ev(0.1), ev(0.2)], "ndcg@20"))
    # seeds that do not vary on either side leave the test undefined, not p = 0
    assert np.isnan(seed_test([ev(0.5), ev(0.5)], [ev(0.1), ev(0.1)], "ndcg@20"))


def test_resolve_budget():
    assert resolve_budget(1024, 49156) == 1024
    assert resolve_budget(0.02, 10000) == 200
    assert resolve_budget(0.0001, 100) == 1
    with pytest.raises(ConfigError):
        resolve_budget(2000, 1000)
    with pytest.raises(ConfigError):
        resolve_budget(0, 1000)


@pytest.mark.parametrize("kw,msg", [
    ({"methods": ("nosuch",)}, "unknown selection method 'nosuch'"),
    ({"backends": ("nosuch",)}, "nosuch"),
    ({"method_options": {"ccs": {"beta": 0.1}}}, "not benchmarked"),
    ({"method_options": {"el2n": {"nope": 1}}}, "bad options"),
    ({"backend_options": {"pop": {"nope": 1}}}, "nope"),
    ({"metric": "ndcg@5"}, "not computed"),
    ({"budgets": (10000,)}, "candidate pool"),
    ({"seeds": 0}, "seeds must be >= 1"),
    ({"select_options": {"pool": 10}}, "set by the benchmark itself"),
    ({"select_options": {"nope": 1}}, "nope: unknown option"),
])
def test_bad_configuration_is_refused_before_any_work(ds, tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        run_benchmark(_cfg(tmp_path / "x", **kw), dataset=ds, progress=False)
    assert not (tmp_path / "x").exists()


def test_aliases_expand():
    cfg = BenchmarkConfig(data="d", out="o", methods=("paper", "ablations", "random"))
    assert cfg.methods[:7] == bm.PAPER_METHODS and cfg.methods[7:] == bm.ABLATIONS


def test_cli_benchmark_with_tiger(tmp_path):
    # a real fine-tuned backend through the CLI: tiny TIGER, tiny encoder-free item embeddings
    out = tmp_path / "b"
    args = ["benchmark", "--data", "synthetic:120", "--out", str(out), "--methods",
            "random,all", "--backends", "tiger", "--budget", "24", "--seeds", "1",
            "--eval-users", "30", "--quiet",
            "--set", "tiger.epochs=2", "--set", "tiger.rqvae_epochs=3",
            "--set", "tiger.codebook_size=8", "--set", "tiger.d_model=32",
            "--set", "tiger.num_layers=1", "--set", "tiger.num_decoder_layers=1",
            "--set", "tiger.d_ff=64", "--set", "tiger.num_heads=2", "--set", "tiger.d_kv=16",
            "--set", "tiger.beams=20"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    cells = pd.read_csv(out / "cells.csv")
    assert set(cells["method"]) == {"most-popular", "random", "all"}
    assert (cells[cells["backend"] == "tiger"]["epochs"] >= 1).all()
    assert "| random |" in r.output
    r = CliRunner().invoke(app, args[:-2] + ["--set", "tiger=1"])
    assert r.exit_code == 2 and "NAME.KEY=VALUE" in r.output


def test_shards_cover_the_grid_and_the_final_run_reuses_them(ds, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, methods=("random", "el2n"), seeds=2)
    assert run_benchmark(cfg, dataset=ds, progress=False, selections_only=True) is None
    assert len(list(tmp_path.glob("cells/b16/*/s*/select/done.json"))) == 4
    assert not list(tmp_path.glob("cells/b16/*/s*/pop/eval/metrics.json"))
    for i in range(2):
        assert run_benchmark(cfg, dataset=ds, progress=False, shard=(i, 2)) is None
    assert len(list(tmp_path.glob("cells/b16/*/s*/pop/eval/metrics.json"))) == 4
    calls = []
    monkeypatch.setattr(grid, "run_select", lambda *a, **k: calls.append(1))
    res = run_benchmark(cfg, dataset=ds, progress=False)
    assert calls == [] and len(res.cells) == 5
    with pytest.raises(ConfigError, match="shard"):
        run_benchmark(cfg, dataset=ds, progress=False, shard=(2, 2))


def test_finished_cells_need_no_model_and_a_changed_option_recomputes(ds, tmp_path, monkeypatch):
    """What a grid continued on another machine sees: the small result files of finished cells
    (cell.json, eval/, select/done.json) but none of the fine-tuned models."""
    import shutil

    cfg = _cfg(tmp_path, methods=("random", "el2n"))
    first = run_benchmark(cfg, dataset=ds, progress=False)
    records = list(tmp_path.glob("cells/b16/*/s*/pop/cell.json"))
    assert len(records) == 4
    for d in tmp_path.glob("cells/b16/*/s*/pop/finetune"):
        shutil.rmtree(d)
    real_eval = grid.run_evaluate

    def evaluate(ecfg, **kw):  # the most-popular cell is re-evaluated (cheap), no grid cell is
        if "cells/b16" in ecfg.out:
            pytest.fail("re-evaluated")
        return real_eval(ecfg, **kw)

    monkeypatch.setattr(grid, "run_finetune", lambda *a, **k: pytest.fail("re-fitted"))
    monkeypatch.setattr(grid, "run_evaluate", evaluate)
    again = run_benchmark(cfg, dataset=ds, progress=False)
    cols = ["method", "seed", "ndcg@20", "recall@20", "finetune_s", "epochs"]
    pd.testing.assert_frame_equal(first.cells[cols], again.cells[cols])
    # a record of another configuration is not trusted: the cell is recomputed
    rec = json.loads(records[0].read_text())
    records[0].write_text(json.dumps({**rec, "key": "0" * 16}))
    with pytest.raises(pytest.fail.Exception, match="re-fitted"):
        run_benchmark(cfg, dataset=ds, progress=False)



def test_shared_cache_and_validation_period_for_tuning(ds, tmp_path):
    """Hyper-parameter runs (one directory per setting) evaluate on the validation period and
    reuse the scores already cached by another run instead of recomputing them."""
    cache = tmp_path / "cache"
    first = run_benchmark(_cfg(tmp_path / "a", methods=("el2n",), seeds=1, cache_dir=str(cache),
                               period="valid"), dataset=ds, progress=False)
    assert (cache / "scores" / "el2n.npy").exists()
    assert not (tmp_path / "a" / "cache").exists()
    # evaluated on validation users: their ground truth is the valid period's next item
    ev = json.loads((tmp_path / "a" / "cells" / "b16" / "el2n" / "s0" / "pop" / "eval"
                     / "config.json").read_text())
    assert ev["period"] == "valid"
    assert "50 valid users" in (tmp_path / "a" / "report.md").read_text()
    # a second directory with another selector option: the cached scores are reused
    mtimes = {p: p.stat().st_mtime_ns for p in cache.rglob("*") if p.is_file()}
    second = run_benchmark(_cfg(tmp_path / "b", methods=("el2n",), seeds=1, cache_dir=str(cache),
                                period="valid"), dataset=ds, progress=False)
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes  # surrogate, scores untouched
    assert not (tmp_path / "b" / "cache").exists()
    assert second.cells["ndcg@20"].tolist() == first.cells["ndcg@20"].tolist()
    with pytest.raises(ConfigError, match="period"):
        _cfg(tmp_path / "c", period="train").validate()


def test_coverage_counts_next_item_positions(ds):
    rows = np.arange(0, 60, 3)
    picked = {"a": rows[:5], "b": rows[5:]}
    cov = bm.coverage_stats(ds, rows, picked).set_index("selection")
    lens = ds.train.lengths
    for name, r in [("pool (full data)", rows), *picked.items()]:
        # one training example per next-item position: n - 1 per user of n training items
        assert cov.loc[name, "next_item_positions"] == sum(max(int(lens[i]) - 1, 0) for i in r)
        assert cov.loc[name, "users"] == len(r)
        active = [i for i in r if len(ds.valid[int(i)]) > 0]
        assert cov.loc[name, "active_in_valid"] == pytest.approx(len(active) / len(r))
    assert 0 < cov.loc["pool (full data)", "active_in_valid"] < 1  # the check can tell
    assert cov.loc["a", "next_item_positions"] + cov.loc["b", "next_item_positions"] == \
        cov.loc["pool (full data)", "next_item_positions"]


def test_finished_only_tabulates_what_is_done_and_computes_nothing(ds, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, methods=("random", "el2n"))
    with pytest.raises(RecpruneError, match="no finished cell"):
        run_benchmark(cfg, dataset=ds, progress=False, finished_only=True)
    run_benchmark(cfg, dataset=ds, progress=False)
    # one cell of the grid lost its record: as if it were still running elsewhere
    (tmp_path / "cells/b16/el2n/s1/pop/cell.json").unlink()
    calls = []
    for name in ("run_select", "run_finetune"):
        monkeypatch.setattr(grid, name, lambda *a, **k: calls.append(1) / 0)
    # a third seed of every method: selected nowhere yet
    res = run_benchmark(_cfg(tmp_path, methods=("random", "el2n"), seeds=3), dataset=ds,
                        progress=False, finished_only=True)
    assert calls == []
    got = sorted(map(tuple, res.cells[["method", "seed"]].to_numpy().tolist()))
    assert got == [("el2n", 0), ("most-popular", 0), ("random", 0), ("random", 1)]
    assert res.table.set_index("method").loc["el2n", "seeds"] == 1
    md = (tmp_path / "table.md").read_text()
    assert "| el2n (1/3 seeds) |" in md and "| random (2/3 seeds) |" in md
    report = (tmp_path / "report.md").read_text()
    assert "3 cell(s) of the grid are not finished" in report
    for c in ("b16/el2n/s1/pop", "b16/el2n/s2/pop", "b16/random/s2/pop"):
        assert f"`cells/{c}`" in report
    with pytest.raises(ConfigError, match="cannot be combined"):
        run_benchmark(cfg, dataset=ds, progress=False, finished_only=True, shard=(0, 2))


def test_a_cell_locked_by_another_process_is_skipped_then_collected(ds, tmp_path, monkeypatch):
    from recprune.store import DirLock

    cfg = _cfg(tmp_path, methods=("random", "el2n"), seeds=2)
    busy_cell = DirLock(tmp_path / "cells/b16/random/s1/pop")  # "another process" fine-tunes it
    busy_sel = DirLock(tmp_path / "cells/b16/el2n/s0/select")  # and makes this selection
    assert busy_cell.acquire() and busy_sel.acquire()
    res = run_benchmark(cfg, dataset=ds, progress=False)
    assert not (tmp_path / "cells/b16/random/s1/pop/cell.json").exists()
    assert not (tmp_path / "cells/b16/el2n/s0/select/done.json").exists()
    done = {(r.method, r.seed) for r in res.cells.itertuples() if r.method != "most-popular"}
    assert done == {("random", 0), ("el2n", 1)}
    report = (tmp_path / "report.md").read_text()
    assert "2 cell(s) of the grid are not finished" in report
    assert "b16/random/s1/pop" in report and "b16/el2n/s0/pop" in report
    # the other process's cell finishes while this one runs: it is collected at the end
    original = grid._backend_cell

    def other_process_finishes_it(cfg_, ds_, out, cell, backend, *a, compute=True, **kw):
        if compute and (cell.method, cell.seed) == ("random", 1):
            original(cfg_, ds_, out, cell, backend, *a, compute=True, **kw)
            return grid.BUSY
        return original(cfg_, ds_, out, cell, backend, *a, compute=compute, **kw)

    busy_cell.release()
    busy_sel.release()
    monkeypatch.setattr(grid, "_backend_cell", other_process_finishes_it)
    res = run_benchmark(cfg, dataset=ds, progress=False)
    done = {(r.method, r.seed) for r in res.cells.itertuples() if r.method != "most-popular"}
    assert done == {("random", 0), ("random", 1), ("el2n", 0), ("el2n", 1)}
    assert "not finished" not in (tmp_path / "report.md").read_text()


def test_interrupted_cells_resume_before_new_ones(ds, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, methods=("random", "el2n"), seeds=2)
    ckpt = tmp_path / "cells/b16/el2n/s1/pop/finetune/checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / "fit.pt").write_bytes(b"")  # an earlier process stopped in this cell's fine-tune
    order = []
    original = grid._backend_cell

    def record(cfg_, ds_, out, cell, backend, *a, **kw):
        order.append((cell.method, cell.seed))
        return original(cfg_, ds_, out, cell, backend, *a, **kw)

    monkeypatch.setattr(grid, "_backend_cell", record)
    run_benchmark(cfg, dataset=ds, progress=False)
    assert order == [("el2n", 1), ("random", 0), ("random", 1), ("el2n", 0)]
    order.clear()
    run_benchmark(cfg, dataset=ds, progress=False)  # all finished: the grid's own order again
    assert order == [("random", 0), ("random", 1), ("el2n", 0), ("el2n", 1)]


def test_pool_scores_merges_the_scores_and_leaves_out_selector_labels(tmp_path):
    def write(method, df):
        d = tmp_path / f"cells/b8/{method}/s0/select"
        d.mkdir(parents=True)
        df.to_csv(d / "scores.csv", index=False)

    rows = np.arange(5)
    write("ccs", pd.DataFrame({"user_id": rows + 100, "row": rows, "n_train": rows + 1,
                               "el2n": rows / 10, "stratum": [0, 0, 1, 1, -1],
                               "selected": [True, False] * 2 + [True]}))
    write("goracs", pd.DataFrame({"user_id": rows + 100, "row": rows, "n_train": rows + 1,
                                  "effort": rows * 2.0, "goracs_greedy": [1, 0, 0, 1, 0],
                                  "n_valid": rows * 1.0,
                                  "selected": [False] * 5}))
    got = pool_scores(tmp_path, 8, ("ccs", "goracs", "random"))
    assert list(got.columns) == ["row", "el2n", "effort"]
    np.testing.assert_allclose(got["effort"], rows * 2.0)
    assert pool_scores(tmp_path, 8, ("ccs",), exclude=("el2n",)).columns.tolist() == ["row"]
