"""Start a real ``sadi-cpp serve`` in a subprocess on a free localhost port, and write masks for a
model with random tables (the server tests need masks that fit, not meaningful ones)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

START_SECONDS = 120  # loading the default model on a slow shared machine takes several seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``with Server(args) as srv:`` runs ``python -m sadi_cpp serve ARGS`` until the block ends."""

    def __init__(self, args: List[str], api_key: Optional[str] = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.args = ["serve", *args, "--port", str(self.port)] + (["--api-key", api_key] if api_key else [])
        self.proc: Optional[subprocess.Popen] = None
        self.log: Optional[Path] = None

    def __enter__(self) -> "Server":
        import tempfile

        fd, name = tempfile.mkstemp(prefix="sadi-serve-", suffix=".log")
        os.close(fd)
        self.log = Path(name)
        with open(self.log, "w") as log:
            # run outside the source tree, whose sadi_cpp/ lacks the compiled engine
            self.proc = subprocess.Popen([sys.executable, "-m", "sadi_cpp", *self.args], stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.log.parent)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.get("/health")[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.2)
        self.__exit__(None, None, None)
        raise AssertionError(f"the server did not answer /health in {START_SECONDS} s:\n{self.output()}")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.log.read_text() if self.log else ""

    def request(self, method: str, path: str, body: Any = None, headers: Optional[Dict[str, str]] = None,
                raw: Optional[bytes] = None) -> Tuple[int, Any]:
        """(status, parsed JSON body) of a raw HTTP request."""
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json", **(headers or {})}
        if self.api_key and "Authorization" not in h:
            h["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                text = r.read().decode()
                status = r.status
        except urllib.error.HTTPError as e:
            text, status = e.read().decode(), e.code
        try:
            return status, json.loads(text)
        except json.JSONDecodeError:
            return status, text

    def get(self, path: str, **kw: Any) -> Tuple[int, Any]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Tuple[int, Any]:
        return self.request("POST", path, body, **kw)


def wait_until(condition: Any, what: str, seconds: float = 120.0) -> None:
    """Poll ``condition()`` until it holds; fail naming ``what`` if it has not after ``seconds``
    (a bound for a broken server, far above what a loaded machine needs)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {seconds:.0f} s and still not: {what}")
        time.sleep(0.05)


def write_random_masks(model_path: Path, folder: Path, specs: Dict[str, Tuple[str, int, float]], seed: int = 0) -> Dict[str, Any]:
    """Write one mask per {name: (site, top_k, delta)} with a random table, fitted to the model."""
    import sadi_cpp
    from sadi_cpp.masks.fingerprint import model_fingerprint
    from sadi_cpp.masks.mask import SadiMask

    hook = sadi_cpp.load(str(model_path), n_ctx=64)
    try:
        fp = model_fingerprint(str(model_path), hook.shape, hook.llm.n_vocab())
        rng = np.random.default_rng(seed)
        out = {}
        for name, (site, top_k, delta) in specs.items():
            table = rng.standard_normal((hook.shape.n_layer, hook.n_units(site))).astype(np.float32)
            values = None
            if site == "head":
                values = rng.standard_normal((hook.shape.n_layer, hook.width("head"))).astype(np.float32)
            m = SadiMask(site=site, mean_diff=table, top_k=top_k, delta=delta, n_pairs=10, pairs_sha256="ab" * 32,
                         model=fp, tool_version="test", values=values)
            m.save(folder / f"{name}.sadi.gguf")
            out[name] = m
        return out
    finally:
        hook.llm.close()


def write_random_gates(model_path: Path, folder: Path, specs: Dict[str, Tuple[int, float]], seed: int = 0) -> Dict[str, Any]:
    """Write one gate per {name: (layer, threshold)} with a random direction and center, fitted to the model."""
    import sadi_cpp
    from sadi_cpp.gate import Gate
    from sadi_cpp.masks.fingerprint import model_fingerprint
    from sadi_cpp.masks.gate_file import save_gate

    hook = sadi_cpp.load(str(model_path), n_ctx=64)
    try:
        fp = model_fingerprint(str(model_path), hook.shape, hook.llm.n_vocab())
        rng = np.random.default_rng(seed)
        out = {}
        for name, (layer, threshold) in specs.items():
            n = hook.shape.n_embd
            gate = Gate(layer, rng.standard_normal(n).astype(np.float32), 0.1 * rng.standard_normal(n).astype(np.float32),
                        threshold, model=fp, n_pairs=10, pairs_sha256="cd" * 32, tool_version="test")
            save_gate(gate, folder / f"{name}.sadi.gguf")
            out[name] = gate
        return out
    finally:
        hook.llm.close()
