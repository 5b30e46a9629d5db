"""SADI step 1 for several sites at once: mean (positive - negative) activation at the last token.

One pass over the pairs fills the engine's streaming accumulators (slot 0 positive, slot 1
negative) for every requested site, so memory does not grow with the number of pairs and
``tune`` can derive every mask, fixed vector and CAA direction from the same pass.

Two ways to evaluate the texts:

- ``batched=True`` (default): many pairs per decode, one sequence per text, and the tokens a
  pair's two texts share (the prompt) evaluated once, as rows of both sequences; each text's last
  token recorded into its own accumulator slot, all in one decode. Several times faster
  (docs/benchmarks.md).
- ``batched=False``: each text alone from an empty cache, the plain llama-cpp-python way.

Both read the same rows; the numbers differ only by floating-point rounding, because llama.cpp's
results depend a little on how tokens are grouped into decodes (docs/eval.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.data.pairs import PairsLike, pair_set
from sadi_cpp.llama.batch import BatchRow
from sadi_cpp.sites import RECORD_SITES, check_site

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook
    from sadi_cpp.llama.recording import Recording


@dataclass
class Contrast:
    """Per-site mean differences [n_layer, width] (float64; heads: every value, not yet averaged)."""

    diffs: Dict[str, np.ndarray]
    n_used: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    pairs_sha256: str = ""

    def units(self, hook: Hook, site: str) -> np.ndarray:
        """SADI's unit table [n_layer, n_units]: heads averaged over head_dim."""
        return hook.to_units(site, self.diffs[site]).astype(np.float32)


def mean_differences(
    hook: Hook,
    pairs: PairsLike,
    sites: Sequence[str] = ("head",),
    strict: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    batched: bool = True,
) -> Contrast:
    """Evaluate every pair's two texts and average (positive - negative) per value at their last tokens.

    ``pairs``: a :class:`~sadi_cpp.data.pairs.PairSet`, a JSONL path or pair dicts (see
    :func:`~sadi_cpp.data.pairs.pair_set`). A pair longer than the context is skipped and counted,
    or refused with ``strict``.
    """
    sites = tuple(check_site(s, RECORD_SITES) for s in sites)
    for site in sites:
        if hook.site_problem(site):
            raise BadInputError(hook.site_problem(site), field="site")
    pairs = pair_set(pairs)
    n_ctx = hook.n_ctx
    out = Contrast(diffs={}, pairs_sha256=pairs.sha256)
    start = time.perf_counter()
    packer = PairPacker(hook, progress) if batched else None
    with hook.recording(sites=sites, capture=False) as rec:
        for pair in pairs:
            toks = [hook.tokenize(t, special=pair.special) for t in (pair.positive, pair.negative)]
            longest = max(len(t) for t in toks)
            if longest > n_ctx:
                if strict:
                    raise BadInputError(f"{pair.where}: {longest} tokens, longer than the context ({n_ctx} tokens); "
                                        "use a longer context or drop the pair", field="n_ctx")
                out.skipped["longer than the context"] = out.skipped.get("longer than the context", 0) + 1
                if progress is not None:
                    progress(1)
                continue
            out.n_used += 1
            if packer is not None and packer.add(toks[0], toks[1], rec):
                continue  # evaluated with its group later
            if packer is not None:
                packer.flush(rec)
            for slot, t in enumerate(toks):
                rec.set_slot(slot)
                hook.rewind(0)
                hook.eval(t)
            if progress is not None:
                progress(1)
        if packer is not None:
            packer.flush(rec)
    out.seconds = time.perf_counter() - start
    if out.n_used == 0:
        raise BadInputError("no usable pairs: every pair was skipped (" + ", ".join(f"{n} {why}" for why, n in out.skipped.items()) + ")")
    for site in sites:
        out.diffs[site] = (rec.sums(site, 0) - rec.sums(site, 1)) / out.n_used
    return out


class PairPacker:
    """Packs pairs into decodes, so that one decode evaluates many of them (see the module docstring)."""

    def __init__(self, hook: Hook, progress: Optional[Callable[[int], None]]):
        self.hook = hook
        self.progress = progress
        self.budget = min(hook.n_ctx, hook.n_batch)  # tokens in KV and per decode
        self.max_pairs = max(1, hook.n_seq_max // 2)
        self.pending: list = []  # (shared tokens, positive tail, negative tail)
        self.used = 0

    def add(self, pos: list, neg: list, rec: Recording) -> bool:
        """Queue a pair; False when it cannot be batched (too long): evaluate it alone."""
        if self.max_pairs < 2:
            return False
        shared = 0
        for a, b in zip(pos[:-1], neg[:-1]):  # each text keeps at least its last token
            if a != b:
                break
            shared += 1
        cost = len(pos) + len(neg) - shared
        if cost > self.budget:
            return False
        if self.pending and (self.used + cost > self.budget or len(self.pending) >= self.max_pairs):
            self.flush(rec)
        self.pending.append((pos[:shared], pos[shared:], neg[shared:]))
        self.used += cost
        return True

    def flush(self, rec: Recording) -> None:
        """One decode for the queued pairs: each pair's shared prompt once, in both of its
        sequences (2k positive, 2k+1 negative), then each text's own tokens; the last token of a
        positive text is added to accumulator slot 0, of a negative text to slot 1."""
        if not self.pending:
            return
        rows: List[BatchRow] = []
        for k, (pre, pos_tail, neg_tail) in enumerate(self.pending):
            rows += [BatchRow(t, p, (2 * k, 2 * k + 1)) for p, t in enumerate(pre)]
            for slot, tail in ((0, pos_tail), (1, neg_tail)):
                rows += [BatchRow(t, len(pre) + p, (2 * k + slot,), record=slot if p == len(tail) - 1 else -1)
                         for p, t in enumerate(tail)]
        self.hook.kv_clear()
        try:
            self.hook.decode(rows)
        finally:
            self.hook.kv_clear()
        if self.progress is not None:
            self.progress(len(self.pending))
        self.pending, self.used = [], 0
