"""LLM-recommender backends (fine-tune on selected samples, rank items for evaluation).

Registered by name in :data:`BACKENDS`: ``pop`` (most-popular baseline), ``bigrec``, ``tiger``.
"""

from recprune.backends.base import (BACKENDS, FitResult, Recommender, create_backend,
                                    exclude_and_pad, history_for, load_backend)
from recprune.backends import popularity  # noqa: F401,E402  (registers "pop")
from recprune.backends import bigrec  # noqa: F401
from recprune.backends import tiger  # noqa: F401

__all__ = ["BACKENDS", "FitResult", "Recommender", "create_backend", "exclude_and_pad",
           "history_for", "load_backend"]
