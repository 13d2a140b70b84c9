"""Workflows over the stage APIs, each writing a resumable run directory.

* :func:`run_select` (``recprune select``): data -> surrogate -> scores -> selection.
* :func:`run_finetune` (``recprune finetune``): fine-tune a backend on a selection.
* :func:`run_evaluate` (``recprune evaluate``): full-ranking evaluation of a model (or of an
  untuned backend / the most-popular baseline).
* :func:`run_end_to_end` (``recprune run``): select -> fine-tune -> evaluate + one report.
"""

from recprune.pipeline.llm import (EvaluateConfig, FinetuneConfig, RunConfig, load_selection,
                                   run_end_to_end, run_evaluate, run_finetune)
from recprune.pipeline.select import SelectConfig, SelectResult, run_select

__all__ = ["EvaluateConfig", "FinetuneConfig", "RunConfig", "SelectConfig", "SelectResult",
           "load_selection", "run_end_to_end", "run_evaluate", "run_finetune", "run_select"]
