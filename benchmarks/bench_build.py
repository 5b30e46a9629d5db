"""Benchmarks 2 and 4: build-mask throughput, memory and scaling (default model, CPU).

    python benchmarks/bench_build.py [--repeats 3] [--threads 2]

Each measurement runs in a fresh process (so its peak RSS is its own) on the same pairs:
- raw:        plain llama-cpp-python, no hook, evaluating the same token stream as `sequential`
              (each text from an empty cache): the practical upper bound of the unbatched way;
- sequential: build-mask statistics, each text alone (`batched=False`);
- batched:    build-mask's default: many pairs per decode, shared prompt evaluated once.
Pairs: SST-2 training items in the paper's prompt format (from ../shared/data when present; else
the example sentiment pairs, cycled). Figures are medians over interleaved repeats; tokens/s
counts the texts' tokens (the stream `raw` evaluates) for every mode, so the ratios compare the
same work. Scaling: time and peak RSS against the number of pairs and the prompt length.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List

from _common import DATA, ROOT, machine, median, peak_rss_mib, print_table, run_worker, write_json

FILLER = "The committee discussed the plan for the new library at length before the vote. "


def make_pairs(n: int, prompt_len: int = 0) -> List[Dict[str, str]]:
    """n pairs: SST-2 items (paper format) or, with prompt_len, synthetic prompts of about that many tokens."""
    if prompt_len:
        words = (FILLER * (prompt_len // 12 + 2)).split()
        return [{"prompt": f"{i}: " + " ".join(words[: max(1, int(prompt_len * 0.75))]) + "\n\nAnswer:",
                 "positive": " Positive", "negative": " Negative"} for i in range(n)]
    src = DATA / "sst2" / "train.jsonl"
    if src.is_file():
        from sadi_cpp.data.tasks import convert_file

        rows = convert_file("sst2", src, limit=n)
        return [{"prompt": r["prompt"], "positive": r["choices"][r["label"]], "negative": r["choices"][1 - r["label"]]} for r in rows]
    lines = (ROOT / "examples" / "sentiment_pairs.jsonl").read_text().splitlines()
    return [json.loads(lines[i % len(lines)]) for i in range(n)]


def worker(mode: str, n: int, prompt_len: int, threads: int) -> Dict[str, Any]:
    from llama_cpp import Llama

    import sadi_cpp
    from sadi_cpp.masks.contrast import mean_differences
    from sadi_cpp.models import default_model_path

    pairs = make_pairs(n, prompt_len)
    kw = dict(n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads, verbose=False)
    llm = Llama(str(default_model_path()), **kw)
    texts = [(p["prompt"] + p["positive"], p["prompt"] + p["negative"]) for p in pairs]
    stream = sum(len(llm.tokenize(t.encode())) for pair in texts for t in pair)
    hook = None if mode == "raw" else sadi_cpp.attach(llm)
    warm = llm.tokenize(texts[0][0].encode())
    llm.reset()
    llm.eval(warm)  # allocate compute buffers before timing
    t0 = time.perf_counter()
    if mode == "raw":
        for pair in texts:
            for t in pair:
                llm.reset()
                llm.eval(llm.tokenize(t.encode()))
    else:
        mean_differences(hook, pairs, sites=("head",), batched=mode == "batched")
    seconds = time.perf_counter() - t0
    return {"mode": mode, "n_pairs": n, "prompt_len": prompt_len, "seconds": seconds, "stream_tokens": stream,
            "pairs_per_s": n / seconds, "tokens_per_s": stream / seconds, "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", nargs=3, metavar=("MODE", "N", "PROMPT_LEN"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        mode, n, plen = args.worker
        print(json.dumps(worker(mode, int(n), int(plen), args.threads)))
        return
    me = Path(__file__)
    t = ["--threads", str(args.threads)]
    results: Dict[str, Any] = {"machine": machine(), "args": vars(args)}

    # 2. throughput and memory at 150 and 1000 pairs
    runs: Dict[tuple, List[Dict[str, Any]]] = {}
    for rep in range(args.repeats):
        for n in (150, 1000):
            for mode in ("raw", "sequential", "batched"):
                runs.setdefault((mode, n), []).append(run_worker(me, [mode, str(n), "0"] + t))
        print(f"throughput round {rep + 1}/{args.repeats} done", flush=True)
    rows, tp = [], {}
    for (mode, n), rs in runs.items():
        raw = runs[("raw", n)]
        ratio = median([r["tokens_per_s"] / q["tokens_per_s"] for r, q in zip(rs, raw)])
        entry = {"pairs_per_s": median([r["pairs_per_s"] for r in rs]), "tokens_per_s": median([r["tokens_per_s"] for r in rs]),
                 "ratio_to_raw": ratio, "peak_rss_mib": median([r["peak_rss_mib"] for r in rs]), "stream_tokens": rs[0]["stream_tokens"], "runs": rs}
        tp[f"{mode}/{n}"] = entry
        rows.append([mode, n, round(entry["pairs_per_s"], 1), round(entry["tokens_per_s"]), round(ratio, 2), round(entry["peak_rss_mib"])])
    print_table(["mode", "pairs", "pairs/s", "stream tok/s", "x raw", "peak RSS MiB"], rows)
    results["throughput"] = tp

    # 4. scaling: pairs (linear time, flat memory) and prompt length
    scale_rows, scaling = [], {}
    for n in (50, 150, 500, 1000):
        for mode in ("sequential", "batched"):
            key = f"{mode}/pairs={n}"
            r = runs[(mode, n)][0] if (mode, n) in runs else run_worker(me, [mode, str(n), "0"] + t)
            scaling[key] = r
            scale_rows.append([mode, n, "sst2", round(r["seconds"], 2), round(1000 * r["seconds"] / n, 2), round(r["peak_rss_mib"])])
    for plen in (32, 128, 512):
        for mode in ("raw", "sequential", "batched"):
            r = run_worker(me, [mode, "100", str(plen)] + t)
            scaling[f"{mode}/prompt_len={plen}"] = r
            scale_rows.append([mode, 100, f"~{plen} tok", round(r["seconds"], 2), round(1000 * r["seconds"] / 100, 2), round(r["peak_rss_mib"])])
    print()
    print_table(["mode", "pairs", "prompt", "seconds", "ms/pair", "peak RSS MiB"], scale_rows)
    results["scaling"] = scaling
    write_json("build.json", results)


if __name__ == "__main__":
    main()
