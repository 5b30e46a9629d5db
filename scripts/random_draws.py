"""SADI against many random draws of its units, not one: the random ablation is a distribution.

    python scripts/random_draws.py --threads 2      # 15 min on 2 cores (measured)

The results runs compare SADI with random units drawn with seeds 0-2 and judge it against seed 0
alone. One draw of K units can help or hurt by chance (on SST-2 the three draws moved test
accuracy by +6.4, +3.0 and -0.2 points), so this script draws --seeds masks (same site, K and
delta as SADI) and reports where SADI stands among them, on dev and on test, and SADI minus the
mean over the draws per item, with a paired bootstrap interval. Writes benchmarks/random_draws.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from sadi_cpp.evaluation.interventions import BASELINE, random_units
from sadi_cpp.scoring.score import score_items
from sadi_cpp.evaluation.stats import paired
from sadi_cpp.evaluation.tune import config_for

from reproduce_results import ROOT, load, log, open_model, splits, statistics  # scripts/ is on the path when run as a script


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--task", default="sst2")
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--n-dev", type=int, default=872)
    ap.add_argument("--n-test", type=int, default=1821)
    ap.add_argument("--site", default="head")
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--delta", type=float, default=1.0)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "random_draws.json")
    args = ap.parse_args()

    hook = open_model(args.threads)
    tr, dv, te = splits(args.task, args.n_train, args.n_dev)
    train = load(args.data, args.task, tr, args.n_train)
    contrast = statistics(hook, train, (args.site,))
    configs = [BASELINE, config_for(hook, contrast, "sadi", args.site, args.top_k, args.delta)]
    configs += [random_units(hook.shape, args.site, args.top_k, args.delta, seed=s, name=f"random-{s}") for s in range(args.seeds)]
    out = {"command": " ".join(sys.argv), "task": args.task, "n_train_pairs": contrast.n_used, "site": args.site,
           "top_k": args.top_k, "delta": args.delta, "seeds": args.seeds, "splits": {}}
    for split, spec, n in (("dev", dv, args.n_dev), ("test", te, args.n_test)):
        items = load(args.data, args.task, spec, n)
        t0 = time.perf_counter()
        correct = score_items(hook, items, configs, batched=False).correct()
        log(f"{split}: {len(items)} items x {len(configs)} configurations in {time.perf_counter() - t0:.0f} s")
        acc = correct.mean(axis=1)
        draws = correct[2:]
        out["splits"][split] = {
            "n": len(items), "baseline": float(acc[0]), "sadi": float(acc[1]), "random": acc[2:].tolist(),
            "draws_below_sadi": int((acc[2:] < acc[1]).sum()),
            # per item, the share of draws that answer it right: the expected accuracy of a random mask
            "sadi_minus_mean_random": paired(draws.mean(axis=0), correct[1].astype(float)).as_dict(),
            "mean_random_minus_baseline": paired(correct[0].astype(float), draws.mean(axis=0)).as_dict(),
        }
        args.json.write_text(json.dumps(out, indent=1))
    for split, r in out["splits"].items():
        d = r["sadi_minus_mean_random"]
        print(f"{split}: baseline {100 * r['baseline']:.1f}, SADI {100 * r['sadi']:.1f}, random draws mean {100 * np.mean(r['random']):.1f} "
              f"(min {100 * min(r['random']):.1f}, max {100 * max(r['random']):.1f}); SADI above {r['draws_below_sadi']} of {args.seeds} draws; "
              f"SADI minus the draws' mean {100 * d['diff']:+.1f} [{100 * d['diff_ci'][0]:+.1f}, {100 * d['diff_ci'][1]:+.1f}]")


if __name__ == "__main__":
    main()
