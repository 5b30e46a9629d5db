"""Does steering help on this data? Unsteered and steered accuracy on the same items, compared::

    hook = sadi_cpp.load()
    m = SadiMask.load("gemma-3-270m-q4_k_m.sst2-train.head.sadi.gguf")
    r = evaluate(hook, "sst2-test.jsonl", sadi(m.units(), m.delta))
    r.base_acc, r.acc, r.diff_ci, r.significant
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

from sadi_cpp.data.mcdata import MCItem, read_mc
from sadi_cpp.evaluation.interventions import BASELINE
from sadi_cpp.evaluation.stats import Paired, paired
from sadi_cpp.evaluation.verdict import AnswerBias, answer_bias
from sadi_cpp.positions import DEFAULT_POLICY
from sadi_cpp.scoring.score import score_items
from sadi_cpp.steering import Steering

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook


@dataclass
class Evaluation(Paired):
    """The paired comparison, plus how the answers spread over the choices either way."""

    base_answers: Optional[AnswerBias] = None
    answers: Optional[AnswerBias] = None
    gate_fired: Optional[int] = None  # items on which the steering's gate fired (None: no gate)


def evaluate(
    hook: Hook,
    data: Union[str, Path, Sequence[MCItem]],
    steering: Steering,
    positions: str = DEFAULT_POLICY,
    normalize: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> Evaluation:
    """Score ``data`` (a multiple-choice JSONL path or items) unsteered and under ``steering``;
    return the paired comparison (accuracies, difference, 95% bootstrap intervals, flips)."""
    items = read_mc(data) if isinstance(data, (str, Path)) else list(data)
    scores = score_items(hook, items, [BASELINE, steering], positions=positions, progress=progress)
    correct = scores.correct(normalize)
    predictions = scores.predictions(normalize)
    n_choices = scores.logprob.shape[2]
    fired = None if steering.gate is None else int(np.nansum(scores.fired[1]))
    return Evaluation(**vars(paired(correct[0], correct[1])), base_answers=answer_bias(predictions[0], n_choices),
                      answers=answer_bias(predictions[1], n_choices), gate_fired=fired)
