"""LLM-recommender backends (fine-tune on selected samples, rank items for evaluation).

Registered by name in :data:`BACKENDS` (``pop``: most-popular baseline, ``bigrec``, ``tiger``);
every module of this package is imported when the registry is first asked, so a new backend is
one new file here (or a plugin module, see :mod:`recprune.utils.registry`).
"""

from recprune.backends.base import (BACKENDS, FitResult, Recommender, create_backend,
                                    exclude_and_pad, history_for, load_backend)

__all__ = ["BACKENDS", "FitResult", "Recommender", "create_backend", "exclude_and_pad",
           "history_for", "load_backend"]
