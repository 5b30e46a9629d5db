"""Which token rows are read or steered: the position policy, and the bookkeeping behind it.

SADI edits the activations of the LAST PROMPT TOKEN (the paper and its code). Generated tokens
are then left alone; they see the edit only through the KV cache. Two wider policies exist:

- ``last``            the last token of each prompt evaluation (default, the paper's);
- ``last+generated``  that token, and every token generated after it;
- ``all``             every token: all prompt tokens and every generated token.

A "prompt evaluation" is the first ``Llama.eval`` inside ``generate`` (so ``create_completion``,
``__call__`` and ``create_chat_completion``), or any direct ``Llama.eval`` call.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator, List, Optional, Tuple

from sadi_cpp.errors import BadInputError
from sadi_cpp.gate import Gate, GateResult, gate_result

POLICIES = ("last", "last+generated", "all")
DEFAULT_POLICY = "last"


def check_policy(policy: str) -> str:
    if policy not in POLICIES:
        raise BadInputError(f"unknown position policy '{policy}': use one of {', '.join(POLICIES)}", field="positions")
    return policy


def check_gated(policy: str, gated: bool) -> str:
    """A gate decides at the last prompt token, so it cannot gate rows before it: ``all`` takes no gate."""
    if gated and policy == "all":
        raise BadInputError("a gate decides at the last prompt token, so it cannot gate the prompt tokens before it: "
                            "use positions 'last' or 'last+generated' with a gate", field="positions")
    return policy


def rows_for(policy: str, generated: bool, first_pos: int, n_tokens: int, last_prompt_pos: int) -> List[int]:
    """Rows of a single-sequence batch (positions first_pos .. first_pos+n_tokens-1) that the policy selects.

    ``generated`` tells whether the batch holds generated tokens; ``last_prompt_pos`` is the position
    of the current prompt evaluation's last token.
    """
    if policy == "all" or (generated and policy == "last+generated"):
        return list(range(n_tokens))
    if generated:
        return []
    row = last_prompt_pos - first_pos
    return [row] if 0 <= row < n_tokens else []


class PositionTracker:
    """One context's position state: where the current prompt ends, whether the tokens being
    evaluated are generated ones, and from which position the KV cache holds entries computed
    under a steering configuration (those must be dropped when the configuration changes, so
    that llama-cpp-python's prefix cache never mixes configurations)."""

    def __init__(self) -> None:
        self.steer_policy = DEFAULT_POLICY
        self.record_policy: Optional[str] = None
        self.generated = False  # the batches now decoded hold generated tokens
        self.in_generate = False
        self.last_prompt_pos = -1
        self.dirty_from = math.inf  # first position whose KV entry depends on a steered row
        self.gate: Optional[Gate] = None  # the steering's gate, if it has one
        self.gate_result: Optional[GateResult] = None  # its decision for the current prompt evaluation

    def valid_prefix(self, n_cached: int) -> int:
        """How many of ``n_cached`` KV entries stay valid once the steering configuration changes."""
        return int(min(n_cached, self.dirty_from))

    def before_eval(self, n_cached: int, n_new: int) -> None:
        """A Llama.eval of ``n_new`` tokens after ``n_cached`` ones is about to run."""
        if n_cached <= self.dirty_from:
            self.dirty_from = math.inf  # eval drops the KV entries from n_cached on
        if not self.generated:
            self.last_prompt_pos = n_cached + n_new - 1
            self.gate_result = None  # a new prompt: its gate decides again

    def after_eval(self) -> None:
        if self.in_generate:
            self.generated = True  # every later eval of this generate feeds back a sampled token

    @contextlib.contextmanager
    def generating(self) -> Iterator[None]:
        """Around a Llama.generate: its first eval is the prompt, the later ones generated tokens."""
        self.in_generate, self.generated = True, False
        try:
            yield
        finally:
            self.in_generate, self.generated = False, False

    @contextlib.contextmanager
    def as_generated(self) -> Iterator[None]:
        """Decodes in the block count as generated tokens (continuations of a scored prompt)."""
        before = self.generated
        self.generated = True
        try:
            yield
        finally:
            self.generated = before

    def mark_steered(self, pos: int) -> None:
        self.dirty_from = min(self.dirty_from, pos)

    def gate_rows(self, steer: List[int]) -> Tuple[List[int], bool]:
        """(rows to steer, whether the first of them decides the gate): with a gate, the first
        steered row of a prompt evaluation decides, and later rows are steered only if it fired."""
        if self.gate is None or not steer:
            return steer, False
        if self.gate_result is None:
            return steer[:1], True  # policies that steer more than one prompt row take no gate (check_gated)
        return (steer if self.gate_result.fired else []), False

    def decided(self, score: float) -> None:
        self.gate_result = gate_result(self.gate, score)

    def rows(self, first_pos: int, n_tokens: int, steering: bool) -> Tuple[List[int], List[int]]:
        """(rows to steer, rows to record) of a single-sequence batch starting at ``first_pos``."""
        if n_tokens <= 0:
            return [], []
        steer: List[int] = []
        if steering:
            steer = rows_for(self.steer_policy, self.generated, first_pos, n_tokens, self.last_prompt_pos)
        record: List[int] = []
        if self.record_policy is not None:
            record = rows_for(self.record_policy, self.generated, first_pos, n_tokens, self.last_prompt_pos)
        return steer, record
