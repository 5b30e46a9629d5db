"""Open-ended generation for many prompts under many steering settings at once.

Every (setting, prompt, sample) is a sequence of its own, bound to its setting's engine
configuration, and one llama_decode holds a row for every sequence still generating: the settings
are compared in the same decodes (the engine steers each row with its own configuration). A
prompt's tokens before the last are evaluated once for all of its sequences whose policy leaves
them unsteered (``last``, ``last+generated``); the last prompt token once per setting (its samples
share it); under ``all`` a setting evaluates the whole prompt in its own sequences, steered.

Sampling is greedy (temperature 0) or temperature with top-p, from a random stream seeded by
(seed, prompt, sample): every setting draws the same random numbers for a prompt's sample, so
settings differ by their steering only (common random numbers: the paired comparison is tighter).
A text ends at an end-of-generation token (not kept), after ``max_tokens``, or before the first
stop string. Bytes that do not form UTF-8 (a character cut at the end, a byte-level model's
noise) are left out of the text, as llama-cpp-python leaves them out of a completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.llama.batch import BatchRow
from sadi_cpp.positions import check_gated, check_policy
from sadi_cpp.steering import Steering

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

Unit = Tuple[int, int, int]  # (setting, prompt, sample)


@dataclass(frozen=True)
class Setting:
    """One way to generate: a name, a Steering (empty: unsteered) and the rows it steers."""

    name: str
    steering: Steering = field(default_factory=Steering)
    positions: str = "last"
    kind: str = "sadi"  # unsteered | sadi | caa | cvec | ...: what the report calls it
    strength: Optional[float] = None  # delta or alpha, for the report and the plot

    def __post_init__(self) -> None:
        check_gated(check_policy(self.positions), self.steering.gate is not None)


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 48
    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0
    stop: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 1 <= self.max_tokens <= 4096:
            raise BadInputError(f"max_tokens must be 1..4096, got {self.max_tokens}", field="max_tokens")
        if not 0.0 <= self.temperature <= 10.0 or not 0.0 < self.top_p <= 1.0:
            raise BadInputError("temperature must be 0..10 and top_p in (0, 1]", field="temperature")
        if not 1 <= self.samples <= 64:
            raise BadInputError(f"samples must be 1..64, got {self.samples}", field="samples")
        if self.samples > 1 and self.temperature == 0.0:
            raise BadInputError("several samples of a greedy (temperature 0) generation are all the same text: "
                                "set a temperature above 0, or take one sample", field="samples")
        if any(not s for s in self.stop):
            raise BadInputError("a stop string must not be empty", field="stop")


@dataclass
class Generation:
    tokens: List[int]  # the generated tokens the text is made of (no end token, none of a stop string)
    text: str
    finish: str  # "end" (an end-of-generation token), "stop" (a stop string) or "length"


def pick(logits: np.ndarray, rng: np.random.Generator, temperature: float, top_p: float) -> int:
    """The next token: the argmax at temperature 0, else a draw from the softmax of logits /
    temperature restricted to the smallest top set holding ``top_p`` of the probability."""
    if temperature == 0.0:
        return int(np.argmax(logits))
    z = np.asarray(logits, np.float64) / temperature
    p = np.exp(z - z.max())
    total = p.sum()
    if top_p >= 1.0:  # the whole vocabulary: no order needed
        q = np.cumsum(p)
        return int(min(int(np.searchsorted(q, rng.random() * q[-1], side="right")), len(p) - 1))
    k = 64
    while True:  # the top-p set from the k largest (a partial sort; k doubles until they hold top_p)
        k = min(k, len(p))
        top = np.argpartition(-p, k - 1)[:k] if k < len(p) else np.arange(len(p))
        top = top[np.lexsort((top, -p[top]))]  # descending probability, ties by token id
        cum = np.cumsum(p[top])
        if cum[-1] >= top_p * total or k == len(p):
            break
        k *= 2
    keep = top[: int(np.searchsorted(cum, top_p * total)) + 1]
    q = np.cumsum(p[keep])
    return int(keep[min(int(np.searchsorted(q, rng.random() * q[-1], side="right")), len(keep) - 1)])


class _Text:
    """One sequence's generated tokens, its text so far, and whether it is done."""

    def __init__(self, hook: Hook, sampling: Sampling, rng: np.random.Generator):
        self.hook, self.sampling, self.rng = hook, sampling, rng
        self.tokens: List[int] = []
        self.raw = b""
        self.done: Optional[Generation] = None

    def take(self, logits: np.ndarray) -> None:
        s = self.sampling
        token = pick(logits, self.rng, s.temperature, s.top_p)
        if self.hook.is_end(token):
            self.done = Generation(self.tokens, self.raw.decode("utf-8", errors="ignore"), "end")
            return
        self.tokens.append(token)
        self.raw += self.hook.token_bytes(token)
        text = self.raw.decode("utf-8", errors="ignore")
        cuts = [i for i in (text.find(stop) for stop in s.stop) if i >= 0]
        if cuts:
            self.done = self._cut(text[: min(cuts)])
        elif len(self.tokens) >= s.max_tokens:
            self.done = Generation(self.tokens, text, "length")

    def _cut(self, text: str) -> Generation:
        """Before a stop string: the text, and the tokens that lie wholly inside it."""
        raw, kept = b"", 0
        for k, token in enumerate(self.tokens):
            raw += self.hook.token_bytes(token)
            if len(raw.decode("utf-8", errors="ignore")) > len(text):
                break
            kept = k + 1
        return Generation(self.tokens[:kept], text, "stop")


@dataclass
class Generations:
    texts: Dict[Unit, Generation]
    fired: np.ndarray  # [setting, prompt]: 1 where the setting's gate fired on the prompt, 0 where not, nan: no gate


def generate_many(hook: Hook, prompts: Sequence[List[int]], settings: Sequence[Setting], sampling: Sampling,
                  progress: Optional[Callable[[int], None]] = None) -> Generations:
    """Generate for every prompt's tokens under every setting, ``sampling.samples`` texts each."""
    if any(not p for p in prompts):
        raise BadInputError("a prompt has no tokens", field="prompts")
    units = [(c, i, s) for i in range(len(prompts)) for c in range(len(settings)) for s in range(sampling.samples)]
    out = Generations({}, np.full((len(settings), len(prompts)), np.nan))
    names: List[Optional[str]] = []
    try:
        for c, setting in enumerate(settings):
            steers = bool(setting.steering.mask or setting.steering.add)
            names.append(hook.configure(f"_gen_{c}", setting.steering) if steers else None)
        for group in _groups(hook, prompts, settings, sampling, units):
            _run(hook, group, prompts, settings, names, sampling, out, progress)
    finally:
        for name in names:
            if name is not None:
                hook.remove_config(name)
        hook.kv_clear()
    return out


def _cells(prompts: Sequence[List[int]], settings: Sequence[Setting], units: Sequence[Unit], max_tokens: int) -> int:
    """KV cells a group of units takes: shared prefixes once, last prompt tokens once per (setting,
    prompt), whole prompts per (setting, prompt) under ``all``, and each sequence's generated tokens."""
    shared = {i for c, i, _ in units if settings[c].positions != "all"}
    own = {(c, i) for c, i, _ in units}
    return (sum(len(prompts[i]) - 1 for i in shared)
            + sum(len(prompts[i]) if settings[c].positions == "all" else 1 for c, i in own) + max_tokens * len(units))


def _groups(hook: Hook, prompts: Sequence[List[int]], settings: Sequence[Setting], sampling: Sampling,
            units: Sequence[Unit]) -> List[List[Unit]]:
    groups: List[List[Unit]] = [[]]
    for unit in units:
        if not groups[-1]:
            need = _cells(prompts, settings, [unit], sampling.max_tokens)
            if need > hook.n_ctx:
                raise BadInputError(f"prompt {unit[1] + 1}: {len(prompts[unit[1]])} tokens and {sampling.max_tokens} to generate "
                                    f"do not fit the context ({hook.n_ctx}); use a longer --n-ctx or fewer --max-tokens", field="n_ctx")
        elif (len(groups[-1]) == hook.n_seq_max
              or _cells(prompts, settings, groups[-1] + [unit], sampling.max_tokens) > hook.n_ctx):
            groups.append([])
        groups[-1].append(unit)
    return groups if groups[0] else []


def _prompt_rows(prompts: Sequence[List[int]], settings: Sequence[Setting], seq_of: Dict[Unit, int]
                 ) -> Tuple[List[BatchRow], List[int], List[List[Unit]]]:
    """The rows that evaluate the group's prompts, the last prompt tokens' row indices and the units each feeds."""
    rows: List[BatchRow] = []
    outputs: List[int] = []
    feeds: List[List[Unit]] = []
    for i in dict.fromkeys(i for _, i, _ in seq_of):
        toks, L = prompts[i], len(prompts[i])
        shared = tuple(seq for (c, ii, _), seq in seq_of.items() if ii == i and settings[c].positions != "all")
        if shared and L > 1:
            rows += [BatchRow(t, p, shared) for p, t in enumerate(toks[:-1])]
        for c in dict.fromkeys(c for c, ii, _ in seq_of if ii == i):
            mine = [u for u in seq_of if u[0] == c and u[1] == i]
            seqs = tuple(seq_of[u] for u in mine)
            if settings[c].positions == "all":
                rows += [BatchRow(t, p, seqs, True) for p, t in enumerate(toks[:-1])]
            rows.append(BatchRow(toks[-1], L - 1, seqs, True))
            outputs.append(len(rows) - 1)
            feeds.append(mine)
    return rows, outputs, feeds


def _run(hook: Hook, group: List[Unit], prompts: Sequence[List[int]], settings: Sequence[Setting], names: List[Optional[str]],
         sampling: Sampling, out: Generations, progress: Optional[Callable[[int], None]]) -> None:
    hook.kv_clear()
    seq_of = {u: k for k, u in enumerate(group)}
    for u, seq in seq_of.items():
        hook.bind(seq, names[u[0]])
    rows, outputs, feeds = _prompt_rows(prompts, settings, seq_of)
    texts = {u: _Text(hook, sampling, np.random.default_rng([sampling.seed, u[1], u[2]])) for u in group}
    for start in range(0, len(rows), hook.n_batch):  # a prompt longer than a decode continues in the next
        wanted = [k for k, o in enumerate(outputs) if start <= o < start + hook.n_batch]
        logits = hook.decode(rows[start: start + hook.n_batch], [outputs[k] - start for k in wanted])
        for r, k in enumerate(wanted):
            for u in feeds[k]:
                texts[u].take(logits[r])
    for mine in feeds:
        decision = hook.gate(seq_of[mine[0]])
        if decision is not None:
            out.fired[mine[0][0], mine[0][1]] = float(decision.fired)
    while True:
        live = [u for u in group if texts[u].done is None]
        if not live:
            break
        steer = [settings[c].positions != "last" for c, _, _ in live]
        step = [BatchRow(texts[u].tokens[-1], len(prompts[u[1]]) + len(texts[u].tokens) - 1, (seq_of[u],), s)
                for u, s in zip(live, steer)]
        logits = hook.decode(step, list(range(len(step))))
        for r, u in enumerate(live):
            texts[u].take(logits[r])
    for u in group:
        out.texts[u] = texts[u].done  # type: ignore[assignment]
        hook.bind(seq_of[u], None)
    if progress is not None:
        progress(len(group))
