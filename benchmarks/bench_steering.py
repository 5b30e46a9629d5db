"""Benchmark 1: what steering costs on top of plain llama.cpp (default model, CPU).

    python benchmarks/bench_steering.py [--repeats 7] [--threads 2]

Prompt tokens/s and generated tokens/s for: a plain Llama (no hook), the hooked Llama with no
steering, and head / neuron / hidden masks (the default K per site, units drawn at random: the
cost depends on the site and K, not on which units) under the `last` policy (the last prompt
token) and `last+generated` (also every generated token). All configurations run in one
process on the same prompts, interleaved, repeated; figures are medians, ratios are to the
hooked-unsteered run measured in the same rounds.
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Any, Dict, List

import numpy as np
from llama_cpp import Llama

import sadi_cpp
from sadi_cpp.sites import DEFAULT_TOP_K
from sadi_cpp.models import default_model_path

from _common import machine, print_table, ratio_table, write_json

PROMPTS = [
    "The history of the printing press begins in the fifteenth century, when a goldsmith in Mainz "
    "combined movable metal type, oil-based ink and a screw press adapted from wine making. Within",
    "A good recipe for bread needs only flour, water, salt and yeast, but the way these four are "
    "handled decides almost everything: how long the dough rests, how warm the kitchen is, and",
    "When the committee met on Thursday to review the budget for the new library, the first item "
    "on the agenda was the roof, which had leaked through two winters and damaged",
    "Rivers shape the land they cross. Over thousands of years a river cuts its valley, carries "
    "sand and gravel toward the sea, and builds plains where it floods, so that",
]


def random_mask(hook: sadi_cpp.Hook, site: str, k: int, seed: int = 0) -> Dict[str, np.ndarray]:
    n = hook.shape.n_layer * hook.n_units(site)
    m = np.zeros(n, bool)
    m[np.random.default_rng(seed).choice(n, k, replace=False)] = True
    return {site: m.reshape(hook.shape.n_layer, -1)}


def measure(llm: Llama, tokens: List[int], n_gen: int) -> Dict[str, float]:
    """One greedy generate from an empty cache: prompt tokens/s up to the first token, generated
    tokens/s over the next n_gen - 1 (each a one-token decode)."""
    llm.reset()
    t0 = time.perf_counter()
    it = llm.generate(tokens, top_k=1, temp=0.0)
    next(it)
    t1 = time.perf_counter()
    for _ in range(n_gen - 1):
        next(it)
    t2 = time.perf_counter()
    it.close()
    return {"prompt_tps": len(tokens) / (t1 - t0), "gen_tps": (n_gen - 1) / (t2 - t1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=64, help="generated tokens per run")
    ap.add_argument("--n-gpu-layers", type=int, default=0)
    args = ap.parse_args()
    kw = dict(n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads, n_gpu_layers=args.n_gpu_layers, verbose=False)
    path = str(default_model_path())
    plain = Llama(path, **kw)
    hook = sadi_cpp.attach(Llama(path, **kw))
    configs: Dict[str, Any] = {"plain llama.cpp": None, "hooked, unsteered": "off"}
    for site in hook.sites:  # the sites this model allows (a dense model has no expert site)
        for policy in ("last", "last+generated"):
            configs[f"{site} K={DEFAULT_TOP_K[site]}, {policy}"] = (random_mask(hook, site, DEFAULT_TOP_K[site]), policy)
    token_lists = [plain.tokenize(p.encode()) for p in PROMPTS]
    runs: Dict[str, Dict[str, List[float]]] = {name: {"prompt_tps": [], "gen_tps": []} for name in configs}
    rng = random.Random(0)
    for _ in range(1):  # warm-up: first decodes allocate buffers
        measure(plain, token_lists[0], 8)
        measure(hook.llm, token_lists[0], 8)
    for rep in range(args.repeats):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            cfg = configs[name]
            llm = plain if cfg is None else hook.llm
            if isinstance(cfg, tuple):
                hook.set_steering(cfg[0], delta=9.0, positions=cfg[1])
            for tokens in token_lists:
                r = measure(llm, tokens, args.gen)
                runs[name]["prompt_tps"].append(r["prompt_tps"])
                runs[name]["gen_tps"].append(r["gen_tps"])
            hook.clear_steering()
        print(f"round {rep + 1}/{args.repeats} done", flush=True)
    ref = "hooked, unsteered"
    rows, out = ratio_table(runs, ref)
    print()
    print_table(["configuration", "prompt tok/s", "ratio", "generated tok/s", "ratio"], rows)
    write_json("steering.json", {"machine": machine(), "args": vars(args), "prompt_tokens": [len(t) for t in token_lists],
                                 "reference": ref, "results": out})


if __name__ == "__main__":
    main()
