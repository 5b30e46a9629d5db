"""The paired comparison: counts, difference, and bootstrap intervals."""

import numpy as np

from sadi_cpp.evaluation.stats import paired


def test_paired_counts_and_intervals():
    base = np.array([1, 0, 0, 1, 0, 1, 0, 0] * 25, bool)
    other = base.copy()
    other[[1, 2, 9, 10, 17, 18, 25, 26]] = True  # 8 answers gained
    other[[0]] = False  # 1 lost
    r = paired(base, other)
    assert (r.gained, r.lost, r.n) == (8, 1, 200)
    assert np.isclose(r.diff, 7 / 200) and np.isclose(r.acc - r.base_acc, r.diff)
    assert r.diff_ci[0] <= r.diff <= r.diff_ci[1] and r.ci[0] <= r.acc <= r.ci[1]
    assert r.significant  # 8 vs 1 flips in 200 items: the interval excludes 0


def test_identical_runs_differ_by_exactly_nothing():
    base = np.random.default_rng(0).random(300) < 0.6
    r = paired(base, base)
    assert r.diff == 0 and r.diff_ci == (0.0, 0.0) and not r.significant and r.gained == r.lost == 0
