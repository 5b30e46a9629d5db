"""The settings eval-gen and tune-gen compare, made from files: SADI at several deltas, random
units at the same deltas, the fixed vector on the same units, CAA from pairs and a llama.cpp
control vector at several scales.

A control vector is applied as llama.cpp applies ``--control-vector``: added to every layer's
output at every token (``positions="all"``); the engine's addition equals llama.cpp's own
(tests/test_add.py, tests/test_eval_cli.py). The others act at the rows the policy names; for
generation that is usually ``last+generated`` (the prompt's last token and every generated one).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, List, Optional, Sequence

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.evaluation.interventions import caa, fixed, random_units
from sadi_cpp.gate import Gate
from sadi_cpp.generation.generate import Setting
from sadi_cpp.masks.cvec import read_cvec
from sadi_cpp.steering import Steering

if TYPE_CHECKING:  # annotations only: the hook and the mask are handed in, never made here
    from sadi_cpp.llama.hook import Hook
    from sadi_cpp.masks.mask import SadiMask


def sadi_settings(mask: SadiMask, deltas: Sequence[float], positions: str, weights: Any = None,
                  gate: Optional[Gate] = None) -> List[Setting]:
    return [Setting(f"sadi {d:g}", Steering(mask.units(), d, weights=weights, gate=gate), positions, "sadi", d) for d in deltas]


def random_settings(hook: Hook, mask: SadiMask, deltas: Sequence[float], positions: str, seed: int) -> List[Setting]:
    """The paper's random-identification control: SADI's scaling on as many units of the mask's
    site, drawn at random (seeded), at each delta. Shows what any edit of that size does."""
    return [Setting(f"random {d:g}", random_units(hook.shape, mask.site, mask.top_k, d, seed=seed), positions, "random", d)
            for d in deltas]


def fixed_settings(hook: Hook, mask: SadiMask, alphas: Sequence[float], positions: str, where: str = "") -> List[Setting]:
    """The paper's fixed-vector baseline: alpha x the mean difference added on the mask's units."""
    values = mask.value_table()
    if values is None:
        raise BadInputError(f"{where}: this head mask stores no per-value differences (made by an older sadi-cpp); rebuild it",
                            field="fixed")
    return [Setting(f"fixed {a:g}", fixed(hook.shape, mask.site, mask.mask, values, a), positions, "fixed", a) for a in alphas]


def caa_settings(hook: Hook, directions: np.ndarray, alphas: Sequence[float], positions: str) -> List[Setting]:
    """CAA: ``directions`` [n_layer, n_embd] (masks.build.directions_from_pairs: the mean residual
    difference of pairs after one layer) times each alpha."""
    return [Setting(f"caa {a:g}", caa(hook.shape, directions, a), positions, "caa", a) for a in alphas]


def cvec_settings(hook: Hook, path: Path, scales: Sequence[float]) -> List[Setting]:
    """A llama.cpp control vector at each scale, at every token as llama.cpp applies it."""
    dirs = read_cvec(path, hook.shape.n_layer, hook.shape.n_embd)
    return [Setting(f"cvec {s:g}", caa(hook.shape, dirs, s), "all", "cvec", s) for s in scales]


def check_strengths(values: Optional[Sequence[float]], option: str) -> List[float]:
    out = list(values or [])
    if len(set(out)) != len(out):
        raise BadInputError(f"{option} lists a value twice", field=option.lstrip("-").replace("-", "_"))
    return out


__all__ = ["caa_settings", "check_strengths", "cvec_settings", "fixed_settings", "random_settings", "sadi_settings"]
