"""tune-gen: the delta for generation. Every candidate setting is run on dev prompts (eval_gen);
a setting is eligible when its texts stay fluent: the log-likelihood per token drops by at most
``budget`` nats from unsteered's and the share of degenerate texts rises by at most
``max_degenerate``. The pick is the eligible setting with the best mean score (highest, or lowest
with ``lower``).

Picking the best of N on dev flatters it, so the pick is checked held out as tune checks a grid
(evaluation/verdict.py): dev is split into its even and odd prompts, the pick is made on each half
and scored on the other, and the held-out scores are compared with unsteered on the same prompts
(paired bootstrap). ``test`` prompts, when given, score the pick made on the whole of dev.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.data.prompts import GenPrompt
from sadi_cpp.errors import BadInputError
from sadi_cpp.evaluation.stats import mean_interval
from sadi_cpp.generation.eval_gen import EvalGen, per_prompt, eval_gen
from sadi_cpp.generation.fluency import degenerate
from sadi_cpp.generation.generate import Sampling, Setting
from sadi_cpp.generation.scorers import Scorer

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

BUDGET = 0.5  # default: the most log-likelihood per token (nats) a pick may lose against unsteered
MAX_DEGENERATE = 0.1  # default: the most the share of degenerate texts may rise


@dataclass
class Pick:
    index: int  # into the candidates; -1: none is eligible and better than unsteered
    eligible: List[bool]


def choose(result: EvalGen, prompts: np.ndarray, budget: float, max_degenerate: float, lower: bool) -> Pick:
    """The pick on the prompts ``prompts`` (indices) of a dev run: the best eligible candidate, if it
    beats unsteered there."""
    per = [per_prompt(result.scores[c])[prompts] for c in range(len(result.settings))]
    flu = [per_prompt(result.fluency[c])[prompts] for c in range(len(result.settings))]
    bad = [np.mean([any(degenerate(result.generations[(c, int(i), s)].text)) for i in prompts for s in range(result.samples)])
           for c in range(len(result.settings))]
    eligible = []
    for c in range(1, len(result.settings)):
        drop = np.nanmean(flu[0] - flu[c]) if np.isfinite(flu[c]).any() else np.inf
        eligible.append(bool(drop <= budget and bad[c] - bad[0] <= max_degenerate))
    sign = -1.0 if lower else 1.0
    best, best_value = -1, sign * float(np.mean(per[0]))
    for c in range(1, len(result.settings)):
        value = sign * float(np.mean(per[c]))
        if eligible[c - 1] and value > best_value:
            best, best_value = c - 1, value
    return Pick(best, eligible)


@dataclass
class TuneGen:
    dev: EvalGen
    pick: Pick  # on the whole of dev
    held_out: Dict[str, Any]  # the cross-fitted check: picks per half, difference to unsteered and its interval
    improves: bool  # the held-out difference's interval lies on the wanted side of 0
    test: Optional[EvalGen] = None

    def as_dict(self) -> Dict[str, Any]:
        chosen = None if self.pick.index < 0 else self.dev.settings[1 + self.pick.index]
        return {"dev": self.dev.as_dict(), "eligible": self.pick.eligible,
                "chosen": None if chosen is None else {"name": chosen.name, "strength": chosen.strength},
                "held_out": self.held_out, "improves": self.improves,
                "test": None if self.test is None else self.test.as_dict()}


def _held_out(result: EvalGen, budget: float, max_degenerate: float, lower: bool) -> Tuple[Dict[str, Any], bool]:
    n = result.n_prompts
    halves = [np.arange(0, n, 2), np.arange(1, n, 2)]
    base = per_prompt(result.scores[0])
    held = base.copy()
    picks = []
    for pick_on, score_on in (halves, halves[::-1]):
        pick = choose(result, pick_on, budget, max_degenerate, lower) if len(pick_on) and len(score_on) else Pick(-1, [])
        picks.append(pick.index)
        if pick.index >= 0:
            held[score_on] = per_prompt(result.scores[1 + pick.index])[score_on]
    diff, ci = mean_interval(held - base)
    improves = bool(ci[1] < 0) if lower else bool(ci[0] > 0)
    return {"picks": picks, "diff": diff, "diff_ci": ci}, improves


def tune_gen(hook: Hook, dev: Sequence[GenPrompt], candidates: Sequence[Setting], scorer: Scorer, sampling: Sampling,
             chat: bool = False, budget: float = BUDGET, max_degenerate: float = MAX_DEGENERATE, lower: bool = False,
             test: Optional[Sequence[GenPrompt]] = None, progress: Optional[Callable[[int], None]] = None) -> TuneGen:
    if not candidates:
        raise BadInputError("tune-gen needs at least one setting to try (--delta)", field="delta")
    if not budget >= 0 or not 0 <= max_degenerate <= 1:
        raise BadInputError("the fluency budget must be >= 0 nats per token and the degenerate share 0..1", field="budget")
    result = eval_gen(hook, dev, candidates, scorer, sampling, chat, progress)
    pick = choose(result, np.arange(len(dev)), budget, max_degenerate, lower)
    held, improves = _held_out(result, budget, max_degenerate, lower)
    tested = None
    if test is not None and pick.index >= 0:
        tested = eval_gen(hook, test, [candidates[pick.index]], scorer, sampling, chat, progress)
    return TuneGen(result, pick, held, improves, tested)


def progress_total(n_dev: int, n_test: int, n_candidates: int, samples: int) -> int:
    """Progress calls tune_gen makes at most (dev, and test with one candidate)."""
    return 2 * samples * (n_dev * (n_candidates + 1) + n_test * 2)


__all__ = ["BUDGET", "MAX_DEGENERATE", "Pick", "TuneGen", "choose", "progress_total", "tune_gen"]
