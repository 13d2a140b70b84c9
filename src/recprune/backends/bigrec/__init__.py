"""BIGRec backend: an instruction LLM with LoRA writes the next item's title; the text is grounded
to real items by embedding distance (Bao et al., "A Bi-Step Grounding Paradigm for Large Language
Models in Recommendation Systems", the LLM recommender DEALRec fine-tunes).

* **Fine-tuning** (:meth:`BigRec.fit`, :mod:`~recprune.backends.bigrec.training`): one Alpaca
  sample per selected user with >= 2 training items (the prompt of
  :func:`recprune.llm.prompts.build_records`: the history titles, oldest dropped to fit
  ``cutoff_len`` tokens; the response is the quoted title of the last training item + eos). A
  fresh, seeded LoRA adapter (``r``, ``alpha``, ``dropout``, ``target_modules``) is trained with
  AdamW; the validation loss after every epoch drives early stopping; ``out_dir`` makes the fit
  resumable. The shared prompt prefix is computed once per batch
  (:mod:`~recprune.backends.bigrec.loss`), with the same loss and gradients as the plain forward.
* **Ranking** (:meth:`BigRec.rank`): beam search writes a title after the user's ``period``
  prompt (:mod:`~recprune.backends.bigrec.generation`); every item is ranked by the L2
  distance of its title's base-model embedding to the generated text's, history items excluded
  (:mod:`~recprune.backends.bigrec.grounding`, which caches the item embeddings).
* **Persistence** (:meth:`BigRec.save`): the options, the fit summary and the adapter; the base
  model is reloaded from ``model``.

The other modules: :mod:`~recprune.backends.bigrec.config` (the options),
:mod:`~recprune.backends.bigrec.model` (the LLM with its adapter) and
:mod:`~recprune.backends.bigrec.lm_helpers` (LoRA attachment, key/value cache).

Defaults (why)
--------------
The reference trains LLaMA-7B with lr 1e-4, batch 128, up to 50 epochs, early stopping with
patience 5. A 1,024-sample few-shot set then makes only 8 optimizer steps per epoch and needs
tens of epochs; on a 2-core CPU an epoch of SmolLM2-135M costs many minutes, so we make more,
smaller steps instead: ``batch_size=16`` (64 steps per epoch, in micro-batches of 8),
``lr=3e-4`` (alpaca-lora's default for LoRA r=8, a small model tolerates it), ``epochs=3``
with ``patience=1`` (validation loss after every epoch; the best epoch's adapter is kept),
``warmup_steps=8``. ``max_new_tokens=64`` covers 99.9 % of the quoted Games titles (p99 52
SmolLM2 tokens).
"""

from recprune.backends.bigrec.config import BigRecConfig
from recprune.backends.bigrec.generation import clean_generation
from recprune.backends.bigrec.recommender import BigRec

__all__ = ["BigRec", "BigRecConfig", "clean_generation"]
