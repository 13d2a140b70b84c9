"""Configuration: typed option classes, their validation and where their values come from.

- :mod:`recprune.config.schema` — the :func:`config` decorator, :func:`from_dict`,
  :func:`to_dict`, :func:`fields_of` (generated CLI help).
- :mod:`recprune.config.sources` — ``--config FILE`` (YAML/TOML/JSON) and dotted ``--set``
  overrides.

The workflow configs themselves (select, finetune, evaluate, run, benchmark) live beside their
workflows in :mod:`recprune.pipeline`; each stage's options beside the stage.
"""

from recprune.config.schema import config, fields_of, format_errors, from_dict, to_dict
from recprune.config.sources import apply_overrides, load_file, merge, parse_value

__all__ = ["apply_overrides", "config", "fields_of", "format_errors", "from_dict", "load_file",
           "merge", "parse_value", "to_dict"]
