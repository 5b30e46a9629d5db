"""Structured output: a GBNF grammar that decides which tokens a sequence may take next, run by
llama.cpp's own grammar sampler (``llama_sampler_init_grammar``), one per sequence, so requests
decoded together each keep their own grammar state. JSON mode and JSON schemas become grammars
with llama-cpp-python's converter::

    g = Grammar.from_json_schema(hook, {"type": "object", "properties": {"n": {"type": "integer"}}})
    allowed = g.restrict(logits)      # -inf where the grammar forbids the token
    g.accept(token)                   # the grammar moves on
"""

from __future__ import annotations

import ctypes
import json
from typing import Any, Optional

import numpy as np
from llama_cpp import llama_cpp, llama_grammar
from llama_cpp._utils import suppress_stdout_stderr

from sadi_cpp.errors import BadInputError


class Grammar:
    """One sequence's grammar state over ``hook``'s vocabulary; :meth:`close` frees it."""

    def __init__(self, hook: Any, gbnf: str, field: str = "grammar"):
        if not isinstance(gbnf, str) or not gbnf.strip():
            raise BadInputError("a grammar must be a non-empty GBNF text with a rule named root", field=field)
        self._vocab = hook.llm._model.vocab
        self.n_vocab = hook.n_vocab
        with suppress_stdout_stderr(disable=False):  # llama.cpp prints its parse errors to stderr
            self._sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, gbnf.encode("utf-8"), b"root")
        if not self._sampler:
            raise BadInputError("llama.cpp could not parse the grammar (GBNF with a rule named root, every rule defined)",
                                field=field)
        self._cells = (llama_cpp.llama_token_data * self.n_vocab)()
        self._view = np.ctypeslib.as_array(self._cells)

    @classmethod
    def json_object(cls, hook: Any, field: str = "response_format") -> "Grammar":
        """Any JSON object (OpenAI's JSON mode)."""
        return cls(hook, llama_grammar.JSON_GBNF, field)

    @classmethod
    def from_json_schema(cls, hook: Any, schema: Any, field: str = "response_format") -> "Grammar":
        """Text that is JSON valid against ``schema`` (the converter's subset of JSON Schema)."""
        if not isinstance(schema, dict):
            raise BadInputError(f"a JSON schema must be an object, got {type(schema).__name__}", field=field)
        try:
            gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(schema))
        except Exception as e:  # the converter raises plain exceptions on what it cannot express
            raise BadInputError(f"the JSON schema cannot be turned into a grammar: {e}", field=field) from None
        return cls(hook, gbnf, field)

    def restrict(self, logits: np.ndarray) -> np.ndarray:
        """A copy of ``logits`` [n_vocab] with -inf on every token the grammar forbids now."""
        view = self._view
        view["id"] = np.arange(self.n_vocab, dtype=np.int32)
        view["logit"] = logits
        view["p"] = 0.0
        cur = llama_cpp.llama_token_data_array(self._cells, self.n_vocab, -1, False)
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(cur))
        out = np.full(self.n_vocab, -np.inf, dtype=np.float32)
        out[view["id"][: cur.size]] = view["logit"][: cur.size]
        return out

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self._sampler, int(token))

    def close(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None


def request_grammar(hook: Any, grammar: Optional[str], response_format: Any) -> Optional[Grammar]:
    """The grammar a request asks for: ``grammar`` (GBNF), or ``response_format`` {"type":
    "json_object"} (with an optional "schema", llama-cpp-python's form) or {"type": "json_schema",
    "json_schema": {"schema": ...}} (OpenAI's); None for plain text. BadInputError names the field."""
    fmt = dict(response_format) if response_format else {}
    kind = fmt.get("type", "text")
    if grammar and kind != "text":
        raise BadInputError("give either grammar or a JSON response_format, not both", field="grammar")
    if grammar:
        return Grammar(hook, grammar)
    if kind == "text":
        return None
    if kind == "json_object":
        schema = fmt.get("schema")
        return Grammar.json_object(hook) if schema is None else Grammar.from_json_schema(hook, schema)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or "schema" not in spec:
            raise BadInputError('a json_schema response_format needs {"json_schema": {"name": ..., "schema": {...}}}',
                                field="response_format")
        return Grammar.from_json_schema(hook, spec["schema"])
    raise BadInputError(f"response_format type {kind!r}: use text, json_object or json_schema", field="response_format")
