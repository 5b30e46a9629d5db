"""Benchmark: a chat workload with a long shared system prompt, with kept prompt prefixes and without.

    python benchmarks/bench_prefix.py [--clients 8] [--turns 3] [--system-tokens 1000] [--max-tokens 16] [--threads 2]

8 clients each hold a conversation of --turns turns; every request sends the same system prompt
(about --system-tokens tokens), the client's conversation so far and its new question, streaming
greedy completions of --max-tokens tokens. Servers, one at a time on the same model and threads:
`sadi-cpp serve` with kept prefixes (its default), the same with `--prompt-cache 0`, and
`python -m llama_cpp.server` (one slot; it reuses the longest common prefix of the previous
prompt; started with sadi-cpp's AMX workaround, _common.llama_cpp_server, so that it runs the
same kernels). Printed: time to first token (p50, p95), aggregate generated tokens/s, wall time.
Goal (issue 24): TTFT p50 with kept prefixes at most a quarter of without.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from _common import llama_cpp_server, machine, print_table, write_json
from bench_server import free_port, one_request, start

SENTENCE = ("The assistant answers questions about the city library: opening hours, membership, borrowing rules, "
            "events for children and adults, the reading rooms and the archive. ")


def conversation(port: int, system: str, client: int, turns: int, max_tokens: int, out: List[Dict[str, float]],
                 lock: threading.Lock) -> None:
    history = ""
    for turn in range(turns):
        question = f"Visitor {client}, question {turn + 1}: what about item {client * 10 + turn}?"
        prompt = f"{system}\n{history}User: {question}\nAssistant:"
        try:
            res = one_request(port, {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True})
        except Exception as e:  # counted and reported, not hidden: a server that refuses is part of the result
            res = {"error": f"{type(e).__name__}: {e}"[:300]}
        with lock:
            out.append(res)
        history += f"User: {question}\nAssistant: (answer {turn + 1})\n"


def workload(port: int, system: str, clients: int, turns: int, max_tokens: int) -> Dict[str, Any]:
    one_request(port, {"prompt": "warm up", "max_tokens": 2, "temperature": 0, "stream": True})
    results: List[Dict[str, float]] = []
    lock = threading.Lock()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=conversation, args=(port, system, k, turns, max_tokens, results, lock)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    ttft = np.array([r["ttft"] for r in ok]) if ok else np.array([np.nan])
    return {"requests": len(results), "answered": len(ok), "errors": sorted({r["error"] for r in results if "error" in r}),
            "wall_s": wall, "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50": float(np.percentile(ttft, 50)), "ttft_p95": float(np.percentile(ttft, 95))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--system-tokens", type=int, default=1000)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import sadi_cpp
    from sadi_cpp.models import resolve_model

    model = str(resolve_model(None))
    hook = sadi_cpp.load(model, n_ctx=256)
    per = len(hook.tokenize(SENTENCE, add_bos=False))
    hook.llm.close()
    system = SENTENCE * max(1, round(args.system_tokens / per))
    tmp = Path(tempfile.mkdtemp(prefix="bench-prefix-"))
    threads = str(args.threads)
    n_ctx = str(2048)
    servers = {
        "sadi-cpp serve, kept prefixes": [sys.executable, "-m", "sadi_cpp", "serve", model, "--masks", str(tmp), "--threads", threads,
                                          "--n-parallel", str(args.clients), "--n-ctx", n_ctx, "--prompt-cache", str(4096)],
        "sadi-cpp serve, --prompt-cache 0": [sys.executable, "-m", "sadi_cpp", "serve", model, "--masks", str(tmp), "--threads",
                                             threads, "--n-parallel", str(args.clients), "--n-ctx", n_ctx, "--prompt-cache", "0"],
        "llama_cpp.server": llama_cpp_server(["--model", model, "--n_threads", threads, "--n_threads_batch", threads,
                                              "--n_ctx", n_ctx, "--interrupt_requests", "False"]),
    }
    out: Dict[str, Any] = {}
    for name, cmd in servers.items():
        port = free_port()
        proc = start(cmd + ["--port", str(port)], port, tmp / f"{len(out)}.log")
        try:
            out[name] = workload(port, system, args.clients, args.turns, args.max_tokens)
            print(name, out[name], flush=True)
        finally:
            proc.terminate()
            proc.wait()
    rows = [[n, f"{r['answered']}/{r['requests']}", round(r["ttft_p50"], 2), round(r["ttft_p95"], 2), round(r["tokens_per_s"], 1),
             round(r["wall_s"], 1)] for n, r in out.items()]
    print()
    print_table(["server", "answered", "TTFT p50 s", "TTFT p95 s", "tok/s", "wall s"], rows)
    ratio = out["sadi-cpp serve, kept prefixes"]["ttft_p50"] / out["sadi-cpp serve, --prompt-cache 0"]["ttft_p50"]
    print(f"TTFT p50 kept / not kept: {ratio:.3f} (goal: at most 0.25)")
    write_json("prefix.json", {"machine": machine(), "args": vars(args), "system_tokens": per * round(args.system_tokens / per),
                               "results": out, "ttft_p50_ratio": ratio})


if __name__ == "__main__":
    main()
