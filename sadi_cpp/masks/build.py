"""SADI steps 1 and 2 on a model: mean (positive - negative) differences per unit, the top-K mask,
and the CAA direction the control-vector export writes::

    hook = sadi_cpp.load()
    m = build_mask(hook, "examples/sentiment_pairs.jsonl", site="head", top_k=5)
    m.save("gemma.sentiment.head.sadi.gguf")
    with hook.steering(m, delta=m.delta):
        ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.data.pairs import PairsLike, pair_set
from sadi_cpp.errors import BadInputError
from sadi_cpp.masks.contrast import mean_differences
from sadi_cpp.masks.mask import SadiMask, mask_from_contrast
from sadi_cpp.masks.stats_cache import gather
from sadi_cpp.sites import DEFAULT_DELTA, DEFAULT_TOP_K, check_site

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook


@dataclass
class BuildStats:
    n_used: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cache: Optional[Path] = None  # the statistics' cache file (build_mask(cache=True))
    reused: bool = False  # the statistics came from the cache


def build_mask(
    hook: Hook,
    pairs: PairsLike,
    site: str = "head",
    top_k: Optional[int] = None,
    rank_by: str = "signed",
    delta: Optional[float] = None,
    strict: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    stats: Optional[BuildStats] = None,
    batched: bool = True,
    cache: bool = False,
) -> SadiMask:
    """SADI steps 1-2 on ``hook``'s model. ``pairs``: a PairSet, a JSONL path or pair dicts.

    Each text is evaluated from an empty cache; the site's values at its last token are summed in
    the engine's streaming accumulators (memory does not grow with the number of pairs). A pair
    longer than the context is skipped and counted, or refused with ``strict``. Multiple-choice
    items count as one pair per wrong choice. ``batched``: many pairs per decode, shared prompts
    evaluated once (see sadi_cpp.masks.contrast); False evaluates each text alone. ``cache``: reuse
    or keep the statistics on disk (sadi_cpp.masks.stats_cache).
    """
    check_site(site)
    if site not in hook.sites:
        raise BadInputError(hook.site_problem(site), field="site")
    top_k = DEFAULT_TOP_K[site] if top_k is None else top_k
    delta = DEFAULT_DELTA[site] if delta is None else delta
    pairs = pair_set(pairs)
    if cache:
        contrast, path, reused = gather(hook, pairs, (site,), progress=progress, batched=batched, strict=strict)
    else:
        contrast, path, reused = mean_differences(hook, pairs, sites=(site,), strict=strict, progress=progress, batched=batched), None, False
    if stats is not None:
        stats.n_used, stats.skipped, stats.seconds = contrast.n_used, contrast.skipped, contrast.seconds
        stats.cache, stats.reused = path, reused
    return mask_from_contrast(hook, contrast, site, top_k, delta, rank_by)


def directions_from_pairs(
    hook: Hook, pairs: PairsLike, layers: Optional[Sequence[int]] = None, scale: float = 1.0,
    progress: Optional[Callable[[int], None]] = None,
) -> Tuple[np.ndarray, Sequence[int], int]:
    """CAA: ``scale`` x the mean residual-stream difference (positive - negative) after each of
    ``layers`` (default: the middle layer), zero elsewhere. Returns (directions [n_layer, n_embd],
    the layers, the number of pairs used)."""
    n_layer = hook.shape.n_layer
    chosen = list(layers) if layers else [n_layer // 2]
    bad = [il for il in chosen if not 1 <= il < n_layer]
    if bad:
        raise BadInputError(f"layers {bad} outside 1..{n_layer - 1} (llama.cpp control vectors cannot steer layer 0)", field="layers")
    contrast = mean_differences(hook, pairs, sites=("residual",), progress=progress)
    dirs = np.zeros((n_layer, hook.shape.n_embd), np.float32)
    dirs[chosen] = scale * contrast.diffs["residual"][chosen]
    return dirs, chosen, contrast.n_used


__all__ = ["BuildStats", "build_mask", "directions_from_pairs"]
