"""Scoring many configurations in few decodes: every configuration is a named configuration of the
engine, bound to its own sequences, and one llama_decode holds, for several items at once, each
item's prompt prefix (once, in all of the item's sequences), each configuration's last prompt
token and each choice's continuation.

Sequences per (item, configuration): one when every choice is a single token (the last prompt
token's logits score them all), else one per choice (the last prompt token belongs to all of
them, each choice's tokens to its own). Under ``positions="all"`` every configuration evaluates
the whole prompt in its own sequences, steered. A decode is closed when the next (item,
configuration) would pass the batch size, the context or the number of sequences.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.llama.batch import BatchRow
from sadi_cpp.scoring.logprob import log_normalizer
from sadi_cpp.steering import Steering

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook


@dataclass
class _Item:
    prompt: List[int]
    conts: List[List[int]]
    configs: List[int] = field(default_factory=list)  # the configurations in the decode being planned

    def n_seqs(self) -> int:
        return 1 if all(len(c) == 1 for c in self.conts) else len(self.conts)

    def rows_per_config(self, shared_prefix: bool) -> int:
        own = 1 if shared_prefix else len(self.prompt)
        return own + sum(len(c) - 1 for c in self.conts)


def score_batched(
    hook: Hook,
    tokens: Sequence[Tuple[List[int], List[List[int]]]],
    configs: Sequence[Steering],
    positions: str,
    logprob: np.ndarray,
    progress: Optional[Callable[[int], None]] = None,
    fired: Optional[np.ndarray] = None,
) -> None:
    """Fill ``logprob[c, i, j]`` for the items' (prompt, continuations) ``tokens`` (and ``fired[c, i]``
    for configurations with a gate: whether it fired on item i)."""
    shared = positions != "all"
    steer_conts = positions != "last"  # choices count as generated tokens
    names: List[Optional[str]] = []
    try:
        for c, cfg in enumerate(configs):
            if cfg.mask or cfg.add:
                names.append(hook.configure(f"_score_{c}", cfg))
            else:
                names.append(None)  # the baseline (or an empty configuration): unbound, unsteered
        budget_rows = hook.n_batch
        budget_cells = hook.n_ctx
        plan: Dict[int, _Item] = {}
        used_rows = used_seqs = 0
        left = [len(configs)] * len(tokens)

        def flush() -> None:
            nonlocal used_rows, used_seqs
            if plan:
                _decode(hook, plan, names, shared, steer_conts, logprob, fired)
                for i, item in plan.items():
                    left[i] -= len(item.configs)
                    if left[i] == 0 and progress is not None:
                        progress(1)
            plan.clear()
            used_rows = used_seqs = 0

        for i, (prompt, conts) in enumerate(tokens):
            item = _Item(prompt, conts)
            prefix = len(prompt) - 1 if shared else 0
            per_config = item.rows_per_config(shared)
            if prefix + per_config > min(budget_rows, budget_cells) or item.n_seqs() > hook.n_seq_max:
                raise BadInputError(f"item {i + 1}: {prefix + per_config} tokens do not fit one decode of "
                                    f"{min(budget_rows, budget_cells)}; use a longer context and batch, or shorten the item",
                                    field="n_ctx")
            for c in range(len(configs)):
                extra = per_config + (prefix if i not in plan else 0)
                if used_rows + extra > min(budget_rows, budget_cells) or used_seqs + item.n_seqs() > hook.n_seq_max:
                    flush()
                    extra = per_config + prefix
                plan.setdefault(i, _Item(prompt, conts)).configs.append(c)
                used_rows += extra
                used_seqs += item.n_seqs()
        flush()
    finally:
        for name in names:
            if name is not None:
                hook.remove_config(name)
        hook.kv_clear()


def _decode(hook: Hook, plan: Dict[int, _Item], names: List[Optional[str]], shared: bool, steer_conts: bool,
            logprob: np.ndarray, fired: Optional[np.ndarray] = None) -> None:
    """One decode of the planned (item, configuration) pairs; scatter their log-probabilities."""
    rows: List[BatchRow] = []
    outputs: List[int] = []
    # what each output row scores: (config, item, choice, token index within the choice)
    scored: List[List[Tuple[int, int, int, int]]] = []
    next_seq = 0
    seqs_first: Dict[Tuple[int, int], int] = {}
    for i, item in plan.items():
        prompt, conts = item.prompt, item.conts
        L = len(prompt)
        seqs_of: Dict[int, Tuple[int, ...]] = {}
        for c in item.configs:
            seqs_of[c] = tuple(range(next_seq, next_seq + item.n_seqs()))
            seqs_first[(i, c)] = next_seq
            next_seq += item.n_seqs()
            for s in seqs_of[c]:
                hook.bind(s, names[c])
        if shared and L > 1:  # the prefix once, in every sequence of the item
            every = tuple(s for c in item.configs for s in seqs_of[c])
            rows += [BatchRow(t, p, every) for p, t in enumerate(prompt[:-1])]
        for c in item.configs:
            seqs = seqs_of[c]
            if not shared:
                rows += [BatchRow(t, p, seqs, True) for p, t in enumerate(prompt[:-1])]
            rows.append(BatchRow(prompt[-1], L - 1, seqs, True))
            outputs.append(len(rows) - 1)
            scored.append([(c, i, j, 0) for j in range(len(conts))])
            for j, cont in enumerate(conts):
                seq = seqs[j] if len(seqs) > 1 else seqs[0]
                for k, t in enumerate(cont[:-1]):
                    rows.append(BatchRow(t, L + k, (seq,), steer_conts))
                    outputs.append(len(rows) - 1)
                    scored.append([(c, i, j, k + 1)])
    hook.kv_clear()
    logits = hook.decode(rows, outputs)
    if fired is not None:
        for i, item in plan.items():
            for c in item.configs:
                decision = hook.gate(seqs_first[(i, c)])
                if decision is not None:
                    fired[c, i] = float(decision.fired)
    norms = log_normalizer(logits)[:, 0]
    for r, targets in enumerate(scored):
        for c, i, j, k in targets:
            token = plan[i].conts[j][k]
            value = float(logits[r, token]) - float(norms[r])
            logprob[c, i, j] = value if k == 0 else logprob[c, i, j] + value
    for s in range(next_seq):
        hook.bind(s, None)
