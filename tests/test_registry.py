"""Registries: built-ins are discovered, a new selector is one file, options are typed."""

from __future__ import annotations

import json
import pkgutil
import textwrap

import pytest
from typer.testing import CliRunner

import recprune.selection
from recprune.cli import app
from recprune.errors import ConfigError
from recprune.selection import SELECTORS

runner = CliRunner()

PLUGIN = '''
from recprune.config import config
from recprune.selection import Selection, Selector, check_budget, register_selector


@register_selector("every_kth")
@config
class EveryKth(Selector):
    """Every k-th candidate, starting at ``offset``.

    k: stride over the candidate pool.
    """

    k: int = 2
    offset: int = 0

    def select(self, scores, budget, *, seed=0):
        budget = check_budget(budget, len(scores))
        return Selection(rows=scores.rows[self.offset::self.k][:budget])
'''


def test_builtin_selectors_are_discovered_from_their_files():
    modules = {m.name for m in pkgutil.iter_modules(recprune.selection.__path__)}
    defined_in = {SELECTORS.entry(n).cls.__module__.rsplit(".", 1)[1] for n in SELECTORS}
    assert defined_in <= modules
    assert {"dealrec", "random", "goracs", "recent"} <= set(SELECTORS.names())


def test_a_selector_from_one_new_file_runs_through_the_cli(tmp_path, monkeypatch):
    (tmp_path / "plug").mkdir()
    (tmp_path / "plug" / "recprune_every_kth.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path / "plug"))
    out = tmp_path / "run"
    args = ["--plugin", "recprune_every_kth", "select", "--data", "synthetic:60", "--budget", "5",
            "--method", "every_kth", "-o", "k=3", "--out", str(out), "--quiet"]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    ids = [int(x) for x in (out / "selected_users.txt").read_text().split()]
    assert len(ids) == 5
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "every_kth" and cfg["method_options"] == {"k": 3}
    assert (out / "train.jsonl").exists()
    # options are checked against the selector's own config class
    bad = runner.invoke(app, args[:-5] + ["-o", "stride=3", "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "stride" in bad.output and "unknown option" in bad.output
    listed = runner.invoke(app, ["--plugin", "recprune_every_kth", "options", "selector",
                                 "every_kth"])
    assert listed.exit_code == 0 and "stride over the candidate pool" in listed.output


def test_unknown_plugin_is_one_clear_line():
    r = runner.invoke(app, ["--plugin", "no_such_module_xyz", "options"])
    assert r.exit_code == 2 and "no_such_module_xyz" in r.output


def test_registry_validates_options_with_defaults_filled_in():
    assert SELECTORS.validate("dealrec", {"lam": "0.5"}) == {
        "lam": 0.5, "n_groups": 50, "hard_prune": 0.0, "strategy": "stratified"}
    with pytest.raises(ConfigError, match="n_groups"):
        SELECTORS.validate("dealrec", {"n_groups": "many"})


def test_select_reads_a_config_file_and_dotted_overrides(tmp_path):
    conf = tmp_path / "sel.yaml"
    conf.write_text("data: synthetic:80\nbudget: 7\nmethod: random\nseed: 3\n"
                    "surrogate:\n  max_epochs: 2\n")
    out = tmp_path / "run"
    r = runner.invoke(app, ["select", "--config", str(conf), "--set", "budget=6",
                            "--set", "influence.solver=cg", "--out", str(out), "--quiet"])
    assert r.exit_code == 0, r.output
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["data"], cfg["budget"], cfg["seed"]) == ("synthetic:80", 6, 3)
    assert cfg["surrogate"]["max_epochs"] == 2 and cfg["influence"]["solver"] == "cg"
    assert len((out / "selected_users.txt").read_text().split()) == 6
    # a typed flag wins over the file; an unknown dotted key is named
    r = runner.invoke(app, ["select", "--config", str(conf), "--budget", "4", "--out",
                            str(tmp_path / "r2"), "--quiet"])
    assert r.exit_code == 0 and len((tmp_path / "r2" / "selected_users.txt").read_text()
                                    .split()) == 4
    r = runner.invoke(app, ["select", "--config", str(conf), "--set", "influence.depht=3",
                            "--out", str(tmp_path / "r3")])
    assert r.exit_code == 2 and "influence.depht" in r.output
