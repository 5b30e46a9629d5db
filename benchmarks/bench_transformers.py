"""Benchmark 3: sadi-cpp against the paper's approach, Hugging Face transformers with PyTorch
forward hooks, on the SAME GGUF (transformers dequantises it to f32). Benchmark-only extras:

    pip install torch transformers accelerate     # not dependencies of sadi-cpp
    python benchmarks/bench_transformers.py [--threads 2] [--pairs 150]

Both build SADI statistics (last token; heads: o_proj input averaged over head_dim; neurons:
down_proj input; hidden: MLP output) on the same pairs, and generate greedily with a head mask
steering the last prompt token. Each measurement runs in a fresh process for its own peak RSS.
Reports pairs/s, steered generated tokens/s and peak RSS side by side, and how far the two pick
the same top units (so the speed comparison is of the same work).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from _common import machine, median, peak_rss_mib, print_table, run_worker, write_json
from bench_build import make_pairs
from bench_steering import PROMPTS

SITES = ("head", "neuron", "hidden")
TOPS = {"head": (5, 10), "neuron": (100,), "hidden": (10,)}


def steer_mask(n_layer: int, n_head: int) -> np.ndarray:
    """The head mask both sides steer with in the generation benchmark (K = 5, fixed units)."""
    m = np.zeros((n_layer, n_head), bool)
    for layer, head in [(3, 0), (5, 1), (8, 2), (11, 3), (14, 0)]:
        m[layer % n_layer, head % n_head] = True
    return m


# ---- Hugging Face side ----

def hf_load(threads: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sadi_cpp.models import default_model_path

    torch.set_num_threads(threads)
    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    model.eval()
    return tok, model


def hf_build(n_pairs: int, threads: int, out: Path) -> Dict[str, Any]:
    import torch

    tok, model = hf_load(threads)
    layers = model.model.layers
    cfg = model.config
    seen: Dict[tuple, torch.Tensor] = {}
    handles = []
    for il, layer in enumerate(layers):
        handles.append(layer.self_attn.o_proj.register_forward_pre_hook(lambda m, a, il=il: seen.__setitem__(("head", il), a[0][0, -1])))
        handles.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a, il=il: seen.__setitem__(("neuron", il), a[0][0, -1])))
        handles.append(layer.mlp.register_forward_hook(lambda m, a, o, il=il: seen.__setitem__(("hidden", il), o[0, -1])))
    pairs = make_pairs(n_pairs)
    sums = {s: [None, None] for s in SITES}
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in pairs:
            for slot, text in enumerate((p["prompt"] + p["positive"], p["prompt"] + p["negative"])):
                model(**tok(text, return_tensors="pt"), use_cache=False)
                for s in SITES:
                    v = torch.stack([seen[(s, il)] for il in range(len(layers))]).double()
                    sums[s][slot] = v if sums[s][slot] is None else sums[s][slot] + v
    seconds = time.perf_counter() - t0
    hd = cfg.head_dim
    tables = {s: ((sums[s][0] - sums[s][1]) / n_pairs).numpy() for s in SITES}
    tables["head"] = tables["head"].reshape(len(layers), -1, hd).mean(-1)
    np.savez(out, **tables)
    return {"seconds": seconds, "pairs_per_s": n_pairs / seconds, "peak_rss_mib": peak_rss_mib()}


def hf_generate(n_gen: int, threads: int) -> Dict[str, Any]:
    import torch

    tok, model = hf_load(threads)
    cfg = model.config
    mask = torch.tensor(steer_mask(cfg.num_hidden_layers, cfg.num_attention_heads))
    hd, state = cfg.head_dim, {"prompt": False}

    def steer(il):
        units = mask[il].repeat_interleave(hd)

        def pre(m, a):
            if state["prompt"] and units.any():
                x = a[0].clone()
                x[:, -1, units] = x[:, -1, units] * 10.0  # a + 9a at the last prompt token
                return (x,)
        return pre

    for il, layer in enumerate(model.model.layers):
        layer.self_attn.o_proj.register_forward_pre_hook(steer(il))
    prompt_tps, gen_tps = [], []
    with torch.no_grad():
        for text in PROMPTS * 2:
            ids = tok(text, return_tensors="pt")["input_ids"]
            state["prompt"] = True
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            t1 = time.perf_counter()
            state["prompt"] = False
            past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t2 = time.perf_counter()
            for _ in range(n_gen - 1):
                out = model(input_ids=nxt, past_key_values=past, use_cache=True)
                past, nxt = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
            t3 = time.perf_counter()
            prompt_tps.append(ids.shape[1] / (t1 - t0))
            gen_tps.append((n_gen - 1) / (t3 - t2))
    return {"prompt_tps": median(prompt_tps), "gen_tps": median(gen_tps), "peak_rss_mib": peak_rss_mib()}


# ---- sadi-cpp side ----

def ours_build(n_pairs: int, threads: int, out: Path, batched: bool) -> Dict[str, Any]:
    import sadi_cpp
    from sadi_cpp.masks.contrast import mean_differences

    hook = sadi_cpp.load(n_ctx=2048, n_batch=512, n_threads=threads, n_threads_batch=threads)
    pairs = make_pairs(n_pairs)
    hook.llm.eval(hook.llm.tokenize(b"warm up"))
    t0 = time.perf_counter()
    c = mean_differences(hook, pairs, sites=SITES, batched=batched)
    seconds = time.perf_counter() - t0
    np.savez(out, **{s: c.units(hook, s) for s in SITES})
    return {"seconds": seconds, "pairs_per_s": n_pairs / seconds, "peak_rss_mib": peak_rss_mib()}


def ours_generate(n_gen: int, threads: int) -> Dict[str, Any]:
    import sadi_cpp
    from bench_steering import measure

    hook = sadi_cpp.load(n_ctx=1024, n_threads=threads, n_threads_batch=threads)
    hook.set_steering({"head": steer_mask(hook.shape.n_layer, hook.shape.n_head)}, delta=9.0)
    runs = [measure(hook.llm, hook.llm.tokenize(p.encode()), n_gen) for p in PROMPTS * 2]
    return {"prompt_tps": median([r["prompt_tps"] for r in runs]), "gen_tps": median([r["gen_tps"] for r in runs]),
            "peak_rss_mib": peak_rss_mib()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pairs", type=int, default=150)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--worker", nargs=2, metavar=("WHAT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        what, out = args.worker
        fn = {"hf-build": lambda: hf_build(args.pairs, args.threads, Path(out)),
              "ours-build": lambda: ours_build(args.pairs, args.threads, Path(out), True),
              "ours-build-sequential": lambda: ours_build(args.pairs, args.threads, Path(out), False),
              "hf-generate": lambda: hf_generate(args.gen, args.threads),
              "ours-generate": lambda: ours_generate(args.gen, args.threads)}[what]
        print(json.dumps(fn()))
        return
    me = Path(__file__)
    common = ["--threads", str(args.threads), "--pairs", str(args.pairs), "--gen", str(args.gen)]
    tmp = Path(tempfile.mkdtemp())
    runs: Dict[str, List[Dict[str, Any]]] = {}
    for rep in range(args.repeats):
        for what in ("hf-build", "ours-build", "ours-build-sequential", "hf-generate", "ours-generate"):
            runs.setdefault(what, []).append(run_worker(me, [what, str(tmp / f"{what}.npz")] + common))
        print(f"round {rep + 1}/{args.repeats} done", flush=True)
    med = {w: {k: median([r[k] for r in rs]) for k in rs[0]} for w, rs in runs.items()}
    hf_b, our_b, our_s = med["hf-build"], med["ours-build"], med["ours-build-sequential"]
    hf_g, our_g = med["hf-generate"], med["ours-generate"]
    rows = [
        ["build-mask pairs/s", round(hf_b["pairs_per_s"], 2), round(our_b["pairs_per_s"], 2), round(our_b["pairs_per_s"] / hf_b["pairs_per_s"], 1)],
        ["  (sadi-cpp unbatched)", "", round(our_s["pairs_per_s"], 2), round(our_s["pairs_per_s"] / hf_b["pairs_per_s"], 1)],
        ["build peak RSS MiB", round(hf_b["peak_rss_mib"]), round(our_b["peak_rss_mib"]), round(our_b["peak_rss_mib"] / hf_b["peak_rss_mib"], 2)],
        ["steered prompt tok/s", round(hf_g["prompt_tps"], 1), round(our_g["prompt_tps"], 1), round(our_g["prompt_tps"] / hf_g["prompt_tps"], 1)],
        ["steered generated tok/s", round(hf_g["gen_tps"], 1), round(our_g["gen_tps"], 1), round(our_g["gen_tps"] / hf_g["gen_tps"], 1)],
        ["generate peak RSS MiB", round(hf_g["peak_rss_mib"]), round(our_g["peak_rss_mib"]), round(our_g["peak_rss_mib"] / hf_g["peak_rss_mib"], 2)],
    ]
    print_table(["", "transformers+hooks", "sadi-cpp", "ratio (sadi-cpp / transformers)"], rows)
    hf_t, our_t = np.load(tmp / "hf-build.npz"), np.load(tmp / "ours-build.npz")
    overlap = {}
    for s in SITES:
        a, b = hf_t[s], our_t[s]
        corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
        for k in TOPS[s]:
            ta, tb = set(np.argsort(-a.ravel())[:k].tolist()), set(np.argsort(-b.ravel())[:k].tolist())
            overlap[f"{s} top-{k}"] = {"shared": len(ta & tb), "k": k, "table_correlation": corr}
    print()
    print_table(["units", "shared", "of K", "correlation of the tables"],
                [[k, v["shared"], v["k"], round(v["table_correlation"], 3)] for k, v in overlap.items()])
    write_json("transformers.json", {"machine": machine(), "args": vars(args), "medians": med, "runs": runs, "overlap": overlap})


if __name__ == "__main__":
    main()
