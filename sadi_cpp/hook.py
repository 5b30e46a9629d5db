"""Install the steering engine into a llama-cpp-python ``Llama`` and drive it.

``attach(llm)`` swaps the Llama's context for one whose eval callback is the C++ engine, so every
llama-cpp-python idiom (``llm(...)``, ``create_completion``, ``create_chat_completion``, ``eval``)
keeps working, now readable and steerable:

>>> from llama_cpp import Llama
>>> import sadi_cpp
>>> hook = sadi_cpp.attach(Llama(model_path, verbose=False))
>>> with hook.steering({"head": mask}, delta=9.0):          # mask: bool array [n_layer, n_head]
...     print(hook.llm("Q: Is the sky blue?\\nA:", max_tokens=8)["choices"][0]["text"])
>>> with hook.recording(sites=("head",)) as rec:
...     hook.llm.eval(hook.llm.tokenize(b"Hello"))
>>> rec.units("head").shape                                  # (1, n_layer, n_head)
"""

from __future__ import annotations

import contextlib
import ctypes
import math
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from llama_cpp import Llama, llama_cpp
from llama_cpp import _internals as internals
from llama_cpp._utils import suppress_stdout_stderr

from sadi_cpp._runtime import load_core
from sadi_cpp.errors import BadInputError, SadiError, SteeringError, UnsupportedModelError
from sadi_cpp.positions import DEFAULT_POLICY, check_policy, rows_for

_core = load_core()

SITES = ("head", "neuron", "hidden")
MAX_SEQUENCES = 64  # sequences the hooked context accepts in one decode
# Sites that can also be read and added to (not masked): the residual stream after each layer.
RECORD_SITES = SITES + ("residual",)


def _address(ptr: Any) -> int:
    value = ctypes.cast(ptr, ctypes.c_void_p).value
    if not value:
        raise SadiError("the Llama has no native model or context (was it closed?)")
    return value


def check_site(site: str, allowed: Sequence[str] = SITES) -> str:
    if site not in allowed:
        raise BadInputError(f"unknown site '{site}': use one of {', '.join(allowed)}")
    return site


class HookedContext(internals.LlamaContext):
    """A LlamaContext whose decodes go through the engine. It owns a reference to the engine, so the
    engine (the callback's user_data) outlives the native context, whichever is dropped first."""

    def __init__(self, *, model: internals.LlamaModel, params: Any, verbose: bool, hook: "Hook"):
        self.engine = hook.engine
        self._hook = hook
        super().__init__(model=model, params=params, verbose=verbose)

    def decode(self, batch: internals.LlamaBatch) -> None:
        steer_rows, record_rows = self._hook._rows_for(batch.batch)
        self.decode_rows(batch.batch, steer_rows, record_rows)
        if steer_rows:
            self._hook._mark_steered(batch.batch.pos[steer_rows[0]])

    def decode_rows(self, batch: Any, steer_rows: List[int], record_rows: List[int]) -> None:
        """llama_decode a native batch with the engine steering and recording the given rows."""
        # Recorded rows become output rows for this decode, so that layers which keep output rows
        # only (the last one) still hold them. Sampling reads the last output, which stays last.
        flags = batch.logits
        extra = [r for r in record_rows if not flags[r]]
        for r in extra:
            flags[r] = 1
        try:
            self.engine.begin_decode(ctypes.addressof(batch), steer_rows, record_rows)
            rc = llama_cpp.llama_decode(self.ctx, batch)
            error = self.engine.end_decode()
        finally:
            for r in extra:
                flags[r] = 0
        if error:
            raise SteeringError(error)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc}")


class Recording:
    """What a ``Hook.recording`` block read. Arrays are copies; the block's rows are in decode order.

    ``values(site)``: [n_rows, n_layer, width] float32 (head: n_head*head_dim values, heads
    contiguous; neuron: n_ff; hidden and residual: n_embd). NaN where the graph held no such row (a non-output
    token in a layer that keeps output rows only). ``units(site)``: the same reduced to SADI's units,
    heads averaged over head_dim. ``sums``/``counts``: the streaming accumulators.
    """

    def __init__(self, hook: "Hook", sites: Tuple[str, ...]):
        self._hook = hook
        self.sites = sites
        self._arrays: Dict[str, np.ndarray] = {}
        self._sums: Dict[Tuple[int, str], np.ndarray] = {}
        self._counts: Dict[Tuple[int, str], np.ndarray] = {}
        self.positions = np.zeros(0, dtype=np.int32)
        self._open = True

    def set_slot(self, slot: int) -> None:
        """Accumulate the rows recorded from now on into accumulator ``slot`` (e.g. 0 positive, 1 negative)."""
        if not self._open:
            raise SadiError("this recording has ended")
        self._hook.engine.set_accumulate_slot(slot)

    def _close(self, capture: bool) -> None:
        engine = self._hook.engine
        for site in self.sites:
            if capture:
                self._arrays[site] = engine.captured(site)
            for slot in range(engine.n_slots):
                self._sums[(slot, site)] = engine.sums(slot, site)
                self._counts[(slot, site)] = engine.counts(slot, site)
        if capture:
            self.positions = engine.captured_positions()
        self.n_slots = engine.n_slots
        self._open = False

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
        return self._hook.to_units(site, self.values(site))

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
        self.shape: Dict[str, Any] = dict(self.engine.shape)

        self._steer_policy = DEFAULT_POLICY
        self._record_policy: Optional[str] = None
        self._generated = False
        self._last_prompt_pos = -1
        self._dirty_from = math.inf  # first position whose KV depends on a steered row
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
                raise SadiError(f"llama_decode returned {rc} while probing the model's graph")
        finally:
            batch.close()
            self._ctx.kv_cache_clear()

    def detach(self) -> None:
        """Give the Llama a plain context back (no callback, an empty KV cache)."""
        if self.llm._sadi_hook is not self:
            return
        self._ctx.close()
        if self.llm._model.model is not None:  # a closed Llama gets no new context
            self.llm._ctx = internals.LlamaContext(
                model=self.llm._model, params=self.llm.context_params, verbose=self.llm.verbose
            )
        del self.llm.eval
        del self.llm.generate
        self.llm._sadi_hook = None
        self.llm.reset()

    @property
    def sites(self) -> Tuple[str, ...]:
        """The sites this model's graph allows to read and steer."""
        return tuple(s for s in SITES if not self.engine.site_problem(s))

    def n_units(self, site: str) -> int:
        check_site(site, RECORD_SITES)
        s = self.shape
        return {"head": s["n_head"], "neuron": s["n_ff"], "hidden": s["n_embd"], "residual": s["n_embd"]}[site]

    def width(self, site: str) -> int:
        """Values in one row of the site's tensor (heads: n_head * head_dim)."""
        return self.n_units(site) * (self.shape["head_dim"] if site == "head" else 1)

    def to_units(self, site: str, values: np.ndarray) -> np.ndarray:
        """Reduce site values [..., width] to SADI units: heads become their mean over head_dim."""
        if site == "head":
            return values.reshape(*values.shape[:-1], self.shape["n_head"], self.shape["head_dim"]).mean(axis=-1)
        return values

    # ---- steering ----

    def _set_mask(self, mask: Mapping[str, Any]) -> None:
        units = masks_to_units(mask, self.shape["n_layer"], self.n_units)
        self.engine.clear_mask()
        try:
            for site, per_layer in units.items():
                for layer, idx in per_layer:
                    self.engine.set_mask(site, layer, idx)
        except ValueError as e:
            self.engine.clear_mask()
            raise UnsupportedModelError(str(e)) from None

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
        scaling: the fixed-vector and CAA baselines; all-zero layers are skipped. Steering is off
        again, and the KV cache entries it touched are dropped, when the block ends.
        """
        self.set_steering(mask, delta, positions, add=add)
        try:
            yield self
        finally:
            self.clear_steering()

    def set_steering(
        self,
        mask: Optional[Mapping[str, Any]] = None,
        delta: float = 0.0,
        positions: str = DEFAULT_POLICY,
        add: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Turn steering on until :meth:`clear_steering` (the manual form of :meth:`steering`)."""
        check_policy(positions)
        if mask is None:
            mask = {}
        if hasattr(mask, "units") and callable(mask.units):
            mask = mask.units()
        if not math.isfinite(float(delta)):
            raise BadInputError(f"delta must be a finite number, got {delta}")
        vectors = self._check_adds(add or {})
        self._set_mask(mask)
        self.engine.clear_adds()
        try:
            for site, layer, vec in vectors:
                self.engine.set_add(site, layer, vec)
        except ValueError as e:
            self.engine.clear_mask()
            self.engine.clear_adds()
            raise UnsupportedModelError(str(e)) from None
        self.engine.delta = float(delta)
        self._steer_policy = positions
        self._invalidate()

    def _check_adds(self, add: Mapping[str, Any]) -> List[Tuple[str, int, np.ndarray]]:
        out = []
        for site, arr in add.items():
            check_site(site, RECORD_SITES)
            a = np.asarray(arr, dtype=np.float32)
            want = (self.shape["n_layer"], self.width(site))
            if a.shape != want:
                raise BadInputError(f"the {site} vectors have shape {a.shape}; this model needs {want} (n_layer, width)")
            if not np.isfinite(a).all():
                raise BadInputError(f"the {site} vectors hold a NaN or an infinity")
            out += [(site, layer, np.ascontiguousarray(a[layer])) for layer in range(want[0]) if a[layer].any()]
        return out

    def clear_steering(self) -> None:
        self.engine.clear_mask()
        self.engine.clear_adds()
        self.engine.delta = 0.0
        self._invalidate()

    # ---- recording ----

    @contextlib.contextmanager
    def recording(
        self,
        sites: Sequence[str] = SITES,
        positions: str = DEFAULT_POLICY,
        capture: bool = True,
    ) -> Iterator[Recording]:
        """Read the sites' values at the policy's positions during the block.

        ``capture=True`` keeps every row (``Recording.values``); rows may also be summed into
        streaming accumulators with ``Recording.set_slot`` (memory independent of the number of
        rows). Recording starts from an empty KV cache, so every prompt token is evaluated.
        """
        check_policy(positions)
        sites = tuple(check_site(s, RECORD_SITES) for s in sites)
        if self._record_policy is not None:
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
        self._record_policy = positions
        self.llm.reset()
        rec = Recording(self, sites)
        try:
            yield rec
        finally:
            rec._close(capture)
            for site in RECORD_SITES:
                self.engine.set_record(site, False)
            self.engine.set_capture(False)
            self.engine.clear_records()
            self._record_policy = None

    # ---- scoring continuations ----

    def continuation_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits [len(tokens), n_vocab] for ``tokens`` decoded after the cached ones (``llm.n_tokens``).

        They count as generated tokens for the position policy (steered only under
        ``last+generated`` and ``all``); their KV entries are removed again, so the cache still
        ends at the prompt and the next choice can be scored from the same place.
        """
        llm = self.llm
        n0, n = llm.n_tokens, len(tokens)
        if n == 0:
            return np.zeros((0, llm.n_vocab()), np.float32)
        if n0 + n > llm.n_ctx() or n > llm.n_batch:
            raise BadInputError(f"a continuation of {n} tokens after {n0} does not fit the context ({llm.n_ctx()}) or batch ({llm.n_batch})")
        batch = internals.LlamaBatch(n_tokens=n, embd=0, n_seq_max=1, verbose=False)
        generated = self._generated
        try:
            batch.set_batch(list(tokens), n_past=n0, logits_all=True)
            self._generated = True
            self._ctx.decode(batch)
            return np.ctypeslib.as_array(llama_cpp.llama_get_logits(self._ctx.ctx), shape=(n, llm.n_vocab())).copy()
        finally:
            self._generated = generated
            batch.close()
            self._ctx.kv_cache_seq_rm(-1, n0, -1)

    # ---- the Llama's eval/generate, wrapped ----

    def _invalidate(self) -> None:
        """Forget cached logits and the KV entries computed under another steering configuration."""
        if self.llm.n_tokens > self._dirty_from:
            self.llm.n_tokens = int(self._dirty_from)
        self.llm._requires_eval = True

    def _mark_steered(self, pos: int) -> None:
        self._dirty_from = min(self._dirty_from, pos)

    def _eval(self, tokens: Sequence[int]) -> None:
        if self.llm.n_tokens <= self._dirty_from:
            self._dirty_from = math.inf  # eval drops the KV entries from n_tokens on
        if not self._generated:
            self._last_prompt_pos = self.llm.n_tokens + len(tokens) - 1
        try:
            self._orig_eval(tokens)
        finally:
            if self._in_generate:
                self._generated = True

    _in_generate = False

    def _generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:
        if self._record_policy is not None:
            self.llm.n_tokens = 0  # a recording reads every prompt token
        self._invalidate()
        self._in_generate, self._generated = True, False
        try:
            yield from self._orig_generate(tokens, *args, **kwargs)
        finally:
            self._in_generate, self._generated = False, False

    def _rows_for(self, batch: Any) -> Tuple[List[int], List[int]]:
        n = batch.n_tokens
        if n <= 0:
            return [], []
        first = batch.pos[0]
        steer: List[int] = []
        if self.engine.steering:
            steer = rows_for(self._steer_policy, self._generated, first, n, self._last_prompt_pos)
        record: List[int] = []
        if self._record_policy is not None:
            record = rows_for(self._record_policy, self._generated, first, n, self._last_prompt_pos)
        return steer, record


def masks_to_units(mask: Mapping[str, Any], n_layer: int, n_units: Any) -> Dict[str, List[Tuple[int, List[int]]]]:
    """Validate {site: bool [n_layer, n_units]} and list the masked unit indices per layer."""
    if not isinstance(mask, Mapping):
        raise BadInputError("a mask maps a site ('head', 'neuron', 'hidden') to a bool array [n_layer, n_units]")
    out: Dict[str, List[Tuple[int, List[int]]]] = {}
    for site, arr in mask.items():
        check_site(site)
        a = np.asarray(arr)
        want = (n_layer, n_units(site))
        if a.shape != want:
            raise BadInputError(f"the {site} mask has shape {a.shape}; this model needs {want} (n_layer, n_units)")
        if a.dtype != np.bool_:
            if not np.isin(a, (0, 1)).all():
                raise BadInputError(f"the {site} mask must hold only 0/1 or booleans")
            a = a.astype(bool)
        out[site] = [(int(layer), np.flatnonzero(a[layer]).astype(int).tolist()) for layer in range(n_layer) if a[layer].any()]
    return out


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
    from sadi_cpp.models import resolve_model

    path = resolve_model(model_path)
    llama_kwargs.setdefault("verbose", False)
    try:
        # Llama() itself lets a warning or two through (e.g. Gemma 3's SWA cache note) when quiet
        with suppress_stdout_stderr(disable=bool(llama_kwargs["verbose"])):
            llm = Llama(model_path=str(path), **llama_kwargs)
    except ValueError as e:
        raise BadInputError(f"{path}: llama.cpp could not load this model ({e}); is it a GGUF model file?") from None
    return attach(llm, force_copy=force_copy)
