"""Prompt prefixes kept in the KV cache after their requests end, so that a new request with the
same beginning (a chat's system prompt, the conversation so far) copies their cells instead of
evaluating them again.

Only cells computed without steering are kept: a request's prompt up to its first steered row.
Under the policies `last` and `last+generated` that is all of the prompt but its last token (the
cells before the steered token do not depend on the steering, so they are shared across masks);
an unsteered request's whole prompt; under `all` nothing (every cell depends on the steering).
A request reuses at most its prompt's length minus one (the last token is always evaluated: it
gives the first logits) and nothing under `all`.

The same rule lets a request take the cells a running request has already evaluated
(:func:`share_running`): requests that arrive together with one system prompt evaluate it once.

Each kept prefix lives in a sequence of its own, above the server's running sequences; copying
one into a request's sequence adds that sequence to the same cells (llama.cpp's seq_cp: no data
copied). The cells they hold are extra room in the context (--prompt-cache tokens); the least
recently used prefix goes first when a new one does not fit.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Deque, List, Optional, OrderedDict, Sequence, Tuple

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook
    from sadi_cpp.server.jobs import Job


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class PrefixCache:
    """Kept prefixes: {sequence id: tokens}, least recently used first."""

    def __init__(self, hook: Hook, seqs: Sequence[int], budget: int):
        self.hook = hook
        self.budget = budget  # cells the kept prefixes may hold together
        self._spare: Deque[int] = collections.deque(seqs)
        self._kept: "OrderedDict[int, Tuple[int, ...]]" = collections.OrderedDict()
        self.hits = 0
        self.reused_tokens = 0

    @property
    def enabled(self) -> bool:
        return self.budget > 0 and bool(self._spare or self._kept)

    @property
    def cells(self) -> int:
        return sum(len(t) for t in self._kept.values())

    def reuse(self, prompt: Sequence[int], limit: int, into: List[int]) -> int:
        """Copy the longest kept prefix of ``prompt`` (at most ``limit`` tokens) into the
        sequences ``into``; returns how many tokens it covers (0: none)."""
        if limit <= 0 or not self._kept:
            return 0
        best, seq = 0, -1
        for s, tokens in self._kept.items():
            k = min(common_prefix(tokens, prompt), limit)
            if k > best:
                best, seq = k, s
        if best == 0:
            return 0
        for dst in into:
            self.hook.seq_copy(seq, dst, 0, best)
        self._kept.move_to_end(seq)
        self.hits += 1
        self.reused_tokens += best
        return best

    def keep(self, src: int, tokens: Sequence[int]) -> None:
        """Keep the cells of ``tokens`` (positions 0..len-1 of sequence ``src``, about to be freed)."""
        tokens = tuple(tokens)
        if not tokens or len(tokens) > self.budget or not self.enabled:
            return
        for s, kept in list(self._kept.items()):
            if common_prefix(kept, tokens) == len(tokens):  # covered already (the same or a longer one)
                self._kept.move_to_end(s)
                return
            if common_prefix(kept, tokens) == len(kept):  # the new one covers it
                self._drop(s)
        while self._kept and (not self._spare or self.cells + len(tokens) > self.budget):
            self._drop(next(iter(self._kept)))
        if not self._spare:
            return
        dst = self._spare.popleft()
        self.hook.seq_copy(src, dst, 0, len(tokens))
        self._kept[dst] = tokens

    def _drop(self, seq: int) -> None:
        del self._kept[seq]
        self.hook.seq_free(seq)
        self._spare.append(seq)

    def clear(self) -> None:
        for seq in list(self._kept):
            self._drop(seq)


def reusable(prompt: Sequence[int], positions: Optional[str]) -> int:
    """How many of a request's prompt tokens may come from kept cells (``positions``: its
    steering's policy, None when unsteered)."""
    return 0 if positions == "all" else max(len(prompt) - 1, 0)


def keepable(prompt: Sequence[int], positions: Optional[str]) -> Sequence[int]:
    """The tokens of a finished request's prompt whose cells were computed without steering."""
    if positions is None:
        return prompt
    return () if positions == "all" else prompt[:-1]


def share_running(hook: Hook, active: Sequence[Job]) -> None:
    """A request that has not evaluated any prompt token of its own yet takes the longest
    unsteered prefix a running request has already evaluated (requests that arrive together
    with the same system prompt evaluate it once, not each)."""
    for job in active:
        if not job.leads or job.n_fed != job.cached or job.n_fed >= len(job.prompt) - 1:
            continue
        limit = reusable(job.prompt, job.steer.positions if job.steer else None)
        best, src = job.n_fed, None
        for other in active:
            if other is job or not other.leads or other.n_fed == 0:
                continue
            policy = other.steer.positions if other.steer else None
            if policy == "all":  # every cell it made depends on its steering
                continue
            done = other.n_fed if policy is None else min(other.n_fed, len(other.prompt) - 1)  # its unsteered cells
            k = min(common_prefix(other.prompt, job.prompt), done, limit)
            if k > best:
                best, src = k, other
        if src is not None:
            for member in job.members:  # drop what a kept prefix gave it, then share the running one's cells
                hook.seq_free(member.seq)
                hook.seq_copy(src.seq, member.seq, 0, best)
                member.n_fed = member.cached = best
