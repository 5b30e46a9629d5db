"""The engine's steering configurations: number 0 (the one a ``steering`` block sets) and named
ones that batched decodes bind to sequences, each written from a checked :class:`Steering`; and
for gated ones, each bound sequence's gate decision (made at its first steered row)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Tuple

from sadi_cpp.errors import BadInputError, UnsupportedModelError
from sadi_cpp.gate import Gate, GateResult, gate_result

if TYPE_CHECKING:  # annotations only
    from sadi_cpp.sites import Shape
    from sadi_cpp.steering import Steering


class Configurations:
    def __init__(self, engine: Any, shape: Shape, n_seq_max: int):
        self.engine = engine
        self.shape = shape
        self.n_seq_max = n_seq_max
        self._named: Dict[str, int] = {}  # name -> engine configuration
        self._bound: Dict[int, int] = {}  # sequence id -> engine configuration
        self._gates: Dict[int, Gate] = {}  # engine configuration -> its gate
        self._decided: Dict[int, GateResult] = {}  # sequence id -> its gate's decision

    def write(self, config: int, steering: Steering) -> None:
        """Put ``steering`` into engine configuration ``config``; on a misfit it is left empty."""
        units = steering.units_for(self.shape)
        vectors = steering.adds_for(self.shape)
        if steering.gate is not None:
            steering.gate.check_shape(self.shape)
        self.clear(config)
        try:
            if steering.gate is not None:
                g = steering.gate
                self.engine.set_gate(config, g.layer, g.direction.tolist(), g.center.tolist(), g.threshold)
                self._gates[config] = g
            for site, per_layer in units.items():
                for layer, idx, deltas in per_layer:
                    self.engine.set_mask(config, site, layer, idx, deltas)
            for site, layer, vec in vectors:
                self.engine.set_add(config, site, layer, vec)
        except ValueError as e:  # the engine refuses a site this model's graph lacks
            self.clear(config)
            raise UnsupportedModelError(str(e)) from None

    def clear(self, config: int) -> None:
        self.engine.clear_mask(config)
        self.engine.clear_adds(config)
        self.engine.clear_gate(config)
        self._gates.pop(config, None)
        self._decided = {s: d for s, d in self._decided.items() if self._bound.get(s) != config}

    def configure(self, name: str, steering: Steering) -> str:
        """Register (or replace) the configuration ``name``."""
        if not isinstance(name, str) or not name:
            raise BadInputError(f"a configuration needs a non-empty name, got {name!r}", field="name")
        config = self._named[name] if name in self._named else self.engine.new_config()
        try:
            self.write(config, steering)
        except BaseException:
            if name not in self._named:
                self.engine.free_config(config)
            raise
        self._named[name] = config
        return name

    def remove(self, name: str) -> None:
        """Forget a configuration; sequences bound to it become unsteered."""
        config = self._config(name)
        self.clear(config)
        self.engine.free_config(config)
        del self._named[name]
        self._bound = {s: c for s, c in self._bound.items() if c != config}

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(self._named)

    def _config(self, name: str) -> int:
        if name not in self._named:
            known = ", ".join(self._named) or "none"
            raise BadInputError(f"no steering configuration named {name!r} (configured: {known})", field="name")
        return self._named[name]

    def check_seq(self, seq: int) -> None:
        if not 0 <= seq < self.n_seq_max:
            raise BadInputError(f"sequence id {seq} is outside 0..{self.n_seq_max - 1}", field="seq")

    def bind(self, seq: int, name: Optional[str]) -> None:
        self.check_seq(seq)
        self._decided.pop(seq, None)  # a new binding: its gate decides again
        if name is None:
            self._bound.pop(seq, None)
        else:
            self._bound[seq] = self._config(name)

    def bound(self, seq: int) -> Optional[int]:
        """The engine configuration bound to ``seq``, or None."""
        return self._bound.get(seq)

    def plan(self, seq: int) -> Optional[Tuple[int, bool]]:
        """How a steered row of ``seq`` is decoded: (configuration, whether it decides the gate),
        or None when it is not steered (unbound, or its gate did not fire)."""
        config = self._bound.get(seq)
        if config is None or config not in self._gates:
            return None if config is None else (config, False)
        done = self._decided.get(seq)
        if done is None:
            return config, True
        return (config, False) if done.fired else None

    def decided(self, seq: int, score: float) -> None:
        result = gate_result(self._gates.get(self._bound.get(seq, -1)), score)
        if result is not None:
            self._decided[seq] = result

    def decision(self, seq: int) -> Optional[GateResult]:
        return self._decided.get(seq)
