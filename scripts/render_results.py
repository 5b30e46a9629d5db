"""Render docs/results.md's tables from benchmarks/results.json (written by reproduce_results.py).

    python scripts/render_results.py > /tmp/tables.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["baseline", "sadi-head", "sadi-neuron", "sadi-hidden", "fixed", "random-0", "random-1", "random-2", "caa"]


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ci(c) -> str:
    return f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"


def sdiff(d: float, c) -> str:
    star = " *" if c[0] > 0 or c[1] < 0 else ""
    return f"{100 * d:+.1f} [{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]{star}"


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    out = []
    for task, r in data["tasks"].items():
        best = r["best"]
        out.append(f"### {task}\n")
        out.append(f"{r['n_train_pairs']} training pairs, {r['n_dev']} dev items (baseline {pct(r['dev_baseline'])}% on dev), "
                   f"{r['n_test']} test items. Splits (file, first row): train {r['splits'][0]}, dev {r['splits'][1]}, test {r['splits'][2]}. "
                   f"Best site on dev: **{r['best_site']}**.\n")
        out.append("| method | tuned on dev | dev acc | test acc [95% CI] | vs baseline, points [95% CI] | fixed / broken |")
        out.append("|---|---|---|---|---|---|")
        for name in ORDER:
            if name not in r["methods"]:
                continue
            m = r["methods"][name]
            if name.startswith("sadi-"):
                b = best[name[5:]]
                tuned, dev = f"K={b['row']}, delta={b['col']:g}", pct(b["dev"])
            elif name == "fixed":
                b = best["fixed"]
                tuned, dev = f"{b['site']} K={b['row']}, alpha={b['col']:g}", pct(b["dev"])
            elif name == "caa":
                b = best["caa"]
                tuned, dev = f"layer {b['row']}, alpha={b['col']:g}", pct(b["dev"])
            elif name.startswith("random"):
                b = best[r["best_site"]]
                tuned, dev = f"{r['best_site']} K={b['row']}, delta={b['col']:g}, seed {name[7:]}", "-"
            else:
                tuned, dev = "-", pct(r["dev_baseline"])
            vs = "-" if name == "baseline" else sdiff(m["diff"], m["diff_ci"])
            flips = "-" if name == "baseline" else f"{m['fixed']} / {m['broken']}"
            out.append(f"| {name} | {tuned} | {dev} | {pct(m['acc'])} {ci(m['ci'])} | {vs} | {flips} |")
        abl = [(n, r["methods"][n]["vs_sadi"]) for n in ("fixed", "random-0", "caa") if "vs_sadi" in r["methods"][n]]
        if abl:
            out.append("")
            out.append(f"SADI-{r['best_site']} minus each alternative on test, points [95% CI]: " +
                       "; ".join(f"{n}: {sdiff(v['diff'], v['diff_ci'])}" for n, v in abl) + ".")
        shares = r["answer_share"]
        out.append("")
        out.append("Answers given (count per choice, test): " + "; ".join(f"{n} {shares[n]}" for n in ORDER if n in shares) + ".\n")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "benchmarks" / "results.json"))
