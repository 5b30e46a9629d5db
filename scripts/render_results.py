"""Write docs/results.md from benchmarks/results.json (reproduce_results.py writes the JSON).

    python scripts/render_results.py            # after python scripts/reproduce_results.py

Every number in the page comes from the JSON; the sentences that judge a difference are derived
from its 95% interval (outside the noise = the interval excludes 0).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parents[1]
ORDER = ["baseline", "sadi-head", "sadi-neuron", "sadi-hidden", "fixed", "random-0", "random-1", "random-2", "caa"]
PAPER_TASKS = ("sst2", "copa", "boolq", "winogrande", "storycloze")


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def ci(c) -> str:
    return f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"


def outside(c) -> bool:
    return c[0] > 0 or c[1] < 0


def sdiff(d: float, c) -> str:
    return f"{100 * d:+.1f} [{100 * c[0]:+.1f}, {100 * c[1]:+.1f}]" + (" *" if outside(c) else "")


def verdict(m: Dict[str, Any]) -> str:
    if not outside(m["diff_ci"]):
        return "within the noise"
    return "helps" if m["diff"] > 0 else "hurts"


def task_table(task: str, r: Dict[str, Any]) -> List[str]:
    best = r["best"]
    out = [f"### {task}", "",
           f"{r['n_train_pairs']} training pairs; {r['n_dev']} dev items (baseline {pct(r['dev_baseline'])}% on dev); "
           f"{r['n_test']} test items. Splits (file, first row): train {tuple(r['splits'][0])}, dev {tuple(r['splits'][1])}, "
           f"test {tuple(r['splits'][2])}. Best SADI site on dev: **{r['best_site']}**.", "",
           "| method | tuned on dev | dev acc | test acc [95% CI] | vs baseline, points [95% CI] | gained / lost |",
           "|---|---|---|---|---|---|"]
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
        flips = "-" if name == "baseline" else f"{m['gained']} / {m['lost']}"
        out.append(f"| {name} | {tuned} | {dev} | {pct(m['acc'])} {ci(m['ci'])} | {vs} | {flips} |")
    abl = [(n, r["methods"][n]["vs_sadi"]) for n in ("fixed", "random-0", "caa") if "vs_sadi" in r["methods"].get(n, {})]
    out += ["", f"SADI-{r['best_site']} minus each alternative on the same test items, points [95% CI]: " +
            "; ".join(f"{n}: {sdiff(v['diff'], v['diff_ci'])}" for n, v in abl) + ".", "",
            "Answers given, count per choice on test: " + "; ".join(f"{n} {r['answer_share'][n]}" for n in ORDER if n in r["answer_share"]) + ".", ""]
    return out


def summary(tasks: Dict[str, Any]) -> List[str]:
    out = ["| task | baseline | SADI, best site on dev | vs baseline [95% CI] | fixed | random (3 seeds) | CAA |", "|---|---|---|---|---|---|---|"]
    for task, r in tasks.items():
        m = r["methods"]
        s = m[f"sadi-{r['best_site']}"]
        rnd = [m[f"random-{k}"]["acc"] for k in range(3) if f"random-{k}" in m]
        out.append(f"| {task} | {pct(m['baseline']['acc'])} | {pct(s['acc'])} ({r['best_site']}) | {sdiff(s['diff'], s['diff_ci'])} | "
                   f"{pct(m['fixed']['acc'])} | {', '.join(pct(x) for x in rnd)} | {pct(m['caa']['acc'])} |")
    return out


def findings(tasks: Dict[str, Any]) -> List[str]:
    out = []
    for task, r in tasks.items():
        m = r["methods"]
        s = m[f"sadi-{r['best_site']}"]
        any_site = [n for n in ("sadi-head", "sadi-neuron", "sadi-hidden") if outside(m[n]["diff_ci"]) and m[n]["diff"] > 0]
        line = (f"- **{task}**: the site chosen on dev ({r['best_site']}) moves test accuracy by {sdiff(s['diff'], s['diff_ci'])} points: "
                f"{verdict(s)}.")
        if any_site:
            line += f" Sites that help outside the noise: {', '.join(any_site)}."
        beats = [n for n in ("fixed", "random-0", "caa") if outside(m[n]["vs_sadi"]["diff_ci"]) and m[n]["vs_sadi"]["diff"] > 0]
        lose = [n for n in ("fixed", "random-0", "caa") if outside(m[n]["vs_sadi"]["diff_ci"]) and m[n]["vs_sadi"]["diff"] < 0]
        line += f" Against the alternatives it is ahead of {', '.join(beats) or 'none'} outside the noise"
        line += f" and behind {', '.join(lose)}." if lose else "."
        out.append(line)
    return out


def sst2_goal(r: Dict[str, Any]) -> str:
    m = r["methods"]
    s = m[f"sadi-{r['best_site']}"]
    ok_base = outside(s["diff_ci"]) and s["diff"] > 0
    ok_abl = all(outside(m[n]["vs_sadi"]["diff_ci"]) and m[n]["vs_sadi"]["diff"] > 0 for n in ("fixed", "random-0"))
    state = "met" if ok_base and ok_abl else "not met"
    return (f"Goal on SST-2 (SADI, best site, beats the baseline and both ablations outside the noise): **{state}**. "
            f"SADI-{r['best_site']} vs baseline {sdiff(s['diff'], s['diff_ci'])}; vs fixed {sdiff(m['fixed']['vs_sadi']['diff'], m['fixed']['vs_sadi']['diff_ci'])}; "
            f"vs random (seed 0) {sdiff(m['random-0']['vs_sadi']['diff'], m['random-0']['vs_sadi']['diff_ci'])}.")


def copa_why(tasks: Dict[str, Any]) -> List[str]:
    if "copa" not in tasks or "copa_diagnostics" not in tasks["copa"]:
        return []
    r = tasks["copa"]
    d = r["copa_diagnostics"]
    sites = ", ".join(f"{n[5:]} {sdiff(r['methods'][n]['diff'], r['methods'][n]['diff_ci'])}" for n in ("sadi-head", "sadi-neuron", "sadi-hidden"))
    out = ["## Why COPA stays at chance", "",
           f"No site lifts COPA with the paper's template ({sites} points). The evidence points at the prompt format "
           f"on a model this small, not at the steering:", "",
           f"- The unsteered model answers \"A\" on {pct(d['letter_A_share'])}% of the {r['n_test']} test items "
           f"(answers per choice: {r['answer_share']['baseline']}), so its 50.0% is the label balance.",
           f"- After the template's \"Answer:\\n\", the reference code's choices \" A\" / \" B\" get {100 * d['mean_prob_on_letters']:.3f}% of the "
           f"probability on average: the model does not expect a letter there at all. Without the space (\"A\" / \"B\") the letters get "
           f"{pct(d['bare_letters_mean_prob'])}%, but the answer is still \"A\" on {pct(d['bare_letters_A_share'])}% of items "
           f"(accuracy {pct(d['bare_letters_accuracy'])}%).",
           f"- Scored as a cloze instead (the premise + \"because\"/\"so\" + each alternative, `prepare copa-cloze`), the same unsteered "
           f"model gets {pct(d['cloze_accuracy_sum'])}% (summed log-probability; {pct(d['cloze_accuracy_per_token'])}% per token, "
           f"95% CI {ci(d['cloze_ci_per_token'])}): it holds causal knowledge that the letter format does not reach.",
           "- SADI edits the last prompt token's activations; when the model's output at that token is a fixed \"A\" whatever the "
           "content, scaling a few units changes which letter wins on some items (the answer counts above move) but not in the "
           "direction of the content: the dev-tuned cells do not carry over to test."]
    if "copa-cloze" in tasks:
        c = tasks["copa-cloze"]
        s = c["methods"][f"sadi-{c['best_site']}"]
        out.append(f"- With the cloze format the baseline is {pct(c['methods']['baseline']['acc'])}% and SADI-{c['best_site']} "
                   f"(tuned on dev) moves it by {sdiff(s['diff'], s['diff_ci'])} points ({verdict(s)}); see the copa-cloze table.")
    return out + [""]


def followup_section(extra: Dict[str, Any], path: Path, main: Dict[str, Any]) -> List[str]:
    """The follow-up run: SST-2 tuned on a larger dev split, COPA in a cloze format."""
    out = ["## Follow-up runs", "",
           f"Run after the main one, same script (`{path.relative_to(ROOT)}`, {extra['started']} to {extra.get('finished', '?')}, "
           f"command in its `command` field). The test splits are the main run's.", ""]
    tasks = extra["tasks"]
    if "sst2" in tasks:
        r = tasks["sst2"]
        m = main["sst2"]
        site = m["best_site"]
        dev_gain = 100 * (m["best"][site]["dev"] - m["dev_baseline"])
        test_gain = 100 * m["methods"][f"sadi-{site}"]["diff"]
        out += [f"**SST-2 tuned on {r['n_dev']} dev items.** With 73 cells and {m['n_dev']} dev items the chosen cell's dev gain is "
                f"inflated by the selection itself (main run, SADI-{site}: {dev_gain:+.1f} points on dev, {test_gain:+.1f} on test), so "
                f"SST-2 was tuned again on {r['n_dev']} items of its dev file. " + sst2_goal(r), ""]
    if "copa-cloze" in tasks:
        r = tasks["copa-cloze"]
        s = r["methods"][f"sadi-{r['best_site']}"]
        out += [f"**COPA as a cloze** (`prepare copa-cloze`, not the paper's format): baseline {pct(r['methods']['baseline']['acc'])}%, "
                f"SADI-{r['best_site']} {sdiff(s['diff'], s['diff_ci'])} points ({verdict(s)}).", ""]
    for task, r in tasks.items():
        out += task_table(f"{task} (follow-up)", r)
    return out


def sweep_section(sweep_path: Path, more_path: Path) -> List[str]:
    """The dev-only sweep that chose the training size, then the test run it led to."""
    if not sweep_path.is_file():
        return []
    from sst2_sweep import summarize  # scripts/ is on the path when run as a script

    sweep = json.loads(sweep_path.read_text())
    rows = summarize(sweep)
    out = ["## SST-2: more training pairs and a wider grid", "",
           f"**Dev only first.** `python scripts/sst2_sweep.py --threads 2` (`{sweep_path.relative_to(ROOT)}`) scored "
           f"{sum(len(k) * len(d) for k, d in sweep['grid'].values())} SADI cells per training size on all {sweep['n_dev']} SST-2 dev "
           f"items: the paper's ranges plus delta below 4 and negative (-1 silences the units), and 20 heads. The dev file's "
           f"halves A (rows 1-{sweep['half']}) and B (the rest) are scored apart, so a cell picked on A is checked on B before any "
           "test item is seen. The rule fixed before the test run: keep the training size whose A-picked cell does best on B.", "",
           "| training pairs | baseline A / B | picked on A, among | cell | gain on A | gain on B [95% CI] |", "|---|---|---|---|---|---|"]
    for r in rows:
        for p in r["picks"]:
            out.append(f"| {r['n_train']} | {pct(r['base_a'])} / {pct(r['base_b'])} | {p['among']} | {p['site']} K={p['k']}, delta={p['delta']:g} | "
                       f"{100 * p['gain_a']:+.1f} | {sdiff(p['gain_b'], p['gain_b_ci'])} |")
    corr = ", ".join(f"{r['corr']:+.2f} with {r['n_train']} pairs ({r['corr_mixed']:+.2f} over the {r['n_mixed']} cells that still give "
                     "both answers 20-80% of the time)" for r in rows)
    heads = "; ".join(f"{r['n_train']} pairs: {r['head_cells_gaining_on_both']} of {r['n_head_cells']} head cells gain on both halves, the best on "
                      f"the whole dev file is K={r['best_head_on_dev']['k']}, delta={r['best_head_on_dev']['delta']:g} "
                      f"({100 * r['best_head_on_dev']['gain']:+.1f} points)" for r in rows)
    out += ["", f"The cells' gains on A and on B correlate: {corr}. So on dev the cells' effects are systematic, not noise. "
            f"By training size, {heads}.", ""]
    if more_path.is_file():
        more = json.loads(more_path.read_text())
        r = more["tasks"]["sst2"]
        out += [f"**Then test, once.** `{more['command']}` (`{more_path.relative_to(ROOT)}`, {more['started']} to "
                f"{more.get('finished', '?')}): {r['n_train_pairs']} training pairs, the wide grid for every method (fixed and CAA "
                "scales from 0.25), tuned on all dev items, test as in the main run. Not the issue's 150 pairs: the number "
                "was chosen on dev, after the main run's test results were known. " + sst2_goal(r), ""]
        out += task_table("sst2 (1000 training pairs, wide grid)", r)
    return out


def draws_section(path: Path) -> List[str]:
    """SADI against many random draws of its units (scripts/random_draws.py)."""
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    out = [f"**SADI against {d['seeds']} random draws, not one.** The goal's test compares SADI with one random draw (seed 0), "
           f"and one draw of {d['top_k']} {d['site']}s can move the answer bias far either way. `{d['command']}` "
           f"(`{path.relative_to(ROOT)}`) draws {d['seeds']} masks of the same site, K and delta ({d['n_train_pairs']} training pairs, "
           f"{d['site']} K={d['top_k']}, delta={d['delta']:g}) and scores them with SADI on dev and test. This comparison was "
           "designed after the test result above was known; it is reported as such.", "",
           "| split | baseline | SADI | random draws: mean (min to max) | SADI above | SADI minus the draws' mean, points [95% CI] | draws' mean minus baseline |",
           "|---|---|---|---|---|---|---|"]
    for split, r in d["splits"].items():
        v, b = r["sadi_minus_mean_random"], r["mean_random_minus_baseline"]
        rnd = r["random"]
        out.append(f"| {split} ({r['n']}) | {pct(r['baseline'])} | {pct(r['sadi'])} | {pct(sum(rnd) / len(rnd))} ({pct(min(rnd))} to {pct(max(rnd))}) | "
                   f"{r['draws_below_sadi']} of {len(rnd)} | {sdiff(v['diff'], v['diff_ci'])} | {sdiff(b['diff'], b['diff_ci'])} |")
    return out + [""]


def confirm_section(path: Path) -> List[str]:
    """The frozen re-test on SST-2 sentences no run had used (scripts/sst2_confirm.py)."""
    if not path.is_file():
        return []
    d = json.loads(path.read_text())
    site, acc = d["sadi_site"], d["accuracy"]
    f, start, n = d["items"]
    out = [f"**Confirmation on fresh items, everything frozen.** `{d['command']}` (`{path.relative_to(ROOT)}`): {n} sentences "
           f"from `{f}` rows {start + 1}-{start + n}, which no run had touched (training used rows 1-1000), scored with every "
           f"cell read from `{d['frozen_from']}` and the mask from the same 1000 pairs. The claims were written into the "
           "script before it ran.", "",
           "| method | accuracy | vs baseline, points [95% CI] |", "|---|---|---|"]
    for name, a in acc.items():
        if name.startswith("random-") and name != "random-0":
            continue
        vs = "-" if name == "baseline" else sdiff(d["vs_baseline"][name]["diff"], d["vs_baseline"][name]["diff_ci"])
        out.append(f"| {name} | {pct(a)} | {vs} |")
    draws = [a for n, a in acc.items() if n.startswith("random-")]
    out += ["", f"Random draws ({len(draws)}): mean {pct(sum(draws) / len(draws))}, {pct(min(draws))} to {pct(max(draws))}; "
            f"SADI-{site} is above {d['draws_below_sadi']} of them.", "",
            "Answers given (Negative, Positive): " + "; ".join(f"{n} {d['answer_share'][n]}" for n in ("baseline", f"sadi-{site}", "fixed", "caa", "random-0")) +
            f". The unsteered model answers Positive on {pct(d['answer_share']['baseline'][1] / n)}% of these items; of the methods "
            f"above, random-0 moves the answers furthest toward Negative.", "",
            f"SADI-{site} minus each alternative, points [95% CI]: " +
            "; ".join(f"{n}: {sdiff(v['diff'], v['diff_ci'])}" for n, v in d["sadi_minus"].items()) + ".", ""]
    return out


def sst2_verdict(more_path: Path, draws_path: Path, confirm_path: Path) -> List[str]:
    """The SST-2 answer in one paragraph, from the 1000-pair run, the random draws and the confirmation."""
    if not (more_path.is_file() and draws_path.is_file() and confirm_path.is_file()):
        return []
    r = json.loads(more_path.read_text())["tasks"]["sst2"]
    dr = json.loads(draws_path.read_text())["splits"]["test"]
    cf = json.loads(confirm_path.read_text())
    m, site = r["methods"], r["best_site"]
    s = m[f"sadi-{site}"]
    test_vs = {"fixed": m["fixed"]["vs_sadi"], "CAA": m["caa"]["vs_sadi"], "random seed 0": m["random-0"]["vs_sadi"],
               f"the mean of {len(dr['random'])} random draws": dr["sadi_minus_mean_random"]}
    fresh_vs = dict(zip(["the baseline", "fixed", "CAA", "random seed 0", "the mean of the random draws"], cf["sadi_minus"].values()))
    fresh_draws = [a for n, a in cf["accuracy"].items() if n.startswith("random-")]
    seed0_best = dr["random"][0] == max(dr["random"]) and fresh_draws[0] == max(fresh_draws)
    won = [n for n, v in test_vs.items() if outside(v["diff_ci"]) and v["diff"] > 0]
    lost = [n for n, v in test_vs.items() if not (outside(v["diff_ci"]) and v["diff"] > 0)]
    return [f"**With 1000 training pairs, SADI helps SST-2.** The training size was chosen on dev (sections below). On test, "
            f"SADI-{site} gains {sdiff(s['diff'], s['diff_ci'])} points over the baseline and beats, outside the noise, "
            + ", ".join(f"{n} ({sdiff(test_vs[n]['diff'], test_vs[n]['diff_ci'])})" for n in won)
            + ("; not " + ", ".join(f"{n} ({sdiff(test_vs[n]['diff'], test_vs[n]['diff_ci'])})" for n in lost) if lost else "")
            + f". On {cf['items'][2]} fresh sentences with every choice frozen beforehand, SADI-{site} minus " +
            ", ".join(f"{n} {sdiff(v['diff'], v['diff_ci'])}" for n, v in fresh_vs.items()) + ". "
            f"Seed 0 is {'the luckiest' if seed0_best else 'one'} of the random draws on both sets (SADI is above {dr['draws_below_sadi']} of {len(dr['random'])} on "
            f"test and {cf['draws_below_sadi']} of {len(dr['random'])} on the fresh items): the goal's comparison with that one draw is "
            f"not won, the comparison with random choice of units in general is.", ""]


def render(results: Path, extra_path: Path) -> str:
    data = json.loads(results.read_text())
    tasks = data["tasks"]
    paper = {t: r for t, r in tasks.items() if t in PAPER_TASKS}
    lines = ["# Results: SADI and its baselines on the paper's tasks", "",
             "Generated by `python scripts/reproduce_results.py --threads 2 && python scripts/render_results.py` "
             f"(raw numbers: `benchmarks/results.json`). Model: Gemma 3 270M Q4_K_M (the default). Machine: {data['machine']}; "
             f"sadi-cpp {data['sadi_cpp']}; run {data['started']} to {data.get('finished', '?')}.", "",
             "Protocol, per task: 150 training items, one contrastive pair each (prompt + correct choice vs prompt + wrong "
             "choice, read at the last token); the statistics are gathered once for every site. Every SADI cell of the default "
             "grids (docs/eval.md) and CAA's layer x scale grid are scored on a dev split disjoint from the test split; dev also "
             "picks SADI's best site, whose units and K the fixed-vector and random ablations reuse (fixed tunes its scale on dev; "
             "random keeps SADI's K and delta, seeds 0-2). Test: every method once on the same items, steering the last prompt "
             "token, accuracy by the choices' summed log-probability. Intervals: paired percentile bootstrap, 2000 resamples; "
             "`*` marks a difference whose interval excludes 0. Scoring: one configuration at a time (`score_items(..., "
             "batched=False)`, what sadi-cpp did when these runs were made; the scripts keep it so that they reproduce "
             "these numbers; `tune` and `eval` now score in batches, which moves a few answers by rounding: "
             "docs/benchmarks.md, section 6).", "",
             "## Summary (test accuracy, %)", ""] + summary(paper) + ["", "## Findings", ""] + findings(paper) + [""]
    extra = json.loads(extra_path.read_text()) if extra_path.is_file() else None
    if "sst2" in tasks:
        lines += [sst2_goal(tasks["sst2"]), ""]
        lines += sst2_verdict(ROOT / "benchmarks" / "results_sst2_1000.json", ROOT / "benchmarks" / "random_draws.json",
                              ROOT / "benchmarks" / "sst2_confirm.json")
    lines += copa_why(dict(tasks, **(extra["tasks"] if extra else {})))
    if extra is not None:
        lines += followup_section(extra, extra_path, tasks)
    lines += sweep_section(ROOT / "benchmarks" / "sst2_sweep.json", ROOT / "benchmarks" / "results_sst2_1000.json")
    lines += draws_section(ROOT / "benchmarks" / "random_draws.json")
    lines += confirm_section(ROOT / "benchmarks" / "sst2_confirm.json")
    lines += ["## Per task", ""]
    for task, r in tasks.items():
        lines += task_table(task, r)
    return "\n".join(lines) + "\n"


# The sections from here on are written by other scripts' runs (gate_results.py, gen_results.py),
# by hand from their JSON: a new rendering keeps them as they are.
KEPT_FROM = "\n## Gates:"

if __name__ == "__main__":
    text = render(ROOT / "benchmarks" / "results.json", ROOT / "benchmarks" / "results_followup.json")
    target = ROOT / "docs" / "results.md"
    old = target.read_text() if target.is_file() else ""
    if KEPT_FROM in old:
        text += old[old.index(KEPT_FROM):]
    target.write_text(text)
    print(f"wrote {ROOT / 'docs' / 'results.md'}")
