"""What eval and tune compare: SADI and its baselines as steering configurations (Steering values).

- ``sadi``:     a' = a + delta * (M ⊙ a) on the mask's top-K units (the input's own activations);
- ``fixed``:    a' = a + alpha * (M ⊙ d), d the mean difference itself: a fixed steering vector on
                the same units (the paper's Table 4 ablation);
- ``random``:   SADI's scaling on K units of the same site drawn at random (seeded);
- ``caa``:      a' = a + alpha * d_L on the residual stream after layer L, d_L the mean residual
                difference (Rimsky et al.'s contrastive activation addition; llama.cpp control vectors).

All act at the position policy's rows (default: the last prompt token), so they are compared on
the same tokens; ``positions="all"`` is how llama.cpp applies a control vector.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.sites import Shape
from sadi_cpp.steering import Steering

METHODS = ("sadi", "fixed", "random", "caa")
FIXED_ALPHAS = (1.0, 2.0, 5.0, 10.0, 20.0)  # the scales tune tries for the fixed and CAA vectors


BASELINE = Steering(name="baseline")


def sadi(mask: Dict[str, np.ndarray], delta: float, name: str = "sadi") -> Steering:
    return Steering(mask, delta, name=name)


def fixed(shape: Shape, site: str, mask: np.ndarray, values: np.ndarray, alpha: float, name: str = "fixed") -> Steering:
    """Add alpha * mean difference on the masked units. ``values``: [n_layer, width] per-value differences."""
    unit_values = np.repeat(mask, shape.head_dim, axis=1) if site == "head" else mask
    if values.shape != unit_values.shape:
        raise BadInputError(f"the {site} differences have shape {values.shape}; the mask covers {unit_values.shape}")
    return Steering(add={site: (alpha * np.where(unit_values, values, 0.0)).astype(np.float32)}, name=name)


def random_units(shape: Shape, site: str, top_k: int, delta: float, seed: int = 0, name: str = "random") -> Steering:
    """SADI's scaling on ``top_k`` units of ``site`` drawn uniformly over all layers, seeded."""
    n_layer, n_units = shape.n_layer, shape.n_units(site)
    if not 1 <= top_k <= n_layer * n_units:
        raise BadInputError(f"top-k {top_k} is outside 1..{n_layer * n_units} for the {site} site", field="top_k")
    picks = np.random.default_rng(seed).choice(n_layer * n_units, size=top_k, replace=False)
    mask = np.zeros(n_layer * n_units, bool)
    mask[picks] = True
    return Steering({site: mask.reshape(n_layer, n_units)}, delta, name=name)


def caa(shape: Shape, directions: np.ndarray, alpha: float = 1.0, name: str = "caa") -> Steering:
    """Add alpha * directions [n_layer, n_embd] to the residual stream (zero rows: layer untouched)."""
    want = (shape.n_layer, shape.n_embd)
    if directions.shape != want:
        raise BadInputError(f"residual directions have shape {directions.shape}; this model needs {want}")
    return Steering(add={"residual": (alpha * directions).astype(np.float32)}, name=name)


def one_layer(directions: np.ndarray, layer: int) -> np.ndarray:
    """Keep one layer's direction, zero the others."""
    if not 0 <= layer < directions.shape[0]:
        raise BadInputError(f"layer {layer} is outside 0..{directions.shape[0] - 1}", field="layer")
    out = np.zeros_like(directions)
    out[layer] = directions[layer]
    return out
