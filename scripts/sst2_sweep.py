"""A wider SADI search on SST-2, on dev only: does any (training size, site, K, delta) help in a
way that carries over from one half of the dev file to the other?

    python scripts/sst2_sweep.py --data ../shared/data --threads 2    # 36 min on 2 cores (measured)

The main run (scripts/reproduce_results.py) tuned K and delta on the paper's grid and found
SADI's SST-2 gain on test within the noise; its best cells sat at the grid's low edge (delta 4).
This sweep widens the grid (delta below 4 and negative: -1 silences the units, -0.5 halves them)
and tries 1000 training pairs besides the issue's 150. Every cell is scored on all 872 dev items;
the halves A (rows 0-435) and B (436-871) are reported apart, so a cell picked on A can be
checked on B before any test item is looked at. Writes benchmarks/sst2_sweep.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from sadi_cpp.evaluation.interventions import BASELINE, sadi
from sadi_cpp.masks.mask import select_top_k
from sadi_cpp.scoring.score import score_items
from sadi_cpp.evaluation.stats import paired

from reproduce_results import ROOT, WIDE_GRIDS, load, log, open_model, statistics  # scripts/ is on the path when run as a script

GRID = WIDE_GRIDS
HALF = 436  # dev rows [0, HALF) are half A, the rest half B


def summarize(d: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per training size: baselines on the halves, how the cells' gains on A and B correlate, and
    for each site (and overall) the best cell on half A with its gain on half B."""
    labels, half = np.array(d["labels"]), d["half"]
    out = []
    for n_train, run in d["runs"].items():
        preds = np.array([[int(c) for c in p] for p in run["predictions"]])
        correct = preds == labels[None]
        a, b = correct[:, :half], correct[:, half:]
        gain_a, gain_b = a.mean(1)[1:] - a.mean(1)[0], b.mean(1)[1:] - b.mean(1)[0]
        # cells that still use both answers (20-80% "Positive"): the correlation without the collapsed ones
        share = preds[1:].mean(1)
        mixed = (share > 0.2) & (share < 0.8)
        heads = [i for i, c in enumerate(run["cells"]) if c["site"] == "head"]
        best_head = max(heads, key=lambda i: (gain_a[i] + gain_b[i], -i))
        picks = []
        for site in [None] + list(d["grid"]):
            idx = [i for i, c in enumerate(run["cells"]) if site is None or c["site"] == site]
            j = max(idx, key=lambda i: (gain_a[i], -i))  # ties: the first cell in grid order
            pb = paired(b[0], b[j + 1])
            picks.append({"among": site or "all sites", **run["cells"][j], "gain_a": float(gain_a[j]), "gain_b": pb.diff, "gain_b_ci": pb.diff_ci})
        out.append({"n_train": int(n_train), "base_a": float(a[0].mean()), "base_b": float(b[0].mean()), "n_a": a.shape[1], "n_b": b.shape[1],
                    "corr": float(np.corrcoef(gain_a, gain_b)[0, 1]), "n_mixed": int(mixed.sum()),
                    "corr_mixed": float(np.corrcoef(gain_a[mixed], gain_b[mixed])[0, 1]),
                    "head_cells_gaining_on_both": int(sum(gain_a[i] > 0 and gain_b[i] > 0 for i in heads)), "n_head_cells": len(heads),
                    "best_head_on_dev": {**run["cells"][best_head], "gain": float(correct[best_head + 1].mean() - correct[0].mean())},
                    "picks": picks})
    return out


def report(path: Path) -> None:
    for r in summarize(json.loads(path.read_text())):
        print(f"{r['n_train']} training pairs: baseline A {100 * r['base_a']:.1f}, B {100 * r['base_b']:.1f}; "
              f"correlation of the cells' gains on A and on B: {r['corr']:+.2f}")
        for p in r["picks"]:
            lo, hi = p["gain_b_ci"]
            print(f"  best on A among {p['among']:10s}: {p['site']} K={p['k']} delta={p['delta']:g}: "
                  f"A {100 * p['gain_a']:+.1f}, B {100 * p['gain_b']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--train-sizes", default="150,1000")
    ap.add_argument("--n-dev", type=int, default=872)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "sst2_sweep.json")
    ap.add_argument("--report", action="store_true", help="only print the summary of an existing --json")
    args = ap.parse_args()
    if args.report:
        return report(args.json)
    if args.n_dev <= HALF:
        ap.error(f"--n-dev must exceed {HALF}: rows {HALF + 1} on are the second half the report checks against")

    hook = open_model(args.threads)
    dev = load(args.data, "sst2", ("sst2/dev.jsonl", 0), args.n_dev)
    labels = np.array([it.label for it in dev])
    out: Dict[str, Any] = {"command": " ".join(sys.argv), "grid": GRID, "half": HALF, "n_dev": len(dev),
                           "labels": labels.tolist(), "runs": {}}
    for n_train in [int(x) for x in args.train_sizes.split(",")]:
        train = load(args.data, "sst2", ("sst2/train.jsonl", 0), n_train)
        t0 = time.perf_counter()
        contrast = statistics(hook, train, tuple(GRID))
        log(f"{n_train} pairs: statistics in {time.perf_counter() - t0:.0f} s")
        cells, configs = [], [BASELINE]
        for site, (ks, deltas) in GRID.items():
            units = contrast.units(hook, site)
            for k in ks:
                mask = select_top_k(units, k)
                for d in deltas:
                    cells.append({"site": site, "k": k, "delta": d})
                    configs.append(sadi({site: mask}, d, name=f"{site}:{k}:{d:g}"))
        t0 = time.perf_counter()
        scores = score_items(hook, dev, configs, batched=False)
        log(f"{n_train} pairs: {len(configs)} configurations x {len(dev)} dev items in {time.perf_counter() - t0:.0f} s")
        # each configuration's answer per dev item, as a string of choice indices (row 0: baseline)
        preds = ["".join(map(str, p)) for p in scores.predictions()]
        out["runs"][str(n_train)] = {"cells": cells, "predictions": preds}
        args.json.write_text(json.dumps(out))
    log(f"wrote {args.json}")
    report(args.json)


if __name__ == "__main__":
    main()
