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
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.llama.hook import Hook
from sadi_cpp.evaluation.interventions import Intervention
from sadi_cpp.data.mcdata import MCItem
from sadi_cpp.positions import DEFAULT_POLICY, check_policy
from sadi_cpp.scoring.batched import score_batched


@dataclass
class Scores:
    """logprob[c, i, j]: summed log-probability of choice j of item i under configuration c
    (NaN past an item's last choice); n_tokens[i, j]: the choice's token count."""

    names: List[str]
    logprob: np.ndarray
    n_tokens: np.ndarray
    labels: np.ndarray

    def predictions(self, normalize: bool = False) -> np.ndarray:
        """[n_configs, n_items] index of the highest-scoring choice (``normalize``: per token)."""
        lp = self.logprob / self.n_tokens[None] if normalize else self.logprob
        return np.nanargmax(np.where(np.isnan(lp), -np.inf, lp), axis=2)

    def correct(self, normalize: bool = False) -> np.ndarray:
        return self.predictions(normalize) == self.labels[None]


def _log_normalizer(logits: np.ndarray) -> np.ndarray:
    """log sum exp over the vocabulary, per row (keepdims). Exponentials in float32, their sum in
    float64: 20x cheaper than a float64 log-softmax of the whole row, equal to it within 1e-9."""
    m = logits.max(axis=-1, keepdims=True)
    return m.astype(np.float64) + np.log(np.exp(logits - m).sum(axis=-1, keepdims=True, dtype=np.float64))


def _tokens(hook: Hook, item: MCItem):
    llm = hook.llm
    prompt = llm.tokenize(item.prompt.encode("utf-8"))
    conts = []
    for choice in item.choices:
        full = llm.tokenize((item.prompt + choice).encode("utf-8"))
        # the choice's own tokens when the joint tokenization keeps the prompt's, else tokenized apart
        cont = full[len(prompt):] if full[: len(prompt)] == prompt else llm.tokenize(choice.encode("utf-8"), add_bos=False)
        if not cont:
            raise BadInputError(f"{item.where}: choice {choice!r} has no tokens")
        conts.append(cont)
    n_ctx = hook.n_ctx
    longest = len(prompt) + max(len(c) for c in conts)
    if longest > n_ctx:
        raise BadInputError(f"{item.where}: {longest} tokens, longer than the context ({n_ctx}); raise --n-ctx or shorten the item")
    return prompt, conts


def _eval_prefix(hook: Hook, prompt: List[int]) -> None:
    hook.rewind(0)
    hook.llm.eval(prompt[:-1])


def _score_choices(hook: Hook, prompt: List[int], conts: List[List[int]]) -> List[float]:
    """Evaluate the prompt's last token after its cached prefix, then every choice as a continuation."""
    hook.rewind(len(prompt) - 1)
    hook.llm.eval(prompt[-1:])
    first = hook.logits(-1)
    first_norm = float(_log_normalizer(first)[0])
    out = []
    for cont in conts:
        total = float(first[cont[0]]) - first_norm
        if len(cont) > 1:
            rows = hook.continuation_logits(cont[:-1])
            picked = rows[np.arange(len(cont) - 1), cont[1:]].astype(np.float64)
            total += float((picked - _log_normalizer(rows)[:, 0]).sum())
        out.append(total)
    return out


def score_items(
    hook: Hook,
    items: Sequence[MCItem],
    configs: Sequence[Intervention],
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
    check_policy(positions)
    if not items:
        raise BadInputError("no items to score")
    n_choices = max(len(it.choices) for it in items)
    logprob = np.full((len(configs), len(items), n_choices), np.nan)
    n_tokens = np.ones((len(items), n_choices))
    tokens = [_tokens(hook, item) for item in items]  # every item checked before any decode
    for i, (_, conts) in enumerate(tokens):
        for j, c in enumerate(conts):
            n_tokens[i, j] = len(c)
    if batched:
        score_batched(hook, tokens, configs, positions, logprob, _log_normalizer, progress)
    else:
        _score_sequential(hook, tokens, configs, positions, logprob, progress)
    return Scores([cfg.name for cfg in configs], logprob, n_tokens, np.array([it.label for it in items]))


def _score_sequential(hook: Hook, tokens: Sequence[Tuple[List[int], List[List[int]]]], configs: Sequence[Intervention],
                      positions: str, logprob: np.ndarray, progress: Optional[Callable[[int], None]]) -> None:
    for i, (prompt, conts) in enumerate(tokens):
        # Every configuration sees the prompt split the same way: all but the last token in one
        # decode, then the last token alone. llama.cpp's logits depend on the split (docs/eval.md).
        prefix_ready = False
        for c, config in enumerate(configs):
            if positions == "all":
                with config.steering(hook, positions):  # every prompt token is steered: evaluate it all
                    _eval_prefix(hook, prompt)
                    logprob[c, i, : len(conts)] = _score_choices(hook, prompt, conts)
                continue
            if not prefix_ready:  # the prefix is never steered under last / last+generated
                with hook.steering():
                    _eval_prefix(hook, prompt)
                prefix_ready = True
            with config.steering(hook, positions):
                logprob[c, i, : len(conts)] = _score_choices(hook, prompt, conts)
        if progress is not None:
            progress(1)
