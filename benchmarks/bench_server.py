"""sadi-cpp serve against llama-cpp-python's own server, same model, machine and request mix.

    python benchmarks/bench_server.py [--requests 16] [--max-tokens 48] [--rounds 3] [--threads 2] [--mask M]

Servers run one at a time: `python -m llama_cpp.server` (unsteered: it cannot steer per request)
and `sadi-cpp serve` with requests unsteered, then steered (the mask's head units, last-token
policy, the paper's). For 1, 4 and 8 concurrent clients, each sends its share of --requests
streaming greedy completions one after another. Printed per run: aggregate generated tokens/s
(all tokens / wall time), time to first token and latency (p50, p95 over requests), then the
ratios the goals name, medians over --rounds rounds (this machine's speed drifts by 10-20% within
minutes; steered and unsteered alternate which goes first). Last, the time of one llama.cpp
decode of 8 generating rows against one row (what batching can gain at most), and the steering
cost measured without HTTP: the batcher in-process, 8 requests all unsteered or all steered,
alternating 7 times, the median ratio of wall times. Tokens are counted as streamed chunks (one per token on both servers).
Both servers get the same thread count (both default to llama-cpp-python's choice otherwise);
llama_cpp.server runs with --interrupt_requests False (its default cuts a running stream when the
next request arrives, which leaves concurrent clients with a few tokens each).
--mask: a mask for the model (default: built from examples/sentiment_pairs.jsonl into a
temporary folder first). Run alone: ggml's threads spin and a second job distorts everything.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from _common import ROOT, llama_cpp_server, machine, print_table, write_json

sys.path.insert(0, str(ROOT / "tests"))
from server_helpers import free_port  # noqa: E402

PROMPTS = [
    "Write a short review of a restaurant you liked:", "The movie started slowly, but", "Here is my honest opinion of the new phone:",
    "Describe a rainy afternoon in the city.", "The hotel room was", "My favourite book is about", "Customer feedback:",
    "The concert last night", "Explain why people enjoy hiking.", "The service at the bank was", "A letter to an old friend:",
    "The weather forecast for tomorrow says", "I tried the new coffee shop and", "The football match ended with",
    "Notes from the team meeting:", "The train was late again, so",
]


def start(cmd: List[str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=tempfile.gettempdir())
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:4]} exited:\n{log.read_text()[-2000:]}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v1/models")
            if c.getresponse().status == 200:
                return proc
        except OSError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"{cmd[:4]} did not start")


def one_request(port: int, body: Dict[str, Any]) -> Dict[str, float]:
    """A streaming completion: seconds to the first token, to the end, and tokens received."""
    t0 = time.perf_counter()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:500]!r}")
    first: Optional[float] = None
    tokens = 0
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        chunk = json.loads(line[6:])
        choice = (chunk.get("choices") or [{}])[0]
        if choice.get("finish_reason") is None and "text" in choice:
            tokens += 1
            if first is None:
                first = time.perf_counter() - t0
    c.close()
    return {"ttft": first if first is not None else float("nan"), "latency": time.perf_counter() - t0, "tokens": tokens}


def load(port: int, clients: int, n_requests: int, extra: Dict[str, Any], max_tokens: int) -> Dict[str, Any]:
    bodies = [{"prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0, "stream": True, **extra}
              for i in range(n_requests)]
    one_request(port, bodies[0])  # warm-up
    results: List[Dict[str, float]] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        for body in bodies[k::clients]:
            res = one_request(port, body)
            with lock:
                results.append(res)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    ttft = np.array([r["ttft"] for r in results])
    lat = np.array([r["latency"] for r in results])
    return {"clients": clients, "requests": len(results), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
            "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p95": float(np.percentile(ttft, 95)),
            "latency_p50": float(np.percentile(lat, 50)), "latency_p95": float(np.percentile(lat, 95))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--mask", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3, help="the whole set this many times, servers restarted; medians reported")
    args = ap.parse_args()
    levels = [int(x) for x in args.clients.split(",")]

    from sadi_cpp.models import resolve_model

    model = str(resolve_model(None))
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    mask = args.mask
    if mask is None:
        mask = tmp / "bench.sentiment.head.sadi.gguf"
        subprocess.run([sys.executable, "-m", "sadi_cpp", "build-mask", str(ROOT / "examples" / "sentiment_pairs.jsonl"),
                        model, "-o", str(mask), "-q"], check=True, cwd=tmp)
    masks = tmp / "masks"
    masks.mkdir(exist_ok=True)
    target = masks / mask.name
    if not target.exists():
        target.write_bytes(mask.read_bytes())
    name = mask.name[: -len(".sadi.gguf")]
    threads = str(args.threads)

    runs: List[Dict[str, Any]] = []
    for rnd in range(args.rounds):
        port = free_port()
        # --interrupt_requests False: by default a new request cuts the running stream short, so with
        # several clients most answers would end after a few tokens
        proc = start(llama_cpp_server(["--model", model, "--port", str(port), "--n_threads", threads, "--n_threads_batch", threads,
                                       "--interrupt_requests", "False"]), port, tmp / "llama_cpp_server.log")
        try:
            for n in levels:
                runs.append({"round": rnd, "server": "llama_cpp.server", "steering": "none",
                             **load(port, n, args.requests, {}, args.max_tokens)})
                print(runs[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait()
        port = free_port()
        proc = start([sys.executable, "-m", "sadi_cpp", "serve", model, "--masks", str(masks), "--port", str(port),
                      "--threads", threads], port, tmp / "sadi_serve.log")
        try:
            for n in levels:
                kinds = [("none", {}), (f"{name} (last)", {"sadi": {"mask": name, "positions": "last"}})]
                for steering, extra in kinds[:: 1 if rnd % 2 == 0 else -1]:  # alternate which goes first
                    runs.append({"round": rnd, "server": "sadi-cpp serve", "steering": steering,
                                 **load(port, n, args.requests, extra, args.max_tokens)})
                    print(runs[-1], flush=True)
        finally:
            proc.terminate()
            proc.wait()

    keys = ["tokens_per_s", "ttft_p50", "ttft_p95", "latency_p50", "latency_p95"]
    table = []
    for server, steering, n in dict.fromkeys((r["server"], r["steering"], r["clients"]) for r in runs):
        same = [r for r in runs if (r["server"], r["steering"], r["clients"]) == (server, steering, n)]
        table.append({"server": server, "steering": steering, "clients": n, "requests": sum(r["requests"] for r in same),
                      "tokens": sum(r["tokens"] for r in same), **{k: float(np.median([r[k] for r in same])) for k in keys}})
    print(f"medians over {args.rounds} rounds:")
    print_table(["server", "steering", "clients", "requests", "tokens", "tok/s", "TTFT p50", "TTFT p95", "lat p50", "lat p95"],
                [[r["server"], r["steering"], r["clients"], r["requests"], r["tokens"], *[r[k] for k in keys]] for r in table])

    def rate(server: str, steered: bool, n: int) -> float:
        return next(r["tokens_per_s"] for r in table if r["server"] == server and (r["steering"] != "none") == steered
                    and r["clients"] == n)

    ratios = {}
    for n in levels:
        ratios[f"sadi/llama_cpp unsteered, {n} clients"] = rate("sadi-cpp serve", False, n) / rate("llama_cpp.server", False, n)
        ratios[f"steered/unsteered sadi, {n} clients"] = rate("sadi-cpp serve", True, n) / rate("sadi-cpp serve", False, n)
    scaling = decode_scaling(model, args.threads, max(levels))
    ratios.update(scaling)
    ratios.update(steering_cost(model, args.threads, masks / mask.name, max(levels), args.max_tokens))
    for k, v in ratios.items():
        print(f"{k}: {v:.3f}")
    write_json("server.json", {"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                               "medians": table, "ratios": ratios})


def steering_cost(model: str, threads: int, mask_path: Path, n_jobs: int, max_tokens: int, pairs: int = 7) -> Dict[str, float]:
    """The batcher in this process (no HTTP): n_jobs greedy requests decoded together, all
    unsteered or all steered (last), alternating `pairs` times; the median ratio of wall times."""
    import queue

    import sadi_cpp
    from sadi_cpp.server.batcher import Batcher, Finished, Job
    from sadi_cpp.server.mask_library import MaskLibrary
    from sadi_cpp.server.sampling import SamplingParams

    hook = sadi_cpp.load(model, n_ctx=2048 * n_jobs, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads)
    library = MaskLibrary.load(mask_path.parent, hook)
    batcher = Batcher(hook, n_jobs, 2048, 0)
    batcher.start()
    name = mask_path.name[: -len(".sadi.gguf")]
    prompts = [hook.tokenize(p) for p in PROMPTS[:n_jobs]]

    def run(steered: bool) -> float:
        done: "queue.Queue[Any]" = queue.Queue()
        steer = library.steer({"mask": name, "positions": "last"}) if steered else None
        t0 = time.perf_counter()
        for toks in prompts:
            batcher.submit(Job(prompt=list(toks), max_tokens=max_tokens, sink=lambda e: done.put(e) if isinstance(e, Finished) else None,
                               sampling=SamplingParams(temperature=0.0), steer=steer))
        for _ in prompts:
            done.get()
        return time.perf_counter() - t0

    run(False)  # warm-up
    ratios = []
    for k in range(pairs):
        order = (False, True) if k % 2 == 0 else (True, False)
        t = {s: run(s) for s in order}
        ratios.append(t[True] / t[False])
    batcher.stop()
    hook.llm.close()
    return {f"in-process steered/unsteered wall time, {n_jobs} requests (median of {pairs})": float(np.median(ratios)),
            "in-process ratios min": float(min(ratios)), "in-process ratios max": float(max(ratios))}


def decode_scaling(model: str, threads: int, rows: int) -> Dict[str, float]:
    """Median time of one llama.cpp decode of `rows` generating sequences against one: the most
    that batching can gain on this machine and model, whatever the server does around it."""
    import sadi_cpp
    from sadi_cpp.llama.batch import BatchRow

    hook = sadi_cpp.load(model, n_ctx=2048 * rows, n_batch=512, n_ubatch=512, n_threads=threads, n_threads_batch=threads)
    prompt = hook.llm.tokenize(PROMPTS[1].encode())
    out = {}
    for n in (1, rows):
        hook.kv_clear()
        hook.decode([BatchRow(t, i, (s,)) for s in range(n) for i, t in enumerate(prompt)],
                    [len(prompt) * s + len(prompt) - 1 for s in range(n)])
        times = []
        for step in range(30):
            t0 = time.perf_counter()
            hook.decode([BatchRow(100 + step, len(prompt) + step, (s,)) for s in range(n)], list(range(n)))
            times.append(time.perf_counter() - t0)
        out[n] = float(np.median(times))
    hook.llm.close()
    return {"decode 1 row, ms": out[1] * 1000, f"decode {rows} rows, ms": out[rows] * 1000,
            f"batching bound at {rows} clients (x one row's tokens/s)": rows * out[1] / out[rows]}


if __name__ == "__main__":
    main()
