"""What eval and tune compare: SADI and its baselines as steering configurations of a Hook.

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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ContextManager, Dict, Optional, Tuple

import numpy as np

from sadi_cpp.masks.cvec import read_cvec
from sadi_cpp.errors import BadInputError
from sadi_cpp.llama.hook import Hook
from sadi_cpp.masks.mask import SadiMask

METHODS = ("sadi", "fixed", "random", "caa")
FIXED_ALPHAS = (1.0, 2.0, 5.0, 10.0, 20.0)  # the scales tune tries for the fixed and CAA vectors


def tuned_fixed_alpha(tuned: str) -> Optional[float]:
    """The fixed baseline's scale that tune chose on dev, from a mask's ``sadi.tuned`` JSON."""
    try:
        return float(json.loads(tuned)["fixed"]["alpha"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Intervention:
    name: str
    mask: Optional[Dict[str, np.ndarray]] = None  # {site: bool [n_layer, n_units]}
    delta: float = 0.0
    add: Optional[Dict[str, np.ndarray]] = None  # {site: float [n_layer, width]}

    def steering(self, hook: Hook, positions: str) -> ContextManager[Hook]:
        """``hook.steering`` with this configuration: in force within the block, undone after it."""
        return hook.steering(self.mask, self.delta, positions, add=self.add)


BASELINE = Intervention("baseline")


def sadi(mask: Dict[str, np.ndarray], delta: float, name: str = "sadi") -> Intervention:
    return Intervention(name, mask=mask, delta=float(delta))


def fixed(hook: Hook, site: str, mask: np.ndarray, values: np.ndarray, alpha: float, name: str = "fixed") -> Intervention:
    """Add alpha * mean difference on the masked units. ``values``: [n_layer, width] per-value differences."""
    unit_values = np.repeat(mask, hook.shape.head_dim, axis=1) if site == "head" else mask
    if values.shape != unit_values.shape:
        raise BadInputError(f"the {site} differences have shape {values.shape}; the mask covers {unit_values.shape}")
    return Intervention(name, add={site: (alpha * np.where(unit_values, values, 0.0)).astype(np.float32)})


def random_units(hook: Hook, site: str, top_k: int, delta: float, seed: int = 0, name: str = "random") -> Intervention:
    """SADI's scaling on ``top_k`` units of ``site`` drawn uniformly over all layers, seeded."""
    n_layer, n_units = hook.shape.n_layer, hook.n_units(site)
    if not 1 <= top_k <= n_layer * n_units:
        raise BadInputError(f"top-k {top_k} is outside 1..{n_layer * n_units} for the {site} site")
    picks = np.random.default_rng(seed).choice(n_layer * n_units, size=top_k, replace=False)
    mask = np.zeros(n_layer * n_units, bool)
    mask[picks] = True
    return Intervention(name, mask={site: mask.reshape(n_layer, n_units)}, delta=float(delta))


def caa(hook: Hook, directions: np.ndarray, alpha: float = 1.0, name: str = "caa") -> Intervention:
    """Add alpha * directions [n_layer, n_embd] to the residual stream (zero rows: layer untouched)."""
    want = (hook.shape.n_layer, hook.shape.n_embd)
    if directions.shape != want:
        raise BadInputError(f"residual directions have shape {directions.shape}; this model needs {want}")
    return Intervention(name, add={"residual": (alpha * directions).astype(np.float32)})


def one_layer(directions: np.ndarray, layer: int) -> np.ndarray:
    """Keep one layer's direction, zero the others."""
    if not 0 <= layer < directions.shape[0]:
        raise BadInputError(f"layer {layer} is outside 0..{directions.shape[0] - 1}")
    out = np.zeros_like(directions)
    out[layer] = directions[layer]
    return out



def from_files(
    hook: Hook, method: str, mask_path: Optional[Path], cvec_path: Optional[Path], delta: Optional[float],
    alpha: Optional[float], top_k: Optional[int], seed: int,
) -> Tuple[Intervention, Dict[str, Any]]:
    """The intervention ``eval`` compares with the baseline: ``method`` on a mask sidecar (sadi,
    fixed, random) or a control vector (caa). ``delta`` scales sadi and random (default: the
    mask's); ``alpha`` the added vector of fixed (default: the scale tune chose for it on the same
    dev items, kept in the mask's ``sadi.tuned`` record) and caa (default 1: the vector as stored;
    tune --method caa stores it with its tuned scale). Returns it with a description for reports."""
    if (mask_path is None) == (cvec_path is None):
        raise BadInputError("give exactly one of --mask (SADI, fixed, random) or --cvec (CAA control vector)")
    scales_delta = method in ("sadi", "random") and cvec_path is None
    if (delta is not None and not scales_delta) or (alpha is not None and scales_delta):
        raise BadInputError(f"--method {'caa' if cvec_path is not None else method} takes "
                            f"{'--delta' if scales_delta else '--alpha (the scale of the added vector)'}")
    if cvec_path is not None:
        if method not in ("sadi", "caa"):
            raise BadInputError(f"--method {method} needs --mask; a control vector is evaluated as caa")
        alpha = 1.0 if alpha is None else alpha
        dirs = read_cvec(cvec_path, hook.shape.n_layer, hook.shape.n_embd)
        return caa(hook, dirs, alpha), {"method": "caa", "cvec": str(cvec_path), "alpha": alpha}
    assert mask_path is not None
    m = SadiMask.load(mask_path)
    m.check_fits(hook)
    if top_k is not None:
        m = m.with_top_k(top_k)
    info: Dict[str, Any] = {"method": method, "mask": str(mask_path), "site": m.site, "top_k": m.top_k}
    if method == "sadi":
        d = m.delta if delta is None else delta
        return sadi(m.units(), d), dict(info, delta=d)
    if method == "random":
        d = m.delta if delta is None else delta
        iv = random_units(hook, m.site, m.top_k, d, seed=seed)
        units = np.argwhere(iv.mask[m.site]).tolist() if iv.mask else []
        return iv, dict(info, delta=d, seed=seed, units=[{"layer": int(l), "unit": int(u)} for l, u in units])
    if method == "fixed":
        values = m.value_table()
        if values is None:
            raise BadInputError(f"{mask_path}: this head mask stores no per-value differences (made by an older sadi-cpp); rebuild it")
        if alpha is None:
            alpha = tuned_fixed_alpha(m.tuned)
            if alpha is None:
                raise BadInputError(f"{mask_path}: no tuned scale for the fixed baseline in this mask (tune writes one); "
                                    f"give --alpha, e.g. one of tune's grid {', '.join(f'{a:g}' for a in FIXED_ALPHAS)}")
        return fixed(hook, m.site, m.mask, values, alpha), dict(info, alpha=alpha)
    raise BadInputError(f"unknown method '{method}' with --mask: use sadi, fixed or random")
