"""Everything one server runs on, built from the command's options: the hooked model (one
context with a KV cache for n_parallel sequences), the mask library, the batcher and the app."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from sadi_cpp.errors import BadInputError
from sadi_cpp.llama.chat import choose_chat, has_chat_template
from sadi_cpp.llama.hook import Hook, load
from sadi_cpp.server.batcher import Batcher
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
              chat_format: Optional[str] = None, api_key: Optional[str] = None, max_queue: int = 64,
              allowed_hosts: Sequence[str] = ("*",), log_prompts: bool = False, prompt_cache: Optional[int] = None,
              **llama_kwargs: Any) -> "Service":
        """``n_ctx``: tokens of one request (prompt and answer); the KV cache holds n_parallel of them,
        plus ``prompt_cache`` cells for kept prompt prefixes (default: n_ctx; 0: none).
        ``masks``: the folder of masks (default: the model's folder, where build-mask writes them)."""
        from sadi_cpp.server.metrics import Metrics
        from sadi_cpp.server.routes import create_app
        from sadi_cpp.server.serving import Serving

        check_options(masks, n_parallel, n_ctx, max_queue, api_key)  # before the model loads
        prompt_cache = n_ctx if prompt_cache is None else prompt_cache
        if prompt_cache < 0:
            raise BadInputError(f"prompt_cache must be >= 0 tokens (0: no cache), got {prompt_cache}", field="prompt_cache")
        hook = load(model, **dict(llama_kwargs, n_ctx=n_ctx * n_parallel + prompt_cache, n_batch=N_BATCH, n_ubatch=N_BATCH))
        chat_problem = ""
        if chat_format is not None:
            choose_chat(hook, True, chat_format)
        elif not has_chat_template(hook):
            chat_problem = ("this model has no chat template (tokenizer.chat_template): use /v1/completions, "
                            "or start the server with a chat format (e.g. chatml)")
        library = MaskLibrary.load(Path(masks) if masks is not None else Path(hook.model_path).parent, hook)
        batcher = Batcher(hook, n_parallel, n_ctx, max_queue, prompt_cache)
        model_id = Path(hook.model_path).name
        hook.max_piece_bytes  # computed now (a quarter second), not in the first request
        metrics = Metrics(batcher, configs=lambda: len(hook.configs))
        batcher.on_decode = metrics.decode_seconds.observe
        app = create_app(Serving(hook, library, batcher, model_id, chat_problem, metrics, log_prompts), api_key, allowed_hosts)
        return cls(hook, library, batcher, app, model_id)


def check_options(masks: Optional[Path], n_parallel: int, n_ctx: int, max_queue: int, api_key: Optional[str]) -> None:
    """The server's settings that can be refused without a model (BadInputError naming the field)."""
    if not 1 <= n_parallel <= 64:
        raise BadInputError(f"n_parallel must be in 1..64, got {n_parallel}", field="n_parallel")
    if n_ctx < 16:
        raise BadInputError(f"n_ctx must be at least 16 tokens, got {n_ctx}", field="n_ctx")
    if max_queue < 0:
        raise BadInputError(f"max_queue must be >= 0, got {max_queue}", field="max_queue")
    if api_key is not None and not api_key.strip():
        raise BadInputError("api_key is empty: give a key, or none for an open server", field="api_key")
    if masks is not None and not Path(masks).is_dir():
        raise BadInputError(f"{masks}: no such folder of masks (a folder holding *.sadi.gguf files)", field="masks")
