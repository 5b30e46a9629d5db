"""A request as the batcher sees it (a job), and the events a job's sink receives: text pieces,
the finish, a failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

import numpy as np

from sadi_cpp.errors import SadiError
from sadi_cpp.gate import GateResult

if TYPE_CHECKING:  # annotations only
    from sadi_cpp.server.mask_library import Steer
    from sadi_cpp.server.sampling import SamplingParams


class QueueFull(SadiError):
    """Every sequence is busy and the waiting line is full (HTTP 429)."""


@dataclass
class TokenInfo:
    """A generated token with its log-probability and the most likely alternatives."""

    token: int
    piece: bytes
    logprob: float
    top: List[Tuple[int, bytes, float]]


@dataclass
class Piece:
    """Newly visible text (may be '' while a possible stop string is held back) and the tokens
    generated since the last event."""

    text: str
    tokens: List[TokenInfo]


@dataclass
class Finished:
    reason: str  # "stop" (end token or stop string) or "length" (max_tokens or context)
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0  # prompt tokens whose cells came from a kept prefix (prefix_cache.py)


@dataclass
class Failed:
    message: str


@dataclass
class Gated:
    """What the request's gate decided on its prompt (sent before the first piece of text)."""

    result: GateResult


Event = Any  # Piece | Finished | Failed | Gated


@dataclass
class Job:
    """One request: its prompt tokens, how to sample and when to stop, and where events go."""

    prompt: List[int]
    max_tokens: int
    sink: Callable[[Event], None]
    sampling: SamplingParams
    seed: Optional[int] = None
    stop: List[str] = field(default_factory=list)
    logprobs: int = -1  # alternatives to report per token; -1: no log-probabilities
    steer: Optional[Steer] = None
    min_tokens: int = 0
    grammar: Any = None  # a llama.grammar.Grammar restricting the tokens (structured output), freed on release
    # n > 1: the request's jobs, all of them (this one included); group[0] evaluates the prompt once
    # for all of them (one cache cell per token in every sequence of the group); empty: alone
    group: List["Job"] = field(default_factory=list)
    # the batcher's bookkeeping
    seq: int = -1
    n_fed: int = 0  # prompt tokens evaluated so far
    generated: List[int] = field(default_factory=list)
    text_bytes: bytes = b""
    n_sent: int = 0  # characters of the text already sent
    cancelled: bool = False
    completed: bool = False  # it finished normally (its prompt cells may be kept)
    cached: int = 0  # prompt tokens reused from a kept prefix
    rng: Optional[np.random.Generator] = None

    @property
    def members(self) -> List["Job"]:
        """The jobs admitted, fed and cancelled together with this one (itself when alone)."""
        return self.group or [self]

    @property
    def leads(self) -> bool:
        """True for the job that evaluates the prompt (the first of its group, or a job alone)."""
        return not self.group or self.group[0] is self

    @property
    def generating(self) -> bool:
        return self.n_fed == len(self.prompt) and bool(self.generated)
