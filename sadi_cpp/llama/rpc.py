"""Models split over llama.cpp RPC workers (ggml-rpc), with the same engine.

A worker (``sadi-cpp worker``) is llama.cpp's own RPC server, run from the libggml this package
uses, so client and worker always speak the same protocol version. A client adds workers to
ggml's device registry before its model loads (``add_workers``); llama.cpp then places layers on
them like on GPUs, and the engine reads and edits the nodes there through
ggml_backend_tensor_get/set (docs/distributed.md).

llama.cpp aborts the process when a worker cannot be reached or answers with another protocol
version, so each endpoint is checked here first with a plain connection and the protocol's own
greeting (command HELLO: one command byte, an 8-byte length, 24 capability bytes; the answer
starts with major, minor, patch). After loading, ``placement`` says which device computes each
layer, and ``check_placement`` refuses a model that silently stayed on the CPU.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

from sadi_cpp.errors import BadInputError, UnsupportedModelError
from sadi_cpp.llama.runtime import load_core
from sadi_cpp.sites import RECORD_SITES

if TYPE_CHECKING:  # annotations only: the hook is handed in, never made here
    from sadi_cpp.llama.hook import Hook

DEFAULT_PORT = 50052
_added: set = set()  # endpoints this process put into the registry (their workers hold its connection)
HELLO = 14  # RPC_CMD_HELLO, fixed by the protocol across versions
CAPS = 24  # RPC_CONN_CAPS_SIZE: capability bytes of the greeting (all 0: plain TCP)
HOW_TO_START = "start one there with: sadi-cpp worker --host 0.0.0.0 --port {port} (same sadi-cpp version)"


def how_to_install() -> str:
    from sadi_cpp.llama.runtime import pinned_llama_cpp_python

    return ("this llama-cpp-python was built without llama.cpp's RPC backend: reinstall it with it, then sadi-cpp: "
            f"CMAKE_ARGS=\"-DGGML_RPC=on\" pip install --force-reinstall --no-cache-dir llama-cpp-python=={pinned_llama_cpp_python()} "
            "&& pip install --force-reinstall --no-deps --no-cache-dir . (docs/distributed.md)")


def supported() -> bool:
    """True when llama.cpp in this process has the RPC backend."""
    return bool(load_core().rpc.available())


def protocol() -> tuple:
    """The RPC protocol version this build speaks: (major, minor, patch)."""
    return tuple(load_core().rpc.protocol())


def parse_endpoints(value: Union[str, Sequence[str]], field: str = "rpc") -> List[str]:
    """``HOST:PORT[,HOST:PORT...]`` (or a list of them), checked: each once, a port 1..65535."""
    items = [p.strip() for p in value.split(",")] if isinstance(value, str) else [str(p).strip() for p in value]
    out: List[str] = []
    for item in items:
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise BadInputError(f"'{item}' is not a worker endpoint: write HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}", field=field)
        if item in out:
            raise BadInputError(f"the worker {item} is listed twice", field=field)
        out.append(item)
    if not out:
        raise BadInputError(f"no worker given: write HOST:PORT, e.g. 127.0.0.1:{DEFAULT_PORT}", field=field)
    if len(out) > 16:
        raise BadInputError(f"llama.cpp takes at most 16 RPC workers, got {len(out)}", field=field)
    return out


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the connection closed")
        data += chunk
    return data


def hello(endpoint: str, timeout: float = 5.0) -> tuple:
    """The protocol version the worker at ``endpoint`` speaks; BadInputError when it cannot be
    reached or does not answer as an RPC worker."""
    host, _, port = endpoint.rpartition(":")
    how = HOW_TO_START.format(port=port)
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(struct.pack("<BQ", HELLO, CAPS) + bytes(CAPS))
            size = struct.unpack("<Q", _recv(sock, 8))[0]
            if size != 4 + CAPS:
                raise BadInputError(f"{endpoint} answered, but not as a llama.cpp RPC worker of this kind "
                                    f"(greeting of {size} bytes); {how}", field="rpc")
            major, minor, patch = _recv(sock, 4 + CAPS)[:3]
    except (socket.timeout, TimeoutError):
        raise BadInputError(f"the RPC worker {endpoint} did not answer within {timeout:g} s (a worker serves one client at "
                            f"a time: is another process using it?); {how}", field="rpc") from None
    except (ConnectionError, OSError) as e:
        raise BadInputError(f"cannot reach an RPC worker at {endpoint} ({e.strerror or e}); {how}", field="rpc") from None
    return (major, minor, patch)


def check_workers(endpoints: Sequence[str]) -> None:
    """Every endpoint answers as an RPC worker of this build's protocol (else a clear error)."""
    if not supported():
        raise UnsupportedModelError(how_to_install())
    mine = protocol()
    for endpoint in endpoints:
        theirs = hello(endpoint)
        if theirs[0] != mine[0] or theirs[1] > mine[1]:
            raise BadInputError(f"the RPC worker {endpoint} speaks protocol {'.'.join(map(str, theirs))}, this sadi-cpp "
                                f"{'.'.join(map(str, mine))}: run the worker from the same sadi-cpp and llama-cpp-python "
                                f"version ({HOW_TO_START.format(port=endpoint.rpartition(':')[2])})", field="rpc")


def add_workers(endpoints: Union[str, Sequence[str]]) -> List[str]:
    """Check the workers, then put them into llama.cpp's device registry (before a model loads;
    the default device list then offers them to the model loader). Returns the endpoints."""
    endpoints = parse_endpoints(endpoints)
    # a worker already added holds this process's connection (it serves one client at a time):
    # only new ones are checked, the others are in the registry already
    check_workers([e for e in endpoints if e not in _added])
    core = load_core()
    for endpoint in endpoints:
        problem = core.rpc.add_server(endpoint)
        if problem:
            raise BadInputError(f"{endpoint}: {problem}", field="rpc")
        _added.add(endpoint)
    return endpoints


def worker_devices() -> Dict[str, str]:
    """The RPC devices in the registry: device name ("RPC0") -> endpoint."""
    return {name: desc for name, desc in load_core().rpc.devices() if name.startswith("RPC")}


def placement(hook: Hook) -> Dict[str, List[str]]:
    """Per site the model allows: the device computing its node in each layer ("CPU", or a
    worker's endpoint)."""
    rpc = worker_devices()
    sites = [s for s in RECORD_SITES if not hook.site_problem(s)]
    return {site: [rpc.get(d, d) for d in (hook.engine.site_device(site, il) for il in range(hook.shape.n_layer))]
            for site in sites}


def check_placement(hook: Hook, endpoints: Sequence[str]) -> Dict[str, List[int]]:
    """The layers each worker computes (from the residual node's device); refuses a model that
    stayed on the CPU or left a worker without a layer."""
    layers = placement(hook)["residual"]
    held = {e: [il for il, d in enumerate(layers) if d == e] for e in endpoints}
    if not any(held.values()):
        raise UnsupportedModelError(f"the model loaded, but no layer is on the RPC workers ({', '.join(endpoints)}): every "
                                    "layer stayed on this machine; load it with n_gpu_layers=-1 (the default with rpc)")
    idle = [e for e, ls in held.items() if not ls]
    if idle:
        raise UnsupportedModelError(f"the RPC worker(s) {', '.join(idle)} got no layer of this model ({hook.shape.n_layer} layers): "
                                    "use fewer workers, or give each a share with tensor_split")
    return held


_fault = {"endpoints": [], "note": ""}


def on_fault(endpoints: Optional[Sequence[str]] = None, note: Optional[str] = None) -> None:
    """When llama.cpp aborts (a worker lost mid-command), print which workers stopped answering and
    ``note`` (what the command keeps), and exit with code 1 instead of dumping core. Either part
    may be updated later; the other keeps its value."""
    if endpoints is not None:
        _fault["endpoints"] = list(endpoints)
    if note is not None:
        _fault["note"] = note
    if _fault["endpoints"]:
        load_core().rpc.on_abort(list(_fault["endpoints"]), str(_fault["note"]))


def serve_worker(host: str, port: int, device: Optional[str] = None, threads: Optional[int] = None,
                 cache: Optional[str] = None) -> str:
    """Run llama.cpp's RPC server (blocks while it serves; returns why it stopped)."""
    if not supported():
        raise UnsupportedModelError(how_to_install())
    endpoint = parse_endpoints(f"{host}:{port}", field="port")[0]
    try:  # llama.cpp only prints when it cannot listen: say it here, with the reason
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as e:
        raise BadInputError(f"cannot listen on {endpoint}: {e.strerror or e}", field="port") from None
    n_threads = threads or max(1, (os.cpu_count() or 2) // 2)
    return str(load_core().rpc.serve(endpoint, cache or "", n_threads, device or ""))
