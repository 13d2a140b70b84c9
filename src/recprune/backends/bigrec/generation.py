"""Generation: the LLM writes the next item's title for each user's prompt.

The prompt lists the titles of the user's history (:func:`recprune.llm.prompts.build_records`
with ``with_target=False``: the training items for ``period="valid"``, training + validation
items for ``"test"``), oldest dropped to fit ``cutoff_len``, and ends with ``### Response:\\n``.
Deterministic beam search (``num_beams``) writes a title; a beam is ended right after the
closing quote of the title (:func:`stop_after_quote_processor` forces eos then), as the
training responses end, or after ``max_new_tokens``. :func:`clean_generation` keeps the text
between the quotes.

Shared prefix (``share_prefix=True``): per batch of prompts of similar length the prompt is laid
out as ``[prefix | padding | own tokens]`` (attention mask 0 on the padding, positions from the
mask as HF does for left padding), the prefix's cache is computed once per call, the own tokens
but the last are pre-filled **once per prompt** on top of it, and only then is the cache copied
over the beams and handed to ``generate`` (which would otherwise pre-fill every prompt
``num_beams`` times). The beam search result equals plain left-padded ``generate`` (tested).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from recprune.backends.bigrec.config import BigRecConfig
from recprune.llm.kv_cache import KV, expanded_cache, make_cache
from recprune.backends.bigrec.model import LoraLM
from recprune.data.dataset import InteractionDataset
from recprune.llm.loading import cache_kv
from recprune.llm.prompts import PromptTemplate, TokenizedSamples, build_records, tokenize_records
from recprune.utils.progress import progress as progress_bar


def clean_generation(text: str) -> str:
    """The title in a generated response: the text between the first pair of double quotes (to
    the end when the closing one is missing); a response that does not start with a quote is
    cut at its first line break. Whitespace is collapsed as in the prompt's titles."""
    t = text.strip()
    if t.startswith('"'):
        end = t.find('"', 1)
        t = t[1:end] if end >= 0 else t[1:]
    else:
        t = t.split("\n", 1)[0]
    return " ".join(t.split())


def quote_counts(tokenizer, vocab_size: int) -> torch.Tensor:
    """Number of double-quote characters in every token (byte-level BPE and sentencepiece
    vocabularies both spell '"' literally)."""
    toks = tokenizer.convert_ids_to_tokens(list(range(min(len(tokenizer), vocab_size))))
    counts = np.zeros(vocab_size, dtype=np.int64)
    counts[:len(toks)] = [t.count('"') if isinstance(t, str) else 0 for t in toks]
    return torch.from_numpy(counts)


def stop_after_quote_processor(quote_counts: torch.Tensor, start: int, eos_id: int):
    """A logits processor that forces eos once a beam's generated text (its tokens from
    position ``start`` on) holds two double quotes: the closing quote of the title."""
    from transformers import LogitsProcessor

    class _StopAfterClosingQuote(LogitsProcessor):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            gen = input_ids[:, start:]
            if gen.shape[1] == 0:
                return scores
            q = quote_counts.to(gen.device)
            done = q[gen.clamp(max=len(q) - 1)].sum(1) >= 2
            if bool(done.any()):
                scores = scores.clone()
                scores[done] = -torch.inf
                scores[done, eos_id] = 0.0
            return scores

    return _StopAfterClosingQuote()


def generate_responses(lm: LoraLM, config: BigRecConfig, ds: InteractionDataset,
                       rows: np.ndarray, template: PromptTemplate, *, period: str,
                       progress: bool = True) -> list[str]:
    """The raw generated response (decoded, special tokens dropped) of each row's prompt."""
    tok = lm.tokenizer
    records = build_records(ds, rows, template, period=period, with_target=False,
                            tokenizer=tok, cutoff_len=config.cutoff_len, add_eos=False)
    ts = tokenize_records(records, tok, prefix_text=template.shared_prefix(), cutoff_len=None,
                          add_eos=False)
    lm.peft.eval()
    order = np.argsort(ts.lengths, kind="stable")
    raw = [""] * ts.n
    bs = config.eval_batch_size
    prefix_kv = (lm.prefix_kv(ts.prefix_ids) if config.share_prefix and len(ts.prefix_ids)
                 else None)
    quotes = quote_counts(tok, lm.base.config.vocab_size)
    with progress_bar(progress) as pb:
        task = pb.add_task("bigrec generate", total=ts.n, info="")
        t0 = time.perf_counter()
        for s in range(0, ts.n, bs):
            idx = order[s:s + bs]
            for i, text in zip(idx, _generate_batch(lm, config, ts, idx, prefix_kv, quotes)):
                raw[i] = text
            done = min(s + bs, ts.n)
            pb.update(task, advance=len(idx),
                      info=f"{done / (time.perf_counter() - t0):.2f} prompts/s")
    return raw


def _generation_config(tokenizer, config: BigRecConfig):
    from transformers import GenerationConfig

    return GenerationConfig(num_beams=config.num_beams, do_sample=False, num_return_sequences=1,
                            max_new_tokens=config.max_new_tokens,
                            eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id,
                            bos_token_id=tokenizer.bos_token_id)


@torch.no_grad()
def _generate_batch(lm: LoraLM, config: BigRecConfig, ts: TokenizedSamples, idx: np.ndarray,
                    prefix_kv: KV | None, quotes: torch.Tensor) -> list[str]:
    """Generated responses for prompts ``idx`` (one batch, see the module docstring)."""
    from transformers import LogitsProcessorList

    dev = lm.device
    nb = config.num_beams
    P = len(ts.prefix_ids)
    lens = ts.lengths[idx]
    B, L = len(idx), int(lens.max())
    pad = lm.tokenizer.pad_token_id
    rest = np.full((B, L), pad, dtype=np.int64)
    mrest = np.zeros((B, L), dtype=np.int64)
    for j, i in enumerate(idx):  # left padding of the sample-specific tokens
        s, e = ts.indptr[i], ts.indptr[i + 1]
        rest[j, L - (e - s):] = ts.ids[s:e]
        mrest[j, L - (e - s):] = 1
    full = np.concatenate([np.broadcast_to(ts.prefix_ids, (B, P)), rest], axis=1)
    mask = np.concatenate([np.ones((B, P), dtype=np.int64), mrest], axis=1)
    ids_t = torch.as_tensor(full, device=dev)
    mask_t = torch.as_tensor(mask, device=dev)
    procs = LogitsProcessorList([stop_after_quote_processor(
        quotes, full.shape[1], int(lm.tokenizer.eos_token_id))])
    kwargs = {}
    if prefix_kv is not None and P:
        cache = expanded_cache(prefix_kv, B, lm.base.config)
        if L > 1:  # pre-fill the own tokens but the last, once per prompt
            pos = np.where(mrest > 0, P + np.cumsum(mrest, 1) - 1, 0)
            lm.decoder(input_ids=ids_t[:, P:P + L - 1], attention_mask=mask_t[:, :P + L - 1],
                       position_ids=torch.as_tensor(pos[:, :-1], device=dev),
                       past_key_values=cache, use_cache=True)
        kv = cache_kv(cache)
        if nb > 1:
            kv = [(k.repeat_interleave(nb, 0), v.repeat_interleave(nb, 0)) for k, v in kv]
        else:
            kv = [(k.contiguous(), v.contiguous()) for k, v in kv]
        kwargs["past_key_values"] = make_cache(kv, lm.base.config)
    out = lm.base.generate(input_ids=ids_t, attention_mask=mask_t,
                           generation_config=_generation_config(lm.tokenizer, config),
                           logits_processor=procs, **kwargs)
    return lm.tokenizer.batch_decode(out[:, full.shape[1]:], skip_special_tokens=True)
