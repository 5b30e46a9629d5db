"""Commands around masks: build-mask, inspect, generate, and check (which sites a model allows)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import typer
from rich.table import Table
from typing_extensions import Annotated

from sadi_cpp.cli.common import (
    Rpc,     JsonOut, Model, ModelArg, NCtx, NoCache, Site, Threads, app, err, errors, gate_info, gate_line, load_masks, load_model, one_model,
    out, plain, print_gate, progress_bar, steering_of, tuned_line, units_table,
)
from sadi_cpp.errors import BadInputError
from sadi_cpp.files import check_output


@app.command("build-mask")
@errors
def build_mask_cmd(
    pairs: Annotated[Path, typer.Argument(help="JSONL pairs: {prompt, positive, negative}, {positive, negative} or multiple-choice {prompt, choices, label} per line.")],
    model_arg: ModelArg = None,
    model: Model = None,
    site: Site = "head",
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Units to keep (default: head 5, neuron 100, hidden 10; paper ranges 1-10, 3-500, 1-20).")] = None,
    rank_abs: Annotated[bool, typer.Option("--abs", help="Rank units by |mean difference| instead of the signed value.")] = False,
    delta: Annotated[Optional[float], typer.Option("--delta", help="Recommended delta stored in the mask (default: head 9, neuron 19, hidden 9).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Mask file (default: beside the model, <model>.<pairs>.<site>.sadi.gguf).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on a pair longer than the context instead of skipping it.")] = False,
    sequential: Annotated[bool, typer.Option("--sequential", help="Evaluate each text alone (slower) instead of many pairs per decode.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    no_cache: NoCache = False,
    n_ctx: NCtx = 512,
    threads: Threads = None,
    rpc: Rpc = None,
    as_json: JsonOut = False,
) -> None:
    """Build a SADI mask from contrastive pairs (SADI steps 1-2) and save it as a GGUF sidecar."""
    from sadi_cpp.data.pairs import read_pairs
    from sadi_cpp.masks.build import BuildStats, build_mask
    from sadi_cpp.masks.mask import default_mask_path
    from sadi_cpp.sites import check_site

    model = one_model(model_arg, model)
    check_site(site)
    if output is not None:
        check_output(output, "mask file")  # before the model loads and the pairs run
    items = read_pairs(pairs)  # validate the whole file before loading the model
    hook = load_model(model, n_ctx, threads, rpc)
    target = check_output(output or default_mask_path(hook.model_path, pairs, site), "mask file")
    stats = BuildStats()
    with progress_bar("pairs", len(items), quiet, plain=as_json) as step:
        mask = build_mask(hook, items, site=site, top_k=top_k, rank_by="abs" if rank_abs else "signed",
                          delta=delta, strict=strict, progress=step, stats=stats, batched=not sequential, cache=not no_cache)
    mask.save(target)
    summary = {
        "mask": str(target), "site": site, "top_k": mask.top_k, "delta": mask.delta, "pairs_used": stats.n_used,
        "pairs_skipped": stats.skipped, "seconds": round(stats.seconds, 2),
        "statistics": {"cache": None if stats.cache is None else str(stats.cache), "reused": stats.reused},
        "top_units": [{"layer": l, "unit": u, "mean_diff": v} for l, u, v in mask.top_units(10)],
    }
    if as_json:
        out.print_json(json.dumps(summary))
    elif not quiet:
        skipped = ", ".join(f"{n} {why}" for why, n in stats.skipped.items()) or "none"
        speed = "statistics reused from the cache" if stats.reused else f"{stats.n_used / max(stats.seconds, 1e-9):.1f} pairs/s"
        out.print(f"pairs used: {stats.n_used}, skipped: {skipped}, {speed}")
        out.print(units_table(mask, 10))
        out.print(f"mask written to {target}", soft_wrap=True, highlight=False)


@app.command()
@errors
def generate(
    prompt: Annotated[str, typer.Argument(help="The prompt.", show_default=False)],
    mask: Annotated[List[Path], typer.Option("--mask", help="Mask sidecar from build-mask; repeat it to steer with several at once (their strengths add where they share a unit).")],
    model: Model = None,
    delta: Annotated[Optional[List[float]], typer.Option("--delta", help="Steering strength (default: the mask's recommended delta); with several masks, one per --mask, in order.")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Use another K from the mask's stored table (one mask only).")] = None,
    weighting: Annotated[str, typer.Option("--weighting", help="uniform (every masked unit gets delta) or mean-diff (delta scaled by each unit's |mean difference| over the strongest's).")] = "uniform",
    positions: Annotated[Optional[str], typer.Option("--positions", help="last | last+generated | all (default: the mask's).")] = None,
    gate: Annotated[Optional[Path], typer.Option("--gate", help="Gate sidecar from build-gate: steer only if it fires on the prompt.")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template (tokenizer.chat_template).")] = False,
    chat_format: Annotated[Optional[str], typer.Option("--chat-format", help="Use this llama-cpp-python chat format instead (e.g. gemma, chatml); implies --chat.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Print the unsteered and the steered output side by side.")] = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="Sampling temperature (0: greedy).")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling.")] = 0.95,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    n_ctx: NCtx = 1024,
    threads: Threads = None,
    rpc: Rpc = None,
    as_json: JsonOut = False,
) -> None:
    """Generate text with the model steered by a SADI mask (streams tokens)."""
    from sadi_cpp.llama.chat import choose_chat, stream_text
    from sadi_cpp.masks.gate_file import load_gate
    from sadi_cpp.positions import check_gated, check_policy

    parts = load_masks(mask, delta, top_k, weighting)
    gated = load_gate(gate) if gate is not None else None
    policy = check_gated(check_policy(positions or parts[0][0].positions), gated is not None)
    hook = load_model(model, n_ctx, threads, rpc)
    steering = steering_of(parts, hook, weighting, gated)
    use_chat = choose_chat(hook, chat, chat_format)
    stream = not (compare or as_json)

    def run() -> str:
        # from an empty cache each time: llama.cpp's logits depend a little on how the prompt is
        # split into decodes (docs/eval.md), and a cached prefix would split the second run differently
        hook.rewind(0)
        text = []
        for piece in stream_text(hook, prompt, use_chat, max_tokens, temperature, top_p, seed):
            text.append(piece)
            if stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
        if stream:
            sys.stdout.write("\n")
        return "".join(text)

    unsteered = run() if compare or as_json else None
    with hook.steering(steering, positions=policy):
        steered = run()
        decision = hook.gate_result
    first, d = parts[0]
    described = [{"mask": str(p), "site": m.site, "top_k": m.top_k, "delta": dd} for p, (m, dd) in zip(mask, parts)]
    if as_json:
        out.print_json(json.dumps({"prompt": prompt, "delta": d, "site": first.site, "top_k": first.top_k, "masks": described,
                                   "weighting": weighting, "positions": policy, "unsteered": unsteered, "steered": steered,
                                   "gate": None if gated is None else {"file": str(gate), "layer": gated.layer, "threshold": gated.threshold,
                                                                        **(decision.as_dict() if decision else {"score": None, "fired": None})}}))
        return
    elif compare:
        table = Table(show_lines=True)
        table.add_column("unsteered")
        title = (f"{first.site}, K={first.top_k}, delta={d:g}" if len(parts) == 1 else
                 " + ".join(f"{m.site} K={m.top_k} delta={dd:g}" for m, dd in parts))
        if gated is not None:
            title += "; gate " + ("fired" if decision and decision.fired else "did not fire: unsteered")
        table.add_column(f"steered ({title}{', mean-diff weights' if weighting != 'uniform' else ''})")
        table.add_row(unsteered, steered)
        out.print(table)
    if gated is not None:
        err.print(plain(gate_line(decision, gated)), soft_wrap=True)


@app.command()
@errors
def inspect(
    files: Annotated[List[Path], typer.Argument(help="Mask or gate sidecars (.sadi.gguf); several masks are also shown as one composition.")],
    top: Annotated[int, typer.Option("--top", help="How many units to list.")] = 10,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a layer x unit heatmap of mean differences (PNG; one mask).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Show masks and gates: metadata, the model they fit, top units; several masks composed."""
    from sadi_cpp.masks.gate_file import load_gate
    from sadi_cpp.masks.mask import SadiMask

    if plot is not None:
        check_output(plot, "plot")
        if len(files) != 1:
            raise BadInputError("--plot draws one mask: give one file")
    infos, masks = [], []
    for path in files:
        if _is_gate(path):
            infos.append(gate_info(load_gate(path), path))
            continue
        m = SadiMask.load(path)
        masks.append((path, m))
        infos.append(_mask_info(m, path, top))
    if plot is not None:
        if not masks:
            raise BadInputError(f"{files[0]}: a gate has no units to draw; --plot draws a mask")
        from sadi_cpp.plot import plot_mask

        plot_mask(masks[0][1], plot)
        infos[0]["plot"] = str(plot)
    composition = _composition(masks) if len(masks) > 1 else None
    if as_json:
        out.print_json(json.dumps(infos[0] if len(infos) == 1 else {"files": infos, "composition": composition}))
        return
    for k, info in enumerate(infos):
        if len(infos) > 1:
            out.print(plain(f"== {info['file']}"), soft_wrap=True)
        if info.get("kind") == "gate":
            print_gate(info)
            continue
        m = dict(masks)[files[k]] if len(masks) > 1 else masks[0][1]
        _print_mask(info, m, top)
    if composition is not None:
        shared = composition["shared_units"]
        out.print(plain(f"composed (each at its own delta): {composition['n_units']} units; {len(shared)} selected by more than "
                        "one mask, where the deltas add" + (": " + ", ".join(f"{u['site']} layer {u['layer']} unit {u['unit']}"
                                                                          for u in shared[:10]) if shared else "")), soft_wrap=True)
    if plot is not None:
        out.print(f"heatmap written to {plot}", soft_wrap=True)


def _is_gate(path: Path) -> bool:
    """True when the file reads as a gate sidecar; anything else goes to the mask reader, whose
    errors say what the file is."""
    from sadi_cpp.errors import SadiError
    from sadi_cpp.masks.sidecar import kind_of

    try:
        return path.is_file() and kind_of(path) == "gate"
    except (SadiError, OSError):
        return False


def _mask_info(m: Any, path: Path, top: int) -> Dict[str, Any]:
    return {
        "file": str(path), "site": m.site, "top_k": m.top_k, "delta": m.delta, "positions": m.positions,
        "rank_by": m.rank_by, "n_pairs": m.n_pairs, "pairs_sha256": m.pairs_sha256, "tool_version": m.tool_version,
        "model": m.model, "top_units": [{"layer": l, "unit": u, "mean_diff": v} for l, u, v in m.top_units(top)],
        "tuned": json.loads(m.tuned) if m.tuned_record else None,
    }


def _print_mask(info: Dict[str, Any], m: Any, top: int) -> None:
    for key in ("site", "top_k", "delta", "positions", "rank_by", "n_pairs", "pairs_sha256", "tool_version"):
        out.print(f"{key}: {plain(info[key])}", soft_wrap=True)
    mdl = m.model
    out.print(plain(f"model: {mdl['arch']}, n_layer {mdl['n_layer']}, n_embd {mdl['n_embd']}, n_head {mdl['n_head']}, "
                    f"head_dim {mdl['head_dim']}, n_ff {mdl['n_ff']}, n_vocab {mdl['n_vocab']}, tensors {mdl['tensors_sha256'][:16]}"))
    tuned = m.tuned_record
    if tuned:
        out.print(plain(f"tuned: {tuned_line(tuned)}"), soft_wrap=True)
    out.print(units_table(m, top))


def _composition(masks: List[Any]) -> Dict[str, Any]:
    """What several masks select together: units in total, and those more than one selects."""
    seen: Dict[Any, int] = {}
    for _, m in masks:
        for layer, unit in zip(*np.nonzero(m.mask)):
            key = (m.site, int(layer), int(unit))
            seen[key] = seen.get(key, 0) + 1
    shared = [{"site": s, "layer": l, "unit": u, "masks": n} for (s, l, u), n in sorted(seen.items()) if n > 1]
    return {"n_units": len(seen), "shared_units": shared}


@app.command()
@errors
def check(
    model_arg: ModelArg = None,
    model: Model = None,
    rpc: Rpc = None,
    as_json: JsonOut = False,
) -> None:
    """Load a model, probe its graph, and say which sites can be read and steered (and why not), and where they run."""
    from sadi_cpp.llama.check import report

    hook = load_model(one_model(model_arg, model), 256, None, rpc)
    info = report(hook)
    if as_json:
        out.print_json(json.dumps(info))
        return
    s = info["shape"]
    out.print(f"model: {info['model']}", highlight=False, soft_wrap=True)
    experts = f", n_expert {s['n_expert']}, n_ff_exp {s['n_ff_exp']}" if s["n_expert"] else ""
    out.print(f"architecture {info['arch']}: n_layer {s['n_layer']}, n_head {s['n_head']}, head_dim {s['head_dim']}, "
              f"n_ff {s['n_ff']}, n_embd {s['n_embd']}{experts}, n_vocab {info['n_vocab']}", highlight=False, soft_wrap=True)
    for site, st in info["sites"].items():
        out.print(f"  {site:<8} " + (f"ok: {st['node']}" if st["ok"] else f"no: {st['problem']}"), highlight=False, soft_wrap=True)
    if rpc is not None:
        for site, st in info["sites"].items():
            if st["ok"]:
                where = ", ".join(f"layers {d['first']}-{d['last']} on {d['device']}" for d in st["devices"])
                out.print(f"  {site:<8} {plain(where)}", highlight=False, soft_wrap=True)
