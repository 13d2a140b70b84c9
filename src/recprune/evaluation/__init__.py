"""Evaluation: full-ranking Recall@K / NDCG@K with multi-item ground truth."""

from recprune.evaluation.metrics import recall_ndcg, summarize, topk_items

__all__ = ["recall_ndcg", "summarize", "topk_items"]
