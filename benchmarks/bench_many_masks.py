"""Benchmark: many different masks in one batch against one mask for all (the server's batcher).

    python benchmarks/bench_many_masks.py [--counts 8,32,64] [--max-tokens 32] [--rounds 3] [--threads 2]

For each count N: the server's batcher in this process (no HTTP, so only decoding and steering
are measured) with N sequences, N greedy requests submitted at once, in three runs: unsteered,
every request with the same head mask (one engine configuration), every request with a mask of
its own (N configurations in every decode). Masks: random head masks, K=5, delta 9, policy
last+generated so that every generated row is steered. Aggregate generated tokens/s = all tokens
/ wall time; the three runs alternate their order over --rounds rounds; ratios per round, then
the median. Goal (issue 24): N different masks within 5% of one mask at every N. For comparison,
EasySteer (vLLM, its experiment/efficiency README) reports -14% from 1 to 8 configurations.
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from _common import ROOT, machine, print_table, write_json
from bench_server import PROMPTS

sys.path.insert(0, str(ROOT / "tests"))
from server_helpers import write_random_masks  # noqa: E402


def run(batcher: Any, prompts: List[List[int]], steers: List[Optional[Any]], max_tokens: int) -> Dict[str, float]:
    from sadi_cpp.server.batcher import Finished, Job
    from sadi_cpp.server.sampling import SamplingParams

    done: "queue.Queue[Any]" = queue.Queue()
    t0 = time.perf_counter()
    for toks, steer in zip(prompts, steers):
        batcher.submit(Job(prompt=list(toks), max_tokens=max_tokens, min_tokens=max_tokens,
                           sink=lambda e: done.put(e) if isinstance(e, Finished) else None,
                           sampling=SamplingParams(temperature=0.0), steer=steer))
    tokens = sum(done.get().completion_tokens for _ in prompts)
    return {"tokens": tokens, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--counts", default="8,32,64")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import sadi_cpp
    from sadi_cpp.models import default_model_path
    from sadi_cpp.server.batcher import Batcher
    from sadi_cpp.server.mask_library import MaskLibrary

    model = default_model_path()
    counts = [int(c) for c in args.counts.split(",")]
    folder = Path(tempfile.mkdtemp(prefix="sadi-many-masks-"))
    write_random_masks(model, folder, {f"m{i}": ("head", 5, 9.0) for i in range(max(counts))})
    rows, out = [], {}
    for n in counts:
        hook = sadi_cpp.load(str(model), n_ctx=256 * n, n_batch=512, n_ubatch=512, n_threads=args.threads,
                             n_threads_batch=args.threads)
        library = MaskLibrary.load(folder, hook)
        batcher = Batcher(hook, n, 256, 0)
        batcher.start()
        prompts = [hook.tokenize(PROMPTS[i % len(PROMPTS)] + f" ({i})") for i in range(n)]
        same = library.steer({"mask": "m0", "positions": "last+generated"})
        kinds = {"unsteered": [None] * n, "one mask": [same] * n,
                 "a mask each": [library.steer({"mask": f"m{i}", "positions": "last+generated"}) for i in range(n)]}
        run(batcher, prompts[:2], [None, None], 4)  # warm-up
        tps: Dict[str, List[float]] = {k: [] for k in kinds}
        for r in range(args.rounds):
            order = list(kinds) if r % 2 == 0 else list(reversed(list(kinds)))
            for kind in order:
                res = run(batcher, prompts, kinds[kind], args.max_tokens)
                tps[kind].append(res["tokens"] / res["seconds"])
            print(f"N={n} round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in tps.items()), flush=True)
        batcher.stop()
        hook.llm.close()
        each = float(np.median([a / b for a, b in zip(tps["a mask each"], tps["one mask"])]))
        one = float(np.median([a / b for a, b in zip(tps["one mask"], tps["unsteered"])]))
        rows.append([n, round(float(np.median(tps["unsteered"])), 1), round(float(np.median(tps["one mask"])), 1),
                     round(float(np.median(tps["a mask each"])), 1), round(one, 3), round(each, 3)])
        out[n] = {"tokens_per_s": tps, "one_mask_vs_unsteered": one, "a_mask_each_vs_one_mask": each}
    print()
    print_table(["requests", "unsteered tok/s", "one mask tok/s", "a mask each tok/s", "one / unsteered", "each / one"], rows)
    write_json("many_masks.json", {"machine": machine(), "args": vars(args), "results": out})


if __name__ == "__main__":
    main()
