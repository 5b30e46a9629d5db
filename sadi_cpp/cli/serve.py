"""The serve command: an OpenAI-compatible server with per-request steering."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from sadi_cpp.cli.common import Model, ModelArg, Threads, app, err, errors, llama_kwargs, one_model, out
from sadi_cpp.errors import BadInputError


@app.command()
@errors
def serve(
    model_arg: ModelArg = None,
    model: Model = None,
    masks: Annotated[Optional[Path], typer.Option("--masks", help="Folder of *.sadi.gguf masks to offer (default: the model's folder, where build-mask writes).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    api_key: Annotated[Optional[str], typer.Option("--api-key", help="Require 'Authorization: Bearer KEY' on /v1/ routes.")] = None,
    n_parallel: Annotated[int, typer.Option("--n-parallel", help="Requests decoded together (one sequence each, 1-64).")] = 8,
    n_ctx: Annotated[int, typer.Option("--n-ctx", help="Context of one request (prompt + answer); the cache holds n-parallel of them.")] = 2048,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait for a free sequence; more get HTTP 429.")] = 64,
    chat_format: Annotated[Optional[str], typer.Option("--chat-format", help="Chat format for /v1/chat/completions instead of the model's template (e.g. chatml).")] = None,
    threads: Threads = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API; each request may pick a mask ("sadi" field)."""
    try:
        import uvicorn

        from sadi_cpp.server.service import Service
    except ImportError as e:
        raise BadInputError(f"the server needs the optional extra ({e.name} is missing): pip install 'sadi-cpp[server]'") from None
    model = one_model(model_arg, model)
    if not 0 < port < 65536:
        raise BadInputError(f"port must be in 1..65535, got {port}", field="port")
    service = Service.build(model, masks, n_parallel, n_ctx, chat_format, api_key, max_queue, **llama_kwargs(threads))
    lib = service.library
    out.print(f"model: {service.hook.model_path}", soft_wrap=True, highlight=False)
    out.print(f"masks from {lib.folder}: {', '.join(lib.masks) or 'none'}", soft_wrap=True, highlight=False)
    for name, why in lib.skipped:
        err.print(f"skipped {name}: {why}", soft_wrap=True, highlight=False)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        err.print(f"note: listening on {host} without --api-key: anyone who can reach this address may use the server",
                  soft_wrap=True, highlight=False)
    out.print(f"{n_parallel} sequences of {n_ctx} tokens; listening on http://{host}:{port} (playground: /)",
              soft_wrap=True, highlight=False)
    service.batcher.start()
    try:
        uvicorn.run(service.app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=2)
    finally:
        service.batcher.stop()
