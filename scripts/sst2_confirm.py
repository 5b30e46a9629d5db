"""A confirmation on SST-2 sentences no run has used, every choice frozen beforehand.

    python scripts/sst2_confirm.py --threads 2      # 13 min on 2 cores (measured)

The 1000-pair SST-2 run (benchmarks/results_sst2_1000.json) chose its training size on dev, but
after the main run's test numbers were known, and its comparison with many random draws
(scripts/random_draws.py) was designed after its own test numbers were known. This script tests
the same claims on items that played no part in any choice: rows 5001-6920 of sst2/train.jsonl
(training used rows 1-1000; same source and sentence lengths as the test file). Everything is
frozen: the mask comes from the same 1000 pairs, and every cell is read from
results_sst2_1000.json, not chosen again. Claims, written before the run, each tested with a
paired bootstrap interval: SADI (the site dev chose) beats the baseline, the fixed vector, CAA,
random seed 0, and the mean of 20 random draws. Writes benchmarks/sst2_confirm.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from sadi_cpp.evaluation.interventions import BASELINE, fixed, random_units
from sadi_cpp.masks.mask import select_top_k
from sadi_cpp.scoring.score import score_items
from sadi_cpp.evaluation.stats import paired
from sadi_cpp.evaluation.tune import config_for

from reproduce_results import ROOT, SITES, load, log, open_model, statistics  # scripts/ is on the path when run as a script

FRESH = ("sst2/train.jsonl", 5000)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--frozen", type=Path, default=ROOT / "benchmarks" / "results_sst2_1000.json")
    ap.add_argument("--n", type=int, default=1920, help="fresh items (rows 5001 on)")
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "sst2_confirm.json")
    args = ap.parse_args()

    frozen = json.loads(args.frozen.read_text())["tasks"]["sst2"]
    best, site = frozen["best"], frozen["best_site"]
    train_spec = tuple(frozen["splits"][0])
    if train_spec[1] + frozen["n_train_pairs"] > FRESH[1] and train_spec[0] == FRESH[0]:
        raise SystemExit("the frozen run's training rows overlap the fresh rows")
    hook = open_model(args.threads)
    train = load(args.data, "sst2", train_spec, frozen["n_train_pairs"])
    contrast = statistics(hook, train, SITES + ("residual",))
    k, delta = int(best[site]["row"]), best[site]["col"]
    mask = select_top_k(contrast.units(hook, site), k)
    names = ["baseline"] + [f"sadi-{s}" for s in SITES] + ["fixed", "caa"] + [f"random-{i}" for i in range(args.seeds)]
    configs = [BASELINE] + [config_for(hook, contrast, "sadi", s, best[s]["row"], best[s]["col"]) for s in SITES]
    configs.append(fixed(hook.shape, site, mask, contrast.diffs[site], best["fixed"]["col"]))
    configs.append(config_for(hook, contrast, "caa", "residual", best["caa"]["row"], best["caa"]["col"]))
    configs += [random_units(hook.shape, site, k, delta, seed=i, name=f"random-{i}") for i in range(args.seeds)]

    items = load(args.data, "sst2", FRESH, args.n)
    t0 = time.perf_counter()
    scores = score_items(hook, items, configs, batched=False)
    log(f"{len(items)} fresh items x {len(configs)} configurations in {time.perf_counter() - t0:.0f} s")
    correct = scores.correct().astype(float)
    s = correct[names.index(f"sadi-{site}")]
    draws = correct[names.index("random-0"):]
    against = {"baseline": correct[0], "fixed": correct[names.index("fixed")], "caa": correct[names.index("caa")],
               "random-0": correct[names.index("random-0")], "random (mean of draws)": draws.mean(axis=0)}
    out = {
        "command": " ".join(sys.argv), "frozen_from": str(args.frozen.resolve().relative_to(ROOT) if args.frozen.resolve().is_relative_to(ROOT) else args.frozen), "items": [FRESH[0], FRESH[1], len(items)],
        "sadi_site": site, "accuracy": dict(zip(names, correct.mean(axis=1).tolist())),
        "sadi_minus": {n: paired(v, s).as_dict() for n, v in against.items()},
        "vs_baseline": {n: paired(correct[0], correct[i]).as_dict() for i, n in enumerate(names) if i},
        "draws_below_sadi": int((draws.mean(axis=1) < s.mean()).sum()),
        "answer_share": {n: np.bincount(p, minlength=2).tolist() for n, p in zip(names, scores.predictions())},
    }
    args.json.write_text(json.dumps(out, indent=1))
    for n, d in out["sadi_minus"].items():
        lo, hi = d["diff_ci"]
        print(f"SADI-{site} minus {n}: {100 * d['diff']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]{' *' if d['significant'] else ''}")
    print("accuracy: " + ", ".join(f"{n} {100 * a:.1f}" for n, a in out["accuracy"].items() if not n.startswith("random-") or n == "random-0"))
    print(f"SADI above {out['draws_below_sadi']} of {args.seeds} random draws")


if __name__ == "__main__":
    main()
