"""What an operator scrapes: the server's counters in Prometheus' text format (``GET /metrics``),
kept in a registry of the app's own (two servers in one process never mix their numbers), and
the one access-log line per request."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:  # annotations only
    from sadi_cpp.server.batcher import Batcher

access_log = logging.getLogger("sadi_cpp.server.access")

# decode times of this project's models on a laptop run from a millisecond (one token, a small
# model) to seconds (a long prompt): buckets spread over that range
DECODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The counters the serving layer and the batcher move, and the gauges read at scrape time."""

    def __init__(self, batcher: Optional[Batcher] = None, configs: Optional[Callable[[], int]] = None):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("sadi_requests", "Requests answered, by route and HTTP status.", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("sadi_prompt_tokens", "Prompt tokens of finished requests.", registry=r)
        self.completion_tokens = Counter("sadi_completion_tokens", "Tokens generated for finished requests.", registry=r)
        self.cache_hits = Counter("sadi_prompt_cache_hits", "Requests that reused a kept prompt prefix.", registry=r)
        self.cached_tokens = Counter("sadi_prompt_cache_reused_tokens", "Prompt tokens taken from kept prefixes instead of evaluated.",
                                     registry=r)
        self.steered = Counter("sadi_steered_requests", "Requests that named a steering, by its first mask.", ["mask"], registry=r)
        self.gates = Counter("sadi_gate_decisions", "Gate decisions, by gate and whether it fired.", ["gate", "fired"], registry=r)
        self.decode_seconds = Histogram("sadi_decode_seconds", "Time of one batched llama_decode.", buckets=DECODE_BUCKETS,
                                        registry=r)
        self.running = Gauge("sadi_sequences_running", "Requests being decoded now.", registry=r)
        self.waiting = Gauge("sadi_requests_waiting", "Requests waiting for a free sequence.", registry=r)
        self.live_configs = Gauge("sadi_steering_configurations", "Steering configurations held by the engine.", registry=r)
        self.kept_cells = Gauge("sadi_prompt_cache_cells", "KV cells held by kept prompt prefixes.", registry=r)
        if batcher is not None:
            self.running.set_function(lambda: batcher.status()["running"])
            self.waiting.set_function(lambda: batcher.status()["waiting"])
            self.kept_cells.set_function(lambda: batcher.cache.cells)
        if configs is not None:
            self.live_configs.set_function(configs)


def enable_access_log() -> None:
    """Access-log lines to stderr, one per request, each led by its time."""
    if not access_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    access_log.propagate = False


def log_request(method: str, route: str, status: int, seconds: float, info: Dict[str, Any]) -> None:
    """One line per request: method, route, status, tokens, steering, duration (and the prompt only
    when the server was started with --log-prompts, which puts it in ``info``)."""
    parts = [method, route, str(status), f"{seconds * 1000:.0f}ms"]
    for key in ("prompt_tokens", "cached_tokens", "completion_tokens", "mask", "gate", "fired", "prompt"):
        if info.get(key) is not None:
            parts.append(f"{key}={info[key]!r}" if key == "prompt" else f"{key}={info[key]}")
    access_log.info(" ".join(parts))


def now() -> float:
    return time.perf_counter()


class AccessLog:
    """ASGI middleware: when a response has been sent whole (a stream: its last chunk), count it
    in ``sadi_requests`` and write the access-log line. The route handler leaves what it knows
    (tokens, steering) in ``request.state.access``; a route the app does not have counts as
    "other", so a client cannot grow the metric's label set."""

    def __init__(self, app: Any, metrics: Metrics, routes: Any):
        self.app = app
        self.metrics = metrics
        self.routes = frozenset(routes)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = now()
        status = {"code": 500}
        done = {"logged": False}

        def finish() -> None:
            if done["logged"]:
                return
            done["logged"] = True
            path = scope.get("path", "")
            route = path if path in self.routes else "other"
            self.metrics.requests.labels(route, str(status["code"])).inc()
            info = scope.get("state", {}).get("access") or {}
            log_request(scope.get("method", ""), route, status["code"], now() - start, info)

        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                finish()

        try:
            await self.app(scope, receive, sending)
        finally:
            finish()  # a client that went away mid-stream, or an error before the body
