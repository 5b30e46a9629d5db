"""The exceptions sadi-cpp raises. The CLI turns BadInputError into exit code 2, the others into 1."""

from __future__ import annotations

from typing import Optional


class SadiError(Exception):
    """Base class of every error sadi-cpp raises on purpose."""


class BadInputError(SadiError, ValueError):
    """Input the user can fix: a file, a field, an option. The message says what, where and how, in
    the library's words; ``field`` names the parameter at fault (e.g. ``"delta"``, ``"n_ctx"``) so
    that the CLI can name its option and the server the request field."""

    def __init__(self, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.field = field


class UnsupportedModelError(BadInputError):
    """The model's compute graph lacks a tensor a site needs; the message names it."""


class SteeringError(SadiError, RuntimeError):
    """The eval callback met an error during a decode; the decode's outputs are not to be trusted."""


class LlamaError(SadiError, RuntimeError):
    """llama.cpp refused a call (e.g. llama_decode returned an error code)."""
