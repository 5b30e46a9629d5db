"""Everything one server runs on, built from the command's options: the hooked model (one
context with a KV cache for n_parallel sequences), the mask library, the batcher and the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import sadi_cpp
from sadi_cpp.server.batcher import Batcher
from sadi_cpp.errors import BadInputError
from sadi_cpp.llama.chat import choose_chat
from sadi_cpp.llama.hook import Hook, has_chat_template
from sadi_cpp.server.mask_library import MaskLibrary

N_BATCH = 512  # rows of one decode: the running generations plus prompt rows of joining requests


@dataclass
class Service:
    hook: Hook
    library: MaskLibrary
    batcher: Batcher
    app: Any
    model_id: str

    @classmethod
    def build(cls, model: Optional[str], masks: Optional[Path], n_parallel: int = 8, n_ctx: int = 2048,
              chat_format: Optional[str] = None, api_key: Optional[str] = None, threads: Optional[int] = None,
              max_queue: int = 64) -> "Service":
        """``n_ctx``: tokens of one request (prompt and answer); the KV cache holds n_parallel of them.
        ``masks``: the folder of masks (default: the model's folder, where build-mask writes them)."""
        from sadi_cpp.server.app import create_app

        if not 1 <= n_parallel <= 64:
            raise BadInputError(f"--n-parallel must be in 1..64, got {n_parallel}")
        if n_ctx < 16:
            raise BadInputError(f"--n-ctx must be at least 16 tokens, got {n_ctx}")
        if max_queue < 0:
            raise BadInputError(f"--max-queue must be >= 0, got {max_queue}")
        if api_key is not None and not api_key.strip():
            raise BadInputError("--api-key is empty: give a key, or leave the option out for an open server")
        if masks is not None and not Path(masks).is_dir():  # before the model loads
            raise BadInputError(f"{masks}: no such folder of masks (--masks names a folder holding *.sadi.gguf files)")
        kwargs: dict = {"n_ctx": n_ctx * n_parallel, "n_batch": N_BATCH, "n_ubatch": N_BATCH}
        if threads:
            kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
        hook = sadi_cpp.load(model, **kwargs)
        chat_problem = ""
        if chat_format is not None:
            choose_chat(hook, True, chat_format)
        elif not has_chat_template(hook):
            chat_problem = ("this model has no chat template (tokenizer.chat_template): use /v1/completions, "
                            "or start the server with --chat-format (e.g. chatml)")
        library = MaskLibrary.load(Path(masks) if masks is not None else Path(hook.model_path).parent, hook)
        batcher = Batcher(hook, library, n_parallel, n_ctx, max_queue)
        model_id = Path(hook.model_path).name
        app = create_app(hook, library, batcher, model_id, api_key, chat_problem)
        return cls(hook, library, batcher, app, model_id)
