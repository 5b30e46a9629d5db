"""Models split over llama.cpp RPC workers: two `sadi-cpp worker` processes on free localhost
ports, and clients in processes of their own (a client puts the workers into llama.cpp's device
registry for the rest of its life, and a worker serves one client at a time). The engine's
readings and edits over the workers must equal one process's, bit for bit (tests/rpc_check.py);
bad endpoints give a clear error before anything loads; a worker lost mid-command ends the client
with a clear message and exit code 1, not a core dump; build-mask, generate and serve run end to
end on the default model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, List

import pytest
from helpers import bad
from server_helpers import free_port

from sadi_cpp.llama import rpc

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
START_SECONDS = 120  # a worker starts in well under a second; a loaded CI machine may take far longer


def test_this_install_has_the_rpc_backend():
    # README and .ci/run install llama-cpp-python with -DGGML_RPC=on: without it nothing below could run
    assert rpc.supported(), rpc.how_to_install()


class Worker:
    def __init__(self, port: int, workdir: Path):
        self.port, self.endpoint = port, f"127.0.0.1:{port}"
        self.log = workdir / f"worker-{port}.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "sadi_cpp", "worker", "--port", str(port), "--threads", "1"],
                                         stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
        deadline = time.monotonic() + START_SECONDS
        while True:  # ready when it answers the protocol's greeting
            assert self.proc.poll() is None, self.log.read_text()
            try:
                rpc.hello(self.endpoint, timeout=2.0)
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"worker {self.endpoint} did not answer in {START_SECONDS} s:\n{self.log.read_text()}")
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=60)


def start_workers(n: int, workdir: Path) -> List[Worker]:
    return [Worker(free_port(), workdir) for _ in range(n)]


@pytest.fixture
def workers(tmp_path) -> Iterator[List[Worker]]:
    made = start_workers(2, tmp_path)
    try:
        yield made
    finally:
        for w in made:
            w.stop()


def client(args: List[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    """A client process (run outside the source tree, whose sadi_cpp/ lacks the compiled engine)."""
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def endpoints(ws: List[Worker]) -> str:
    return ",".join(w.endpoint for w in ws)


def test_the_engine_over_two_workers_equals_one_process(workers, tmp_path):
    res = client([str(HERE / "rpc_check.py"), "--rpc", endpoints(workers), "--dir", str(tmp_path)], tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["checks"] >= 30
    for name, layers in summary["layers"].items():
        assert all(layers[w.endpoint] for w in workers), (name, layers)  # both workers hold layers


def test_unreachable_or_foreign_endpoints_are_clear_errors_before_loading(tiny_path, tmp_path):
    closed = free_port()
    bad(["check", str(tiny_path), "--rpc", f"127.0.0.1:{closed}"], f"cannot reach an RPC worker at 127.0.0.1:{closed}",
        "sadi-cpp worker")
    bad(["check", str(tiny_path), "--rpc", "localhost"], "not a worker endpoint", "HOST:PORT")
    bad(["check", str(tiny_path), "--rpc", "a:1,a:1"], "listed twice")
    # something that listens but is no RPC worker: it answers nothing and closes
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def close_each() -> None:
            conn, _ = srv.accept()
            conn.recv(64)
            conn.close()

        t = threading.Thread(target=close_each, daemon=True)
        t.start()
        bad(["check", str(tiny_path), "--rpc", f"127.0.0.1:{port}"], f"127.0.0.1:{port}")
        t.join(timeout=30)


def test_check_shows_where_layers_run_and_a_lost_worker_ends_the_client_cleanly(workers, tiny_path, tmp_path):
    res = client(["-m", "sadi_cpp", "check", str(tiny_path), "--rpc", endpoints(workers)], tmp_path)
    assert res.returncode == 0, res.stderr
    assert f"on {workers[0].endpoint}" in res.stdout and f"on {workers[1].endpoint}" in res.stdout

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"positive": f"good {i} " * 40, "negative": f"bad {i} " * 40}) + "\n" for i in range(400)))
    proc = subprocess.Popen([sys.executable, "-m", "sadi_cpp", "build-mask", str(pairs), str(tiny_path), "--rpc", endpoints(workers),
                             "--sequential", "--no-cache", "-o", str(tmp_path / "m.sadi.gguf")],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wait for the state "pairs are being decoded over the workers" (a progress line), then lose a worker
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("pairs ") and "/400" in line:
            break
    workers[1].stop()
    rest, _ = proc.communicate(timeout=300)
    err = "".join(lines) + _
    assert proc.returncode == 1, (proc.returncode, err)  # not -6 (SIGABRT, a core dump)
    assert f"the RPC worker {workers[1].endpoint} no longer accepts connections" in err, err
    assert "kept:" in err or "nothing of the unfinished step was written" in err, err
    assert not (tmp_path / "m.sadi.gguf").exists()


@pytest.mark.parametrize("n_workers", [2])
def test_build_mask_generate_and_serve_on_the_default_model(n_workers, tmp_path):
    from server_helpers import Server

    ws = start_workers(n_workers, tmp_path)
    try:
        where = endpoints(ws)
        examples = ROOT / "examples" / "sentiment_pairs.jsonl"
        mask = tmp_path / "gemma.sadi.gguf"
        res = client(["-m", "sadi_cpp", "build-mask", str(examples), "--rpc", where, "-o", str(mask), "--json"], tmp_path)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["pairs_used"] == 180
        res = client(["-m", "sadi_cpp", "generate", "The movie was", "--mask", str(mask), "--rpc", where, "-n", "8",
                      "--delta", "40", "--positions", "last+generated", "--json"], tmp_path)
        assert res.returncode == 0, res.stderr
        out = json.loads(res.stdout)
        assert out["steered"] != out["unsteered"]
        with Server(["--masks", str(tmp_path), "--rpc", where, "--n-parallel", "2"]) as srv:
            status, body = srv.post("/v1/completions", {"prompt": "The movie was", "max_tokens": 8, "temperature": 0,
                                                        "sadi": {"mask": mask.name.replace(".sadi.gguf", ""), "delta": 40,
                                                                 "positions": "last+generated"}})
            assert status == 200, body
            assert body["choices"][0]["text"] and body["usage"]["completion_tokens"] == 8
            status, plain = srv.post("/v1/completions", {"prompt": "The movie was", "max_tokens": 8, "temperature": 0})
            assert status == 200 and plain["choices"][0]["text"] != body["choices"][0]["text"]  # steered over the workers
    finally:
        for w in ws:
            w.stop()


def test_every_command_that_loads_a_model_takes_rpc():
    import ast

    import typer.main

    from sadi_cpp.cli import app

    # the commands whose code calls load_model (or builds the server, which loads one)
    loaders = set()
    for path in (ROOT / "sadi_cpp" / "cli").glob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text())):
            if isinstance(fn, ast.FunctionDef) and any(isinstance(n, ast.Name) and n.id in ("load_model", "Service") or
                                                       isinstance(n, ast.Attribute) and n.attr == "build" for n in ast.walk(fn)):
                loaders.add(fn.name)
    commands = typer.main.get_command(app).commands
    named = {c.callback.__name__: name for name, c in commands.items()}
    loading = {named[f] for f in loaders if f in named}
    assert {"build-mask", "generate", "check", "eval", "tune", "export-cvec", "serve", "eval-gen", "pairs"} <= loading
    for name in loading:
        assert "--rpc" in {o for p in commands[name].params for o in getattr(p, "opts", [])}, name
