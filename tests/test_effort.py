"""Effort score (DEALRec Eq. 12) with the real SmolLM2 model on a few short real Games samples.

The batched per-sample gradient norms are compared with one ``loss.backward()`` per sample
through the standard peft model (``EffortScorer.reference_scores``): on the full prompt for the
exact prefix modes ("exact", "none"), with the same constant prefix cache for "fixed".
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from recprune.errors import ConfigError, RecpruneError, ScoringError
from recprune.scoring.effort import EffortConfig, EffortScorer
from recprune.store import ChunkedArray

from conftest import GAMES_DIR as GAMES

pytestmark = [pytest.mark.llm, pytest.mark.needs_llm, pytest.mark.needs_games]

# Short real users: two of equal sample length (batched together when packed), lengths 2-4
# training items, and one user with a single training item (empty history).
ROWS = np.array([15, 73, 19, 31, 13, 3, 25])


@pytest.fixture(scope="module", autouse=True)
def _one_thread_when_busy():
    """Another CPU-heavy process on a 2-core machine makes 2-thread torch 8-10x slower."""
    before = torch.get_num_threads()
    if os.getloadavg()[0] > 1.0 and before > 1:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def games():
    from recprune.data import load_dealrec_dir

    return load_dealrec_dir(GAMES)


def make(**kw) -> EffortScorer:
    from recprune.llm.loading import load_causal_lm

    model, tok = load_causal_lm(device="cpu")
    return EffortScorer(model, tok, EffortConfig(**kw))


def rel_err(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


@pytest.mark.parametrize("kw", [
    # exact prefix sharing (default), reference implementation's choice: only the last layer's
    # LoRA, fresh (B = 0); the prefix enters the samples at layer 29
    dict(lora_layers="last"),
    # exact, three layers (prefix inserted at layer 10), random lora_B (lora_A path checked
    # too), several packed batches
    dict(lora_layers=(10, 20, 29), init_lora_b_std=0.02, max_batch_tokens=150),
    # exact with every layer scored (paper): nothing to share, the full prompt per sample
    dict(lora_layers="all", init_lora_b_std=0.02),
    # exact, right-padded batches (the CUDA layout), loss on all tokens (prefix targets too)
    dict(lora_layers=(10, 20, 29), packing=False, loss_on="all", init_lora_b_std=0.02),
    # no sharing at all
    dict(prefix="none", lora_layers=(10, 20, 29), init_lora_b_std=0.02),
    # fixed prefix (approximation), against per-sample backward with the same prefix cache
    dict(prefix="fixed", init_lora_b_std=0.02, max_batch_tokens=100),
    # fixed prefix, right-padded (transformers' own attention with the expanded cache)
    dict(prefix="fixed", packing=False, loss_on="all", lora_layers=[0, -1],
         init_lora_b_std=0.02),
], ids=["exact-last", "exact-middle", "exact-all", "exact-padded-loss-all", "none-middle",
        "fixed", "fixed-padded-loss-all"])
def test_batched_norms_equal_per_sample_backward(games, kw):
    sc = make(**kw)
    ts = sc.prepare(games, ROWS)
    got = sc.score_tokenized(ts, progress=False)
    want = sc.reference_scores(ts)
    assert got.dtype == np.float64 and got.shape == (len(ROWS),)
    assert np.all(want > 0)
    assert rel_err(got, want) < 1e-4
    if kw.get("max_batch_tokens"):
        assert len(sc.batches(ts, sc.sorted_order(ts))) > 1
    # where there is something below the lowest scored layer, the prefix is shared
    assert (len(ts.prefix_ids) > 0) == (sc.config.prefix == "fixed" or
                                        (sc.config.prefix == "exact" and sc.l0 > 0))


def test_prefix_modes_same_loss_exact_vs_fixed_gradient(games):
    rows = ROWS[:3]
    exact, fixed, none = (make(lora_layers="last", prefix=m) for m in ("exact", "fixed", "none"))
    ts = exact.prepare(games, rows)
    exact.reference_scores(ts)  # leaves no grads behind
    lora = exact._scored[0]
    assert lora.A.weight.grad is None and lora.B.weight.grad is None
    # the loss is the same in every mode (same tokens, same mean)
    l_exact = exact.sample_losses(ts)
    assert rel_err(fixed.sample_losses(ts), l_exact) < 1e-4
    assert rel_err(none.sample_losses(games, rows), l_exact) < 1e-4
    # exact sharing = no sharing; the fixed prefix drops the prefix positions' contribution
    s_exact = exact.score_tokenized(ts, progress=False)
    np.testing.assert_allclose(none.score(games, rows, progress=False), s_exact, rtol=1e-4)
    assert rel_err(fixed.score_tokenized(ts, progress=False), s_exact) > 1e-2
    # a prefix given to a "none" scorer enters at layer 0 (e.g. a tokenizer's bos token):
    # still the full-prompt gradient
    np.testing.assert_allclose(none.score_tokenized(ts, progress=False), s_exact, rtol=1e-4)
    a, b = make(lora_layers=[20], loss_on="all"), make(lora_layers=[20], prefix="fixed",
                                                       loss_on="all")
    assert rel_err(a.sample_losses(games, rows), b.sample_losses(games, rows)) < 1e-4


def test_score_api_and_disk_cache_resume(games, tmp_path):
    sc = make(lora_layers="last", chunk_size=2)
    cache = tmp_path / "effort"
    first = sc.score(games, ROWS, cache_dir=cache, progress=True)
    assert sc.last_run["chunks_computed"] == [0, 1, 2, 3]
    chunks = cache / "chunks"  # a run-store ChunkedArray
    assert sorted(p.name for p in cache.iterdir()) == ["chunks"]
    assert sorted(p.name for p in chunks.iterdir()) == sorted(
        ["chunks.manifest.json"] + [ChunkedArray.PATTERN.format(c) for c in range(4)])
    # a killed run: one chunk missing (and a stale temp file), one unreadable
    (chunks / ChunkedArray.PATTERN.format(1)).unlink()
    (chunks / ".chunk_00001.npy.x1y2.tmp").write_bytes(b"partial")
    (chunks / ChunkedArray.PATTERN.format(3)).write_bytes(b"garbage")
    again = sc.score(games, ROWS, cache_dir=cache, progress=False)
    assert sc.last_run["chunks_computed"] == [1, 3]
    assert sc.last_run["chunks_loaded"] == [0, 2]
    np.testing.assert_array_equal(again, first)
    assert not any(p.name.startswith(".") for p in chunks.iterdir())
    # nothing missing: nothing recomputed
    sc.score(games, ROWS, cache_dir=cache, progress=False)
    assert sc.last_run["chunks_computed"] == []
    # rows are kept aligned with the caller's order
    perm = ROWS[::-1].copy()
    np.testing.assert_allclose(sc.score(games, perm, progress=False), first[::-1], rtol=1e-5)
    # a different configuration or different rows: refused, not silently reused
    other = make(lora_layers="all", chunk_size=2)
    with pytest.raises(ConfigError, match="computed otherwise.*lora_layers"):
        other.score(games, ROWS, cache_dir=cache, progress=False)
    with pytest.raises(ConfigError, match="rows"):
        sc.score(games, ROWS[:5], cache_dir=cache, progress=False)


def test_nan_raises_scoring_error_naming_the_user(games):
    sc = make(lora_layers="last")
    ts = sc.prepare(games, ROWS)
    # a token that occurs in exactly one sample's specific part
    counts = {}
    for i in range(ts.n):
        for t in set(ts.sample(i)[0].tolist()):
            counts.setdefault(t, []).append(i)
    prefix = set(ts.prefix_ids.tolist())
    token, (victim,) = next((t, s) for t, s in counts.items() if len(s) == 1 and t not in prefix)
    # inject NaN into that token's input embedding (the weight is tied to the LM head, so the
    # row itself is left alone)
    def poison(mod, inp, out):
        return torch.where((inp[0] == token)[..., None], torch.nan, out)

    sc.model.get_base_model().get_input_embeddings().register_forward_hook(poison)
    with pytest.raises(ScoringError) as e:
        sc.score_tokenized(ts, user_ids=games.user_ids[ROWS], progress=False)
    msg = str(e.value)
    assert f"user id(s) {games.user_ids[ROWS[victim]]}" in msg and "1 sample" in msg


def test_bad_config_and_model():
    with pytest.raises(ConfigError):
        EffortConfig(lora_layers="first")
    with pytest.raises(ConfigError):
        EffortConfig(loss_on="prompt")
    with pytest.raises(ConfigError):
        EffortConfig(lora_layers=[])
    with pytest.raises(ConfigError, match="prefix must be"):
        EffortConfig(prefix="shared")
    # deprecated share_prefix: True = share (exact unless asked for fixed), False = none
    assert EffortConfig().prefix == "exact"
    assert EffortConfig(share_prefix=True) == EffortConfig(prefix="exact")
    assert EffortConfig(share_prefix=True, prefix="fixed").prefix == "fixed"
    assert EffortConfig(share_prefix=False) == EffortConfig(prefix="none")
    assert EffortConfig(share_prefix=False).share_prefix is None
    with pytest.raises(ConfigError, match="conflicts"):
        EffortConfig(share_prefix=False, prefix="fixed")
    with pytest.raises(ConfigError, match="conflicts"):
        EffortConfig(share_prefix=True, prefix="none")
    with pytest.raises(RecpruneError, match="does not exist"):
        EffortScorer("/no/such/model/dir")
    with pytest.raises(ConfigError, match="no layer 99"):
        make(lora_layers=[99])


def test_a_pool_takes_its_scores_from_a_finished_all_users_cache(tmp_path):
    """Effort is per sample: a candidate pool can read its users' scores from a cache that was
    computed for every user, but only a finished one made with the same configuration."""
    from recprune.data import load_dataset

    ds = load_dataset("synthetic:14")
    sc = make(lora_layers="last", chunk_size=4)
    cache = tmp_path / "all"
    full = sc.score(ds, None, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(sc.load_all_users(ds, cache), full)
    pool = np.array([11, 2, 7, 5])
    direct = make(lora_layers="last", chunk_size=4).score(ds, pool, progress=False)
    np.testing.assert_allclose(sc.load_all_users(ds, cache)[pool], direct, rtol=1e-5)
    with pytest.raises(ConfigError, match="lora_layers"):
        make(lora_layers=[1], chunk_size=4).load_all_users(ds, cache)
    # a cache of some users only is not an all-users cache
    part = tmp_path / "part"
    sc.score(ds, pool, cache_dir=part, progress=False)
    with pytest.raises(ConfigError, match="rows"):
        sc.load_all_users(ds, part)
    (cache / "chunks" / ChunkedArray.PATTERN.format(2)).unlink()
    with pytest.raises(ConfigError, match="unfinished: 1 of 4 chunks"):
        sc.load_all_users(ds, cache)
    with pytest.raises(ConfigError, match="not an effort cache"):
        sc.load_all_users(ds, tmp_path / "nothing")


def test_select_with_a_pool_reads_effort_from_an_all_users_cache(tmp_path):
    from recprune.data import load_dataset
    from recprune.pipeline import SelectConfig, run_select

    ds = load_dataset("synthetic:14")
    eff = {"lora_layers": "last", "chunk_size": 4}
    full = run_select(SelectConfig(data="synthetic:14", budget=4, out=str(tmp_path / "full"),
                                   method="dealrec_no_influence", effort=eff), dataset=ds,
                      show_progress=False)
    pooled = run_select(SelectConfig(data="synthetic:14", budget=3, out=str(tmp_path / "pool"),
                                     method="dealrec_no_influence", effort=eff, pool=8,
                                     effort_cache=str(tmp_path / "full" / "scores" / "effort")),
                        dataset=ds, show_progress=False)
    assert len(pooled.scores.rows) == 8
    np.testing.assert_array_equal(pooled.scores["effort"],
                                  full.scores["effort"][pooled.scores.rows])
    assert not (tmp_path / "pool" / "scores" / "effort").exists()  # nothing recomputed
