"""EL2N (Paul et al., NeurIPS'21): keep the samples with the largest L2 norm of the error vector
``softmax(f(x)) - onehot(y)``.

The score (``el2n``) is computed by the pipeline on the surrogate (see
:func:`recprune.scoring.difficulty.el2n_scores`): per target position the norm of the error
vector over all items, averaged over the sample's target positions; by default from the trained
surrogate (DEALRec's description), optionally early in training and averaged over seeds (the EL2N
paper's recipe; ``SelectConfig.el2n.mode = "early"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from recprune.selection.base import register_selector
from recprune.selection.grand import GraNd


@register_selector("el2n")
@dataclass
class EL2N(GraNd):
    """The ``budget`` samples with the highest EL2N score (``skip_top``: see GraNd)."""

    skip_top: float = 0.0
    score: str = "el2n"
