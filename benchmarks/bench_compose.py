"""Benchmark: what a gate and a composition of 4 masks cost against one mask (default model, CPU).

    python benchmarks/bench_compose.py [--repeats 7] [--threads 2]

Prompt tokens/s and generated tokens/s, policy last+generated (every generated token is steered,
so per-token costs show), for: one head mask (K=5), 4 head masks of K=5 composed (random units,
each its own delta), 4 masks of 4 kinds composed (head K=5, neuron K=100, hidden K=10, head K=5),
the single mask with a gate that fires (threshold -1) and with one that does not (threshold 1,
cos < 1 on any real row). Units drawn at random: the cost depends on sites and K, not on which
units. All configurations run in one process on the same prompts, interleaved, repeated; figures
are medians, ratios are per round and prompt to the single mask measured in the same round.
Goal (issue 22): a gate and a 4-mask composition within 3% of a single mask.
"""

from __future__ import annotations

import argparse
import random
from typing import Any, Dict, List

import numpy as np

import sadi_cpp
from sadi_cpp import Gate, Steering
from sadi_cpp.models import default_model_path

from _common import machine, print_table, ratio_table, write_json
from bench_steering import PROMPTS, measure, random_mask


def configurations(hook: sadi_cpp.Hook) -> Dict[str, Steering]:
    head = random_mask(hook, "head", 5, seed=0)
    n = hook.shape.n_embd
    rng = np.random.default_rng(0)
    direction, center = rng.standard_normal(n).astype(np.float32), np.zeros(n, np.float32)
    heads = [Steering(random_mask(hook, "head", 5, seed=s), d) for s, d in zip(range(1, 5), (9.0, -4.0, 6.0, 3.0))]
    kinds = [Steering(random_mask(hook, site, k, seed=7), d)
             for site, k, d in (("head", 5, 9.0), ("neuron", 100, 19.0), ("hidden", 10, 9.0), ("head", 5, -4.0))]
    return {
        "one head mask K=5": Steering(head, 9.0),
        "4 head masks composed": Steering.compose(heads),
        "4 masks of 4 kinds composed": Steering.compose(kinds),
        "one mask, gate fires (layer 4)": Steering(head, 9.0, gate=Gate(4, direction, center, -1.0)),
        "one mask, gate does not fire": Steering(head, 9.0, gate=Gate(4, direction, center, 1.0)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--gen", type=int, default=64, help="generated tokens per run")
    args = ap.parse_args()
    hook = sadi_cpp.load(str(default_model_path()), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads)
    configs = configurations(hook)
    token_lists = [hook.tokenize(p) for p in PROMPTS]
    runs: Dict[str, Dict[str, List[float]]] = {name: {"prompt_tps": [], "gen_tps": []} for name in configs}
    fired: Dict[str, Any] = {}
    rng = random.Random(0)
    measure(hook.llm, token_lists[0], 8)  # warm-up: first decodes allocate buffers
    for rep in range(args.repeats):
        order = list(configs)
        rng.shuffle(order)
        for name in order:
            hook.set_steering(configs[name], positions="last+generated")
            for tokens in token_lists:
                r = measure(hook.llm, tokens, args.gen)
                runs[name]["prompt_tps"].append(r["prompt_tps"])
                runs[name]["gen_tps"].append(r["gen_tps"])
            fired[name] = None if hook.gate_result is None else hook.gate_result.fired
            hook.clear_steering()
        print(f"round {rep + 1}/{args.repeats} done", flush=True)
    ref = "one head mask K=5"
    rows, out = ratio_table(runs, ref)
    for name in out:
        out[name]["gate_fired"] = fired[name]
    print()
    print_table(["configuration (last+generated)", "prompt tok/s", "ratio", "generated tok/s", "ratio"], rows)
    write_json("compose.json", {"machine": machine(), "args": vars(args), "prompt_tokens": [len(t) for t in token_lists],
                                "reference": ref, "results": out})


if __name__ == "__main__":
    main()
