"""Continuous batching over one hooked Llama: each request is its own sequence with its own
steering configuration, and all running requests share every decode.

Between two decode steps, finished or cancelled requests leave (their KV entries and
configuration are dropped) and waiting ones join; a decode holds one row per generating request
plus as many prompt rows of joining requests as the batch has room for. A worker thread owns
the hook; HTTP handlers only submit jobs and read the events each job's ``sink`` receives.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Callable, Deque, Dict, List, Optional, Tuple

import numpy as np

from sadi_cpp.errors import BadInputError, SadiError
from sadi_cpp.llama.batch import BatchRow
from sadi_cpp.scoring.logprob import log_softmax
from sadi_cpp.server.jobs import Failed, Finished, Gated, Job, Piece, QueueFull, TokenInfo
from sadi_cpp.server.prefix_cache import PrefixCache, keepable, reusable, share_running
from sadi_cpp.server.sampling import PENALTY_LAST_N, next_token, top_logprobs

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook
    from sadi_cpp.server.mask_library import Steer

log = logging.getLogger("sadi_cpp.server")


KEEP_UNUSED = 16  # steering configurations kept in the engine after their last request ends


class Batcher:
    """The worker thread that owns the hook; jobs come in through :meth:`submit`."""

    def __init__(self, hook: Hook, n_parallel: int, n_ctx_seq: int, max_queue: int, prompt_cache: int = 0):
        """``prompt_cache``: cells for prompt prefixes kept after their requests (prefix_cache.py);
        the context must hold them beyond the n_parallel requests' own."""
        if not 1 <= n_parallel <= hook.n_seq_max:
            raise BadInputError(f"n_parallel must be in 1..{hook.n_seq_max} (sequences this context holds), got {n_parallel}",
                                field="n_parallel")
        self.hook = hook
        self.n_parallel = n_parallel
        self.n_ctx_seq = n_ctx_seq
        self.max_queue = max_queue
        self._cv = threading.Condition()
        self._waiting: Deque[Job] = collections.deque()
        self._active: List[Job] = []
        self._free = list(range(n_parallel))
        self._configs: Dict[Tuple[str, int, float], Tuple[str, int]] = {}  # key -> (configuration, users)
        self._names = itertools.count()
        self._end_tokens: Optional[np.ndarray] = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="sadi-batcher", daemon=True)
        self.decodes = 0  # decode steps so far (for /health and the tests)
        self.on_decode: Optional[Callable[[float], None]] = None  # called with each decode's seconds (metrics)
        self.cache = PrefixCache(hook, range(n_parallel, hook.n_seq_max), prompt_cache)

    # ---- called from other threads ----

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._thread.join(timeout=30)

    def end_all(self, reason: str) -> None:
        """Shutting down: refuse new jobs and end every running and waiting one with ``reason``
        (a Failed event, so streams close with an error event and [DONE])."""
        with self._cv:
            self._stopping = True
            for job in self._active + [m for w in self._waiting for m in w.members]:
                job.cancelled = True
                job.sink(Failed(reason))
            for job in [m for w in self._waiting for m in w.members]:
                _free_grammar(job)
            self._waiting.clear()
            self._cv.notify_all()

    def submit(self, job: Job) -> None:
        """Queue a job (with n > 1: the first of its group, which brings the others); QueueFull when
        every sequence is taken and max_queue jobs already wait for one (jobs that will find a
        free sequence at the next step do not count as waiting)."""
        if len(job.members) > self.n_parallel:
            raise BadInputError(f"n must be at most {self.n_parallel} (the server's sequences)", field="n")
        if not job.prompt:
            raise BadInputError("the prompt is empty after tokenization", field="prompt")
        if len(job.prompt) >= self.n_ctx_seq:
            raise BadInputError(f"the prompt has {len(job.prompt)} tokens; a request's context holds {self.n_ctx_seq} "
                                "(prompt plus at least one generated token): shorten it, or give the server a longer context",
                                field="prompt")
        with self._cv:
            if self._stopping:
                raise SadiError("the server is shutting down")
            queued = len(self._waiting) - len(self._free)  # beyond the sequences free now
            if queued >= self.max_queue:
                raise QueueFull(f"all {self.n_parallel} sequences are busy and {max(queued, 0)} requests wait; retry later")
            self._waiting.append(job)
            self._cv.notify_all()

    def cancel(self, job: Job) -> None:
        """The client went away: its sequences (all of its group's) are freed before the next decode."""
        with self._cv:
            for member in job.members:
                member.cancelled = True
            if job.members[0] in self._waiting:
                self._waiting.remove(job.members[0])
                for member in job.members:
                    _free_grammar(member)  # never admitted: the worker never touches it
            self._cv.notify_all()

    def status(self) -> Dict[str, int]:
        """Running and waiting requests, the sequences there are, decodes so far (for /health)."""
        with self._cv:
            return {"running": len(self._active), "waiting": len(self._waiting), "n_parallel": self.n_parallel,
                    "decodes": self.decodes}

    # ---- the worker ----

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._stopping and not self._active and not self._waiting:
                    self._cv.wait()
                if self._stopping:
                    break
                for job in [j for j in self._active if j.cancelled]:
                    self._release(job)
                while self._waiting and len(self._free) >= len(self._waiting[0].members):
                    self._admit(self._waiting.popleft().members)
                active = list(self._active)
            if active:
                try:
                    self._step(active)
                except Exception as e:  # a bug must fail the requests at hand, never stop the worker
                    log.exception("batcher step failed")
                    with self._cv:
                        for job in [j for j in active if j in self._active]:
                            job.sink(Failed(f"internal error: {e}"))
                            self._release(job)
        for job in self._active + [m for w in self._waiting for m in w.members]:
            job.sink(Failed("the server is shutting down"))

    def _admit(self, jobs: List[Job]) -> None:
        """A sequence for each job of a request (its group), bound to its steering's configuration;
        if one cannot be set up, none of them runs."""
        admitted: List[Job] = []
        bound: List[Job] = []
        try:
            for job in jobs:
                job.seq = self._free.pop(0)
                admitted.append(job)
                job.rng = np.random.default_rng(job.seed)
                if job.steer is not None:
                    self.hook.bind(job.seq, self._acquire(job.steer))
                bound.append(job)
            lead = jobs[0]
            cached = self.cache.reuse(lead.prompt, reusable(lead.prompt, lead.steer.positions if lead.steer else None),
                                      [job.seq for job in jobs])
            for job in jobs:
                job.n_fed = job.cached = cached
        except Exception as e:
            for job in admitted:
                if job in bound:  # set up whole: undone as a finished job is
                    self._active.append(job)
                    self._release(job)
                else:
                    self._free.insert(0, job.seq)
            for job in jobs:
                _free_grammar(job)
                job.sink(Failed(str(e)))
            return
        self._active.extend(jobs)

    def _acquire(self, steer: Steer) -> str:
        """The engine configuration for a steering, shared by the requests that use the same one."""
        key = steer.key
        if key in self._configs:
            name, users = self._configs.pop(key)  # re-inserted last: the most recently used
        else:
            name, users = f"request-{next(self._names)}", 0
            self.hook.configure(name, steer.steering)
        self._configs[key] = (name, users + 1)
        return name

    def _release(self, job: Job) -> None:
        self._active.remove(job)
        _free_grammar(job)
        try:
            if job.completed and job.leads:  # its unsteered prompt cells stay for later requests
                self.cache.keep(job.seq, keepable(job.prompt, job.steer.positions if job.steer else None))
            self.hook.seq_free(job.seq)
            self.hook.bind(job.seq, None)
            if job.steer is not None:
                key = job.steer.key
                name, users = self._configs[key]
                self._configs[key] = (name, users - 1)
                self._forget_unused()
        finally:
            self._free.append(job.seq)

    def _forget_unused(self) -> None:
        """Keep up to KEEP_UNUSED configurations nobody uses (the next request with the same
        steering finds it ready); drop the oldest beyond that."""
        unused = [k for k, (_, users) in self._configs.items() if users == 0]
        for key in unused[: max(0, len(unused) - KEEP_UNUSED)]:
            self.hook.remove_config(self._configs.pop(key)[0])

    def _step(self, active: List[Job]) -> None:
        if self.cache.budget:  # prompt reuse on (--prompt-cache 0 turns it off, kept and running alike)
            share_running(self.hook, active)
        rows: List[BatchRow] = []
        outputs: List[int] = []
        owners: List[List[Job]] = []  # the jobs that sample from each output row
        for job in active:
            if job.generating:
                pos = len(job.prompt) + len(job.generated) - 1
                steer = job.steer is not None and job.steer.positions != "last"
                rows.append(BatchRow(job.generated[-1], pos, (job.seq,), steer))
                outputs.append(len(rows) - 1)
                owners.append([job])
        room = self.hook.n_batch - len(rows)
        for job in active:
            if job.n_fed == len(job.prompt) or room == 0 or not job.leads:
                continue
            take = min(room, len(job.prompt) - job.n_fed)
            end = len(job.prompt) - 1
            everywhere = job.steer is not None and job.steer.positions == "all"
            seqs = tuple(m.seq for m in job.members)  # n > 1: the prompt once, its cells in every sequence
            for p in range(job.n_fed, job.n_fed + take):
                rows.append(BatchRow(job.prompt[p], p, seqs, everywhere or (job.steer is not None and p == end)))
            job.n_fed += take
            room -= take
            if job.n_fed == len(job.prompt):
                for member in job.members:
                    member.n_fed = job.n_fed
                outputs.append(len(rows) - 1)
                owners.append(job.members)
        try:
            start = time.perf_counter()
            logits = self.hook.decode(rows, outputs)
            self.decodes += 1
            if self.on_decode is not None:
                self.on_decode(time.perf_counter() - start)
        except Exception as e:  # a failed decode fails its requests, never the server
            log.exception("decode failed")
            with self._cv:
                for job in active:
                    job.sink(Failed(f"decoding failed: {e}"))
                    self._release(job)
            return
        for job, row in ((j, r) for group, r in zip(owners, logits) for j in group):
            if not job.generated and job.steer is not None and job.steer.steering.gate is not None:
                decided = self.hook.gate(job.seq)  # the prompt's last token was in this decode
                if decided is not None:
                    job.sink(Gated(decided))
            try:
                done = self._advance(job, row)
            except Exception as e:
                log.exception("sampling failed")
                job.sink(Failed(f"sampling failed: {e}"))
                done = True
            if done:
                with self._cv:
                    self._release(job)

    def _advance(self, job: Job, logits: np.ndarray) -> bool:
        """Sample the job's next token and send what became visible; True when the job is done."""
        if job.cancelled:
            return True
        if len(job.generated) < job.min_tokens:
            logits = logits.copy()
            logits[self._ends()] = -np.inf
        if job.grammar is not None:
            logits = job.grammar.restrict(logits)
            if not np.isfinite(logits).any():  # the grammar is complete and may not end yet, or is: stop here
                return self._finish(job, "stop", job.text_bytes.decode("utf-8", errors="ignore"))
        history = (job.prompt + job.generated)[-PENALTY_LAST_N:]
        token = next_token(logits, history, job.sampling, job.rng)
        info = None
        if job.logprobs >= 0:
            lp = log_softmax(logits)
            top = [(t, self.hook.token_bytes(t), v) for t, v in top_logprobs(lp, job.logprobs)]
            info = TokenInfo(token, self.hook.token_bytes(token), float(lp[token]), top)
        if self.hook.is_end(token):
            return self._finish(job, "stop", job.text_bytes.decode("utf-8", errors="ignore"))
        if job.grammar is not None:
            job.grammar.accept(token)
        job.generated.append(token)
        job.text_bytes += self.hook.token_bytes(token)
        text = job.text_bytes.decode("utf-8", errors="ignore")
        # a stop string cannot begin before the text already sent (held_back kept every possible start)
        cut = _first_stop(text, job.stop, job.n_sent)
        if cut >= 0:
            return self._finish(job, "stop", text[:cut], info)
        if len(job.generated) >= job.max_tokens or len(job.prompt) + len(job.generated) >= self.n_ctx_seq:
            return self._finish(job, "length", text, info)
        visible = len(text) - _held_back(text, job.stop)
        job.sink(Piece(text[job.n_sent:visible], [info] if info else []))
        job.n_sent = max(job.n_sent, visible)
        return False

    def _finish(self, job: Job, reason: str, text: str, info: Optional[TokenInfo] = None) -> bool:
        if len(text) > job.n_sent or info:
            job.sink(Piece(text[job.n_sent:], [info] if info else []))
        job.sink(Finished(reason, len(job.prompt), len(job.generated), job.cached))
        job.completed = True
        return True

    def _ends(self) -> np.ndarray:
        """Every end-of-generation token id (for min_tokens), found once."""
        if self._end_tokens is None:
            n = self.hook.n_vocab
            self._end_tokens = np.array([t for t in range(n) if self.hook.is_end(t)], dtype=np.int64)
        return self._end_tokens


def _free_grammar(job: Job) -> None:
    if job.grammar is not None:
        job.grammar.close()
        job.grammar = None


def _first_stop(text: str, stops: List[str], start: int) -> int:
    """Where the first stop string in ``text`` begins, looking from ``start`` on; -1 when none does."""
    found = [i for i in (text.find(s, start) for s in stops) if i >= 0]
    return min(found, default=-1)


def _held_back(text: str, stops: List[str]) -> int:
    """Characters at the end of ``text`` that could start a stop string (not sent yet): for each
    stop, the longest end of the text that is a beginning of it. Only places where the stop's first
    character stands are tried, longest first, each with one startswith."""
    held = 0
    for s in stops:
        tail = text[len(text) - min(len(s) - 1, len(text)):]
        i = tail.find(s[0]) if tail else -1
        while i >= 0 and len(tail) - i > held:
            if s.startswith(tail[i:]):
                held = len(tail) - i
                break
            i = tail.find(s[0], i + 1)
    return held
