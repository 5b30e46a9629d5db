"""A gate: a condition on the input that decides, per sequence, whether a steering acts at all::

    gate = load_gate("gemma.negative.gate.sadi.gguf")           # from sadi_cpp.masks.gate_file
    with hook.steering(mask, delta=9.0, gate=gate):
        text = hook.llm("...", max_tokens=20)
    hook.gate_result                                            # GateResult(score=0.31, fired=True)

The score is the cosine between the residual stream after layer ``layer`` at a sequence's deciding
row (the last prompt token) minus ``center`` and ``direction``: the mean difference between texts
that call for the steering and texts that do not (CAST's condition vector, centred on the
midpoint of the two means so that the common part of every residual does not dominate the angle).
The gate fires when the score is >= ``threshold``. The engine computes it inside the decode;
:meth:`Gate.score` is the same formula in numpy (the oracle the engine is tested against).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np

from sadi_cpp.errors import BadInputError

if TYPE_CHECKING:  # annotations only
    from sadi_cpp.sites import Shape


def _vector(values: Any, what: str) -> np.ndarray:
    v = np.array(values, dtype=np.float32)
    if v.ndim != 1 or v.size == 0 or not np.isfinite(v).all():
        raise BadInputError(f"a gate's {what} must be a finite one-dimensional vector, got shape {v.shape}", field="gate")
    v.flags.writeable = False
    return v


@dataclass(frozen=True, eq=False)
class Gate:
    """A condition (layer, direction, center, threshold) and where it came from. The threshold is
    kept as the float32 the engine compares with, so that Python and the engine agree on ``fired``."""

    layer: int
    direction: np.ndarray  # [n_embd]
    center: np.ndarray  # [n_embd]
    threshold: float
    name: str = ""
    model: Dict[str, Any] = field(default_factory=dict)  # the fingerprint of the model it was built on
    n_pairs: int = 0
    pairs_sha256: str = ""
    tool_version: str = ""
    tuned: str = ""  # JSON: how the threshold was chosen and what it gave (precision, recall)

    def __post_init__(self) -> None:
        if isinstance(self.layer, bool) or not isinstance(self.layer, (int, np.integer)) or self.layer < 0:
            raise BadInputError(f"a gate's layer must be an integer >= 0, got {self.layer!r}", field="gate")
        object.__setattr__(self, "layer", int(self.layer))
        direction, center = _vector(self.direction, "direction"), _vector(self.center, "center")
        if direction.shape != center.shape:
            raise BadInputError(f"a gate's direction {direction.shape} and center {center.shape} differ in size", field="gate")
        if not np.any(direction):
            raise BadInputError("a gate's direction is all zeros: the two sides of its pairs did not differ", field="gate")
        object.__setattr__(self, "direction", direction)
        object.__setattr__(self, "center", center)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float, np.floating, np.integer)) \
                or not math.isfinite(float(self.threshold)) or abs(float(self.threshold)) > 1.0:
            raise BadInputError(f"a gate's threshold is a cosine: a number in [-1, 1], got {self.threshold!r}", field="threshold")
        object.__setattr__(self, "threshold", float(np.float32(self.threshold)))

    def check_shape(self, shape: Shape) -> None:
        """BadInputError (field ``gate``) unless the gate fits a model of ``shape``."""
        if self.direction.size != shape.n_embd:
            raise BadInputError(f"the gate{self._named} is {self.direction.size} wide; this model's residual stream is "
                                f"{shape.n_embd}: it was built for another model", field="gate")
        if self.layer >= shape.n_layer - 1:
            raise BadInputError(f"the gate{self._named} reads layer {self.layer}; this model has {shape.n_layer} layers and a "
                                "gate must leave at least one layer above it to steer", field="gate")

    @property
    def _named(self) -> str:
        return f" '{self.name}'" if self.name else ""

    def score(self, residual: Any) -> np.ndarray:
        """The scores of residual rows [..., n_embd] taken after layer ``layer`` (float64): what the
        engine computes in the graph."""
        x = np.asarray(residual, dtype=np.float64) - self.center.astype(np.float64)
        d = self.direction.astype(np.float64)
        norm = np.linalg.norm(x, axis=-1) * np.linalg.norm(d)
        dot = x @ d
        return np.divide(dot, norm, out=np.zeros_like(dot), where=norm > 0)

    def fires(self, score: float) -> bool:
        return bool(score >= self.threshold)

    def with_threshold(self, threshold: float, tuned: str = "") -> "Gate":
        return replace(self, threshold=threshold, tuned=tuned)


@dataclass(frozen=True)
class GateResult:
    """What a gate decided for one sequence: its score and whether it fired (score >= threshold)."""

    score: float
    fired: bool

    def as_dict(self) -> Dict[str, Any]:
        return {"score": round(float(self.score), 6), "fired": bool(self.fired)}


def gate_result(gate: Optional[Gate], score: float) -> Optional[GateResult]:
    """The decision of ``gate`` for an engine score (NaN: the row was never scored)."""
    if gate is None or not math.isfinite(score):
        return None
    return GateResult(float(score), gate.fires(score))
