"""Log-likelihood scoring of multiple-choice items under several steering configurations.

Each choice is scored as the summed log-probability of its tokens after the prompt. By default
(sadi_cpp.scoring.batched) every configuration is an engine configuration bound to its own
sequences, and one decode holds several items' prompts (once each), every configuration's last
prompt token and every choice's continuation. The reference way (``batched=False``): the prompt
evaluated once up to its second-to-last token, then per configuration the last prompt token (the
one the default policy steers) alone and each choice as a continuation, one configuration at a
time (``positions="all"`` re-evaluates the whole prompt for each configuration, as it must)::

    hook = sadi_cpp.load()
    scores = score_items(hook, read_mc("sst2-dev.jsonl"), [BASELINE, sadi(mask.units(), 9.0)])
    scores.correct().mean(axis=1)            # accuracy of each configuration
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.data.mcdata import MCItem
from sadi_cpp.errors import BadInputError
from sadi_cpp.positions import DEFAULT_POLICY, check_gated, check_policy
from sadi_cpp.scoring.batched import score_batched
from sadi_cpp.scoring.sequential import score_sequential
from sadi_cpp.steering import Steering

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook


@dataclass
class Scores:
    """logprob[c, i, j]: summed log-probability of choice j of item i under configuration c
    (NaN past an item's last choice); n_tokens[i, j]: the choice's token count; fired[c, i]: 1 or
    0 where configuration c's gate fired or not on item i, NaN for configurations without a gate."""

    names: List[str]
    logprob: np.ndarray
    n_tokens: np.ndarray
    labels: np.ndarray
    fired: Optional[np.ndarray] = None

    def predictions(self, normalize: bool = False) -> np.ndarray:
        """[n_configs, n_items] index of the highest-scoring choice (``normalize``: per token)."""
        lp = self.logprob / self.n_tokens[None] if normalize else self.logprob
        return np.nanargmax(np.where(np.isnan(lp), -np.inf, lp), axis=2)

    def correct(self, normalize: bool = False) -> np.ndarray:
        return self.predictions(normalize) == self.labels[None]


def _tokens(hook: Hook, item: MCItem) -> Tuple[List[int], List[List[int]]]:
    prompt = hook.tokenize(item.prompt)
    conts = []
    for choice in item.choices:
        full = hook.tokenize(item.prompt + choice)
        # the choice's own tokens when the joint tokenization keeps the prompt's, else tokenized apart
        cont = full[len(prompt):] if full[: len(prompt)] == prompt else hook.tokenize(choice, add_bos=False)
        if not cont:
            raise BadInputError(f"{item.where}: choice {choice!r} has no tokens")
        conts.append(cont)
    n_ctx = hook.n_ctx
    longest = len(prompt) + max(len(c) for c in conts)
    if longest > n_ctx:
        raise BadInputError(f"{item.where}: {longest} tokens, longer than the context ({n_ctx} tokens); "
                            "use a longer context or shorten the item", field="n_ctx")
    return prompt, conts


def score_items(
    hook: Hook,
    items: Sequence[MCItem],
    configs: Sequence[Steering],
    positions: str = DEFAULT_POLICY,
    progress: Optional[Callable[[int], None]] = None,
    batched: bool = True,
) -> Scores:
    """Score every choice of every item under every configuration.

    ``batched=True`` (default): many configurations and items per decode (sadi_cpp.scoring.batched).
    ``batched=False``: one configuration at a time through the hook's ordinary steering (the
    module docstring's way; kept as the reference the batched path is checked against). The two
    differ only by rounding: llama.cpp's results depend a little on how rows are grouped into
    decodes (docs/eval.md)."""
    check_gated(check_policy(positions), any(cfg.gate is not None for cfg in configs))
    if not items:
        raise BadInputError("no items to score")
    n_choices = max(len(it.choices) for it in items)
    logprob = np.full((len(configs), len(items), n_choices), np.nan)
    fired = np.full((len(configs), len(items)), np.nan)
    n_tokens = np.ones((len(items), n_choices))
    tokens = [_tokens(hook, item) for item in items]  # every item checked before any decode
    for i, (_, conts) in enumerate(tokens):
        for j, c in enumerate(conts):
            n_tokens[i, j] = len(c)
    # A gate decides at the last prompt token; under last+generated the choices' rows, in the
    # same decode in the batched path, would need its decision before it exists: score those
    # one configuration at a time, where the prompt's last token is decoded first.
    if batched and not (positions != "last" and any(cfg.gate is not None for cfg in configs)):
        score_batched(hook, tokens, configs, positions, logprob, progress, fired)
    else:
        score_sequential(hook, tokens, configs, positions, logprob, progress, fired)
    return Scores([cfg.name for cfg in configs], logprob, n_tokens, np.array([it.label for it in items]), fired)
