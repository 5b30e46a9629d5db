"""The long-running commands: serve (an OpenAI-compatible server with per-request steering) and
worker (a llama.cpp RPC worker for models split over machines)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import signal

import typer
from typing_extensions import Annotated

from sadi_cpp.cli.common import Model, ModelArg, Rpc, Threads, app, err, errors, llama_kwargs, one_model, out, plain
from sadi_cpp.errors import BadInputError, SadiError


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
    cache_type: Annotated[str, typer.Option("--cache-type", help="Type of the KV cache's keys and values: f16 or f32.")] = "f16",
    allowed_hosts: Annotated[Optional[str], typer.Option("--allowed-hosts", help="Host names requests may address, comma-separated (default: the loopback names when --host is loopback, else any).")] = None,
    max_connections: Annotated[int, typer.Option("--max-connections", help="Open connections at most; more are closed as they come.")] = 256,
    header_timeout: Annotated[float, typer.Option("--header-timeout", help="Seconds a connection has to send its request head; then it is closed.")] = 10.0,
    prompt_cache: Annotated[Optional[int], typer.Option("--prompt-cache", help="Tokens of prompt prefixes kept after their requests for later ones to reuse (default: --n-ctx; 0: no prompt reuse at all).")] = None,
    log_prompts: Annotated[bool, typer.Option("--log-prompts", help="Write each request's prompt (its first 1000 characters) into the access log.")] = False,
    threads: Threads = None,
    rpc: Rpc = None,
) -> None:
    """Serve the model over an OpenAI-compatible HTTP API; each request may pick a mask ("sadi" field)."""
    try:
        from sadi_cpp.server import http
        from sadi_cpp.server.metrics import enable_access_log
        from sadi_cpp.server.routes import local_hosts
        from sadi_cpp.server.service import Service
    except ImportError as e:
        raise BadInputError(f"the server needs the optional extra ({e.name} is missing): pip install 'sadi-cpp[server]'") from None
    model = one_model(model_arg, model)
    if not 0 < port < 65536:
        raise BadInputError(f"port must be in 1..65535, got {port}", field="port")
    if cache_type not in CACHE_TYPES:
        raise BadInputError(f"cache_type must be one of {', '.join(CACHE_TYPES)}, got {cache_type!r}", field="cache_type")
    if max_connections < 1:
        raise BadInputError(f"max_connections must be >= 1, got {max_connections}", field="max_connections")
    if not 0 < header_timeout <= 3600:
        raise BadInputError(f"header_timeout must be in (0, 3600] seconds, got {header_timeout}", field="header_timeout")
    hosts = tuple(h.strip() for h in allowed_hosts.split(",") if h.strip()) if allowed_hosts else local_hosts(host)
    kv = CACHE_TYPES[cache_type]
    service = Service.build(model, masks, n_parallel, n_ctx, chat_format, api_key, max_queue, hosts, log_prompts, prompt_cache,
                            **llama_kwargs(threads, type_k=kv, type_v=kv, rpc=rpc))
    enable_access_log()
    lib = service.library
    out.print(f"model: {service.hook.model_path}", soft_wrap=True)
    out.print(plain(f"masks from {lib.folder}: {', '.join(lib.masks) or 'none'}"), soft_wrap=True)
    if lib.gates:
        out.print(plain(f"gates: {', '.join(lib.gates)}"), soft_wrap=True)
    for name, why in lib.skipped:
        err.print(plain(f"skipped {name}: {why}"), soft_wrap=True)
    for name, note in lib.notes:
        err.print(plain(f"note: {name}: {note}"), soft_wrap=True)
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        err.print(f"note: listening on {host} without --api-key: anyone who can reach this address may use the server", soft_wrap=True)
    out.print(f"{n_parallel} sequences of {n_ctx} tokens; listening on http://{host}:{port} (playground: /)", soft_wrap=True)
    service.batcher.start()
    try:
        http.serve(service.app, host, port, lambda: service.batcher.end_all("the server is shutting down"), max_connections,
                   header_timeout)
    finally:
        service.batcher.stop()


CACHE_TYPES = {"f16": 1, "f32": 0}  # ggml type ids


@app.command()
@errors
def worker(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 50052,
    device: Annotated[Optional[str], typer.Option("--device", help="The llama.cpp device to serve (default: the CPU).")] = None,
    threads: Threads = None,
    cache: Annotated[Optional[Path], typer.Option("--cache", help="Folder where the worker keeps weights it was sent, by hash (later loads send only hashes).")] = None,
) -> None:
    """Run a llama.cpp RPC worker: other machines then split a model over it with --rpc HOST:PORT."""
    from sadi_cpp.llama.rpc import protocol, serve_worker

    if not 0 < port < 65536:
        raise BadInputError(f"port must be in 1..65535, got {port}", field="port")
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    err.print(f"warning: llama.cpp's RPC protocol has no authentication and no encryption: anyone who can reach {host}:{port} "
              "can run computations on this machine and read what is sent; listen on a trusted network only", soft_wrap=True)
    err.print(f"RPC protocol {'.'.join(map(str, protocol()))}; clients: sadi-cpp ... --rpc {host}:{port}", soft_wrap=True)
    # the server blocks inside llama.cpp, where Python's handlers never run: the signals end it as they would any program
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    raise SadiError(serve_worker(host, port, device, threads, None if cache is None else str(cache)))
