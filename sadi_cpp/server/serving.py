"""The serving layer between HTTP and the batcher: a checked request becomes a batcher job (prompt
tokens, sampling, stop strings, steering), and the job's events become a whole answer or a stream
of server-sent events. Routes (routes.py) only hand requests over."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Dict, List, Optional, Tuple, Union

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from sadi_cpp.errors import BadInputError, SadiError
from sadi_cpp.llama.chat import chat_prompt
from sadi_cpp.llama.grammar import request_grammar
from sadi_cpp.server.jobs import Failed, Finished, Gated, Job, Piece, QueueFull, TokenInfo
from sadi_cpp.server import limits
from sadi_cpp.server.errors import ApiError, bad_request, error_body, from_library
from sadi_cpp.server.protocol import ChatRequest, CompletionRequest, Reply, unsupported, usage
from sadi_cpp.server.sampling import SamplingParams, check_logit_bias

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook
    from sadi_cpp.server.batcher import Batcher
    from sadi_cpp.server.mask_library import MaskLibrary
    from sadi_cpp.server.metrics import Metrics

MAX_LOGPROBS = 20  # alternatives per token (OpenAI's limit for chat)
MAX_N = 16  # choices per request (each takes a sequence of the server's)

Body = Union[CompletionRequest, ChatRequest]


@dataclass
class Pending:
    """A submitted job, where its events arrive, and the reply being built."""

    job: Job
    events: "asyncio.Queue[Any]"
    reply: Reply
    want_logprobs: bool
    info: Dict[str, Any] = field(default_factory=dict)  # for the access log: tokens, steering (metrics.py)


class Serving:
    def __init__(self, hook: Hook, library: MaskLibrary, batcher: Batcher, model_id: str, chat_problem: str = "",
                 metrics: Optional[Metrics] = None, log_prompts: bool = False):
        """``chat_problem``: why chat requests are refused ('' when the model has a chat format);
        ``metrics``: the counters to move; ``log_prompts``: the access log shows each prompt."""
        self.hook, self.library, self.batcher = hook, library, batcher
        self.model_id, self.chat_problem = model_id, chat_problem
        self.metrics, self.log_prompts = metrics, log_prompts

    # ---- requests in ----

    async def completion(self, body: CompletionRequest) -> Pending:
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise bad_request("prompt: give one string (a list of several prompts is not supported)", "prompt")
            prompt = prompt[0]
        limits.check_fits(_utf8_size(prompt, "prompt"), self.hook.max_piece_bytes, self.batcher.n_ctx_seq, "prompt")
        tokens = await self._off_loop(lambda: self.hook.tokenize(prompt, special=True), "prompt")
        return self._submit(body, tokens, [], chat=False, text=prompt)

    async def chat(self, body: ChatRequest) -> Pending:
        if self.chat_problem:
            raise bad_request(self.chat_problem, "messages")
        if not body.messages:
            raise bad_request("messages: give at least one message", "messages")
        limits.check_messages(body.messages)
        messages = _text_messages(body.messages)
        size = sum(_utf8_size(m["content"], "messages") for m in messages if isinstance(m.get("content"), str))
        limits.check_fits(size, self.hook.max_piece_bytes, self.batcher.n_ctx_seq, "messages")
        tokens, stop = await self._off_loop(lambda: chat_prompt(self.hook, messages), "messages")
        return self._submit(body, tokens, stop, chat=True, text=str(messages[-1].get("content", "")))

    async def _off_loop(self, work: Callable[[], Any], param: str) -> Any:
        """Tokenizing can take seconds on a long text: in a worker thread, so the event loop (and
        every other request) goes on meanwhile."""
        try:
            return await run_in_threadpool(work)
        except UnicodeEncodeError as e:  # a lone surrogate elsewhere than a content (e.g. a role)
            raise _not_unicode(e, param) from None
        except BadInputError as e:
            raise from_library(e, default=param) from None

    def _submit(self, body: Body, tokens: List[int], template_stop: List[str], chat: bool, text: str = "") -> Pending:
        why = unsupported(body)
        if why:
            raise bad_request(why)
        try:
            steer = self.library.steer(body.sadi) if body.sadi is not None else None
        except BadInputError as e:
            raise from_library(e, "sadi.") from None
        try:
            sampling = SamplingParams(body.temperature, body.top_p, body.top_k, body.min_p, body.repeat_penalty,
                                      body.frequency_penalty or 0.0, body.presence_penalty or 0.0,
                                      check_logit_bias(body.logit_bias, self.hook.n_vocab))
        except BadInputError as e:
            raise from_library(e) from None
        n_logprobs = ((body.top_logprobs or 0) if body.logprobs else -1) if chat else (-1 if body.logprobs is None else body.logprobs)
        if n_logprobs > MAX_LOGPROBS:
            name = "top_logprobs" if chat else "logprobs"
            raise bad_request(f"{name} must be at most {MAX_LOGPROBS}, got {n_logprobs}", name)
        seed = body.seed
        if seed is not None and not (seed == -1 or 0 <= seed < 2**63):
            raise bad_request(f"seed must be in 0..2^63-1 (or -1: random), got {seed}", "seed")
        max_tokens = body.max_tokens if body.max_tokens not in (None, 0) else self.batcher.n_ctx_seq
        if max_tokens < 0:
            raise bad_request("max_tokens must be >= 0", "max_tokens")
        stop = limits.check_stops(body.stop)
        n = body.n if body.n is not None else 1
        if not 1 <= n <= min(MAX_N, self.batcher.n_parallel):
            raise bad_request(f"n must be in 1..{min(MAX_N, self.batcher.n_parallel)} (this server's sequences), got {n}", "n")
        loop = asyncio.get_running_loop()
        events: "asyncio.Queue[Any]" = asyncio.Queue()
        jobs: List[Job] = []
        try:
            for i in range(n):  # each choice its own job: its own seed (seed + i), grammar state and sequence
                job = Job(prompt=list(tokens), max_tokens=max_tokens, sampling=sampling,
                          sink=lambda e, i=i: loop.call_soon_threadsafe(events.put_nowait, (i, e)),
                          seed=None if seed in (None, -1) else (seed + i) % 2**63, stop=stop + template_stop,
                          logprobs=n_logprobs, steer=steer, min_tokens=body.min_tokens,
                          grammar=request_grammar(self.hook, body.grammar, getattr(body, "response_format", None)))
                jobs.append(job)
            if n > 1:
                for job in jobs:
                    job.group = jobs
            self.batcher.submit(jobs[0])
        except BaseException as e:
            for job in jobs:  # they will never run: free their grammars now
                if job.grammar is not None:
                    job.grammar.close()
            raise self._refused(e, chat) from None
        info: Dict[str, Any] = {"prompt": text[:1000] if self.log_prompts else None}
        if steer is not None:
            info["mask"] = "+".join(p.mask for p in steer.parts)
            info["gate"] = next((p.gate for p in steer.parts if p.gate), None)
            if self.metrics is not None:
                self.metrics.steered.labels(steer.parts[0].mask).inc()
        return Pending(jobs[0], events, Reply(chat, self.model_id, steer.describe() if steer else None), n_logprobs >= 0, info)

    @staticmethod
    def _refused(e: BaseException, chat: bool) -> BaseException:
        """What a request that could not be queued answers: 429 when busy, 400 on bad input."""
        if isinstance(e, QueueFull):
            return ApiError(429, str(e), "rate_limit_error", "server_busy")
        if isinstance(e, BadInputError):
            return from_library(e, default="messages" if chat else "prompt")
        if isinstance(e, SadiError):
            return ApiError(503, str(e), "server_error")
        return e

    def _note(self, pending: Pending, index: int, event: Any) -> None:
        """What a Finished or Gated event of choice ``index`` tells the access log and the metrics
        (the prompt, evaluated once, counts once)."""
        if isinstance(event, Finished):
            pending.info["prompt_tokens"] = event.prompt_tokens
            pending.info["cached_tokens"] = event.cached_tokens
            pending.info["completion_tokens"] = pending.info.get("completion_tokens", 0) + event.completion_tokens
            if self.metrics is not None:
                if index == 0:
                    self.metrics.prompt_tokens.inc(event.prompt_tokens)
                    if event.cached_tokens:
                        self.metrics.cache_hits.inc()
                        self.metrics.cached_tokens.inc(event.cached_tokens)
                self.metrics.completion_tokens.inc(event.completion_tokens)
        elif isinstance(event, Gated) and index == 0:
            pending.info["fired"] = event.result.fired
            pending.reply.steering = pending.job.steer.describe(event.result)  # type: ignore[union-attr]
            if self.metrics is not None:
                self.metrics.gates.labels(pending.info.get("gate") or "", str(event.result.fired).lower()).inc()

    # ---- answers out ----

    async def whole(self, pending: Pending, request: Request) -> Dict[str, Any]:
        """The whole answer (every choice); a client that goes away cancels the jobs at once."""
        watcher = asyncio.ensure_future(_wait_disconnect(request))
        n = len(pending.job.members)
        parts: List[List[str]] = [[] for _ in range(n)]
        tokens: List[List[TokenInfo]] = [[] for _ in range(n)]
        finished: Dict[int, Finished] = {}
        try:
            while True:
                getter = asyncio.ensure_future(pending.events.get())
                done, _ = await asyncio.wait({getter, watcher}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    self.batcher.cancel(pending.job)
                    raise ApiError(499, "client disconnected", "server_error")
                i, event = getter.result()
                self._note(pending, i, event)
                if isinstance(event, Piece):
                    parts[i].append(event.text)
                    tokens[i].extend(event.tokens)
                elif isinstance(event, Finished):
                    finished[i] = event
                    if len(finished) == n:
                        choices = [("".join(parts[k]), tokens[k] if pending.want_logprobs else None, finished[k].reason)
                                   for k in range(n)]
                        return pending.reply.whole(choices, _usage(finished))
                elif isinstance(event, Failed):
                    self.batcher.cancel(pending.job)
                    raise ApiError(500, event.message, "server_error")
        except asyncio.CancelledError:
            self.batcher.cancel(pending.job)
            raise
        finally:
            watcher.cancel()

    async def stream(self, pending: Pending, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: a chunk per piece of text (with its choice's index), each choice's
        finish reason, [DONE] when every choice has finished."""
        reply = pending.reply
        n = len(pending.job.members)
        finished: Dict[int, Finished] = {}
        try:
            if reply.chat:
                for i in range(n):
                    yield _sse(reply.chunk(None, None, first=True, index=i))
            while len(finished) < n:
                i, event = await pending.events.get()
                self._note(pending, i, event)  # a Gated event: later chunks carry the decision
                if isinstance(event, Piece):
                    yield _sse(reply.chunk(event.text, event.tokens, index=i))
                elif isinstance(event, Finished):
                    finished[i] = event
                    yield _sse(reply.chunk(None if reply.chat else "", None, event.reason, index=i))
                elif isinstance(event, Failed):
                    yield _sse(error_body(event.message, "server_error"))
                    break
            if include_usage and len(finished) == n:
                yield _sse(reply.usage_chunk(_usage(finished)))
            yield "data: [DONE]\n\n"
        finally:  # the client went away (the stream was cancelled) or the answer is complete
            self.batcher.cancel(pending.job)


def _usage(finished: Dict[int, Finished]) -> Dict[str, Any]:
    """One prompt (evaluated once for all choices) and every choice's tokens."""
    return usage(finished[0].prompt_tokens, sum(f.completion_tokens for f in finished.values()), finished[0].cached_tokens)


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client closes its connection (the request body was read already, so the
    next message the server receives for it is the disconnect)."""
    while True:
        message = await request.receive()
        if message.get("type") == "http.disconnect":
            return


def _text_messages(messages: List[Any]) -> List[Dict[str, Any]]:
    """Messages with their content as one string: a list of text parts is joined; any other
    part (an image, audio) is refused, the model reads text only."""
    out = []
    for i, m in enumerate(messages):
        m = dict(m)
        if isinstance(m.get("content"), list):
            parts = m["content"]
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in parts):
                raise bad_request(f"messages[{i}].content: only text parts are supported", "messages")
            m["content"] = "".join(p["text"] for p in parts)
        out.append(m)
    return out


def _utf8_size(text: str, param: str) -> int:
    """Bytes of ``text`` in UTF-8; a 400 for text that has none (a lone surrogate such as "\\ud800")."""
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError as e:
        raise _not_unicode(e, param) from None


def _not_unicode(e: UnicodeEncodeError, param: str) -> ApiError:
    return bad_request(f"{param}: the text is not valid Unicode ({e.reason} at character {e.start})", param)


def _sse(obj: Dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


__all__: Tuple[str, ...] = ("Serving", "Pending", "MAX_LOGPROBS")
