"""The HTTP routes: OpenAI completions and chat (whole or streamed), the model and mask lists,
health, metrics, and the playground page, and the FastAPI app that holds them. Each route hands its
request to the serving layer (serving.py)."""

from __future__ import annotations

import secrets
from importlib import resources
from typing import Any, Dict, Optional, Sequence, Tuple

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.trustedhost import TrustedHostMiddleware

from sadi_cpp.server import errors, limits
from sadi_cpp.server.errors import ApiError
from sadi_cpp.server.metrics import AccessLog, Metrics
from sadi_cpp.server.protocol import ChatRequest, CompletionRequest
from sadi_cpp.server.serving import Pending, Serving

router = APIRouter()


def serving(request: Request) -> Serving:
    return request.app.state.serving


def authorize(request: Request) -> None:
    key = request.app.state.api_key
    if key is None:
        return
    given = request.headers.get("authorization", "")
    if not secrets.compare_digest(given.encode(), f"Bearer {key}".encode()):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer KEY'",
                       "invalid_request_error", "invalid_api_key")


async def _respond(s: Serving, pending: Pending, body: Any, request: Request) -> Any:
    request.state.access = pending.info  # filled in as the answer goes out; the access log reads it at the end
    if body.stream:
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        return StreamingResponse(s.stream(pending, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return await s.whole(pending, request)


@router.get("/", response_class=HTMLResponse)
def playground() -> str:
    return resources.files("sadi_cpp.server").joinpath("playground.html").read_text(encoding="utf-8")


@router.get("/health")
def health(s: Serving = Depends(serving)) -> Dict[str, Any]:
    return {"status": "ok", "model": s.model_id, "masks": len(s.library.masks), **s.batcher.status()}


@router.get("/metrics", dependencies=[Depends(authorize)])
def metrics(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", dependencies=[Depends(authorize)])
def models(s: Serving = Depends(serving)) -> Dict[str, Any]:
    return {"object": "list", "data": [{"id": s.model_id, "object": "model", "owned_by": "me", "permissions": []}]}


@router.get("/v1/masks", dependencies=[Depends(authorize)])
def masks(s: Serving = Depends(serving)) -> Dict[str, Any]:
    return {"object": "list", "data": [s.library.describe(n) for n in [*s.library.masks, *s.library.gates]]}


@router.post("/v1/completions", dependencies=[Depends(authorize)])
async def completions(body: CompletionRequest, request: Request, s: Serving = Depends(serving)) -> Any:
    return await _respond(s, await s.completion(body), body, request)


@router.post("/v1/chat/completions", dependencies=[Depends(authorize)])
async def chat(body: ChatRequest, request: Request, s: Serving = Depends(serving)) -> Any:
    return await _respond(s, await s.chat(body), body, request)


def create_app(serving: Serving, api_key: Optional[str] = None, allowed_hosts: Sequence[str] = ("*",),
               metrics: Optional[Metrics] = None) -> FastAPI:
    """The app: these routes only (no generated docs or schema pages, no redirect for a trailing
    slash), requests for other Host names refused (400), bodies over limits.MAX_BODY_BYTES 413;
    every request counted in ``metrics`` and written to the access log, refused ones included."""
    app = FastAPI(title="sadi-cpp", docs_url=None, redoc_url=None, openapi_url=None)
    app.router.redirect_slashes = False
    app.state.serving = serving
    app.state.api_key = api_key
    app.state.metrics = metrics or serving.metrics or Metrics()
    errors.install(app)
    app.include_router(router)
    app.add_middleware(limits.BodyLimit)
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(AccessLog, metrics=app.state.metrics, routes=[r.path for r in router.routes])
    return app


def local_hosts(host: str) -> Tuple[str, ...]:
    """The Host names a server bound to ``host`` answers: its own loopback names when it listens
    on this machine only (a web page elsewhere cannot reach it by renaming itself: DNS
    rebinding), any name otherwise."""
    if host in ("127.0.0.1", "localhost", "::1"):
        return ("127.0.0.1", "localhost", "[::1]", "::1")
    return ("*",)
