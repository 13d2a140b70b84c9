"""Evaluation: full-ranking Recall@K / NDCG@K, confidence intervals, paired comparisons."""

from recprune.evaluation.evaluate import (DEFAULT_KS, EvalResult, eval_user_rows, evaluate_backend,
                                          evaluate_rankings, mean_ci, paired_test)
from recprune.evaluation.metrics import recall_ndcg, summarize, topk_items

__all__ = ["DEFAULT_KS", "EvalResult", "eval_user_rows", "evaluate_backend", "evaluate_rankings",
           "mean_ci", "paired_test", "recall_ndcg", "summarize", "topk_items"]
