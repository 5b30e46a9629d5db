"""Grid search of (K, delta) on a dev set, from statistics gathered once (SADI's hyper-parameter
search, and the same for each baseline so that it is compared at its best too).

Rows of the grid are K (units kept) for sadi, fixed and random, and the layer for caa; columns
are delta for sadi and random, and the added vector's scale alpha for fixed and caa.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from sadi_cpp.data.mcdata import MCItem
from sadi_cpp.errors import BadInputError
from sadi_cpp.gate import Gate
from sadi_cpp.evaluation.interventions import BASELINE, FIXED_ALPHAS, METHODS, caa, fixed, one_layer, random_units, sadi
from sadi_cpp.evaluation.verdict import AnswerBias, SelectionCheck, answer_bias, bias_dict, selection_check
from sadi_cpp.masks.cvec import default_cvec_path, write_cvec
from sadi_cpp.masks.mask import default_mask_path, mask_from_contrast, select_top_k
from sadi_cpp.positions import DEFAULT_POLICY
from sadi_cpp.scoring.score import Scores, score_items
from sadi_cpp.sites import DEFAULT_GRIDS, Shape
from sadi_cpp.steering import Steering, check_delta

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook
    from sadi_cpp.masks.contrast import Contrast

ALPHA_GRID = list(FIXED_ALPHAS)


def check_grid(method: str, rows: Optional[Sequence[Any]], cols: Optional[Sequence[float]], shape: Shape,
               site: str = "head") -> Tuple[List[Any], List[float]]:
    """A tune grid checked against the model before any decode: the defaults where an axis is not
    given; K in 1..units of the site (caa: layers 1..n_layer-1); deltas finite within ±MAX_DELTA,
    scales finite. BadInputError names the axis (``k_grid``, ``delta_grid``)."""
    if method not in METHODS:
        raise BadInputError(f"unknown method '{method}': use one of {', '.join(METHODS)}", field="method")
    d_rows, d_cols = default_grid(method, site, shape.n_layer)
    rows = list(d_rows if rows is None else rows)
    cols = [float(c) for c in (d_cols if cols is None else cols)]
    if not rows or not cols:
        raise BadInputError("empty grid: give at least one value for each axis", field="k_grid" if not rows else "delta_grid")
    if method == "caa":
        bad = [r for r in rows if not 1 <= int(r) < shape.n_layer]
        if bad:
            raise BadInputError(f"layers {bad} are outside 1..{shape.n_layer - 1} (control vectors cannot steer layer 0)", field="k_grid")
    else:
        n = shape.n_layer * shape.n_units(site)
        bad = [r for r in rows if not 1 <= int(r) <= n]
        if bad:
            raise BadInputError(f"K {bad} outside 1..{n} (the {site} units of this model)", field="k_grid")
    for c in cols:
        if method in ("sadi", "random"):
            try:
                check_delta(c)
            except BadInputError as e:
                raise BadInputError(str(e), field="delta_grid") from None
        elif not math.isfinite(c):
            raise BadInputError(f"scale {c} is not a finite number", field="delta_grid")
    return rows, cols


def default_grid(method: str, site: str, n_layer: int) -> tuple:
    if method == "caa":
        # about five layers spread over 1..n_layer-1 (llama.cpp control vectors skip layer 0)
        return sorted({int(round(x)) for x in np.linspace(1, n_layer - 1, 7)[1:-1]}), ALPHA_GRID
    ks, deltas = DEFAULT_GRIDS[site]
    if method in ("sadi", "random"):
        return ks, deltas
    return ks, ALPHA_GRID  # fixed


@dataclass
class TuneResult:
    method: str
    site: str
    rows: List[Any]  # K, or the layer for caa
    cols: List[float]  # delta, or alpha
    accuracy: np.ndarray  # [len(rows), len(cols)]
    baseline: float
    n_dev: int
    normalize: bool
    positions: str
    scores: Optional[Scores] = field(default=None, repr=False)
    check: Optional[SelectionCheck] = None  # is the best cell better than the baseline, held out?
    baseline_answers: Optional[AnswerBias] = None
    best_answers: Optional[AnswerBias] = None

    def cell(self, index: int) -> tuple:
        """(row, col) of cell ``index`` in row-major order."""
        r, c = divmod(index, len(self.cols))
        return self.rows[r], self.cols[c]

    @property
    def best(self) -> tuple:
        """(row, col) of the best cell; ties go to the first in row-major order."""
        r, c = np.unravel_index(int(np.argmax(self.accuracy)), self.accuracy.shape)
        return self.rows[r], self.cols[c]

    @property
    def best_accuracy(self) -> float:
        return float(self.accuracy.max())

    def as_dict(self) -> Dict[str, Any]:
        row_name = "layer" if self.method == "caa" else "top_k"
        col_name = "delta" if self.method in ("sadi", "random") else "alpha"
        best = self.best
        return {
            "method": self.method, "site": self.site, "rows": row_name, "cols": col_name, row_name + "_grid": self.rows,
            col_name + "_grid": self.cols, "accuracy": self.accuracy.round(6).tolist(), "baseline": self.baseline,
            "best": {row_name: best[0], col_name: best[1], "accuracy": self.best_accuracy},
            "n_dev": self.n_dev, "normalize": self.normalize, "positions": self.positions,
            "answers": {"baseline": self.baseline_answers and bias_dict(self.baseline_answers),
                        "best": self.best_answers and bias_dict(self.best_answers)},
            "constant_baseline": bool(self.baseline_answers and self.baseline_answers.constant),
            "check": self.check and dict(self.check.as_dict(), picks=[
                None if p < 0 else {row_name: self.cell(p)[0], col_name: self.cell(p)[1]} for p in self.check.picks]),
            "improves": bool(self.check and self.check.improves),
        }


def config_for(hook: Hook, contrast: Contrast, method: str, site: str, row: Any, col: float, rank_by: str = "signed", seed: int = 0) -> Steering:
    """The steering of one grid cell."""
    name = f"{method}:{row}:{col:g}"
    if method == "caa":
        return caa(hook.shape, one_layer(contrast.diffs["residual"], int(row)), col, name=name)
    if method == "random":
        return random_units(hook.shape, site, int(row), col, seed=seed, name=name)
    mask = select_top_k(contrast.units(hook, site), int(row), rank_by)
    if method == "sadi":
        return sadi({site: mask}, col, name=name)
    return fixed(hook.shape, site, mask, contrast.diffs[site], col, name=name)


def tune(
    hook: Hook,
    contrast: Contrast,
    dev: Sequence[MCItem],
    method: str = "sadi",
    site: str = "head",
    rows: Optional[Sequence[Any]] = None,
    cols: Optional[Sequence[float]] = None,
    rank_by: str = "signed",
    normalize: bool = False,
    positions: str = DEFAULT_POLICY,
    seed: int = 0,
    progress: Optional[Callable[[int], None]] = None,
    compose_with: Optional[Steering] = None,
    gate: Optional[Gate] = None,
) -> TuneResult:
    """Score the dev items under the baseline and every grid cell in one pass (see sadi_cpp.scoring).
    ``rows``/``cols``: the grid, as :func:`check_grid` returns it (it fills in the defaults per
    method and site); check it before gathering the statistics, so that a bad grid costs no decode.

    sadi only: ``compose_with``, a steering every cell is composed with (its strengths add to the
    cell's), which is then also the baseline the cells are compared with (it alone); ``gate``,
    a gate on every cell (the composition included)."""
    if (compose_with is not None or gate is not None) and method != "sadi":
        raise BadInputError(f"composing and gating are for --method sadi, not {method}", field="method")
    if rows is None or cols is None:
        d_rows, d_cols = default_grid(method, site, hook.shape.n_layer)
        rows, cols = (d_rows if rows is None else rows), (d_cols if cols is None else cols)
    need = "residual" if method == "caa" else site
    if need not in contrast.diffs:
        raise BadInputError(f"the statistics hold no {need} differences; gather them with sites including '{need}'")
    cells = [config_for(hook, contrast, method, site, r, c, rank_by, seed) for r in rows for c in cols]
    if compose_with is not None or gate is not None:
        cells = [Steering.compose([compose_with, cell] if compose_with is not None else [cell], name=cell.name, gate=gate)
                 for cell in cells]
    configs: List[Steering] = [compose_with if compose_with is not None else BASELINE] + cells
    scores = score_items(hook, dev, configs, positions=positions, progress=progress)
    correct = scores.correct(normalize)
    acc = correct.mean(axis=1)
    result = TuneResult(method, site, rows, cols, acc[1:].reshape(len(rows), len(cols)), float(acc[0]), len(dev),
                        normalize, positions, scores)
    predictions = scores.predictions(normalize)
    n_choices = scores.logprob.shape[2]
    result.check = selection_check(correct)
    result.baseline_answers = answer_bias(predictions[0], n_choices)
    result.best_answers = answer_bias(predictions[1 + int(np.argmax(acc[1:]))], n_choices)
    return result


def tune_fixed_baseline(
    hook: Hook,
    contrast: Contrast,
    result: TuneResult,
    dev: Sequence[MCItem],
    rank_by: str = "signed",
    progress: Optional[Callable[[int], None]] = None,
) -> Dict[str, Any]:
    """The fixed-vector baseline at its best on the same dev items, on the units of SADI's best
    cell: every scale of ALPHA_GRID scored; the best one is what eval compares with by default."""
    top_k = int(result.best[0])
    configs = [config_for(hook, contrast, "fixed", result.site, top_k, a, rank_by) for a in ALPHA_GRID]
    scores = score_items(hook, dev, configs, positions=result.positions, progress=progress)
    acc = scores.correct(result.normalize).mean(axis=1)
    return {"top_k": top_k, "alpha_grid": ALPHA_GRID, "accuracy": acc.round(6).tolist(),
            "alpha": ALPHA_GRID[int(np.argmax(acc))], "best_accuracy": float(acc.max())}


def save_tuned(
    hook: Hook,
    contrast: Contrast,
    result: TuneResult,
    record: Dict[str, Any],
    train_path: Union[str, Path],
    output: Optional[Union[str, Path]] = None,
    rank_by: str = "signed",
) -> Optional[Path]:
    """Write what tune chose: a SADI sidecar (with the run's ``record`` as its ``sadi.tuned``
    JSON) for sadi, a llama.cpp control vector for caa; nothing for the fixed and random ablations.
    ``output`` defaults to beside the model. Returns the path written, or None."""
    best_row, best_col = result.best
    if result.method == "sadi":
        m = mask_from_contrast(hook, contrast, result.site, int(best_row), best_col, rank_by)
        m.positions = result.positions
        m.tuned = json.dumps(record, sort_keys=True)
        return m.save(output or default_mask_path(hook.model_path, train_path, result.site))
    if result.method == "caa":
        target = output or default_cvec_path(hook.model_path, train_path)
        return write_cvec(best_col * one_layer(contrast.diffs["residual"], int(best_row)), target, hook.shape.arch)
    return None
