"""recprune: pick the few training samples an LLM recommender should be fine-tuned on.

Stages (one sub-package each): ``data`` -> ``surrogate`` -> ``scoring`` -> ``selection`` ->
``llm`` -> ``evaluation``; ``pipeline`` chains them and ``cli`` is a thin layer over ``pipeline``.
"""

from recprune.errors import ConfigError, DataError, RecpruneError, ScoringError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "RecpruneError", "ScoringError", "__version__"]
