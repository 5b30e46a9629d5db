"""What one request may send, bounded before any work is done on it: the body's bytes, the number
of messages and stop strings, and prompts that could never fit the context. A request past a
bound gets a 400 (413 for the body) that names the bound; nothing of it is tokenized."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping

from sadi_cpp.server.errors import bad_request, error_body

MAX_BODY_BYTES = 8 * 1024 * 1024  # a request body (JSON); a prompt that fits 2,048 tokens takes far less
MAX_MESSAGES = 1024  # messages of one chat request
MAX_STOPS = 16  # stop strings of one request (OpenAI allows 4)
MAX_STOP_CHARS = 256  # characters of one stop string

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request body over ``max_bytes`` is answered 413 before the app sees it
    (the declared Content-Length, or the bytes as they arrive)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int = MAX_BODY_BYTES):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._refuse(send)
            return
        chunks: List[Dict[str, Any]] = []
        size = 0
        while True:  # read the body here, so that an oversized one never reaches the app
            message = await receive()
            chunks.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._drain(receive, size)
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Dict[str, Any]:
            return chunks.pop(0) if chunks else await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive: Receive, size: int) -> None:
        """Read and drop the rest of an oversized body (up to twice the limit), so that the client,
        still sending, reads the 413 instead of a reset connection."""
        chunks_left = True
        while chunks_left and size <= 2 * self.max_bytes:
            message = await receive()
            size += len(message.get("body", b""))
            chunks_left = message["type"] == "http.request" and message.get("more_body", False)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps(error_body(f"the request body is larger than {self.max_bytes} bytes", "invalid_request_error")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def check_stops(stop: Any) -> List[str]:
    """The request's stop strings (a string or a list), within MAX_STOPS of MAX_STOP_CHARS each."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop: at most {MAX_STOPS} stop strings, got {len(stops)}", "stop")
    for s in stops:
        if len(s) > MAX_STOP_CHARS:
            raise bad_request(f"stop: a stop string may hold at most {MAX_STOP_CHARS} characters, got {len(s)}", "stop")
    return [s for s in stops if s]


def check_messages(messages: List[Any]) -> None:
    if len(messages) > MAX_MESSAGES:
        raise bad_request(f"messages: at most {MAX_MESSAGES} messages, got {len(messages)}", "messages")


def check_fits(n_bytes: int, max_piece_bytes: int, n_ctx: int, param: str) -> None:
    """Refuse, before tokenizing, text that needs more tokens than a request's context holds: no
    token of this model spells more than ``max_piece_bytes`` bytes, so ``n_bytes`` take at least
    n_bytes / max_piece_bytes tokens."""
    least = -(-n_bytes // max(1, max_piece_bytes))
    if least >= n_ctx:
        raise bad_request(f"{param}: {n_bytes} bytes of text take at least {least} tokens of this model; a request's "
                          f"context holds {n_ctx} (prompt plus at least one generated token)", param)
