"""Data layer: the in-memory dataset, loaders and the synthetic generator."""

from recprune.data.dataset import InteractionDataset, Sequences
from recprune.data.dealrec_format import clean_title, load_dealrec_dir

__all__ = ["InteractionDataset", "Sequences", "clean_title", "load_dealrec_dir"]
