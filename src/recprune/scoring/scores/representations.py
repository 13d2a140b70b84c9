"""Per-sample representations for the clustering and transport selectors: the surrogate's user
state, sentence embeddings of the training samples, the LLM-side representation, and GORACS's
validation prompts."""

from __future__ import annotations

import numpy as np

from recprune.scoring.context import ScoringContext
from recprune.scoring.registry import register_score
from recprune.store import rows_key, save_npy


def _sur_emb_key(ctx: ScoringContext) -> dict:
    return {"surrogate": ctx.surrogate_key, "data": ctx.data_key(), "rows": rows_key(ctx.rows)}


@register_score("sur_emb", "feature", key=_sur_emb_key, order=70)
def sur_emb(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """Trained surrogate's user representation (last-position hidden state)."""
    from recprune.scoring.representations import surrogate_user_embeddings

    return surrogate_user_embeddings(ctx.surrogate.model, ctx.ds, ctx.rows), {}


def _text_key(ctx: ScoringContext) -> dict:
    e = ctx.cfg.embed
    return {"encoder": e.encoder, "max_length": e.max_length,
            "truncation_side": e.truncation_side, "cutoff": ctx.cutoff, "llm": ctx.cfg.llm,
            "data": ctx.data_key(), "rows": rows_key(ctx.rows)}


@register_score("text_emb", "feature", key=_text_key, order=80)
def text_emb(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """Sentence embedding of every pool row's training sample (full Alpaca text)."""
    from recprune.scoring.representations import record_text

    texts = [record_text(r) for r in ctx.train_records]
    return ctx.embed_texts(texts), {"n_texts": len(texts)}


def _llm_key(ctx: ScoringContext) -> dict:
    if ctx.cfg.embed.llm_source == "encoder":
        return {"source": "encoder", **_text_key(ctx)}
    return {"source": "llm", "cutoff": ctx.cutoff, "llm": ctx.cfg.llm, "data": ctx.data_key(),
            "rows": rows_key(ctx.rows)}


@register_score("llm_emb", "feature", key=_llm_key, order=90)
def llm_emb(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """LLM-side user representation (sentence encoder, or the LLM's last prompt-token state)."""
    e = ctx.cfg.embed
    if e.llm_source == "encoder":
        return ctx.value("text_emb"), {"source": "encoder (= text_emb)"}
    from recprune.scoring.representations import llm_prompt_embeddings, prompt_text

    model, tok = ctx.llm
    texts = [prompt_text(r) for r in ctx.train_records]
    return llm_prompt_embeddings(model, tok, texts, max_batch_tokens=e.llm_batch_tokens,
                                 progress=ctx.show), {"source": "llm"}


def _val_key(ctx: ScoringContext) -> dict:
    e = ctx.cfg.embed
    return {"encoder": e.encoder, "max_length": e.max_length,
            "truncation_side": e.truncation_side, "val_size": e.val_size, "seed": ctx.cfg.seed,
            "cutoff": ctx.cutoff, "llm": ctx.cfg.llm, "data": ctx.data_key()}


@register_score("val_emb", "aux", key=_val_key, order=100)
def val_emb(ctx: ScoringContext) -> tuple[np.ndarray, dict]:
    """Sentence embeddings of GORACS's validation prompts (the latest validation interactions)."""
    from recprune.scoring.representations import record_text, validation_pairs, validation_records

    pairs = validation_pairs(ctx.ds, ctx.cfg.embed.val_size, ctx.cfg.seed)
    save_npy(ctx.run / "scores" / "val_pairs.npy", pairs)
    tok = ctx.tokenizer if ctx.cutoff is not None else None
    recs = validation_records(ctx.ds, pairs, tokenizer=tok, cutoff_len=ctx.cutoff)
    return ctx.embed_texts([record_text(r) for r in recs]), {
        "n_prompts": len(recs), "n_users": int(len(np.unique(pairs[:, 0]))),
        "pairs_file": "val_pairs.npy (user row, index into the user's validation items)"}
