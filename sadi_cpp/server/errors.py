"""The server's errors: the OpenAI error body, the exception a route raises, how the library's
BadInputError becomes a 400 naming the request field, and the app's exception handlers."""

from __future__ import annotations

from typing import Any, Dict, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sadi_cpp.errors import BadInputError


def error_body(message: str, kind: str, code: Optional[str] = None, param: Optional[str] = None) -> Dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, kind: str, code: Optional[str] = None, param: Optional[str] = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, kind, code, param)


def bad_request(message: str, param: Optional[str] = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", None, param)


def from_library(e: BadInputError, prefix: str = "", default: Optional[str] = None) -> ApiError:
    """A 400 for a library error: ``param`` is the request field (``prefix`` + the error's field,
    e.g. sadi.delta), and the message names it."""
    field = getattr(e, "field", None)
    param = (prefix + field) if field else (prefix.rstrip(".") or default)
    message = str(e)
    if param and field and message.startswith(field + " "):
        message = param + message[len(field):]
    elif param and not message.startswith(param):
        message = f"{param}: {message}"
    return bad_request(message, param)


def install(app: FastAPI) -> None:
    """Every error leaves as an OpenAI error body."""

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
