"""The reference way to score: one configuration at a time through the hook's ordinary steering.
The prompt is evaluated once up to its second-to-last token, then per configuration the last
prompt token (the one the default policy steers) alone and each choice as a continuation;
``positions="all"`` re-evaluates the whole prompt for each configuration, as it must. The batched
path (sadi_cpp.scoring.batched) is checked against this one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.scoring.logprob import log_normalizer
from sadi_cpp.steering import Steering

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook


def _eval_prefix(hook: Hook, prompt: List[int]) -> None:
    hook.rewind(0)
    hook.eval(prompt[:-1])


def _score_choices(hook: Hook, prompt: List[int], conts: List[List[int]]) -> List[float]:
    """Evaluate the prompt's last token after its cached prefix, then every choice as a continuation."""
    hook.rewind(len(prompt) - 1)
    hook.eval(prompt[-1:])
    first = hook.logits(-1)
    first_norm = float(log_normalizer(first)[0])
    out = []
    for cont in conts:
        total = float(first[cont[0]]) - first_norm
        if len(cont) > 1:
            rows = hook.continuation_logits(cont[:-1])
            picked = rows[np.arange(len(cont) - 1), cont[1:]].astype(np.float64)
            total += float((picked - log_normalizer(rows)[:, 0]).sum())
        out.append(total)
    return out


def score_sequential(hook: Hook, tokens: Sequence[Tuple[List[int], List[List[int]]]], configs: Sequence[Steering],
                     positions: str, logprob: np.ndarray, progress: Optional[Callable[[int], None]],
                     fired: Optional[np.ndarray] = None) -> None:
    """Fill ``logprob[c, i, j]`` for the items' (prompt, continuations) ``tokens`` (and ``fired[c, i]``
    where configuration c has a gate)."""
    for i, (prompt, conts) in enumerate(tokens):
        # Every configuration sees the prompt split the same way: all but the last token in one
        # decode, then the last token alone. llama.cpp's logits depend on the split (docs/eval.md).
        prefix_ready = False
        for c, config in enumerate(configs):
            if positions == "all":
                with hook.steering(config, positions=positions):  # every prompt token is steered: evaluate it all
                    _eval_prefix(hook, prompt)
                    logprob[c, i, : len(conts)] = _score_choices(hook, prompt, conts)
                continue
            if not prefix_ready:  # the prefix is never steered under last / last+generated
                with hook.steering():
                    _eval_prefix(hook, prompt)
                prefix_ready = True
            with hook.steering(config, positions=positions):
                logprob[c, i, : len(conts)] = _score_choices(hook, prompt, conts)
                if fired is not None and hook.gate_result is not None:
                    fired[c, i] = float(hook.gate_result.fired)
        if progress is not None:
            progress(1)
