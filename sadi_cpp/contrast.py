"""SADI step 1 for several sites at once: mean (positive - negative) activation at the last token.

One pass over the pairs fills the engine's streaming accumulators (slot 0 positive, slot 1
negative) for every requested site, so memory does not grow with the number of pairs and
``tune`` can derive every mask, fixed vector and CAA direction from the same pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence, Union

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.hook import RECORD_SITES, Hook, check_site
from sadi_cpp.pairs import Pair, as_pairs, file_sha256, read_pairs


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
    pairs: Union[str, Path, Iterable[Union[Pair, dict]]],
    sites: Sequence[str] = ("head",),
    strict: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> Contrast:
    """Evaluate every pair's two texts from an empty cache and average (positive - negative) per value.

    A pair longer than the context is skipped and counted, or refused with ``strict``.
    """
    sites = tuple(check_site(s, RECORD_SITES) for s in sites)
    for site in sites:
        if hook.engine.site_problem(site):
            raise BadInputError(hook.engine.site_problem(site))
    pairs_hash = ""
    if isinstance(pairs, (str, Path)):
        pairs_hash = file_sha256(pairs)
        pairs = read_pairs(pairs)
    llm = hook.llm
    n_ctx = min(llm.n_ctx(), int(llm.context_params.n_ctx))  # Llama sizes its buffers by the latter
    out = Contrast(diffs={}, pairs_sha256=pairs_hash)
    start = time.perf_counter()
    with hook.recording(sites=sites, capture=False) as rec:
        for pair in as_pairs(pairs):
            toks = [llm.tokenize(t.encode("utf-8")) for t in (pair.positive, pair.negative)]
            longest = max(len(t) for t in toks)
            if longest > n_ctx:
                if strict:
                    raise BadInputError(f"{pair.where}: {longest} tokens, longer than the context ({n_ctx}); raise --n-ctx or drop the pair")
                out.skipped["longer than the context"] = out.skipped.get("longer than the context", 0) + 1
            else:
                for slot, t in enumerate(toks):
                    rec.set_slot(slot)
                    llm.reset()
                    llm.eval(t)
                out.n_used += 1
            if progress is not None:
                progress(1)
    out.seconds = time.perf_counter() - start
    if out.n_used == 0:
        raise BadInputError("no usable pairs: every pair was skipped (" + ", ".join(f"{n} {why}" for why, n in out.skipped.items()) + ")")
    for site in sites:
        out.diffs[site] = (rec.sums(site, 0) - rec.sums(site, 1)) / out.n_used
    return out
