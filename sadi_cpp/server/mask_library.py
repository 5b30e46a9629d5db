"""The masks and gates a server offers: every ``*.sadi.gguf`` in one folder that fits the loaded
model, named by its file name without ``.sadi.gguf``; the others are reported with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from sadi_cpp.errors import BadInputError, SadiError
from sadi_cpp.gate import Gate, GateResult
from sadi_cpp.masks.fingerprint import fit, hook_fingerprint
from sadi_cpp.masks.gate_file import load_gate
from sadi_cpp.masks.mask import SadiMask
from sadi_cpp.masks.sidecar import kind_of
from sadi_cpp.positions import check_gated, check_policy
from sadi_cpp.steering import Steering

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

SUFFIX = ".sadi.gguf"


MAX_PARTS = 8  # masks one request may compose


@dataclass(frozen=True)
class Part:
    """One mask of a request's steering: a mask of the library at a K, its delta and weighting."""

    mask: str
    top_k: int
    delta: float
    weighting: str = "uniform"
    gate: Optional[str] = None  # the gate this object of the request named

    def describe(self, decided: Optional[GateResult] = None) -> Dict[str, Any]:
        out: Dict[str, Any] = {"mask": self.mask, "top_k": self.top_k, "delta": self.delta}
        if self.weighting != "uniform":
            out["weighting"] = self.weighting
        if self.gate is not None:  # score and fired are null until the prompt's last token is decoded
            out["gate"] = {"name": self.gate, **(decided.as_dict() if decided else {"score": None, "fired": None})}
        return out


@dataclass(frozen=True)
class Steer:
    """One request's steering, checked once: its masks (one, or several composed), the position
    policy, and the :class:`Steering` the engine is configured with."""

    parts: Tuple[Part, ...]
    positions: str
    steering: Steering
    composed: bool = False  # the request gave a list

    @property
    def key(self) -> Tuple[Part, ...]:
        """Requests with the same key share one engine configuration."""
        return self.parts

    def describe(self, decided: Optional[GateResult] = None) -> Any:
        """The steering as the response reports it: the request's object, or its list; where the
        request named the gate, its decision (``decided``) is reported there."""
        if not self.composed:
            return {**self.parts[0].describe(decided), "positions": self.positions}
        return [{**p.describe(decided), "positions": self.positions} for p in self.parts]


class MaskLibrary:
    def __init__(self, masks: Dict[str, SadiMask], skipped: List[Tuple[str, str]], folder: Optional[Path] = None,
                 notes: Optional[List[Tuple[str, str]]] = None, gates: Optional[Dict[str, Gate]] = None):
        self.masks = masks
        self.gates = gates or {}
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
        gates: Dict[str, Gate] = {}
        skipped: List[Tuple[str, str]] = []
        notes: List[Tuple[str, str]] = []
        for path in sorted(folder.glob("*" + SUFFIX)):
            name = path.name[: -len(SUFFIX)]
            try:
                item: Any = load_gate(path) if kind_of(path) == "gate" else SadiMask.load(path)
                result = fit(item.model, have)
                if not result.problem and isinstance(item, Gate):
                    item.check_shape(hook.shape)
            except (SadiError, OSError) as e:
                skipped.append((path.name, str(e)))
                continue
            if result.problem:
                skipped.append((path.name, f"made for another model ({result.problem})"))
            elif isinstance(item, SadiMask) and hook.site_problem(item.site):
                skipped.append((path.name, hook.site_problem(item.site)))
            else:
                (gates if isinstance(item, Gate) else masks)[name] = item
                if result.note:
                    notes.append((path.name, result.note))
        return cls(masks, skipped, folder, notes, gates)

    def describe(self, name: str) -> Dict[str, Any]:
        if name in self.gates:
            g = self.gates[name]
            return {"id": name, "object": "sadi.gate", "layer": g.layer, "threshold": g.threshold, "n_pairs": g.n_pairs,
                    "pairs_sha256": g.pairs_sha256, "model": dict(g.model)}
        m = self.masks[name]
        return {
            "id": name, "object": "sadi.mask", "site": m.site, "top_k": m.top_k, "delta": m.delta,
            "positions": m.positions, "n_units": int(m.mean_diff.size), "n_pairs": m.n_pairs,
            "pairs_sha256": m.pairs_sha256, "model": dict(m.model),
        }

    def steer(self, spec: Any) -> Optional[Steer]:
        """Check a request's steering field and return it; None for no mask (unsteered). The field
        is one object {"mask", "delta", "top_k", "positions", "weighting"} (missing values come
        from the mask) or a list of up to MAX_PARTS of them, composed (their strengths add where
        they share a unit; one position policy for all). BadInputError's ``field`` names the part
        at fault (mask, delta, top_k, positions, weighting)."""
        if isinstance(spec, list):
            if not 1 <= len(spec) <= MAX_PARTS:
                raise BadInputError(f"a list of 1..{MAX_PARTS} steering objects, got {len(spec)}")
            parts = [self._part(item) for item in spec]
            if any(p is None for p in parts):
                raise BadInputError("every object of a steering list names its mask", field="mask")
        else:
            part = self._part(spec)
            if part is None:
                return None
            parts = [part]
        asked = {item.get("positions") for item in (spec if isinstance(spec, list) else [spec]) if item.get("positions") is not None}
        if len(asked) > 1:
            raise BadInputError(f"one position policy for all the masks of a request, got {sorted(map(str, asked))}", field="positions")
        positions = check_policy(asked.pop() if asked else self.masks[parts[0][0].mask].positions)
        named = {p.gate for p, _ in parts if p.gate is not None}  # type: ignore[misc]
        if len(named) > 1:
            raise BadInputError(f"one gate for the whole steering, got {sorted(named)}", field="gate")
        gate = self.gates[named.pop()] if named else None
        check_gated(positions, gate is not None)
        steerings = [made for _, made in parts]  # type: ignore[misc]
        steering = Steering.compose(steerings, gate=gate) if len(steerings) > 1 or gate is not None else steerings[0]
        return Steer(tuple(p for p, _ in parts), positions, steering, isinstance(spec, list))  # type: ignore[misc]

    def _part(self, spec: Any) -> Optional[Tuple[Part, Steering]]:
        if not isinstance(spec, dict):
            raise BadInputError("must be an object like {\"mask\": NAME, \"delta\": 9}, or a list of such objects")
        unknown = set(spec) - {"mask", "delta", "top_k", "positions", "weighting", "gate"}
        if unknown:
            raise BadInputError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}: use mask, delta, top_k, positions, weighting, gate")
        gate = spec.get("gate")
        if gate is not None and (not isinstance(gate, str) or gate not in self.gates):
            known = ", ".join(self.gates) or "none are loaded"
            raise BadInputError(f"unknown gate {gate!r} (GET /v1/masks lists them, object sadi.gate: {known})", field="gate")
        name = spec.get("mask")
        if name is None:
            if gate is not None:
                raise BadInputError("a gate gates a mask: name the mask it gates", field="mask")
            return None
        if not isinstance(name, str) or name not in self.masks:
            known = ", ".join(self.masks) or "none are loaded"
            raise BadInputError(f"unknown mask {name!r} (GET /v1/masks lists them: {known})", field="mask")
        mask = self.masks[name]
        top_k = spec.get("top_k", mask.top_k)
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= mask.mean_diff.size:
            raise BadInputError(f"top_k must be an integer in 1..{mask.mean_diff.size} for mask {name!r}, got {top_k!r}", field="top_k")
        weighting = spec.get("weighting", "uniform")
        if not isinstance(weighting, str):
            raise BadInputError(f"weighting must be a string, got {weighting!r}", field="weighting")
        chosen = mask if top_k == mask.top_k else mask.with_top_k(top_k)
        steering = Steering(chosen.units(), spec.get("delta", mask.delta), name=name, weights=chosen.weights(weighting))
        return Part(name, int(top_k), steering.delta, weighting, gate), steering
