"""The hooked llama.cpp context (a llama-cpp-python LlamaContext whose decodes go through the
engine) and the guard that keeps one thread at a time in it."""

from __future__ import annotations

import contextlib
import ctypes
import threading
from typing import Any, Iterator, List, Sequence

import numpy as np
from llama_cpp import llama_cpp
from llama_cpp import _internals as internals
from llama_cpp._utils import suppress_stdout_stderr

from sadi_cpp.errors import LlamaError, SadiError, SteeringError, UnsupportedModelError
from sadi_cpp.positions import PositionTracker
from sadi_cpp.sites import SITES


def address(ptr: Any) -> int:
    """The native address behind a ctypes pointer; SadiError when it is null (a closed Llama)."""
    value = ctypes.cast(ptr, ctypes.c_void_p).value
    if not value:
        raise SadiError("the Llama has no native model or context (was it closed?)")
    return value


class Exclusive:
    """One thread at a time: llama.cpp contexts are not thread-safe. Re-entrant, so that the thread
    inside a generate may decode; another thread gets a clear error instead of a crash."""

    def __init__(self) -> None:
        self._lock = threading.RLock()

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if not self._lock.acquire(blocking=False):
            raise SadiError("this Llama is in use by another thread: llama.cpp contexts are not thread-safe; "
                            "give each thread its own Llama, or serialise the calls with a lock")
        try:
            yield
        finally:
            self._lock.release()


class HookedContext(internals.LlamaContext):
    """A LlamaContext whose decodes go through the engine. It holds a reference to the engine, so
    the engine (the callback's user_data) outlives the native context, whichever is dropped first."""

    def __init__(self, *, model: internals.LlamaModel, params: Any, verbose: bool, engine: Any,
                 tracker: PositionTracker, exclusive: Exclusive):
        self.engine = engine
        self._track = tracker
        self._exclusive = exclusive
        super().__init__(model=model, params=params, verbose=verbose)

    def decode(self, batch: internals.LlamaBatch) -> None:
        """Llama.eval's decode of one sequence: the position policy picks the rows."""
        b = batch.batch
        steer_rows, record_rows = self._track.rows(b.pos[0] if b.n_tokens > 0 else 0, b.n_tokens, self.engine.steering(0))
        steer_rows, decides = self._track.gate_rows(steer_rows)
        self.decode_rows(b, steer_rows, record_rows, steer_decide=[1] if decides else [])
        if decides:
            self._track.decided(float(self.engine.gate_scores()[0]))
        if steer_rows and (not decides or self._track.gate_result is not None and self._track.gate_result.fired):
            self._track.mark_steered(b.pos[steer_rows[0]])

    def decode_rows(self, batch: Any, steer_rows: List[int], record_rows: List[int], steer_configs: Sequence[int] = (),
                    record_slots: Sequence[int] = (), steer_decide: Sequence[int] = ()) -> None:
        """llama_decode a native batch with the engine steering and recording the given rows
        (steer_configs: each steered row's configuration, none given: configuration 0;
        record_slots: each recorded row's accumulator slot, none given: the recording's slot;
        steer_decide: 1 where a steered row decides its configuration's gate)."""
        with self._exclusive():
            # Recorded rows become output rows for this decode, so that layers which keep output
            # rows only (the last one) still hold them. Sampling reads the last output, which stays last.
            flags = batch.logits
            extra = [r for r in record_rows if not flags[r]]
            for r in extra:
                flags[r] = 1
            try:
                self.engine.begin_decode(ctypes.addressof(batch), steer_rows, record_rows, list(steer_configs), list(record_slots),
                                         list(steer_decide))
                rc = llama_cpp.llama_decode(self.ctx, batch)
                error = self.engine.end_decode()
            finally:
                for r in extra:
                    flags[r] = 0
        if error:
            raise SteeringError(error)
        if rc != 0:
            raise LlamaError(f"llama_decode returned {rc}")

    def probe(self, token: int) -> None:
        """Decode one token so the engine learns the graph's node names and shapes, then forget it."""
        batch = internals.LlamaBatch(n_tokens=1, embd=0, n_seq_max=1, verbose=False)
        try:
            batch.set_batch([token if token >= 0 else 0], n_past=0, logits_all=False)
            self.engine.begin_probe()
            rc = llama_cpp.llama_decode(self.ctx, batch.batch)
            self.engine.end_probe()
            if rc != 0:
                raise LlamaError(f"llama_decode returned {rc} while probing the model's graph")
        finally:
            batch.close()
            self.kv_cache_clear()

    def logits_row(self, row: int, n_vocab: int) -> Any:
        """The logits of output row ``row`` of the last decode as a numpy view, or None."""
        ptr = self.get_logits_ith(row)
        return np.ctypeslib.as_array(ptr, shape=(n_vocab,)) if ptr else None

    def logits_rows(self, rows: List[int], n_vocab: int) -> np.ndarray:
        """A copy of the logits [len(rows), n_vocab] of the last decode's output rows ``rows``."""
        out = np.empty((len(rows), n_vocab), np.float32)
        for k, i in enumerate(rows):
            out[k] = self.logits_row(i, n_vocab)
        return out

    def continuation(self, tokens: Sequence[int], n_past: int, n_vocab: int) -> Any:
        """Logits [len(tokens), n_vocab] of ``tokens`` decoded after ``n_past`` cached ones (counted
        as generated tokens); their KV entries are removed again."""
        n = len(tokens)
        batch = internals.LlamaBatch(n_tokens=n, embd=0, n_seq_max=1, verbose=False)
        try:
            batch.set_batch(list(tokens), n_past=n_past, logits_all=True)
            with self._track.as_generated():
                self.decode(batch)
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.ctx), shape=(n, n_vocab)).copy()
        finally:
            batch.close()
            self.kv_cache_seq_rm(-1, n_past, -1)


def swap_in_hooked_context(llm: Any, engine: Any, callback: Any, tracker: PositionTracker, exclusive: Exclusive,
                           max_sequences: int) -> HookedContext:
    """Replace ``llm``'s plain context by a HookedContext whose eval callback is ``callback`` with
    ``engine`` as user_data, and probe the graph; on failure the Llama gets a plain context back."""
    params = type(llm.context_params).from_buffer_copy(llm.context_params)
    params.cb_eval = callback
    params.cb_eval_user_data = ctypes.c_void_p(engine.address)
    params.kv_unified = True  # llama.cpp then splits batches into consecutive rows (row_map.hpp)
    # Several sequences per decode let build-mask evaluate many pairs at once (masks/contrast.py).
    # Cost: llama.cpp reserves n_seq_max rows of logits (n_vocab floats each) up front, and its
    # graph reservation needs n_seq_max <= n_ubatch.
    params.n_seq_max = max(int(params.n_seq_max), min(max_sequences, int(params.n_ubatch), int(llama_cpp.llama_max_parallel_sequences())))
    # Free the plain context first, so that the process never holds two KV caches at once.
    llm._ctx.close()
    try:
        # llama.cpp logs while it builds a context: quiet unless the Llama is verbose
        with suppress_stdout_stderr(disable=llm.verbose):
            ctx = HookedContext(model=llm._model, params=params, verbose=llm.verbose, engine=engine, tracker=tracker,
                                exclusive=exclusive)
        ctx.n_seq_max = int(params.n_seq_max)
        engine.set_n_ubatch(int(llama_cpp.llama_n_ubatch(ctx.ctx)))
        ctx.probe(llm.token_bos())
        if all(engine.site_problem(s) for s in SITES):
            ctx.close()
            raise UnsupportedModelError(engine.site_problem("head"))
    except BaseException:
        llm._ctx = internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=llm.verbose)
        raise
    llm._ctx = ctx
    return ctx


def token_piece(vocab: Any, token: int, special: bool = False) -> bytes:
    """The text piece of one token as bytes (special tokens give b'', as in a completion, unless
    ``special``: then their text, e.g. b'<end_of_turn>')."""
    size = 64
    while True:
        buf = ctypes.create_string_buffer(size)
        n = llama_cpp.llama_token_to_piece(vocab, int(token), buf, size, 0, special)
        if n >= 0:
            return buf.raw[:n]
        size = -n  # llama.cpp returns minus the size it needs


def longest_piece(vocab: Any, n_vocab: int) -> int:
    """The most bytes one token spells, control tokens' text included (0.25 s for 262k tokens)."""
    buf = ctypes.create_string_buffer(4096)
    return max(llama_cpp.llama_token_to_piece(vocab, t, buf, 4096, 0, True) for t in range(n_vocab))
