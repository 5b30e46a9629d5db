"""Install the steering engine into a llama-cpp-python ``Llama`` and drive it.

``attach(llm)`` swaps the Llama's context for one whose eval callback is the C++ engine, so every
llama-cpp-python idiom (``llm(...)``, ``create_completion``, ``create_chat_completion``, ``eval``)
keeps working, now readable and steerable::

    hook = sadi_cpp.attach(Llama(model_path, verbose=False))
    with hook.steering({"head": mask}, delta=9.0):      # mask: bool array [n_layer, n_head]
        print(hook.llm("Q: Is the sky blue?\\nA:", max_tokens=8)["choices"][0]["text"])
    with hook.recording(sites=("head",)) as rec:
        hook.llm.eval(hook.llm.tokenize(b"Hello"))
    rec.units("head").shape                              # (1, n_layer, n_head)

This is the one module that touches llama-cpp-python's internals (its ``_internals`` context and
batch classes, the Llama's private fields); the rest of sadi-cpp uses the Hook's public methods.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import threading
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from llama_cpp import Llama, llama_cpp
from llama_cpp import _internals as internals
from llama_cpp._utils import suppress_stdout_stderr

from sadi_cpp.llama.runtime import load_core
from sadi_cpp.errors import BadInputError, LlamaError, SadiError, SteeringError, UnsupportedModelError
from sadi_cpp.models import resolve_model
from sadi_cpp.positions import DEFAULT_POLICY, PositionTracker, check_policy
from sadi_cpp.llama.recording import MAX_SLOTS, Recording
from sadi_cpp.sites import RECORD_SITES, SITES, Shape, check_adds, check_site, masks_to_units

_core = load_core()

MAX_SEQUENCES = 64  # sequences the hooked context accepts in one decode
# |delta| above this is refused: the paper's strengths stay below 100, and a huge factor drives
# activations (and the KV cache built from them) to infinity.
MAX_DELTA = 1e4


class BatchRow(NamedTuple):
    """One row of :meth:`Hook.decode`: a token at a position in one or more sequences; ``steer``:
    edit it with its sequence's configuration; ``record``: the accumulator slot an active
    recording adds it to (-1: not recorded)."""

    token: int
    pos: int
    seqs: Tuple[int, ...]
    steer: bool = False
    record: int = -1


def _one_thread(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a Hook method holding the hook (see Hook._exclusive)."""

    @functools.wraps(method)
    def run(self: "Hook", *args: Any, **kwargs: Any) -> Any:
        with self._exclusive():
            return method(self, *args, **kwargs)

    return run


def _address(ptr: Any) -> int:
    value = ctypes.cast(ptr, ctypes.c_void_p).value
    if not value:
        raise SadiError("the Llama has no native model or context (was it closed?)")
    return value


class HookedContext(internals.LlamaContext):
    """A LlamaContext whose decodes go through the engine. It owns a reference to the engine, so the
    engine (the callback's user_data) outlives the native context, whichever is dropped first."""

    def __init__(self, *, model: internals.LlamaModel, params: Any, verbose: bool, hook: "Hook"):
        self.engine = hook.engine
        self._hook = hook
        super().__init__(model=model, params=params, verbose=verbose)

    def decode(self, batch: internals.LlamaBatch) -> None:
        b = batch.batch
        track = self._hook._track
        steer_rows, record_rows = track.rows(b.pos[0] if b.n_tokens > 0 else 0, b.n_tokens, self.engine.steering(0))
        self.decode_rows(b, steer_rows, record_rows)
        if steer_rows:
            track.mark_steered(b.pos[steer_rows[0]])

    def decode_rows(self, batch: Any, steer_rows: List[int], record_rows: List[int], steer_configs: Sequence[int] = (),
                    record_slots: Sequence[int] = ()) -> None:
        """llama_decode a native batch with the engine steering and recording the given rows
        (steer_configs: each steered row's configuration, none given: configuration 0;
        record_slots: each recorded row's accumulator slot, none given: the recording's slot)."""
        with self._hook._exclusive():
            self._decode_rows(batch, steer_rows, record_rows, list(steer_configs), list(record_slots))

    def _decode_rows(self, batch: Any, steer_rows: List[int], record_rows: List[int], steer_configs: List[int],
                     record_slots: List[int]) -> None:
        # Recorded rows become output rows for this decode, so that layers which keep output rows
        # only (the last one) still hold them. Sampling reads the last output, which stays last.
        flags = batch.logits
        extra = [r for r in record_rows if not flags[r]]
        for r in extra:
            flags[r] = 1
        try:
            self.engine.begin_decode(ctypes.addressof(batch), steer_rows, record_rows, steer_configs, record_slots)
            rc = llama_cpp.llama_decode(self.ctx, batch)
            error = self.engine.end_decode()
        finally:
            for r in extra:
                flags[r] = 0
        if error:
            raise SteeringError(error)
        if rc != 0:
            raise LlamaError(f"llama_decode returned {rc}")


class Hook:
    """The steering engine installed in one ``Llama``. Create with :func:`attach` or :func:`load`."""

    def __init__(self, llm: Llama, *, force_copy: bool = False):
        if not isinstance(llm, Llama):
            raise BadInputError(f"attach() needs a llama_cpp.Llama, got {type(llm).__name__}")
        if getattr(llm, "_sadi_hook", None) is not None:
            raise SadiError("this Llama already has a sadi-cpp hook: use that one, or detach() it first")
        if getattr(llm, "_lora_adapter", None) is not None:
            raise UnsupportedModelError("a Llama loaded with a LoRA adapter cannot be hooked (the adapter would be lost)")
        self.llm = llm
        self.engine = _core.Engine(_address(llm._model.model))
        self.engine.force_copy = force_copy
        self.shape = Shape.from_engine(self.engine.shape)
        self._track = PositionTracker()
        self._steering_args: Optional[Tuple[Any, ...]] = None  # what set_steering was last given
        self._configs: Dict[str, Tuple[int, str]] = {}  # name -> (engine configuration, positions)
        self._bound: Dict[int, int] = {}  # sequence id -> engine configuration
        self._batch: Optional[internals.LlamaBatch] = None
        self._detached = False
        self._closed = False
        # One thread at a time: llama.cpp contexts are not thread-safe. Re-entrant, so that the
        # thread inside a generate may decode; another thread gets a clear error, not a crash.
        self._lock = threading.RLock()
        self._orig_eval = llm.eval
        self._orig_generate = llm.generate

        plain_ctx = llm._ctx
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(_core.Engine.callback_address)
        params.cb_eval = self._callback
        params.cb_eval_user_data = ctypes.c_void_p(self.engine.address)
        params.kv_unified = True  # llama.cpp then splits batches into consecutive rows (row_map.hpp)
        # Several sequences per decode let build-mask evaluate many pairs at once (contrast.py).
        # Cost: llama.cpp reserves n_seq_max rows of logits (n_vocab floats each) up front, and
        # its graph reservation needs n_seq_max <= n_ubatch.
        params.n_seq_max = max(int(params.n_seq_max), min(MAX_SEQUENCES, int(params.n_ubatch), int(llama_cpp.llama_max_parallel_sequences())))
        self.n_seq_max = int(params.n_seq_max)
        # Free the plain context first, so that the process never holds two KV caches at once;
        # on failure the Llama gets a new plain context back.
        plain_ctx.close()
        try:
            # llama.cpp logs while it builds a context: quiet unless the Llama is verbose
            with suppress_stdout_stderr(disable=llm.verbose):
                self._ctx = HookedContext(model=llm._model, params=params, verbose=llm.verbose, hook=self)
            self.engine.set_n_ubatch(int(llama_cpp.llama_n_ubatch(self._ctx.ctx)))
            self._probe()
            if all(self.engine.site_problem(s) for s in SITES):
                self._ctx.close()
                raise UnsupportedModelError(self.engine.site_problem("head"))
        except BaseException:
            llm._ctx = internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=llm.verbose)
            raise

        llm._ctx = self._ctx
        llm.eval = self._eval
        llm.generate = self._generate
        llm._sadi_hook = self
        # Llama.close() frees the model: free our context first (its exit stack runs last-in,
        # first-out) and refuse every later use instead of touching freed memory.
        llm._stack.callback(self._on_llama_close)
        llm.reset()

    # ---- installation ----

    def _probe(self) -> None:
        """Decode one token so the engine sees the graph's node names and shapes, then forget it."""
        batch = internals.LlamaBatch(n_tokens=1, embd=0, n_seq_max=1, verbose=False)
        try:
            token = self.llm.token_bos()
            batch.set_batch([token if token >= 0 else 0], n_past=0, logits_all=False)
            self.engine.begin_probe()
            rc = llama_cpp.llama_decode(self._ctx.ctx, batch.batch)
            self.engine.end_probe()
            if rc != 0:
                raise LlamaError(f"llama_decode returned {rc} while probing the model's graph")
        finally:
            batch.close()
            self._ctx.kv_cache_clear()

    def _on_llama_close(self) -> None:
        if self._detached or self._closed:
            return
        self._closed = True
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        self._ctx.close()
        for name in ("tokenize", "detokenize"):  # llama-cpp-python would read the freed vocabulary
            setattr(self.llm, name, self._refuse_closed)

    def _refuse_closed(self, *args: Any, **kwargs: Any) -> Any:
        raise SadiError("this Llama was closed: load the model again")

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Hold the hook for one thread; another thread gets a clear error instead of a crash."""
        if not self._lock.acquire(blocking=False):
            raise SadiError("this Llama is in use by another thread: llama.cpp contexts are not thread-safe; "
                            "give each thread its own Llama, or serialise the calls with a lock")
        try:
            yield
        finally:
            self._lock.release()

    def detach(self) -> None:
        """Give the Llama a plain context back (no callback, an empty KV cache)."""
        if self._detached or self.llm._sadi_hook is not self:
            return
        self._detached = True
        if self._closed:  # Llama.close() already freed our context and the model
            del self.llm.eval, self.llm.generate, self.llm.tokenize, self.llm.detokenize
            self.llm._sadi_hook = None
            return
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        self._ctx.close()
        if self.llm._model.model is not None:  # a closed Llama gets no new context
            self.llm._ctx = internals.LlamaContext(
                model=self.llm._model, params=self.llm.context_params, verbose=self.llm.verbose
            )
        del self.llm.eval
        del self.llm.generate
        self.llm._sadi_hook = None
        self.llm.reset()

    def _live(self) -> None:
        """Refuse to touch native state that is gone: a detached hook, a closed Llama."""
        if self._detached:
            raise SadiError("this hook was detached: attach the Llama again (sadi_cpp.attach) to steer it")
        if self._closed or self.llm._model.model is None or self._ctx.ctx is None:
            raise SadiError("the Llama of this hook was closed: load the model again")

    @property
    def sites(self) -> Tuple[str, ...]:
        """The sites this model's graph allows to read and steer."""
        return tuple(s for s in SITES if not self.engine.site_problem(s))

    def site_problem(self, site: str) -> str:
        """'' when ``site`` can be read and steered on this model, else why not (names the tensor)."""
        return self.engine.site_problem(check_site(site, RECORD_SITES))

    def n_units(self, site: str) -> int:
        return self.shape.n_units(site)

    def width(self, site: str) -> int:
        """Values in one row of the site's tensor (heads: n_head * head_dim)."""
        return self.shape.width(site)

    def to_units(self, site: str, values: np.ndarray) -> np.ndarray:
        """Reduce site values [..., width] to SADI units: heads become their mean over head_dim."""
        return self.shape.to_units(site, values)

    @property
    def n_ctx(self) -> int:
        """Tokens the context holds (Llama sizes its token buffers by context_params.n_ctx)."""
        return min(self.llm.n_ctx(), int(self.llm.context_params.n_ctx))

    @property
    def model_path(self) -> str:
        return self.llm.model_path

    # ---- steering ----

    @contextlib.contextmanager
    def steering(
        self,
        mask: Optional[Mapping[str, Any]] = None,
        delta: float = 0.0,
        positions: str = DEFAULT_POLICY,
        add: Optional[Mapping[str, Any]] = None,
    ) -> Iterator["Hook"]:
        """Within the block, a' = a + delta * a on the masked units at the policy's positions.

        ``mask`` maps a site to a bool array [n_layer, n_units(site)] (or an object with
        ``units()`` returning such a mapping, e.g. a loaded SADI mask). ``add`` maps a site
        (``residual`` too) to float vectors [n_layer, width(site)] added to the same rows after the
        scaling: the fixed-vector and CAA baselines; all-zero layers are skipped. When the block
        ends, the steering that was in force before it is back (none, or an outer block's) and the
        KV cache entries the block's configuration touched are dropped.
        """
        before = self._steering_args
        self.set_steering(mask, delta, positions, add=add)
        try:
            yield self
        finally:
            if before is None:
                self.clear_steering()
            else:
                self.set_steering(*before)

    @_one_thread
    def set_steering(
        self,
        mask: Optional[Mapping[str, Any]] = None,
        delta: float = 0.0,
        positions: str = DEFAULT_POLICY,
        add: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Turn steering on until :meth:`clear_steering` (the manual form of :meth:`steering`)."""
        self._live()
        check_policy(positions)
        try:
            mask = self._write_config(0, mask, delta, add)
        except BaseException:
            self._steering_args = None
            raise
        self._track.steer_policy = positions
        self._steering_args = (mask, float(delta), positions, add)
        self._invalidate()

    def _write_config(self, config: int, mask: Any, delta: Any, add: Optional[Mapping[str, Any]]) -> Mapping[str, Any]:
        """Check a configuration and write it into the engine's ``config``; returns the mask as a
        mapping. On a bad one the configuration is left empty."""
        if mask is None:
            mask = {}
        if hasattr(mask, "units") and callable(mask.units):
            mask = mask.units()
        try:
            delta = float(delta)
        except (TypeError, ValueError):
            raise BadInputError(f"delta must be a number, got {delta!r}") from None
        if not math.isfinite(delta) or abs(delta) > MAX_DELTA:
            raise BadInputError(f"delta must be a finite number within ±{MAX_DELTA:g}, got {delta}")
        units = masks_to_units(mask, self.shape)
        vectors = check_adds(add or {}, self.shape)
        self.engine.clear_mask(config)
        self.engine.clear_adds(config)
        self.engine.set_delta(config, 0.0)
        try:
            for site, per_layer in units.items():
                for layer, idx in per_layer:
                    self.engine.set_mask(config, site, layer, idx)
            for site, layer, vec in vectors:
                self.engine.set_add(config, site, layer, vec)
        except ValueError as e:  # the engine refuses a site this model's graph lacks
            self.engine.clear_mask(config)
            self.engine.clear_adds(config)
            raise UnsupportedModelError(str(e)) from None
        self.engine.set_delta(config, delta)
        return mask

    @_one_thread
    def clear_steering(self) -> None:
        """Steer nothing; safe on a detached hook (it touches only the engine's own state)."""
        self.engine.clear_mask(0)
        self.engine.clear_adds(0)
        self.engine.set_delta(0, 0.0)
        self._steering_args = None
        self._invalidate()

    @property
    def steers(self) -> bool:
        """True while a configuration that changes anything is set (the ``steering`` one)."""
        return bool(self.engine.steering(0))

    # ---- named configurations, for batches of many sequences ----

    @_one_thread
    def configure(
        self,
        name: str,
        mask: Optional[Mapping[str, Any]] = None,
        delta: float = 0.0,
        positions: str = DEFAULT_POLICY,
        add: Optional[Mapping[str, Any]] = None,
    ) -> str:
        """Register (or replace) the steering configuration ``name``: the same arguments as
        :meth:`steering`. It acts in :meth:`decode` on the rows of the sequences :meth:`bind`
        binds to it; ``positions`` is kept for callers that choose rows by policy
        (:meth:`config_positions`). Many configurations live in the engine at once."""
        self._live()
        check_policy(positions)
        if not isinstance(name, str) or not name:
            raise BadInputError(f"a configuration needs a non-empty name, got {name!r}")
        if name in self._configs:
            config = self._configs[name][0]
        else:
            config = self.engine.new_config()
        try:
            self._write_config(config, mask, delta, add)
        except BaseException:
            if name not in self._configs:
                self.engine.free_config(config)
            raise
        self._configs[name] = (config, positions)
        return name

    @_one_thread
    def remove_config(self, name: str) -> None:
        """Forget a configuration; sequences bound to it become unsteered."""
        config, _ = self._config(name)
        self.engine.free_config(config)
        del self._configs[name]
        self._bound = {s: c for s, c in self._bound.items() if c != config}

    @property
    def configs(self) -> Tuple[str, ...]:
        return tuple(self._configs)

    def config_positions(self, name: str) -> str:
        return self._config(name)[1]

    def _config(self, name: str) -> Tuple[int, str]:
        if name not in self._configs:
            known = ", ".join(self._configs) or "none"
            raise BadInputError(f"no steering configuration named {name!r} (configured: {known})")
        return self._configs[name]

    def bind(self, seq: int, name: Optional[str]) -> None:
        """Steer the flagged rows of sequence ``seq`` in :meth:`decode` with configuration
        ``name`` (None: leave the sequence unsteered)."""
        if not 0 <= seq < self.n_seq_max:
            raise BadInputError(f"sequence id {seq} is outside 0..{self.n_seq_max - 1}")
        if name is None:
            self._bound.pop(seq, None)
        else:
            self._bound[seq] = self._config(name)[0]

    @_one_thread
    def decode(self, rows: Sequence["BatchRow"], logits: Sequence[int] = ()) -> np.ndarray:
        """One llama_decode of ``rows``; returns the logits [len(logits), n_vocab] of the rows
        whose indices ``logits`` lists (ascending).

        A row is a :class:`BatchRow`. A row that belongs to several sequences (a shared prompt) has
        its KV entry in all of them. A row with ``steer`` set is edited with the configuration
        bound to its first sequence (:meth:`bind`); unbound sequences, and rows without the flag,
        are computed unsteered. Rows of many configurations may share a decode: each sees its own
        configuration only. Inside :meth:`recording`, a row with ``record`` >= 0 is read into that
        accumulator slot. The KV cache is the caller's between :meth:`kv_clear` calls; sequences
        are 0..n_seq_max-1."""
        self._live()
        n = len(rows)
        if not 0 < n <= self.llm.n_batch:
            raise BadInputError(f"a decode holds 1..{self.llm.n_batch} rows, got {n}")
        outputs = list(logits)
        if outputs != sorted(set(outputs)) or (outputs and not 0 <= outputs[0] <= outputs[-1] < n):
            raise BadInputError("logits rows must be ascending, unique row indices of the decode")
        b = self._native_batch()
        b.n_tokens = n
        steer_rows: List[int] = []
        steer_configs: List[int] = []
        record_rows: List[int] = []
        record_slots: List[int] = []
        recording = self._track.record_policy is not None
        for i, (tok, pos, seqs, steer, record) in enumerate(rows):
            if not 1 <= len(seqs) <= self.n_seq_max or not all(0 <= s < self.n_seq_max for s in seqs):
                raise BadInputError(f"row {i}: sequence ids must be 1..{self.n_seq_max} ids in 0..{self.n_seq_max - 1}, got {seqs}")
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = tok, pos, len(seqs), 0
            for k, s in enumerate(seqs):
                b.seq_id[i][k] = s
            if steer and seqs[0] in self._bound:
                steer_rows.append(i)
                steer_configs.append(self._bound[seqs[0]])
            if recording and record >= 0:
                if record >= MAX_SLOTS:
                    raise BadInputError(f"row {i}: accumulator slot {record} is outside 0..{MAX_SLOTS - 1}")
                record_rows.append(i)
                record_slots.append(record)
        for i in outputs:
            b.logits[i] = 1
        self._ctx.decode_rows(b, steer_rows, record_rows, steer_configs, record_slots)
        out = np.empty((len(outputs), self.llm.n_vocab()), np.float32)
        for k, i in enumerate(outputs):
            out[k] = np.ctypeslib.as_array(self._ctx.get_logits_ith(i), shape=(self.llm.n_vocab(),))
        return out

    def _native_batch(self) -> Any:
        if self._batch is None:
            self._batch = internals.LlamaBatch(n_tokens=self.llm.n_batch, embd=0, n_seq_max=self.n_seq_max, verbose=False)
        return self._batch.batch

    # ---- recording ----

    @contextlib.contextmanager
    def recording(
        self,
        sites: Optional[Sequence[str]] = None,
        positions: str = DEFAULT_POLICY,
        capture: bool = True,
    ) -> Iterator[Recording]:
        """Read the sites' values (default: every site this model allows) at the policy's positions
        during the block.

        ``capture=True`` keeps every row (``Recording.values``); rows may also be summed into
        streaming accumulators with ``Recording.set_slot`` (memory independent of the number of
        rows). Recording starts from an empty KV cache, so every prompt token is evaluated.
        """
        self._live()
        check_policy(positions)
        sites = tuple(check_site(s, RECORD_SITES) for s in (self.sites if sites is None else sites))
        with self._exclusive():
            yield from self._recording(sites, positions, capture)

    def _recording(self, sites: Tuple[str, ...], positions: str, capture: bool) -> Iterator[Recording]:
        if self._track.record_policy is not None:
            raise SadiError("a recording is already running on this hook")
        self.engine.clear_records()
        try:
            for site in sites:
                self.engine.set_record(site, True)
        except ValueError as e:
            for site in RECORD_SITES:
                self.engine.set_record(site, False)
            raise UnsupportedModelError(str(e)) from None
        self.engine.set_capture(capture)
        self._track.record_policy = positions
        self.llm.reset()
        rec = Recording(self.engine, self.shape, sites)
        try:
            yield rec
        finally:
            rec.close(capture)
            for site in RECORD_SITES:
                self.engine.set_record(site, False)
            self.engine.set_capture(False)
            self.engine.clear_records()
            self._track.record_policy = None

    # ---- low-level decoding, for scoring and statistics ----

    def logits(self, row: int = -1) -> np.ndarray:
        """A copy of the logits [n_vocab] of output row ``row`` of the last decode (-1: the last)."""
        self._live()
        ptr = self._ctx.get_logits_ith(row)
        if not ptr:
            raise BadInputError(f"the last decode has no output row {row}")
        return np.ctypeslib.as_array(ptr, shape=(self.llm.n_vocab(),)).copy()

    def rewind(self, n_tokens: int) -> None:
        """Keep the first ``n_tokens`` cached tokens; the next ``llm.eval`` continues after them."""
        self._live()
        if not 0 <= n_tokens <= self.llm.n_tokens:
            raise BadInputError(f"cannot rewind to {n_tokens} tokens: the cache holds {self.llm.n_tokens}")
        self.llm.n_tokens = int(n_tokens)

    @_one_thread
    def continuation_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits [len(tokens), n_vocab] for ``tokens`` decoded after the cached ones (``llm.n_tokens``).

        They count as generated tokens for the position policy (steered only under
        ``last+generated`` and ``all``); their KV entries are removed again, so the cache still
        ends at the prompt and the next choice can be scored from the same place.
        """
        self._live()
        llm = self.llm
        n0, n = llm.n_tokens, len(tokens)
        if n == 0:
            return np.zeros((0, llm.n_vocab()), np.float32)
        if n0 + n > self.n_ctx or n > llm.n_batch:
            raise BadInputError(f"a continuation of {n} tokens after {n0} does not fit the context ({self.n_ctx}) or batch ({llm.n_batch})")
        batch = internals.LlamaBatch(n_tokens=n, embd=0, n_seq_max=1, verbose=False)
        try:
            batch.set_batch(list(tokens), n_past=n0, logits_all=True)
            with self._track.as_generated():
                self._ctx.decode(batch)
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._ctx.ctx), shape=(n, llm.n_vocab())).copy()
        finally:
            batch.close()
            self._ctx.kv_cache_seq_rm(-1, n0, -1)

    @_one_thread
    def seq_free(self, seq: int) -> None:
        """Drop every KV entry of sequence ``seq`` (a finished request's), leaving the others."""
        self._live()
        if not 0 <= seq < self.n_seq_max:
            raise BadInputError(f"sequence id {seq} is outside 0..{self.n_seq_max - 1}")
        self._ctx.kv_cache_seq_rm(seq, -1, -1)

    def is_end(self, token: int) -> bool:
        """True for an end-of-generation token (EOS, end of turn, ...)."""
        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, int(token)))

    def token_bytes(self, token: int) -> bytes:
        """The text piece of one token as bytes (special tokens give b'', as in a completion)."""
        size = 64
        while True:
            buf = ctypes.create_string_buffer(size)
            n = llama_cpp.llama_token_to_piece(self.llm._model.vocab, int(token), buf, size, 0, False)
            if n >= 0:
                return buf.raw[:n]
            size = -n  # llama.cpp returns minus the size it needs

    @_one_thread
    def kv_clear(self) -> None:
        """Empty the KV cache (every sequence) and forget the Llama's cached tokens."""
        self._live()
        self._ctx.kv_cache_clear()
        self.llm.reset()

    # ---- the Llama's eval/generate, wrapped ----

    def _invalidate(self) -> None:
        """Forget cached logits and the KV entries computed under another steering configuration."""
        self.llm.n_tokens = self._track.valid_prefix(self.llm.n_tokens)
        self.llm._requires_eval = True

    @_one_thread
    def _eval(self, tokens: Sequence[int]) -> None:
        self._live()
        self._track.before_eval(self.llm.n_tokens, len(tokens))
        try:
            self._orig_eval(tokens)
        finally:
            self._track.after_eval()

    def _generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
        self._live()
        with self._exclusive():  # held across the whole generation, so no other thread interleaves
            if self._track.record_policy is not None:
                self.llm.n_tokens = 0  # a recording reads every prompt token
            self._invalidate()
            with self._track.generating():
                yield from self._orig_generate(tokens, *args, **kwargs)


def chat_formats() -> List[str]:
    """The chat format names llama-cpp-python knows (for ``Llama(chat_format=...)``)."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    return sorted(LlamaChatCompletionHandlerRegistry()._chat_handlers)


def use_chat_format(hook: Hook, name: str) -> None:
    """Make ``create_chat_completion`` wrap messages in the named format instead of the model's."""
    known = chat_formats()
    if name not in known:
        raise BadInputError(f"unknown chat format '{name}': use one of {', '.join(known)}")
    hook.llm.chat_handler = None
    hook.llm.chat_format = name


def has_chat_template(hook: Hook) -> bool:
    return "tokenizer.chat_template" in hook.llm.metadata


class _Formatted(Exception):
    """Carries the prompt tokens and stop strings out of a chat handler (see chat_prompt)."""

    def __init__(self, tokens: List[int], stop: List[str]):
        super().__init__("formatted")
        self.tokens, self.stop = tokens, stop


class _FormatOnly:
    """Stands in for the Llama a chat handler drives: tokenizes with the real one and, when the
    handler asks for a completion, hands back the prompt it built instead of generating."""

    def __init__(self, llm: Llama):
        self._llm = llm
        self.verbose = False

    def tokenize(self, *args: Any, **kwargs: Any) -> List[int]:
        return self._llm.tokenize(*args, **kwargs)

    def create_completion(self, prompt: Any = None, stop: Any = None, **kwargs: Any) -> Any:
        stops = [] if stop is None else [stop] if isinstance(stop, str) else list(stop)
        raise _Formatted(list(prompt), [s for s in stops if s])


def chat_prompt(hook: Hook, messages: List[Dict[str, Any]]) -> Tuple[List[int], List[str]]:
    """The tokens ``create_chat_completion`` would evaluate for ``messages`` (through the chat
    format in force: a named one, else the model's template) and the stop strings it adds."""
    import jinja2
    from llama_cpp import llama_chat_format

    llm = hook.llm
    handler = (llm.chat_handler or llm._chat_handlers.get(llm.chat_format)
               or llama_chat_format.get_chat_completion_handler(llm.chat_format))
    try:
        handler(llama=_FormatOnly(llm), messages=messages)
    except _Formatted as done:
        return done.tokens, done.stop
    except (ValueError, TypeError, KeyError, jinja2.TemplateError) as e:  # the template refused the messages
        raise BadInputError(f"the chat template could not format these messages: {e}") from None
    raise SadiError(f"chat format {llm.chat_format!r} did not produce a prompt")


def attach(llm: Llama, *, force_copy: bool = False) -> Hook:
    """Install the steering engine into ``llm`` (its KV cache is emptied) and return the hook.

    ``force_copy=True`` reads and writes activations through ggml_backend_tensor_get/set even on
    host memory, the path GPU backends take.
    """
    return Hook(llm, force_copy=force_copy)


def load(model_path: Optional[str] = None, *, force_copy: bool = False, **llama_kwargs: Any) -> Hook:
    """Load a GGUF (default: Gemma 3 270M Q4_K_M) into a ``Llama`` and attach the engine.

    ``llama_kwargs`` go to ``Llama`` (e.g. ``n_ctx``, ``n_threads``, ``n_gpu_layers``);
    ``verbose`` defaults to False.
    """
    path = resolve_model(model_path)
    llama_kwargs.setdefault("verbose", False)
    try:
        # Llama() itself lets a warning or two through (e.g. Gemma 3's SWA cache note) when quiet
        with suppress_stdout_stderr(disable=bool(llama_kwargs["verbose"])):
            llm = Llama(model_path=str(path), **llama_kwargs)
    except ValueError as e:
        raise BadInputError(f"{path}: llama.cpp could not load this model ({e}); is it a GGUF model file?") from None
    return attach(llm, force_copy=force_copy)
