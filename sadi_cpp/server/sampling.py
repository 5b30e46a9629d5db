"""Choosing the next token from a row of logits, per request: penalties, top-k, top-p, min-p,
temperature (the order llama-cpp-python's sampler chain applies them), and log-probabilities.

The server samples in Python because each sequence of a shared decode carries its own settings
and random state; a request's answer then depends only on its own logits, seed and history.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, List, Sequence, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.scoring.logprob import log_softmax

__all__ = ["PENALTY_LAST_N", "SamplingParams", "check_logit_bias", "biased", "penalize", "next_token", "log_softmax", "top_logprobs"]

PENALTY_LAST_N = 64  # tokens the repeat/frequency/presence penalties look back (llama-cpp-python's default)


@dataclass(frozen=True)
class SamplingParams:
    """Defaults are llama-cpp-python's server defaults, so a client moving over sees the same
    behaviour; temperature 0 is greedy."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.05
    repeat_penalty: float = 1.1
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Tuple[Tuple[int, float], ...] = ()  # (token id, bias) added to the logits first (OpenAI's logit_bias)

    def __post_init__(self) -> None:
        checks = [
            ("temperature", self.temperature, 0.0, 100.0),
            ("top_p", self.top_p, 0.0, 1.0),
            ("min_p", self.min_p, 0.0, 1.0),
            ("repeat_penalty", self.repeat_penalty, 0.0, 100.0),
            ("frequency_penalty", self.frequency_penalty, -2.0, 2.0),
            ("presence_penalty", self.presence_penalty, -2.0, 2.0),
        ]
        for name, value, lo, hi in checks:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and lo <= value <= hi):
                raise BadInputError(f"{name} must be a number in {lo:g}..{hi:g}, got {value!r}", field=name)
        if self.repeat_penalty <= 0.0:
            raise BadInputError(f"repeat_penalty must be > 0 (1: off), got {self.repeat_penalty!r}", field="repeat_penalty")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise BadInputError(f"top_k must be an integer >= 0 (0: off), got {self.top_k!r}", field="top_k")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


def check_logit_bias(bias: Any, n_vocab: int) -> Tuple[Tuple[int, float], ...]:
    """OpenAI's logit_bias ({"token id": bias in -100..100}) as (id, bias) pairs; BadInputError
    (field ``logit_bias``) on a key that is not a token id of this model or a bias out of range."""
    out = []
    for key, value in (bias or {}).items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise BadInputError(f"logit_bias keys are token ids, got {key!r}", field="logit_bias") from None
        if not 0 <= token < n_vocab:
            raise BadInputError(f"logit_bias: token {token} is outside this model's vocabulary (0..{n_vocab - 1})", field="logit_bias")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not -100 <= value <= 100:
            raise BadInputError(f"logit_bias: the bias of token {token} must be a number in -100..100, got {value!r}", field="logit_bias")
        out.append((token, float(value)))
    return tuple(out)


def biased(logits: np.ndarray, p: SamplingParams) -> np.ndarray:
    """The logits with the request's logit_bias added (a copy when there is one)."""
    if not p.logit_bias:
        return logits
    x = logits.astype(np.float64)
    ids, values = zip(*p.logit_bias)
    x[list(ids)] += values
    return x


def penalize(logits: np.ndarray, history: Sequence[int], p: SamplingParams) -> np.ndarray:
    """The logits after the repeat penalty (positive logits divided, negative multiplied) and the
    OpenAI frequency/presence penalties over the last PENALTY_LAST_N tokens; a copy when changed."""
    if not history or (p.repeat_penalty == 1.0 and p.frequency_penalty == 0.0 and p.presence_penalty == 0.0):
        return logits
    ids, counts = np.unique(np.asarray(history[-PENALTY_LAST_N:], dtype=np.int64), return_counts=True)
    x = logits.astype(np.float64)
    v = x[ids]
    if p.repeat_penalty != 1.0:
        v = np.where(v > 0, v / p.repeat_penalty, v * p.repeat_penalty)
    x[ids] = v - counts * p.frequency_penalty - p.presence_penalty
    # a tiny penalty can push a logit past the float range: keep it the largest finite value, so
    # that the sampler's differences stay numbers (inf - inf would be NaN)
    return np.nan_to_num(x, nan=-np.inf, posinf=np.finfo(np.float64).max / 4, neginf=-np.finfo(np.float64).max / 4)


def next_token(logits: np.ndarray, history: Sequence[int], p: SamplingParams, rng: np.random.Generator) -> int:
    """Sample one token id from ``logits`` [n_vocab] (greedy when temperature is 0)."""
    x = penalize(biased(logits, p), history, p)
    if p.greedy:
        return int(np.argmax(x))
    n = x.shape[0]
    if 0 < p.top_k < n:
        idx = np.argpartition(-x, p.top_k - 1)[: p.top_k]
    else:
        idx = np.arange(n)
    idx = idx[np.argsort(-x[idx], kind="stable")]
    z = x[idx].astype(np.float64)
    probs = np.exp(z - z[0])
    probs /= probs.sum()
    keep = len(idx)
    if p.top_p < 1.0:  # the smallest prefix whose mass reaches top_p
        keep = min(keep, int(np.searchsorted(np.cumsum(probs), p.top_p)) + 1)
    if p.min_p > 0.0:
        keep = min(keep, max(1, int(np.count_nonzero(probs >= p.min_p * probs[0]))))
    # differences first, then the temperature: a tiny temperature sends them to -inf (weight 0),
    # never to inf - inf
    w = np.exp((z[:keep] - z[0]) / p.temperature)
    return int(idx[rng.choice(keep, p=w / w.sum())])


def top_logprobs(logprobs: np.ndarray, n: int) -> List[Tuple[int, float]]:
    """The n most likely (token, log-probability) pairs, most likely first."""
    if n <= 0:
        return []
    n = min(n, logprobs.shape[0])
    idx = np.argpartition(-logprobs, n - 1)[:n]
    idx = idx[np.argsort(-logprobs[idx], kind="stable")]
    return [(int(i), float(logprobs[i])) for i in idx]
