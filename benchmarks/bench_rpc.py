"""Benchmark: the default model split over two RPC workers on this machine (localhost).

    python benchmarks/bench_rpc.py [--repeats 5] [--threads 1] [--gen 32]

Starts two `sadi-cpp worker` processes, loads the model over both (layers split between them),
and measures in this one process, interleaved and repeated:

- generated tokens/s: plain llama-cpp-python (no hook: llama.cpp reuses the graph it sent to the
  workers), hooked and unsteered, and steered (a head mask K=5, policy last); ratios per round to
  the hooked unsteered run (the goal: steered within 3% of it) and to plain (the cost of the lost
  graph reuse: with an eval callback installed, ggml's scheduler computes graph views, which
  ggml-rpc never reuses, so every decode sends its graph again);
- build-mask's statistics (mean_differences, many pairs per decode) against raw prompt evaluation
  of the same texts over the same workers, in tokens/s (the goal: at least 0.8x);
- copy calls per decode (ggml_backend_tensor_get/set, each a network round trip): the engine's
  runs (rows close together in one call) against one call per row, for a steered prompt decode
  and for a build-mask decode.

Figures are medians; the workers use --threads each, the client too.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from llama_cpp import Llama

import sadi_cpp
from sadi_cpp.data.pairs import read_pairs
from sadi_cpp.llama import rpc
from sadi_cpp.masks.contrast import mean_differences
from sadi_cpp.models import default_model_path

from _common import machine, median, print_table, write_json
from bench_steering import PROMPTS, measure, random_mask

ROOT = Path(__file__).resolve().parents[1]


def start_worker(port: int, threads: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "sadi_cpp", "worker", "--port", str(port), "--threads", str(threads)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/")
    deadline = time.monotonic() + 120
    while True:
        try:
            rpc.hello(f"127.0.0.1:{port}", timeout=2.0)
            return proc
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"worker on {port} did not start")
            time.sleep(0.1)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def copy_calls(hook: sadi_cpp.Hook, run: Any) -> float:
    """Copy calls (gets + sets) that ``run()`` makes, per llama_decode it makes."""
    before = hook.engine.copy_stats()
    n = run()
    after = hook.engine.copy_stats()
    return (after["gets"] + after["sets"] - before["gets"] - before["sets"]) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gen", type=int, default=32)
    args = ap.parse_args()
    ports = [free_port(), free_port()]
    workers = [start_worker(p, args.threads) for p in ports]
    try:
        where = rpc.add_workers([f"127.0.0.1:{p}" for p in ports])
        path = str(default_model_path())
        kw = dict(n_ctx=2048, n_batch=512, n_ubatch=512, n_threads=args.threads, n_threads_batch=args.threads, n_gpu_layers=-1,
                  verbose=False)
        plain = Llama(path, **kw)
        hook = sadi_cpp.attach(Llama(path, **kw), rpc=where)
        steering = sadi_cpp.Steering(random_mask(hook, "head", 5), 9.0)
        tokens = [hook.tokenize(p) for p in PROMPTS]
        runs: Dict[str, List[float]] = {"plain llama.cpp": [], "hooked, unsteered": [], "steered, head K=5, last": []}
        measure(plain, tokens[0], 4)
        measure(hook.llm, tokens[0], 4)
        for _ in range(args.repeats):
            for t in tokens:
                runs["plain llama.cpp"].append(measure(plain, t, args.gen)["gen_tps"])
                runs["hooked, unsteered"].append(measure(hook.llm, t, args.gen)["gen_tps"])
                with hook.steering(steering, positions="last"):
                    runs["steered, head K=5, last"].append(measure(hook.llm, t, args.gen)["gen_tps"])
        ref = runs["hooked, unsteered"]
        rows, gen = [], {}
        for name, r in runs.items():
            ratio = median([a / b for a, b in zip(r, ref)])
            to_plain = median([a / b for a, b in zip(r, runs["plain llama.cpp"])])
            rows.append([name, round(median(r), 1), round(ratio, 3), round(to_plain, 3)])
            gen[name] = {"gen_tps": median(r), "ratio_to_hooked_unsteered": ratio, "ratio_to_plain": to_plain, "runs": r}
        print_table(["generation over 2 workers", "gen tok/s", "vs hooked unsteered", "vs plain"], rows)

        pairs = read_pairs(ROOT / "examples" / "sentiment_pairs.jsonl")
        texts = [hook.tokenize(t) for p in pairs for t in (p.positive, p.negative)]
        n_tokens = sum(len(t) for t in texts)
        build, raw = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            mean_differences(hook, pairs, sites=("head",))
            build.append(n_tokens / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for t in texts:
                plain.reset()
                plain.eval(t)
            raw.append(n_tokens / (time.perf_counter() - t0))
        ratio = median([a / b for a, b in zip(build, raw)])
        print_table(["statistics over 2 workers", "tok/s", "vs raw prompt eval"],
                    [["raw prompt eval (plain)", round(median(raw), 1), 1.0], ["build-mask statistics", round(median(build), 1), round(ratio, 3)]])

        calls: Dict[str, Dict[str, float]] = {}
        for runs_on in (False, True):
            hook.engine.copy_runs = runs_on

            def steered_prompt() -> int:
                with hook.steering(steering, positions="all"):
                    hook.kv_clear()
                    hook.eval(tokens[0])
                return 1

            def statistics() -> int:
                mean_differences(hook, pairs.first_lines(40), sites=("head",))
                return 1

            label = "runs" if runs_on else "one call per row"
            calls[label] = {"steered prompt decode (positions all)": copy_calls(hook, steered_prompt),
                            "build-mask decode (40 pairs, one decode)": copy_calls(hook, statistics)}
        print_table(["copy calls per decode", "one call per row", "runs"],
                    [[k, calls["one call per row"][k], calls["runs"][k]] for k in calls["runs"]])
        write_json("bench_rpc.json", {"machine": machine(), "args": vars(args), "workers": hook.workers, "generation": gen,
                                      "statistics": {"raw_tps": median(raw), "build_tps": median(build), "ratio": ratio},
                                      "copy_calls_per_decode": calls})
        # free the models while the workers still answer: llama.cpp's RPC client waits forever
        # for a worker that is gone when a buffer on it is freed (seen when the workers went first)
        hook.llm.close()
        plain.close()
    finally:
        for w in workers:
            w.kill()


if __name__ == "__main__":
    main()
