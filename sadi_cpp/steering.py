"""A steering configuration as one value, checked once where it is made and trusted below::

    Steering({"head": mask}, delta=9.0)            # a' = a + 9 * (M ⊙ a) on the masked heads
    Steering(add={"residual": vectors})            # a fixed vector added (the baselines)

``mask`` maps a site to a bool array [n_layer, n_units(site)] (an object with ``units()``, e.g. a
loaded SADI mask, is taken too); ``add`` maps a site (``residual`` too) to float vectors
[n_layer, width(site)] added to the same rows after the scaling. Whether the arrays fit a model is
the one check left for the model (:meth:`Steering.units_for`, :meth:`Steering.adds_for`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError
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


@dataclass(frozen=True, eq=False)
class Steering:
    """a' = a + delta * (M ⊙ a) on the masked units, then + the added vectors; ``name`` labels it
    in reports. Made only through its constructor, which checks every part."""

    mask: Mapping[str, np.ndarray] = field(default_factory=dict)
    delta: float = 0.0
    add: Mapping[str, np.ndarray] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "mask", _masks(self.mask))
        object.__setattr__(self, "delta", check_delta(self.delta))
        object.__setattr__(self, "add", _adds(self.add))

    @property
    def steers(self) -> bool:
        """True when it changes anything: a masked unit with delta != 0, or a non-zero vector."""
        return (self.delta != 0.0 and any(m.any() for m in self.mask.values())) or any(a.any() for a in self.add.values())

    def units_for(self, shape: Shape) -> Dict[str, List[Tuple[int, List[int]]]]:
        """The masked unit indices per layer, {site: [(layer, units)]}; BadInputError when a
        mask does not fit ``shape``."""
        out: Dict[str, List[Tuple[int, List[int]]]] = {}
        for site, a in self.mask.items():
            want = (shape.n_layer, shape.n_units(site))
            if a.shape != want:
                raise BadInputError(f"the {site} mask has shape {a.shape}; this model needs {want} (n_layer, n_units)", field="mask")
            out[site] = [(layer, np.flatnonzero(a[layer]).astype(int).tolist()) for layer in range(shape.n_layer) if a[layer].any()]
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


NONE = Steering(name="none")


def as_steering(mask: Any = None, delta: Any = 0.0, add: Any = None) -> Steering:
    """A Steering as given (already checked), or one made from its parts."""
    if isinstance(mask, Steering):
        if add is not None or delta not in (0, 0.0):
            raise BadInputError("give either a Steering, or a mask with delta and add; not both", field="mask")
        return mask
    return Steering(mask if mask is not None else {}, delta, add if add is not None else {})
