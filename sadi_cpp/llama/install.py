"""The hooked context's life in a ``Llama``: installing it (the Llama's plain context swapped for
one whose eval callback is the engine, its eval/generate wrapped so that the position policy
sees every decode), detaching it, and refusing use once the Llama was closed. :class:`Hook`
builds the steering API on top."""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterator, Optional, Sequence

from llama_cpp import Llama, llama_cpp
from llama_cpp import _internals as internals

from sadi_cpp.errors import BadInputError, SadiError, UnsupportedModelError
from sadi_cpp.llama.context import Exclusive, HookedContext, address, swap_in_hooked_context
from sadi_cpp.positions import PositionTracker
from sadi_cpp.sites import Shape

MAX_SEQUENCES = 64  # sequences the hooked context accepts in one decode


def one_thread(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a method holding the hook (see context.Exclusive)."""

    @functools.wraps(method)
    def run(self: "Installed", *args: Any, **kwargs: Any) -> Any:
        with self._exclusive():
            return method(self, *args, **kwargs)

    return run


class Installed:
    """The engine installed in ``llm``; ``core`` is the compiled module that holds the engine."""

    def __init__(self, llm: Llama, core: Any, force_copy: bool = False):
        if not isinstance(llm, Llama):
            raise BadInputError(f"attach() needs a llama_cpp.Llama, got {type(llm).__name__}")
        if getattr(llm, "_sadi_hook", None) is not None:
            raise SadiError("this Llama already has a sadi-cpp hook: use that one, or detach() it first")
        if getattr(llm, "_lora_adapter", None) is not None:
            raise UnsupportedModelError("a Llama loaded with a LoRA adapter cannot be hooked (the adapter would be lost)")
        self.llm = llm
        self.engine = core.Engine(address(llm._model.model))
        self.engine.force_copy = force_copy
        self.shape = Shape.from_engine(self.engine.shape)
        self._track = PositionTracker()
        self._exclusive = Exclusive()
        self._batch: Optional[internals.LlamaBatch] = None
        self._detached = self._closed = False
        self._orig_eval, self._orig_generate = llm.eval, llm.generate
        self._ctx = self._install(core)

    def _install(self, core: Any) -> HookedContext:
        """Swap the Llama's plain context for a hooked one (probed) and wrap its eval/generate."""
        llm = self.llm
        self._callback = llama_cpp.ggml_backend_sched_eval_callback(core.Engine.callback_address)
        ctx = swap_in_hooked_context(llm, self.engine, self._callback, self._track, self._exclusive, MAX_SEQUENCES)
        self.n_seq_max = ctx.n_seq_max
        llm.eval, llm.generate = self._eval, self._generate
        llm._sadi_hook = self
        # Llama.close() frees the model: free our context first (its exit stack runs last-in,
        # first-out) and refuse every later use instead of touching freed memory.
        llm._stack.callback(self._on_llama_close)
        llm.reset()
        return ctx

    def _free_native(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None
        self._ctx.close()

    def _on_llama_close(self) -> None:
        if self._detached or self._closed:
            return
        self._closed = True
        self._free_native()
        for name in ("tokenize", "detokenize"):  # llama-cpp-python would read the freed vocabulary
            setattr(self.llm, name, self._refuse_closed)

    def _refuse_closed(self, *args: Any, **kwargs: Any) -> Any:
        raise SadiError("this Llama was closed: load the model again")

    def detach(self) -> None:
        """Give the Llama a plain context back (no callback, an empty KV cache)."""
        llm = self.llm
        if self._detached or llm._sadi_hook is not self:
            return
        self._detached = True
        if self._closed:  # Llama.close() already freed our context and the model
            del llm.eval, llm.generate, llm.tokenize, llm.detokenize
            llm._sadi_hook = None
            return
        self._free_native()
        if llm._model.model is not None:  # a closed Llama gets no new context
            llm._ctx = internals.LlamaContext(model=llm._model, params=llm.context_params, verbose=llm.verbose)
        del llm.eval, llm.generate
        llm._sadi_hook = None
        llm.reset()

    def _live(self) -> None:
        """Refuse to touch native state that is gone: a detached hook, a closed Llama."""
        if self._detached:
            raise SadiError("this hook was detached: attach the Llama again (sadi_cpp.attach) to steer it")
        if self._closed or self.llm._model.model is None or self._ctx.ctx is None:
            raise SadiError("the Llama of this hook was closed: load the model again")

    # ---- the Llama's eval/generate, wrapped ----

    def _invalidate(self) -> None:
        """Forget cached logits and the KV entries computed under another steering configuration."""
        self.llm.n_tokens = self._track.valid_prefix(self.llm.n_tokens)
        self.llm._requires_eval = True

    @one_thread
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
