"""Finished contrast statistics kept on disk, so that a later tune or build-mask with the same
model, pairs and sites reuses them instead of decoding every pair again (and an interrupted tune
keeps what its statistics phase finished).

Where: ``$SADI_CPP_CACHE``, else ``$XDG_CACHE_HOME/sadi-cpp``, else ``~/.cache/sadi-cpp``, in
``statistics/<key>.npz``. The key is a sha256 of what the numbers depend on: the model's
fingerprint, the pairs' texts, the sites, and how the pairs are grouped into decodes (batched or
not, the batch and context sizes, the sequences per decode). A cache file that cannot be read
or does not fit is ignored and written again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.data.pairs import PairsLike, PairSet, pair_set
from sadi_cpp.errors import SadiError
from sadi_cpp.files import atomic_path
from sadi_cpp.masks.contrast import Contrast, mean_differences
from sadi_cpp.masks.fingerprint import hook_fingerprint

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook


def cache_dir() -> Path:
    root = os.environ.get("SADI_CPP_CACHE")
    if root:
        return Path(root) / "statistics"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "sadi-cpp" / "statistics"


def cache_key(hook: Hook, pairs: PairSet, sites: Sequence[str], batched: bool) -> str:
    h = hashlib.sha256()
    fp = hook_fingerprint(hook)
    grouping = {"batched": batched, "n_ctx": hook.n_ctx, "n_batch": hook.n_batch, "n_seq_max": hook.n_seq_max,
                "sites": sorted(sites)}
    h.update(json.dumps([fp, grouping], sort_keys=True).encode())
    for p in pairs:
        h.update(p.positive.encode("utf-8") + b"\0" + p.negative.encode("utf-8") + (b"\0s\n" if p.special else b"\0\n"))
    return h.hexdigest()


def _load(path: Path, hook: Hook, sites: Sequence[str], pairs_sha256: str) -> Optional[Contrast]:
    try:
        with np.load(path, allow_pickle=False) as f:
            diffs = {s: np.array(f[f"diff_{s}"], dtype=np.float64) for s in sites}
            meta = json.loads(str(f["meta"]))
        n_used, skipped = int(meta["n_used"]), dict(meta["skipped"])
    except Exception:  # a damaged file (BadZipFile, wrong keys or types): computed and written again
        return None
    for s, d in diffs.items():
        if d.shape != (hook.shape.n_layer, hook.shape.width(s)) or not np.isfinite(d).all():
            return None
    return Contrast(diffs=diffs, n_used=n_used, skipped=skipped, seconds=0.0, pairs_sha256=pairs_sha256)


def _save(path: Path, contrast: Contrast) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = json.dumps({"n_used": contrast.n_used, "skipped": contrast.skipped})
    with atomic_path(path, "statistics cache") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(meta), **{f"diff_{s}": d for s, d in contrast.diffs.items()})
    return path


def gather(
    hook: Hook,
    pairs: PairsLike,
    sites: Sequence[str],
    progress: Optional[Callable[[int], None]] = None,
    batched: bool = True,
    strict: bool = False,
    use_cache: bool = True,
) -> Tuple[Contrast, Optional[Path], bool]:
    """``contrast.mean_differences`` through the cache: (statistics, cache file or None, reused?)."""
    pairs = pair_set(pairs)
    if not use_cache:
        return mean_differences(hook, pairs, sites=sites, progress=progress, batched=batched, strict=strict), None, False
    path = cache_dir() / f"{cache_key(hook, pairs, sites, batched)}.npz"
    if path.is_file():
        cached = _load(path, hook, sites, pairs.sha256)
        if cached is not None and not (strict and cached.skipped):
            if progress is not None:
                progress(len(pairs))
            return cached, path, True
    contrast = mean_differences(hook, pairs, sites=sites, progress=progress, batched=batched, strict=strict)
    try:
        _save(path, contrast)
    except (OSError, SadiError):
        return contrast, None, False  # a read-only home: the run still works, nothing is kept
    return contrast, path, False


__all__: List[str] = ["cache_dir", "cache_key", "gather"]
