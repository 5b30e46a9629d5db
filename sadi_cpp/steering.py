"""A steering configuration as one value, checked once where it is made and trusted below::

    Steering({"head": mask}, delta=9.0)            # a' = a + 9 * (M ⊙ a) on the masked heads
    Steering(mask, 9.0, weights={"head": w})       # a strength per unit: delta_u = 9 * w_u
    Steering.compose([(mask_a, 9.0), (mask_b, -4.0)])  # a' = a + (9 M_a + (-4) M_b) ⊙ a
    Steering(add={"residual": vectors})            # a fixed vector added (the baselines)
    Steering(mask, 9.0, gate=gate)                 # only for inputs where the gate fires (sadi_cpp.gate)

``mask`` maps a site to a bool array [n_layer, n_units(site)] (an object with ``units()``, e.g. a
loaded SADI mask, is taken too); ``add`` maps a site (``residual`` too) to float vectors
[n_layer, width(site)] added to the same rows after the scaling. Every masked unit u gets its own
strength delta_u (:attr:`Steering.strengths`): ``delta`` times its weight (1 without weights).
Whether the arrays fit a model is the one check left for the model (:meth:`Steering.units_for`,
:meth:`Steering.adds_for`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.gate import Gate
from sadi_cpp.sites import RECORD_SITES, Shape, check_site

# |delta| above this is refused: the paper's strengths stay below 100, and a huge factor drives
# activations (and the KV cache built from them) to infinity.
MAX_DELTA = 1e4


def check_delta(delta: Any) -> float:
    """delta as a float; BadInputError (field ``delta``) unless a finite number within ±MAX_DELTA."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating, np.integer)):
        raise BadInputError(f"delta must be a number, got {delta!r}", field="delta")
    value = float(delta)
    if not math.isfinite(value) or abs(value) > MAX_DELTA:
        raise BadInputError(f"delta must be a finite number within ±{MAX_DELTA:g}, got {delta!r}", field="delta")
    return value


def _masks(mask: Any) -> Dict[str, np.ndarray]:
    if mask is None:
        return {}
    if hasattr(mask, "units") and callable(mask.units):
        mask = mask.units()
    if not isinstance(mask, Mapping):
        raise BadInputError("a mask maps a site ('head', 'neuron', 'hidden', 'expert') to a bool array [n_layer, n_units]",
                            field="mask")
    out = {}
    for site, arr in mask.items():
        check_site(site)
        a = np.asarray(arr)
        if a.ndim != 2:
            raise BadInputError(f"the {site} mask has shape {a.shape}; it needs two dimensions (n_layer, n_units)", field="mask")
        if a.dtype != np.bool_:
            if not np.isin(a, (0, 1)).all():
                raise BadInputError(f"the {site} mask must hold only 0/1 or booleans", field="mask")
        b = a.astype(bool)  # a copy: the caller's array may change, this value does not
        b.flags.writeable = False
        out[site] = b
    return out


def _adds(add: Any) -> Dict[str, np.ndarray]:
    if add is None:
        return {}
    if not isinstance(add, Mapping):
        raise BadInputError("added vectors map a site to a float array [n_layer, width]", field="add")
    out = {}
    for site, arr in add.items():
        check_site(site, RECORD_SITES)
        a = np.array(arr, dtype=np.float32)
        if a.ndim != 2:
            raise BadInputError(f"the {site} vectors have shape {a.shape}; they need two dimensions (n_layer, width)", field="add")
        if not np.isfinite(a).all():
            raise BadInputError(f"the {site} vectors hold a NaN or an infinity", field="add")
        a.flags.writeable = False
        out[site] = a
    return out


def _weights(weights: Any, masks: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    if not weights:
        return {}
    if not isinstance(weights, Mapping):
        raise BadInputError("weights map a site to a float array [n_layer, n_units], like the mask", field="weights")
    out = {}
    for site, arr in weights.items():
        if site not in masks:
            raise BadInputError(f"weights for the {site} site, which the mask does not hold", field="weights")
        w = np.array(arr, dtype=np.float32)
        if w.shape != masks[site].shape or not np.isfinite(w).all():
            raise BadInputError(f"the {site} weights must be finite and of the mask's shape {masks[site].shape}, got {w.shape}",
                                field="weights")
        w.flags.writeable = False
        out[site] = w
    return out


@dataclass(frozen=True, eq=False)
class Steering:
    """a' = a + delta_u * a on each masked unit u (delta_u = delta x its weight, 1 without
    weights), then + the added vectors; ``name`` labels it in reports. Made only through its
    constructor (or :meth:`compose`), which checks every part."""

    mask: Mapping[str, np.ndarray] = field(default_factory=dict)
    delta: float = 0.0
    add: Mapping[str, np.ndarray] = field(default_factory=dict)
    name: str = ""
    weights: Mapping[str, np.ndarray] = field(default_factory=dict)
    gate: Optional[Gate] = None  # steer a sequence only when this gate fires on its prompt

    def __post_init__(self) -> None:
        if self.gate is not None and not isinstance(self.gate, Gate):
            raise BadInputError(f"gate must be a sadi_cpp.gate.Gate (load one with load_gate), got {type(self.gate).__name__}",
                                field="gate")
        object.__setattr__(self, "mask", _masks(self.mask))
        object.__setattr__(self, "delta", check_delta(self.delta))
        object.__setattr__(self, "add", _adds(self.add))
        object.__setattr__(self, "weights", _weights(self.weights, self.mask))
        strengths = {}
        for site, m in self.mask.items():
            s = np.where(m, np.float32(self.delta) * self.weights.get(site, np.float32(1.0)), np.float32(0.0)).astype(np.float32)
            worst = float(np.abs(s).max(initial=0.0))
            if worst > MAX_DELTA:
                raise BadInputError(f"a unit's strength would be {worst:g}; strengths stay within ±{MAX_DELTA:g}", field="delta")
            s.flags.writeable = False
            strengths[site] = s
        object.__setattr__(self, "strengths", strengths)

    @classmethod
    def compose(cls, parts: Sequence[Any], name: str = "", gate: Optional[Gate] = None) -> "Steering":
        """Several steerings at once: each part a Steering or a (mask, delta) pair. Where parts
        select the same unit their strengths add, a' = a + (sum_i delta_i M_i) ⊙ a; their
        added vectors add too. One ``gate`` decides for the whole composition (parts carry none)."""
        made = [p if isinstance(p, Steering) else _pair(p, i) for i, p in enumerate(parts)]
        if not made:
            raise BadInputError("a composition needs at least one part", field="mask")
        if any(p.gate is not None for p in made):
            raise BadInputError("the parts of a composition carry no gate: give one gate for the whole", field="gate")
        masks: Dict[str, np.ndarray] = {}
        totals: Dict[str, np.ndarray] = {}
        adds: Dict[str, np.ndarray] = {}
        for part in made:
            for site, m in part.mask.items():
                if site in masks and masks[site].shape != m.shape:
                    raise BadInputError(f"the parts' {site} masks differ in shape ({masks[site].shape}, {m.shape})", field="mask")
                masks[site] = masks[site] | m if site in masks else m
                totals[site] = totals[site] + part.strengths[site] if site in totals else part.strengths[site]
            for site, a in part.add.items():
                if site in adds and adds[site].shape != a.shape:
                    raise BadInputError(f"the parts' {site} vectors differ in shape", field="add")
                adds[site] = adds[site] + a if site in adds else a
        return cls(masks, 1.0, adds, name or " + ".join(p.name for p in made if p.name), weights=totals, gate=gate)

    @property
    def steers(self) -> bool:
        """True when it changes anything: a unit with a strength other than 0, or a non-zero vector."""
        return any(s.any() for s in self.strengths.values()) or any(a.any() for a in self.add.values())

    def units_for(self, shape: Shape) -> Dict[str, List[Tuple[int, List[int], List[float]]]]:
        """The units with a strength other than 0 and their strengths, per layer: {site:
        [(layer, units, deltas)]}; BadInputError when a mask does not fit ``shape``."""
        out: Dict[str, List[Tuple[int, List[int], List[float]]]] = {}
        for site, s in self.strengths.items():
            want = (shape.n_layer, shape.n_units(site))
            if s.shape != want:
                raise BadInputError(f"the {site} mask has shape {s.shape}; this model needs {want} (n_layer, n_units)", field="mask")
            rows = []
            for layer in range(shape.n_layer):
                idx = np.flatnonzero(s[layer])
                if idx.size:
                    rows.append((layer, idx.astype(int).tolist(), s[layer, idx].astype(float).tolist()))
            out[site] = rows
        return out

    def adds_for(self, shape: Shape) -> List[Tuple[str, int, np.ndarray]]:
        """The non-zero (site, layer, vector) rows; BadInputError when a vector does not fit ``shape``."""
        out = []
        for site, a in self.add.items():
            want = (shape.n_layer, shape.width(site))
            if a.shape != want:
                raise BadInputError(f"the {site} vectors have shape {a.shape}; this model needs {want} (n_layer, width)", field="add")
            out += [(site, layer, np.ascontiguousarray(a[layer])) for layer in range(want[0]) if a[layer].any()]
        return out


def _pair(part: Any, i: int) -> Steering:
    if not isinstance(part, (tuple, list)) or len(part) != 2:
        raise BadInputError(f"part {i + 1} of a composition must be a Steering or a (mask, delta) pair", field="mask")
    return Steering(part[0], part[1], name=str(getattr(part[0], "name", "") or ""))


def as_steering(mask: Any = None, delta: Any = 0.0, add: Any = None, gate: Optional[Gate] = None) -> Steering:
    """A Steering as given (already checked), a composition of a list of Steerings or (mask, delta)
    pairs, or one made from its parts; ``gate`` gates it (a Steering given with a gate of its own
    and another ``gate`` is refused)."""
    if isinstance(mask, (Steering, list)):
        if add is not None or delta not in (0, 0.0):
            raise BadInputError("give either a Steering or a list of (mask, delta) pairs, or a mask with delta and add; "
                                "not both", field="mask")
        if isinstance(mask, list):
            return Steering.compose(mask, gate=gate)
        if gate is None or gate is mask.gate:
            return mask
        if mask.gate is not None:
            raise BadInputError("this Steering has a gate already; give one gate", field="gate")
        return replace(mask, gate=gate)
    return Steering(mask if mask is not None else {}, delta, add if add is not None else {}, gate=gate)
