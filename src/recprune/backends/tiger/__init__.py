"""TIGER: generative retrieval with semantic IDs (Rajput et al., NeurIPS 2023).

Items are represented by short tuples of discrete codes, their *semantic IDs*: ``n_levels``
RQ-VAE codes of the item's title embedding plus one disambiguation token. A small T5
encoder-decoder, trained from scratch, reads a user's history as ID tokens and generates the next
item's ID token by token; the ranking is the order of a beam search restricted to valid IDs.

One idea per module:

* :mod:`~recprune.backends.tiger.config`: the options (:class:`TigerConfig`).
* :mod:`~recprune.backends.tiger.rqvae`: item embeddings -> unique semantic IDs.
* :mod:`~recprune.backends.tiger.vocab`: the ID tokens and the trie of valid IDs.
* :mod:`~recprune.backends.tiger.examples`: training / evaluation examples and batches.
* :mod:`~recprune.backends.tiger.training`: the fit loop and its resumable checkpoint.
* :mod:`~recprune.backends.tiger.beam_search`: trie-constrained beam search.
* :mod:`~recprune.backends.tiger.recommender`: the registered ``tiger`` backend, :class:`Tiger`.

The item texts and their sentence embeddings come from :mod:`recprune.llm.text_encoder`.
"""

from recprune.backends.tiger.beam_search import StepDecoder, constrained_beam_search
from recprune.backends.tiger.config import TigerConfig
from recprune.backends.tiger.recommender import Tiger
from recprune.backends.tiger.rqvae import (RQVAE, RQVAEConfig, SemanticIDs, assign_unique_ids,
                                           semantic_ids, train_rqvae)
from recprune.backends.tiger.training import CHECKPOINT
from recprune.backends.tiger.vocab import EOS, PAD, Vocab

__all__ = ["CHECKPOINT", "EOS", "PAD", "RQVAE", "RQVAEConfig", "SemanticIDs", "StepDecoder",
           "Tiger", "TigerConfig", "Vocab", "assign_unique_ids", "constrained_beam_search",
           "semantic_ids", "train_rqvae"]
