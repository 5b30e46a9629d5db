"""The masks a server offers: every ``*.sadi.gguf`` in one folder that fits the loaded model,
named by its file name without ``.sadi.gguf``; the others are reported with the reason."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from sadi_cpp.errors import BadInputError, SadiError
from sadi_cpp.masks.fingerprint import fingerprint_mismatch, model_fingerprint
from sadi_cpp.llama.hook import MAX_DELTA, Hook
from sadi_cpp.masks.mask import SadiMask
from sadi_cpp.positions import POLICIES

SUFFIX = ".sadi.gguf"


@dataclass(frozen=True)
class Steer:
    """One request's steering: a mask of the library at a K, a delta and a position policy."""

    mask: str
    top_k: int
    delta: float
    positions: str

    def describe(self) -> Dict[str, Any]:
        return {"mask": self.mask, "top_k": self.top_k, "delta": self.delta, "positions": self.positions}


class MaskLibrary:
    def __init__(self, masks: Dict[str, SadiMask], skipped: List[Tuple[str, str]], folder: Optional[Path] = None):
        self.masks = masks
        self.skipped = skipped  # (file name, why it was not loaded)
        self.folder = folder

    @classmethod
    def load(cls, folder: Path, hook: Hook) -> "MaskLibrary":
        folder = Path(folder)
        if not folder.is_dir():
            raise BadInputError(f"{folder}: no such folder of masks (--masks names a folder holding *.sadi.gguf files)")
        have = model_fingerprint(hook.model_path, hook.shape, hook.llm.n_vocab())
        masks: Dict[str, SadiMask] = {}
        skipped: List[Tuple[str, str]] = []
        for path in sorted(folder.glob("*" + SUFFIX)):
            name = path.name[: -len(SUFFIX)]
            try:
                mask = SadiMask.load(path)
            except (SadiError, OSError) as e:
                skipped.append((path.name, str(e)))
                continue
            diff = fingerprint_mismatch(mask.model, have)
            if diff:
                skipped.append((path.name, f"made for another model ({diff})"))
            elif hook.site_problem(mask.site):
                skipped.append((path.name, hook.site_problem(mask.site)))
            else:
                masks[name] = mask
        return cls(masks, skipped, folder)

    def describe(self, name: str) -> Dict[str, Any]:
        m = self.masks[name]
        return {
            "id": name, "object": "sadi.mask", "site": m.site, "top_k": m.top_k, "delta": m.delta,
            "positions": m.positions, "n_units": int(m.mean_diff.size), "n_pairs": m.n_pairs,
            "pairs_sha256": m.pairs_sha256, "model": dict(m.model),
        }

    def steer(self, spec: Dict[str, Any]) -> Optional[Steer]:
        """Check a request's steering field ({"mask", "delta", "top_k", "positions"}; missing
        values come from the mask) and return it; None for no mask (unsteered)."""
        if not isinstance(spec, dict):
            raise BadInputError("'sadi' must be an object like {\"mask\": NAME, \"delta\": 9}")
        unknown = set(spec) - {"mask", "delta", "top_k", "positions"}
        if unknown:
            raise BadInputError(f"'sadi' has unknown field(s) {', '.join(sorted(unknown))}: use mask, delta, top_k, positions")
        name = spec.get("mask")
        if name is None:
            return None
        if not isinstance(name, str) or name not in self.masks:
            known = ", ".join(self.masks) or "none are loaded"
            raise BadInputError(f"unknown mask {name!r} (GET /v1/masks lists them: {known})")
        mask = self.masks[name]
        delta = spec.get("delta", mask.delta)
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) or abs(delta) > MAX_DELTA:
            raise BadInputError(f"sadi.delta must be a finite number within ±{MAX_DELTA:g}, got {delta!r}")
        top_k = spec.get("top_k", mask.top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= mask.mean_diff.size:
            raise BadInputError(f"sadi.top_k must be an integer in 1..{mask.mean_diff.size} for mask {name!r}, got {top_k!r}")
        positions = spec.get("positions", mask.positions)
        if positions not in POLICIES:
            raise BadInputError(f"sadi.positions must be one of {', '.join(POLICIES)}, got {positions!r}")
        return Steer(name, int(top_k), float(delta), positions)

    def units(self, steer: Steer) -> Dict[str, Any]:
        mask = self.masks[steer.mask]
        return (mask if steer.top_k == mask.top_k else mask.with_top_k(steer.top_k)).units()
