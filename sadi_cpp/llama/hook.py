"""Install the steering engine into a llama-cpp-python ``Llama`` and drive it.

``attach(llm)`` swaps the Llama's context for one whose eval callback is the C++ engine, so every
llama-cpp-python idiom (``llm(...)``, ``create_completion``, ``create_chat_completion``, ``eval``)
keeps working, now readable and steerable::

    hook = sadi_cpp.attach(Llama(model_path, verbose=False))
    with hook.steering({"head": mask}, delta=9.0):      # mask: bool array [n_layer, n_head]
        print(hook.llm("Q: Is the sky blue?\\nA:", max_tokens=8)["choices"][0]["text"])
    with hook.recording(sites=("head",)) as rec:
        hook.eval(hook.tokenize("Hello"))
    rec.units("head").shape                              # (1, n_layer, n_head)

The Hook is the one door to the Llama for the rest of sadi-cpp: tokens, decodes, logits and the
KV cache go through its methods; llama-cpp-python's internals stay inside ``sadi_cpp.llama``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
from llama_cpp import Llama, llama_cpp
from llama_cpp import _internals as internals
from llama_cpp._utils import suppress_stdout_stderr

from sadi_cpp.errors import BadInputError, SadiError
from sadi_cpp.llama import batch as batches
from sadi_cpp.llama import rpc as rpc_workers
from sadi_cpp.llama.batch import BatchRow
from sadi_cpp.llama.configs import Configurations
from sadi_cpp.llama.context import longest_piece, token_piece
from sadi_cpp.llama.install import Installed, one_thread
from sadi_cpp.llama.recording import Recording
from sadi_cpp.llama.runtime import load_core
from sadi_cpp.models import resolve_model
from sadi_cpp.gate import Gate, GateResult
from sadi_cpp.positions import DEFAULT_POLICY, check_gated, check_policy
from sadi_cpp.sites import RECORD_SITES, SITES, check_site
from sadi_cpp.steering import Steering, as_steering

_core = load_core()

__all__ = ["BatchRow", "Hook", "attach", "load"]


class Hook(Installed):
    """The steering engine installed in one ``Llama``. Create with :func:`attach` or :func:`load`."""

    def __init__(self, llm: Llama, *, force_copy: bool = False):
        super().__init__(llm, _core, force_copy)
        self.workers: Dict[str, List[int]] = {}  # RPC worker endpoint -> the layers it computes (attach(rpc=...))
        self._steering: Optional[Tuple[Steering, str]] = None  # what set_steering was last given
        self._configs = Configurations(self.engine, self.shape, self.n_seq_max)

    # ---- the model ----

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
    def n_batch(self) -> int:
        """Rows one decode may hold."""
        return int(self.llm.n_batch)

    @property
    def n_vocab(self) -> int:
        return int(self.llm.n_vocab())

    @property
    def model_path(self) -> str:
        return self.llm.model_path

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> List[int]:
        """The model's tokens of ``text`` (``special``: parse control-token text as control tokens)."""
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special)

    def is_end(self, token: int) -> bool:
        """True for an end-of-generation token (EOS, end of turn, ...)."""
        return bool(llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, int(token)))

    def token_bytes(self, token: int) -> bytes:
        """The text piece of one token as bytes (special tokens give b'', as in a completion)."""
        return token_piece(self.llm._model.vocab, token)

    @functools.cached_property
    def max_piece_bytes(self) -> int:
        """The most bytes any one token of the model spells (a text of n bytes takes at least
        n / max_piece_bytes tokens)."""
        return longest_piece(self.llm._model.vocab, self.n_vocab)

    # ---- steering ----

    @contextlib.contextmanager
    def steering(self, mask: Any = None, delta: float = 0.0, positions: str = DEFAULT_POLICY, add: Any = None,
                 gate: Optional[Gate] = None) -> Iterator["Hook"]:
        """Within the block, a' = a + delta * a on the masked units at the policy's positions.

        ``mask``: a :class:`~sadi_cpp.steering.Steering`, or its parts: a mapping from a site to a
        bool array [n_layer, n_units(site)] (or an object with ``units()``, e.g. a loaded SADI
        mask), with ``delta`` and ``add`` (site -> float vectors [n_layer, width(site)] added to
        the same rows after the scaling: the fixed-vector and CAA baselines). ``gate`` (a
        :class:`~sadi_cpp.gate.Gate`): steer a prompt only when the gate fires on its last token
        (:attr:`gate_result` says what it decided); layers at or below the gate's are then not
        steered on that token, which the decision comes after. When the block ends,
        the steering that was in force before it is back (none, or an outer block's) and the KV
        cache entries the block's configuration touched are dropped.
        """
        before = self._steering
        self.set_steering(mask, delta, positions, add=add, gate=gate)
        try:
            yield self
        finally:
            if before is None:
                self.clear_steering()
            else:
                self.set_steering(before[0], positions=before[1])

    @one_thread
    def set_steering(self, mask: Any = None, delta: float = 0.0, positions: str = DEFAULT_POLICY, add: Any = None,
                     gate: Optional[Gate] = None) -> None:
        """Turn steering on until :meth:`clear_steering` (the manual form of :meth:`steering`)."""
        self._live()
        check_policy(positions)
        steering = as_steering(mask, delta, add, gate)
        check_gated(positions, steering.gate is not None)
        try:
            self._configs.write(0, steering)
        except BaseException:
            self._steering = None
            self._track.gate = self._track.gate_result = None
            raise
        self._track.steer_policy = positions
        self._track.gate, self._track.gate_result = steering.gate, None
        self._steering = (steering, positions)
        self._invalidate()

    @one_thread
    def clear_steering(self) -> None:
        """Steer nothing; safe on a detached hook (it touches only the engine's own state)."""
        self._configs.clear(0)
        self._steering = None
        self._track.gate = self._track.gate_result = None
        self._invalidate()

    @property
    def gate_result(self) -> Optional[GateResult]:
        """What the steering's gate decided on the last prompt (None: no gate, or no prompt since it was set)."""
        return self._track.gate_result

    @property
    def steers(self) -> bool:
        """True while a configuration that changes anything is set (the ``steering`` one)."""
        return bool(self.engine.steering(0))

    # ---- named configurations, for batches of many sequences ----

    @one_thread
    def configure(self, name: str, mask: Any = None, delta: float = 0.0, add: Any = None) -> str:
        """Register (or replace) the steering configuration ``name`` (a Steering, or its parts as
        for :meth:`steering`). It acts in :meth:`decode` on the steered rows of the sequences
        :meth:`bind` binds to it. Many configurations live in the engine at once. With a gate, a
        sequence's first steered row decides it (:meth:`gate`), and its later steered rows are
        steered only if it fired."""
        self._live()
        return self._configs.configure(name, as_steering(mask, delta, add))

    @one_thread
    def remove_config(self, name: str) -> None:
        """Forget a configuration; sequences bound to it become unsteered."""
        self._configs.remove(name)

    @property
    def configs(self) -> Tuple[str, ...]:
        return self._configs.names

    def bind(self, seq: int, name: Optional[str]) -> None:
        """Steer the flagged rows of sequence ``seq`` in :meth:`decode` with configuration
        ``name`` (None: leave the sequence unsteered)."""
        self._configs.bind(seq, name)

    @one_thread
    def decode(self, rows: Sequence[BatchRow], logits: Sequence[int] = ()) -> np.ndarray:
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
        if not 0 < len(rows) <= self.n_batch:
            raise BadInputError(f"a decode holds 1..{self.n_batch} rows, got {len(rows)}", field="rows")
        if self._batch is None:
            self._batch = internals.LlamaBatch(n_tokens=self.n_batch, embd=0, n_seq_max=self.n_seq_max, verbose=False)
        native = self._batch.batch
        lists = batches.fill(native, rows, list(logits), self._configs.plan, self.n_seq_max, self._track.record_policy is not None)
        self._ctx.decode_rows(native, lists.steer_rows, lists.record_rows, lists.steer_configs, lists.record_slots,
                              lists.steer_decide)
        if lists.deciding:
            scores = self.engine.gate_scores()
            for k, seqs in lists.deciding.items():
                for seq in seqs:  # a shared row decides for every sequence it belongs to
                    self._configs.decided(seq, float(scores[k]))
        return self._ctx.logits_rows(list(logits), self.n_vocab)

    def gate(self, seq: int) -> Optional[GateResult]:
        """The gate decision of sequence ``seq`` since it was last bound (None: no gate, or not decided yet)."""
        return self._configs.decision(seq)

    # ---- recording ----

    @contextlib.contextmanager
    def recording(self, sites: Optional[Sequence[str]] = None, positions: str = DEFAULT_POLICY, capture: bool = True) -> Iterator[Recording]:
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
            if self._track.record_policy is not None:
                raise SadiError("a recording is already running on this hook")
            rec = Recording.start(self.engine, self.shape, sites, capture)
            self._track.record_policy = positions
            self.llm.reset()
            try:
                yield rec
            finally:
                rec.close(capture)
                self._track.record_policy = None

    # ---- low-level decoding, for scoring and statistics ----

    def eval(self, tokens: Sequence[int]) -> None:
        """Evaluate ``tokens`` after the cached ones, as ``Llama.eval`` (steered and recorded by policy)."""
        self.llm.eval(list(tokens))

    def logits(self, row: int = -1) -> np.ndarray:
        """A copy of the logits [n_vocab] of output row ``row`` of the last decode (-1: the last)."""
        self._live()
        values = self._ctx.logits_row(row, self.n_vocab)
        if values is None:
            raise BadInputError(f"the last decode has no output row {row}", field="row")
        return values.copy()

    def rewind(self, n_tokens: int) -> None:
        """Keep the first ``n_tokens`` cached tokens; the next :meth:`eval` continues after them."""
        self._live()
        if not 0 <= n_tokens <= self.llm.n_tokens:
            raise BadInputError(f"cannot rewind to {n_tokens} tokens: the cache holds {self.llm.n_tokens}", field="n_tokens")
        self.llm.n_tokens = int(n_tokens)

    @one_thread
    def continuation_logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits [len(tokens), n_vocab] for ``tokens`` decoded after the cached ones.

        They count as generated tokens for the position policy (steered only under
        ``last+generated`` and ``all``); their KV entries are removed again, so the cache still
        ends at the prompt and the next choice can be scored from the same place.
        """
        self._live()
        n0, n = self.llm.n_tokens, len(tokens)
        if n == 0:
            return np.zeros((0, self.n_vocab), np.float32)
        if n0 + n > self.n_ctx or n > self.n_batch:
            raise BadInputError(f"a continuation of {n} tokens after {n0} does not fit the context ({self.n_ctx}) or batch ({self.n_batch})",
                                field="tokens")
        return self._ctx.continuation(tokens, n0, self.n_vocab)

    @one_thread
    def seq_copy(self, src: int, dst: int, p0: int, p1: int) -> None:
        """Make sequence ``dst`` hold the KV entries of ``src`` at positions p0..p1-1 too (the same
        cells, shared: nothing is recomputed or copied)."""
        self._live()
        self._configs.check_seq(src)
        self._configs.check_seq(dst)
        self._ctx.kv_cache_seq_cp(src, dst, p0, p1)

    @one_thread
    def seq_free(self, seq: int) -> None:
        """Drop every KV entry of sequence ``seq`` (a finished request's), leaving the others."""
        self._live()
        self._configs.check_seq(seq)
        self._ctx.kv_cache_seq_rm(seq, -1, -1)

    @one_thread
    def kv_clear(self) -> None:
        """Empty the KV cache (every sequence) and forget the Llama's cached tokens."""
        self._live()
        self._ctx.kv_cache_clear()
        self.llm.reset()


def attach(llm: Llama, *, force_copy: bool = False, rpc: Optional[Sequence[str]] = None) -> Hook:
    """Install the steering engine into ``llm`` (its KV cache is emptied) and return the hook.

    ``force_copy=True`` reads and writes activations through ggml_backend_tensor_get/set even on
    host memory, the path GPU backends take. ``rpc``: the RPC workers ``llm`` was loaded over
    (added with ``sadi_cpp.llama.rpc.add_workers`` before it loaded); checked to hold layers
    (``hook.workers``: the layers of each), and a worker lost later ends the process with a clear
    message instead of a core dump.
    """
    hook = Hook(llm, force_copy=force_copy)
    if rpc is not None:
        endpoints = rpc_workers.parse_endpoints(rpc)
        hook.workers = rpc_workers.check_placement(hook, endpoints)
        rpc_workers.on_fault(endpoints)
    return hook


def load(model_path: Optional[str] = None, *, force_copy: bool = False, rpc: Optional[Union[str, Sequence[str]]] = None,
         **llama_kwargs: Any) -> Hook:
    """Load a GGUF (default: Gemma 3 270M Q4_K_M) into a ``Llama`` and attach the engine.

    ``llama_kwargs`` go to ``Llama`` (e.g. ``n_ctx``, ``n_threads``, ``n_gpu_layers``);
    ``verbose`` defaults to False. ``rpc``: llama.cpp RPC workers ("host:port,..." or a list),
    checked before the model loads; the layers go to them (``n_gpu_layers`` defaults to all).
    """
    path = resolve_model(model_path)
    endpoints = None
    if rpc is not None:
        endpoints = rpc_workers.add_workers(rpc)
        llama_kwargs.setdefault("n_gpu_layers", -1)
    llama_kwargs.setdefault("verbose", False)
    try:
        # Llama() itself lets a warning or two through (e.g. Gemma 3's SWA cache note) when quiet
        with suppress_stdout_stderr(disable=bool(llama_kwargs["verbose"])):
            llm = Llama(model_path=str(path), **llama_kwargs)
    except ValueError as e:
        raise BadInputError(f"{path}: llama.cpp could not load this model ({e}); is it a GGUF model file?") from None
    return attach(llm, force_copy=force_copy, rpc=endpoints)
