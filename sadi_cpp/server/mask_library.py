"""The masks a server offers: every ``*.sadi.gguf`` in one folder that fits the loaded model,
named by its file name without ``.sadi.gguf``; the others are reported with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from sadi_cpp.errors import BadInputError, SadiError
from sadi_cpp.masks.fingerprint import fit, hook_fingerprint
from sadi_cpp.masks.mask import SadiMask
from sadi_cpp.positions import check_policy
from sadi_cpp.steering import Steering

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

SUFFIX = ".sadi.gguf"


@dataclass(frozen=True)
class Steer:
    """One request's steering, checked once: a mask of the library at a K, a delta and a position
    policy, and the :class:`Steering` the engine is configured with."""

    mask: str
    top_k: int
    delta: float
    positions: str
    steering: Steering

    @property
    def key(self) -> Tuple[str, int, float]:
        """Requests with the same key share one engine configuration."""
        return (self.mask, self.top_k, self.delta)

    def describe(self) -> Dict[str, Any]:
        return {"mask": self.mask, "top_k": self.top_k, "delta": self.delta, "positions": self.positions}


class MaskLibrary:
    def __init__(self, masks: Dict[str, SadiMask], skipped: List[Tuple[str, str]], folder: Optional[Path] = None,
                 notes: Optional[List[Tuple[str, str]]] = None):
        self.masks = masks
        self.skipped = skipped  # (file name, why it was not loaded)
        self.folder = folder
        self.notes = notes or []  # (file name, what differs but was accepted)

    @classmethod
    def load(cls, folder: Path, hook: Hook) -> "MaskLibrary":
        folder = Path(folder)
        if not folder.is_dir():
            raise BadInputError(f"{folder}: no such folder of masks (a folder holding *.sadi.gguf files)", field="masks")
        have = hook_fingerprint(hook)
        masks: Dict[str, SadiMask] = {}
        skipped: List[Tuple[str, str]] = []
        notes: List[Tuple[str, str]] = []
        for path in sorted(folder.glob("*" + SUFFIX)):
            name = path.name[: -len(SUFFIX)]
            try:
                mask = SadiMask.load(path)
            except (SadiError, OSError) as e:
                skipped.append((path.name, str(e)))
                continue
            result = fit(mask.model, have)
            if result.problem:
                skipped.append((path.name, f"made for another model ({result.problem})"))
            elif hook.site_problem(mask.site):
                skipped.append((path.name, hook.site_problem(mask.site)))
            else:
                masks[name] = mask
                if result.note:
                    notes.append((path.name, result.note))
        return cls(masks, skipped, folder, notes)

    def describe(self, name: str) -> Dict[str, Any]:
        m = self.masks[name]
        return {
            "id": name, "object": "sadi.mask", "site": m.site, "top_k": m.top_k, "delta": m.delta,
            "positions": m.positions, "n_units": int(m.mean_diff.size), "n_pairs": m.n_pairs,
            "pairs_sha256": m.pairs_sha256, "model": dict(m.model),
        }

    def steer(self, spec: Dict[str, Any]) -> Optional[Steer]:
        """Check a request's steering field ({"mask", "delta", "top_k", "positions"}; missing
        values come from the mask) and return it; None for no mask (unsteered). BadInputError's
        ``field`` names the part at fault (mask, delta, top_k, positions)."""
        if not isinstance(spec, dict):
            raise BadInputError("must be an object like {\"mask\": NAME, \"delta\": 9}")
        unknown = set(spec) - {"mask", "delta", "top_k", "positions"}
        if unknown:
            raise BadInputError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}: use mask, delta, top_k, positions")
        name = spec.get("mask")
        if name is None:
            return None
        if not isinstance(name, str) or name not in self.masks:
            known = ", ".join(self.masks) or "none are loaded"
            raise BadInputError(f"unknown mask {name!r} (GET /v1/masks lists them: {known})", field="mask")
        mask = self.masks[name]
        top_k = spec.get("top_k", mask.top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= mask.mean_diff.size:
            raise BadInputError(f"top_k must be an integer in 1..{mask.mean_diff.size} for mask {name!r}, got {top_k!r}", field="top_k")
        positions = check_policy(spec.get("positions", mask.positions))
        chosen = mask if top_k == mask.top_k else mask.with_top_k(top_k)
        steering = Steering(chosen.units(), spec.get("delta", mask.delta), name=name)
        return Steer(name, int(top_k), steering.delta, positions, steering)
