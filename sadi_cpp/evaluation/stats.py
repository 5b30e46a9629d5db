"""Paired comparison of two configurations on the same items: accuracy, difference, 95% bootstrap
intervals (percentile, items resampled with replacement, seeded) and the answers flipped."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError

N_BOOT = 2000


class Difference:
    """A comparison with unsteered whose ``diff_ci`` is the difference's 95% interval (mixed into
    dataclasses: ``as_dict`` is their fields plus ``significant``)."""

    diff_ci: Tuple[float, float]

    @property
    def significant(self) -> bool:
        """The interval of the difference excludes 0."""
        return self.diff_ci[0] > 0 or self.diff_ci[1] < 0

    def as_dict(self) -> Dict[str, Any]:
        d = asdict(self)  # type: ignore[call-overload]
        d["significant"] = self.significant
        return d


@dataclass
class Paired(Difference):
    n: int
    base_acc: float
    base_ci: Tuple[float, float]
    acc: float
    ci: Tuple[float, float]
    diff: float
    diff_ci: Tuple[float, float]
    gained: int  # answers wrong without steering, right with it
    lost: int  # answers right without steering, wrong with it


def paired(base: np.ndarray, other: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> Paired:
    """Compare two bool vectors of per-item correctness (same items, same order)."""
    base, other = np.asarray(base, float), np.asarray(other, float)
    if base.shape != other.shape or base.ndim != 1 or len(base) == 0:
        raise BadInputError("paired() needs two non-empty correctness vectors of one length")
    d = other - base

    def ci(x: np.ndarray) -> Tuple[float, float]:
        return mean_interval(x, n_boot, seed)[1]  # the same resamples for the three vectors

    return Paired(
        n=len(base), base_acc=float(base.mean()), base_ci=ci(base), acc=float(other.mean()), ci=ci(other),
        diff=float(d.mean()), diff_ci=ci(d), gained=int(((base == 0) & (other == 1)).sum()), lost=int(((base == 1) & (other == 0)).sum()),
    )


def mean_interval(values: np.ndarray, n_boot: int = N_BOOT, seed: int = 0) -> Tuple[float, Tuple[float, float]]:
    """The mean of the finite values of a per-item vector (nan: no value for that item) and its 95%
    percentile bootstrap interval, items resampled with replacement (seeded: the same resamples
    for every vector of the same length, so intervals of paired vectors match item for item)."""
    x = np.asarray(values, float)
    finite = np.isfinite(x)
    if x.ndim != 1 or not finite.any():
        return float("nan"), (float("nan"), float("nan"))
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    sums = np.where(finite, x, 0.0)[idx].sum(axis=1)
    counts = finite[idx].sum(axis=1)
    means = sums[counts > 0] / counts[counts > 0]
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(x[finite].mean()), (float(lo), float(hi))
