"""How fluent a generated text is, measured without a second model:

- **log-likelihood per token**: the mean log-probability the *unsteered* model gives each of the
  text's tokens after its prompt (natural log). Steering that breaks the language lowers it; it is
  the same number for the same text whichever setting wrote it.
- **degenerate**: a text with no letter or digit (empty, or only punctuation), or a repetitive one:
  at least 6 words and fewer than half of its word 3-grams distinct (a loop such as "I am happy. I
  am happy. I am happy."). Repetition is likely under the model, so the log-likelihood alone would
  reward it; this share is reported beside it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.evaluation.interventions import BASELINE
from sadi_cpp.scoring.batched import score_batched

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

_WORD = re.compile(r"\w+")
MIN_WORDS = 6  # a repetition verdict needs at least this many words
MIN_DISTINCT = 0.5  # ... and is given when fewer than this share of the word 3-grams are distinct


def is_empty(text: str) -> bool:
    return not any(ch.isalnum() for ch in text)


def is_repetitive(text: str) -> bool:
    words = _WORD.findall(text.lower())
    if len(words) < MIN_WORDS:
        return False
    grams = list(zip(words, words[1:], words[2:]))
    return len(set(grams)) < MIN_DISTINCT * len(grams)


def degenerate(text: str) -> Tuple[bool, bool]:
    """(empty, repetitive); a text is degenerate when either holds."""
    return is_empty(text), is_repetitive(text)


def loglik_per_token(hook: Hook, prompts: Sequence[List[int]], texts: Sequence[List[int]],
                     progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """The unsteered model's mean log-probability per token of each ``texts[k]`` after
    ``prompts[k]`` (nan for a text without tokens). Many texts per decode (scoring.batched)."""
    values = np.full(len(texts), np.nan)
    kept = [k for k, t in enumerate(texts) if t]
    if progress is not None and len(kept) < len(texts):
        progress(len(texts) - len(kept))
    if kept:
        logprob = np.zeros((1, len(kept), 1))
        score_batched(hook, [(list(prompts[k]), [list(texts[k])]) for k in kept], [BASELINE], "last", logprob, progress)
        values[kept] = logprob[0, :, 0] / np.array([len(texts[k]) for k in kept])
    return values
