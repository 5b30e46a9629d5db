"""The OpenAI wire format: request bodies (llama-cpp-python's server types plus the ``sadi``
steering field), and the JSON of responses, stream chunks and errors built from batcher events."""

from __future__ import annotations

import time
import uuid
from typing import Any, Dict, List, Optional, Tuple, Union

from llama_cpp.server.types import CreateChatCompletionRequest, CreateCompletionRequest
from pydantic import Field

from sadi_cpp.server.jobs import TokenInfo

SADI_FIELD = Field(default=None, description='Steering for this request: {"mask": NAME, "delta": 9, "top_k": 5, '
                                             '"positions": "last", "weighting": "uniform"}, or a list of such objects '
                                             '(composed); absent or null: unsteered.')
Sadi = Optional[Union[Dict[str, Any], List[Any]]]


# JSON mode: {"type": "json_object"} (optionally with "schema", llama-cpp-python's form) or OpenAI's
# {"type": "json_schema", "json_schema": {"name": ..., "schema": {...}}}; checked in llama/grammar.py
ResponseFormat = Optional[Dict[str, Any]]


class CompletionRequest(CreateCompletionRequest):
    sadi: Sadi = SADI_FIELD
    stream_options: Optional[Dict[str, Any]] = None
    response_format: ResponseFormat = None


class ChatRequest(CreateChatCompletionRequest):
    sadi: Sadi = SADI_FIELD
    stream_options: Optional[Dict[str, Any]] = None
    response_format: ResponseFormat = None  # type: ignore[assignment]


def unsupported(req: Union[CompletionRequest, ChatRequest]) -> Optional[str]:
    """Why a request asks for something this server does not do (400), or None. Fields that would
    change the answer are refused rather than ignored."""
    if getattr(req, "best_of", 1) not in (None, 1):
        return "best_of: only 1 is supported"
    if req.logit_bias and req.logit_bias_type == "tokens":
        return "logit_bias_type: only token ids (input_ids) are supported as logit_bias keys"
    if req.mirostat_mode:
        return "mirostat_mode is not supported"
    if getattr(req, "echo", False):
        return "echo is not supported"
    if getattr(req, "suffix", None):
        return "suffix is not supported"
    for name in ("tools", "functions", "tool_choice", "function_call"):
        if getattr(req, name, None):
            return f"{name}: tool and function calls are not supported"
    return None


class Reply:
    """Builds the response JSON of one request, whole or chunk by chunk."""

    def __init__(self, chat: bool, model: str, steering: Any):
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = model
        self.steering = steering
        self.offsets: Dict[int, int] = {}  # per choice: text offset of the next token, for completion logprobs

    def _head(self, obj: str) -> Dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "sadi": self.steering}

    def logprobs(self, tokens: List[TokenInfo], index: int = 0) -> Optional[Dict[str, Any]]:
        if not tokens:
            return None
        if self.chat:
            return {"content": [{
                "token": _text(t.piece), "logprob": t.logprob, "bytes": list(t.piece),
                "top_logprobs": [{"token": _text(p), "logprob": v, "bytes": list(p)} for _, p, v in t.top],
            } for t in tokens]}
        out: Dict[str, Any] = {"tokens": [], "text_offset": [], "token_logprobs": [], "top_logprobs": []}
        for t in tokens:
            offset = self.offsets.get(index, 0)
            out["tokens"].append(_text(t.piece))
            out["text_offset"].append(offset)
            out["token_logprobs"].append(t.logprob)
            out["top_logprobs"].append({_text(p): v for _, p, v in t.top})
            self.offsets[index] = offset + len(_text(t.piece))
        return out

    def whole(self, choices: List[Tuple[str, Optional[List[TokenInfo]], str]], usage: Dict[str, Any]) -> Dict[str, Any]:
        """The whole answer: ``choices`` (text, tokens or None, finish reason), one per n."""
        out = []
        for i, (text, tokens, reason) in enumerate(choices):
            lp = self.logprobs(tokens, i) if tokens is not None else None
            if self.chat:
                out.append({"index": i, "message": {"role": "assistant", "content": text}, "logprobs": lp, "finish_reason": reason})
            else:
                out.append({"index": i, "text": text, "logprobs": lp, "finish_reason": reason})
        return {**self._head("chat.completion" if self.chat else "text_completion"), "choices": out, "usage": usage}

    def chunk(self, text: Optional[str], tokens: Optional[List[TokenInfo]], reason: Optional[str] = None,
              first: bool = False, index: int = 0) -> Dict[str, Any]:
        lp = self.logprobs(tokens, index) if tokens else None
        if self.chat:
            delta: Dict[str, Any] = {} if text is None else {"content": text}
            if first:
                delta = {"role": "assistant", "content": ""}
            choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": reason}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text or "", "logprobs": lp, "finish_reason": reason}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, usage: Dict[str, Any]) -> Dict[str, Any]:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [], "usage": usage}


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def _text(piece: bytes) -> str:
    return piece.decode("utf-8", errors="replace")
