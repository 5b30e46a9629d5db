"""The HTTP routes: OpenAI completions and chat (whole or streamed as server-sent events), the
model and mask lists, health, and the playground page. Requests become batcher jobs; the routes
hold no model state of their own."""

from __future__ import annotations

import asyncio
import json
import secrets
from importlib import resources
from typing import Any, AsyncIterator, Dict, List, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sadi_cpp.server.batcher import Batcher, Failed, Finished, Job, Piece, QueueFull, TokenInfo
from sadi_cpp.errors import BadInputError, SadiError
from sadi_cpp.llama.hook import Hook, chat_prompt
from sadi_cpp.server.mask_library import MaskLibrary
from sadi_cpp.server.sampling import SamplingParams
from sadi_cpp.server.protocol import ChatRequest, CompletionRequest, Reply, error_body, unsupported, usage

POLL_SECONDS = 0.25  # how often a non-streaming request checks that its client is still there
MAX_LOGPROBS = 20  # alternatives per token (OpenAI's limit for chat)


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, code: Optional[str] = None, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, code, param)


def bad_request(message: str, param: Optional[str] = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", None, param)


def create_app(hook: Hook, library: MaskLibrary, batcher: Batcher, model_id: str, api_key: Optional[str] = None,
               chat_problem: str = "") -> FastAPI:
    """``chat_problem``: why chat requests are refused ('' when the model has a chat format)."""
    app = FastAPI(title="sadi-cpp", description="OpenAI-compatible API with per-request SADI steering")

    def authorize(request: Request) -> None:
        if api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                           "invalid_request_error", "invalid_api_key")

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return JSONResponse(e.body, status_code=e.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        message = f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg", "invalid request body"))
        return JSONResponse(error_body(message, "invalid_request_error", None, where or None), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(error_body(str(e.detail), "invalid_request_error"), status_code=e.status_code)

    @app.get("/", response_class=HTMLResponse)
    def playground() -> str:
        return resources.files("sadi_cpp.server").joinpath("playground.html").read_text(encoding="utf-8")

    @app.get("/health")
    def health() -> Dict[str, Any]:
        return {"status": "ok", "model": model_id, "masks": len(library.masks), **batcher.status()}

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    def models() -> Dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "owned_by": "me", "permissions": []}]}

    @app.get("/v1/masks", dependencies=[Depends(authorize)])
    def masks() -> Dict[str, Any]:
        return {"object": "list", "data": [library.describe(n) for n in library.masks]}

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        prompt = body.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise bad_request("prompt: give one string (a list of several prompts is not supported)", "prompt")
            prompt = prompt[0]
        tokens = hook.llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
        return await _answer(body, request, tokens, [], chat=False)

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat(body: ChatRequest, request: Request) -> Any:
        if chat_problem:
            raise bad_request(chat_problem, "messages")
        if not body.messages:
            raise bad_request("messages: give at least one message", "messages")
        try:
            tokens, stop = chat_prompt(hook, _text_messages(body.messages))
        except BadInputError as e:
            raise bad_request(str(e), "messages") from None
        return await _answer(body, request, tokens, stop, chat=True)

    async def _answer(body: Union[CompletionRequest, ChatRequest], request: Request, tokens: List[int],
                      template_stop: List[str], chat: bool) -> Any:
        why = unsupported(body)
        if why:
            raise bad_request(why)
        try:
            steer = library.steer(body.sadi) if body.sadi is not None else None
            sampling = SamplingParams(body.temperature, body.top_p, body.top_k, body.min_p, body.repeat_penalty,
                                      body.frequency_penalty or 0.0, body.presence_penalty or 0.0)
        except BadInputError as e:
            raise bad_request(str(e), "sadi" if "sadi" in str(e) else None) from None
        stop = [s for s in ([body.stop] if isinstance(body.stop, str) else list(body.stop or [])) if s]
        if chat:
            n_logprobs = (body.top_logprobs or 0) if body.logprobs else -1
        else:
            n_logprobs = -1 if body.logprobs is None else body.logprobs
        if n_logprobs > MAX_LOGPROBS:
            raise bad_request(f"{'top_logprobs' if chat else 'logprobs'} must be at most {MAX_LOGPROBS}, got {n_logprobs}")
        seed = body.seed
        if seed is not None and not (seed == -1 or 0 <= seed < 2**63):
            raise bad_request(f"seed must be in 0..2^63-1 (or -1: random), got {seed}", "seed")
        max_tokens = body.max_tokens if body.max_tokens not in (None, 0) else batcher.n_ctx_seq
        if max_tokens < 0:
            raise bad_request("max_tokens must be >= 0", "max_tokens")
        loop = asyncio.get_running_loop()
        events: "asyncio.Queue[Any]" = asyncio.Queue()
        job = Job(prompt=list(tokens), max_tokens=max_tokens, sink=lambda e: loop.call_soon_threadsafe(events.put_nowait, e),
                  sampling=sampling, seed=None if seed == -1 else seed, stop=stop + template_stop, logprobs=n_logprobs, steer=steer,
                  min_tokens=body.min_tokens)
        try:
            batcher.submit(job)
        except QueueFull as e:
            raise ApiError(429, str(e), "rate_limit_error", "server_busy") from None
        except BadInputError as e:
            raise bad_request(str(e), "prompt" if not chat else "messages") from None
        except SadiError as e:
            raise ApiError(503, str(e), "server_error") from None
        reply = Reply(chat, model_id, steer.describe() if steer else None)
        if body.stream:
            include_usage = bool((body.stream_options or {}).get("include_usage"))
            return StreamingResponse(_stream(job, events, reply, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await _collect(job, events, reply, request, n_logprobs >= 0)

    async def _collect(job: Job, events: "asyncio.Queue[Any]", reply: Reply, request: Request, want_logprobs: bool) -> Any:
        parts: List[str] = []
        tokens: List[TokenInfo] = []
        try:
            while True:
                try:
                    event = await asyncio.wait_for(events.get(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        batcher.cancel(job)
                        return JSONResponse(error_body("client disconnected", "server_error"), status_code=499)
                    continue
                if isinstance(event, Piece):
                    parts.append(event.text)
                    tokens.extend(event.tokens)
                elif isinstance(event, Finished):
                    return reply.whole("".join(parts), tokens if want_logprobs else None, event.reason,
                                       usage(event.prompt_tokens, event.completion_tokens))
                elif isinstance(event, Failed):
                    raise ApiError(500, event.message, "server_error")
        except asyncio.CancelledError:
            batcher.cancel(job)
            raise

    async def _stream(job: Job, events: "asyncio.Queue[Any]", reply: Reply, include_usage: bool) -> AsyncIterator[str]:
        try:
            if reply.chat:
                yield _sse(reply.chunk(None, None, first=True))
            while True:
                event = await events.get()
                if isinstance(event, Piece):
                    yield _sse(reply.chunk(event.text, event.tokens))
                elif isinstance(event, Finished):
                    yield _sse(reply.chunk(None if reply.chat else "", None, event.reason))
                    if include_usage:
                        yield _sse(reply.usage_chunk(usage(event.prompt_tokens, event.completion_tokens)))
                    break
                elif isinstance(event, Failed):
                    yield _sse(error_body(event.message, "server_error"))
                    break
            yield "data: [DONE]\n\n"
        finally:  # the client went away (the stream was cancelled) or the answer is complete
            batcher.cancel(job)

    return app


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


def _sse(obj: Dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
