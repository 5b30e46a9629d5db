"""What a ``Hook.recording`` block reads: captured rows and streaming accumulators, as numpy."""

from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError, SadiError, UnsupportedModelError
from sadi_cpp.llama.batch import MAX_SLOTS
from sadi_cpp.sites import RECORD_SITES, Shape



class Recording:
    """Arrays are copies; the block's rows are in decode order.

    ``values(site)``: [n_rows, n_layer, width] float32 (head: n_head*head_dim values, heads
    contiguous; neuron: n_ff; hidden and residual: n_embd). NaN where the graph held no such row (a
    non-output token in a layer that keeps output rows only). ``units(site)``: the same reduced to
    SADI's units, heads averaged over head_dim. ``sums``/``counts``: the streaming accumulators.
    """

    def __init__(self, engine: Any, shape: Shape, sites: Tuple[str, ...]):
        self._engine = engine
        self._shape = shape
        self.sites = sites
        self._arrays: Dict[str, np.ndarray] = {}
        self._sums: Dict[Tuple[int, str], np.ndarray] = {}
        self._counts: Dict[Tuple[int, str], np.ndarray] = {}
        self.positions = np.zeros(0, dtype=np.int32)
        self._open = True

    @classmethod
    def start(cls, engine: Any, shape: Shape, sites: Tuple[str, ...], capture: bool) -> "Recording":
        """Tell the engine to record ``sites`` (UnsupportedModelError when the graph lacks one)."""
        engine.clear_records()
        try:
            for site in sites:
                engine.set_record(site, True)
        except ValueError as e:
            for site in RECORD_SITES:
                engine.set_record(site, False)
            raise UnsupportedModelError(str(e)) from None
        engine.set_capture(capture)
        return cls(engine, shape, sites)

    def set_slot(self, slot: int) -> None:
        """Accumulate the rows recorded from now on into accumulator ``slot`` (e.g. 0 positive, 1 negative)."""
        if not self._open:
            raise SadiError("this recording has ended")
        if not 0 <= slot < MAX_SLOTS:
            raise BadInputError(f"accumulator slot {slot} is outside 0..{MAX_SLOTS - 1}")
        self._engine.set_accumulate_slot(slot)

    def close(self, capture: bool) -> None:
        """Copy what the engine holds and stop recording; called once when the block ends."""
        engine = self._engine
        try:
            for site in self.sites:
                if capture:
                    self._arrays[site] = engine.captured(site)
                for slot in range(engine.n_slots):
                    self._sums[(slot, site)] = engine.sums(slot, site)
                    self._counts[(slot, site)] = engine.counts(slot, site)
            if capture:
                self.positions = engine.captured_positions()
        finally:
            self._open = False
            for site in RECORD_SITES:
                engine.set_record(site, False)
            engine.set_capture(False)
            engine.clear_records()

    def _need(self, site: str) -> None:
        if self._open:
            raise SadiError("read a recording after its `with` block has ended")
        if site not in self.sites:
            raise BadInputError(f"site '{site}' was not recorded (recorded: {', '.join(self.sites)})")

    def values(self, site: str) -> np.ndarray:
        self._need(site)
        if site not in self._arrays:
            raise SadiError("this recording kept no rows: use recording(capture=True)")
        return self._arrays[site]

    def units(self, site: str) -> np.ndarray:
        return self._shape.to_units(site, self.values(site))

    def sums(self, site: str, slot: int = 0) -> np.ndarray:
        """[n_layer, width] float64 sum of the rows accumulated into ``slot``."""
        self._need(site)
        if (slot, site) not in self._sums:
            raise SadiError(f"no accumulator slot {slot}: call set_slot({slot}) inside the block")
        return self._sums[(slot, site)]

    def counts(self, site: str, slot: int = 0) -> np.ndarray:
        """[n_layer] number of rows accumulated into ``slot`` per layer."""
        self.sums(site, slot)
        return self._counts[(slot, site)]
