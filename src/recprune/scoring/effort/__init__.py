"""DEALRec effort score (paper Eq. 12): the L2 norm of the gradient of a sample's LLM loss w.r.t.
the LoRA parameters.

    effort(s) = || grad_phi L_LLM(s) ||_2

``phi`` are the parameters of a freshly initialised peft LoRA adapter (``q_proj`` and ``v_proj``,
r=8, alpha=16, dropout off, seeded), ``L_LLM(s)`` is the mean token negative log-likelihood of
sample ``s`` (the user's BIGRec prompt, see :mod:`recprune.llm.prompts`) over its response
tokens (``loss_on="response"``, default) or over all its tokens (``loss_on="all"``).

Which LoRA parameters (``lora_layers``)
---------------------------------------
``"all"`` (default): the adapters of every decoder layer, as the paper's Eq. 12 writes it (phi =
the learnable parameters of the LLM). ``"last"``: only the last decoder layer's, as the authors'
released ``effort_score.py`` does (all other LoRA parameters frozen). A list of layer indices
selects any other set. The adapter is injected into every layer in all cases (identical
initialisation), only the gradient is restricted.

While ``lora_B`` is zero (the standard fresh initialisation) the adapter does not change the
model's outputs and the ``lora_A`` gradients are exactly zero, so the score is the norm of the
``lora_B`` gradients. ``init_lora_b_std > 0`` draws ``lora_B`` at random instead (for tests, or
to score against a non-trivial adapter).

How it is computed
------------------
* Per-sample gradient norms in batches, without a backward pass per sample
  (:mod:`~recprune.scoring.effort.norms`): forward hooks keep every scored LoRA layer's input
  ``x`` and ``u = A x``; one ``autograd.grad`` call gives the gradient ``g`` of the batch loss
  (the sum of the per-sample mean losses, so every sample keeps its own normalisation) w.r.t.
  every scored ``lora_B`` output; then per sample ``grad_B = g^T u`` and
  ``grad_A = (g B)^T x``, summed over layers as squared norms. Samples in a batch do not
  interact, so the result equals one backward per sample
  (:mod:`~recprune.scoring.effort.reference`; the tests check it to < 1e-4 relative error).
* Fewer tokens (:mod:`~recprune.scoring.effort.layout`): samples are sorted by length and
  batched under a token budget. On CPU a batch is packed into one row with no padding at all
  (each sample attends only to the prefix and its own tokens: a per-sample attention kernel,
  :mod:`~recprune.scoring.effort.attention`, batched over runs of equal length); on CUDA
  samples are right-padded to a rectangle (causal masking means the padding, which carries no
  loss, contributes exactly nothing). The LM head is applied only at the positions whose
  logits the loss needs; nothing below the lowest scored LoRA layer is recorded for backward.
* Shared prompt prefix (``prefix``, :mod:`~recprune.scoring.effort.prefix`): every prompt
  starts with the same text (Alpaca header, instruction and the fixed lead-in of the input:
  about half of a typical Games sample's tokens). While the adapter is fixed the forward
  values at the prefix positions are the same for every sample, but from the lowest scored
  LoRA layer ``l0`` up they depend on the scored parameters: the LoRA branches at prefix
  positions (e.g. the value vectors of prefix tokens that later tokens attend to) are part of
  every sample's gradient, and differently for each sample. Three modes:

  - ``"exact"`` (default): only what does not depend on the scored parameters is computed
    once: the prefix through the layers below ``l0`` (their key/value cache, which the
    sample's own tokens attend to there, and the prefix's hidden state at the input of layer
    ``l0``). From layer ``l0`` up every sample runs [prefix, its own tokens], the prefix part
    taken from that cache (a forward pre-hook on layer ``l0`` prepends it,
    :mod:`~recprune.scoring.effort.hooks`; packed rows become [prefix, sample 1, prefix,
    sample 2, ...], padded rows [prefix, sample, padding]), so the prefix positions are inside
    each sample's autograd graph and covered by the per-sample gradient hooks. The scores are
    the exact full-prompt gradient norms of Eq. 12. For ``"last"`` this costs little more
    than ``"fixed"``; for ``"all"`` (``l0 = 0``) nothing can be shared and it is the
    ``"none"`` computation.
  - ``"fixed"``: the whole prefix is run once with the adapter in place and its key/value
    cache is constant context for every sample (the fastest mode). An approximation: the
    score is the gradient w.r.t. the LoRA parameters *acting on the sample-specific tokens*
    (the history titles, the response and the template text between them); the contributions
    of the LoRA branches at prefix positions are dropped (with ``"all"`` roughly 40 % of the
    gradient norm on Games samples). The loss itself is unchanged (same tokens, same
    normalisation; for ``loss_on="all"`` the prefix tokens' NLL enters as a constant).
    Spearman rank correlation with the exact scores on 32 random Games users: 0.954 / 0.952
    (``"all"`` / ``"last"``).
  - ``"none"``: no sharing, every sample runs its full prompt (exact, the same scores as
    ``"exact"``, slowest).

  ``benchmarks/bench_effort.py`` times the modes against each other. The deprecated
  ``share_prefix`` option maps ``True`` to sharing (``"exact"`` unless ``"fixed"`` is asked
  for) and ``False`` to ``"none"``.

Scores are cached on disk in chunks (:mod:`~recprune.scoring.effort.cache`), so a killed run
resumes.
"""

from recprune.scoring.effort.config import PREFIX_MODES, EffortConfig
from recprune.scoring.effort.scorer import EffortScorer, effort_scores

__all__ = ["PREFIX_MODES", "EffortConfig", "EffortScorer", "effort_scores"]
