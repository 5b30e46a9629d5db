"""What a grid of dev accuracies can and cannot show.

- ``answer_bias``: how the model's answers spread over the choices. When the unsteered model gives
  the same answer to (nearly) every item, its accuracy is the share of that label, the format is
  not answered by this model, and steering cannot be judged there (it mostly moves the bias).
- ``selection_check``: picking the best of N cells on dev inflates its dev accuracy. The check
  splits dev into two halves (even and odd items), picks the best cell on each half and scores it
  on the other half (cross-fitting), so every item is scored by a cell chosen without it; the
  held-out accuracy is compared with the baseline on the same items (paired bootstrap). The
  grid's cell is an improvement only when that difference's 95% interval lies above 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Sequence

import numpy as np

from sadi_cpp.evaluation.stats import Paired, paired

CONSTANT_SHARE = 0.95  # "nearly every item": the most given answer on at least this share of the items


@dataclass
class AnswerBias:
    counts: List[int]  # items answered with each choice index
    top: int  # the most given choice
    share: float  # its share of the items
    constant: bool  # share >= CONSTANT_SHARE

    def describe(self, choices: Sequence[str]) -> str:
        name = repr(choices[self.top].strip()) if self.top < len(choices) else f"choice {self.top}"
        return f"{name} on {100 * self.share:.0f}% of the items"


def answer_bias(predictions: np.ndarray, n_choices: int) -> AnswerBias:
    counts = np.bincount(np.asarray(predictions, int), minlength=n_choices)
    top = int(np.argmax(counts))
    share = float(counts[top] / max(1, counts.sum()))
    return AnswerBias(counts.tolist(), top, share, share >= CONSTANT_SHARE)


@dataclass
class SelectionCheck:
    improves: bool  # the held-out difference's interval lies above 0
    held_out: Paired  # baseline against the cross-fitted picks, on every dev item
    picks: List[int]  # the configuration picked on the even and on the odd half (indices into the grid)
    n_cells: int

    def as_dict(self) -> Dict[str, Any]:
        return {"improves": self.improves, "held_out": self.held_out.as_dict(), "picks": self.picks, "n_cells": self.n_cells}


def selection_check(correct: np.ndarray) -> SelectionCheck:
    """``correct``: [1 + n_cells, n_items] per-item correctness, the baseline first."""
    correct = np.asarray(correct, bool)
    n_cells, n = correct.shape[0] - 1, correct.shape[1]
    halves = [np.arange(0, n, 2), np.arange(1, n, 2)]
    held = np.zeros(n, bool)
    picks = []
    for pick_on, score_on in (halves, halves[::-1]):
        if len(pick_on) == 0 or len(score_on) == 0:
            picks.append(-1)
            continue
        best = int(np.argmax(correct[1:, pick_on].mean(axis=1)))  # ties: the first cell
        picks.append(best)
        held[score_on] = correct[1 + best, score_on]
    if -1 in picks:  # one item: nothing can be held out
        held = correct[0].copy()
    result = paired(correct[0], held)
    return SelectionCheck(bool(result.diff_ci[0] > 0 and -1 not in picks), result, picks, n_cells)


def bias_dict(bias: AnswerBias) -> Dict[str, Any]:
    return asdict(bias)
