"""Running the app under uvicorn with guards uvicorn lacks: a connection must send its request head
within HEAD_SECONDS (slow-header clients do not pile up); past a cap on open connections (well below
the file-descriptor limit, so accepting never fails) a new connection takes the place of the
longest-waiting one that has no request running, or is closed when every one has; and SIGTERM or
Ctrl-C first ends every running request with an error event, so that streams close properly."""

from __future__ import annotations

import asyncio
import logging
import resource
from typing import Any, Callable, Optional

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEAD_SECONDS = 10.0  # from connecting (or the end of the last answer) to a complete request head
MAX_CONNECTIONS = 256  # open connections; more are closed as they come

log = logging.getLogger("sadi_cpp.server")


def connection_cap(wanted: int = MAX_CONNECTIONS) -> int:
    """The cap, raised file-descriptor limit permitting: the soft limit goes up to the hard one,
    and the cap stays 64 descriptors below it (the model, the log, the listening socket)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 65536 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return max(1, min(wanted, soft - 64))


class GuardedHttp(H11Protocol):
    """uvicorn's HTTP/1.1 protocol with a deadline for each request head and a connection cap."""

    cap = MAX_CONNECTIONS
    head_seconds = HEAD_SECONDS

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_timer: Optional[asyncio.TimerHandle] = None
        self._since = self.loop.time()
        if len(self.connections) > self.cap:
            idle = [c for c in self.connections if c is not self and isinstance(c, GuardedHttp) and c._idle()]
            if not idle:  # every connection has a request running: this one waits for nothing
                self.transport.abort()
                return
            min(idle, key=lambda c: c._since).transport.abort()  # a slow or idle client makes room
        self._arm()

    def _idle(self) -> bool:
        """No request running: still waiting for a head, or done with the last answer."""
        return not self.transport.is_closing() and (self.cycle is None or self.cycle.response_complete)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(self.head_seconds, self._head_late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_late(self) -> None:
        self._head_timer = None
        if self.cycle is None or self.cycle.response_complete:  # still no request head: drop it
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not None and not self.cycle.response_complete:  # a head arrived
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._since = self.loop.time()
            self._disarm()
            self._arm()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        self._disarm()
        super().connection_lost(exc)


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, before_exit: Callable[[], None]):
        super().__init__(config)
        self._before_exit = before_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._before_exit()  # running requests end with an error event now, within the grace period
        super().handle_exit(sig, frame)


def serve(app: Any, host: str, port: int, before_exit: Callable[[], None], max_connections: int = MAX_CONNECTIONS,
          head_seconds: float = HEAD_SECONDS) -> None:
    GuardedHttp.cap = connection_cap(max_connections)
    GuardedHttp.head_seconds = head_seconds
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", http=GuardedHttp, timeout_graceful_shutdown=5,
                            timeout_keep_alive=5)
    _Server(config, before_exit).run()
