"""Log-likelihood scoring of multiple-choice items under several steering configurations (one decode path batched, one sequential)."""
