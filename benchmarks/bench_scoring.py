"""Scoring many steering configurations: batched (default) against one configuration at a time.

    python benchmarks/bench_scoring.py [--n-train 1000] [--n-dev 872] [--n-test 1821] [--n-all 100] [--threads 2]

The README's SST-2 flow on the default model, both ways in one run, on the same items:
- tune: the baseline + the 16-cell grid (K 3,5,10,20 x delta 1,2,4,9, head site) on dev items;
- tune, positions=all: the same grid on the first --n-all dev items (every configuration then
  evaluates the whole prompt, steered);
- eval: baseline + SADI (the grid's best cell) on test items.
Prints items/s both ways and their ratio, and compares the results cell for cell: accuracies and
the number of items whose predicted answer differs (the two ways differ only by rounding, since
llama.cpp's numbers depend on how rows are grouped into decodes). Peak RSS of the process at the
end. Needs ../shared/data/sst2. Run alone: ggml's threads spin, a second job distorts everything.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
from _common import DATA, machine, peak_rss_mib, print_table, write_json

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from reproduce_results import load, open_model, statistics  # noqa: E402

from sadi_cpp.evaluation.interventions import BASELINE  # noqa: E402
from sadi_cpp.scoring.score import score_items  # noqa: E402
from sadi_cpp.evaluation.tune import config_for  # noqa: E402

K_GRID, DELTA_GRID = [3, 5, 10, 20], [1.0, 2.0, 4.0, 9.0]


def timed(hook: Any, items: List[Any], configs: List[Any], positions: str, batched: bool) -> Dict[str, Any]:
    start = time.perf_counter()
    scores = score_items(hook, items, configs, positions=positions, batched=batched)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "items_per_s": len(items) / seconds, "scores": scores}


def compare(name: str, items: List[Any], configs: List[Any], hook: Any, positions: str, out: Dict[str, Any]) -> List[Any]:
    one = timed(hook, items, configs, positions, batched=False)
    many = timed(hook, items, configs, positions, batched=True)
    a, b = one["scores"], many["scores"]
    acc_a, acc_b = a.correct().mean(axis=1), b.correct().mean(axis=1)
    differ = int((a.predictions() != b.predictions()).sum())
    out[name] = {"n_items": len(items), "n_configs": len(configs), "one_at_a_time_s": one["seconds"], "batched_s": many["seconds"],
                 "speedup": one["seconds"] / many["seconds"], "accuracy_one_at_a_time": acc_a.tolist(),
                 "accuracy_batched": acc_b.tolist(), "predictions_differing": differ,
                 "max_abs_logprob_diff": float(np.nanmax(np.abs(a.logprob - b.logprob)))}
    return [name, len(items), len(configs), f"{one['items_per_s']:.2f}", f"{many['items_per_s']:.2f}",
            f"{one['seconds'] / many['seconds']:.2f}x", f"{np.abs(acc_a - acc_b).max():.4f}", differ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-dev", type=int, default=872)
    ap.add_argument("--n-test", type=int, default=1821)
    ap.add_argument("--n-all", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if not (DATA / "sst2").is_dir():
        sys.exit(f"{DATA / 'sst2'} is missing: this benchmark reads the shared SST-2 files")
    hook = open_model(args.threads)
    train = load(DATA, "sst2", ("sst2/train.jsonl", 0), args.n_train)
    dev = load(DATA, "sst2", ("sst2/dev.jsonl", 0), args.n_dev)
    test = load(DATA, "sst2", ("sst2/test.jsonl", 0), args.n_test)
    contrast = statistics(hook, train, ("head",))
    grid = [BASELINE] + [config_for(hook, contrast, "sadi", "head", k, d) for k in K_GRID for d in DELTA_GRID]
    out: Dict[str, Any] = {"machine": machine(), "args": vars(args)}
    rows = [compare("tune (16 cells)", dev, grid, hook, "last", out)]
    best = int(np.argmax(out["tune (16 cells)"]["accuracy_one_at_a_time"][1:])) + 1
    rows.append(compare("tune, positions all", dev[: args.n_all], grid, hook, "all", out))
    rows.append(compare("eval (baseline + best cell)", test, [BASELINE, grid[best]], hook, "last", out))
    out["best_cell"] = grid[best].name
    out["peak_rss_mib"] = peak_rss_mib()
    print_table(["run", "items", "configs", "items/s one at a time", "items/s batched", "ratio", "max |acc diff|", "answers differing"], rows)
    print(f"best cell {grid[best].name}; peak RSS {out['peak_rss_mib']:.0f} MiB")
    write_json("scoring.json", out)


if __name__ == "__main__":
    main()
