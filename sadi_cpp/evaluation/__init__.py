"""Does steering help: the configurations compared (SADI and its baselines), eval, tune, paired statistics and verdicts."""
