"""Data files in: contrastive pairs, multiple-choice items, and the paper's task formats."""
