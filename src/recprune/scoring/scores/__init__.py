"""The built-in scores, one file per family; each module registers its scores on import."""
