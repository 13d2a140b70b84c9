"""The LLM side: loading a causal LM (default SmolLM2-135M-Instruct) and the BIGRec prompt."""

from recprune.llm.loading import (default_cache_root, load_causal_lm, load_tokenizer,
                                  resolve_device, smollm2_gguf_path)
from recprune.llm.prompts import (BOOK_TEMPLATE, GAMES_TEMPLATE, MICROLENS_TEMPLATE, TEMPLATES,
                                  PromptTemplate, TokenizedSamples, build_records, format_prompt,
                                  template_for, tokenize_records)

__all__ = [
    "BOOK_TEMPLATE", "GAMES_TEMPLATE", "MICROLENS_TEMPLATE", "TEMPLATES", "PromptTemplate",
    "TokenizedSamples", "build_records", "default_cache_root", "format_prompt", "load_causal_lm",
    "load_tokenizer", "resolve_device", "smollm2_gguf_path", "template_for", "tokenize_records",
]
