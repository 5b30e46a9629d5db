"""The exceptions sadi-cpp raises. The CLI turns BadInputError into exit code 2, the others into 1."""

from __future__ import annotations


class SadiError(Exception):
    """Base class of every error sadi-cpp raises on purpose."""


class BadInputError(SadiError, ValueError):
    """Input the user can fix: a file, a field, an option. The message says what, where and how."""


class UnsupportedModelError(BadInputError):
    """The model's compute graph lacks a tensor a site needs; the message names it."""


class SteeringError(SadiError, RuntimeError):
    """The eval callback met an error during a decode; the decode's outputs are not to be trusted."""


class LlamaError(SadiError, RuntimeError):
    """llama.cpp refused a call (e.g. llama_decode returned an error code)."""
