"""CLI commands around evaluation: prepare (task files to multiple choice), eval, tune, export-cvec.
Parses and prints only; the work is in tasks, scoring, stats, tune and cvec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import typer
from rich.table import Table
from typing_extensions import Annotated

from sadi_cpp.cli import JsonOut, NCtx, Site, Threads, _errors, _load, app, out, progress_bar
from sadi_cpp.errors import BadInputError

Positions = Annotated[str, typer.Option("--positions", help="Rows steered: last (the paper's: last prompt token) | last+generated | all.")]
Norm = Annotated[bool, typer.Option("--norm", help="Rank choices by mean log-probability per token instead of the sum.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _split_two(args: List[str], what: str) -> Tuple[Optional[str], List[str]]:
    """`[MODEL] A [B]`: the model is the first argument when one more than needed is given."""
    n = len(what.split())
    if len(args) == n:
        return None, args
    if len(args) == n + 1:
        return args[0], args[1:]
    raise BadInputError(f"expected [MODEL] {what}, got {len(args)} arguments")


def _floats(text: Optional[str], what: str) -> Optional[List[float]]:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInputError(f"{what} must be comma-separated numbers, got '{text}'") from None


def _ints(text: Optional[str], what: str) -> Optional[List[int]]:
    values = _floats(text, what)
    if values is not None and any(v != int(v) for v in values):
        raise BadInputError(f"{what} must be comma-separated integers, got '{text}'")
    return None if values is None else [int(v) for v in values]


def _read_items(path: Path, limit: Optional[int]) -> list:
    from sadi_cpp.mcdata import read_mc

    items = read_mc(path)
    if limit is not None:
        if limit < 1:
            raise BadInputError(f"--limit must be >= 1, got {limit}")
        items = items[:limit]
    return items


def _ci(lo_hi: Tuple[float, float]) -> str:
    return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"


@app.command()
@_errors
def prepare(
    task: Annotated[str, typer.Argument(help="copa | storycloze | sst2 | boolq | winogrande | mmlu | nli (the paper's formats) | copa-cloze")],
    raw: Annotated[Path, typer.Argument(help="The task's JSONL file (fields as in its usual release).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Multiple-choice JSONL to write.")],
    start: Annotated[int, typer.Option("--start", help="Skip this many rows first.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Convert at most this many rows.")] = None,
) -> None:
    """Turn a task file into multiple-choice JSONL with the paper's prompt format."""
    from sadi_cpp.mcdata import write_jsonl
    from sadi_cpp.tasks import convert_file

    rows = convert_file(task, raw, start, limit)
    write_jsonl(rows, output)
    out.print(f"{len(rows)} {task} items written to {output}", highlight=False, soft_wrap=True)


def _intervention(hook: Any, method: str, mask_path: Optional[Path], cvec_path: Optional[Path], delta: Optional[float],
                  top_k: Optional[int], seed: int) -> Tuple[Any, dict]:
    from sadi_cpp import interventions as iv
    from sadi_cpp.mask import SadiMask

    if (mask_path is None) == (cvec_path is None):
        raise BadInputError("give exactly one of --mask (SADI, fixed, random) or --cvec (CAA control vector)")
    if cvec_path is not None:
        from sadi_cpp.cvec import read_cvec

        if method not in ("sadi", "caa"):
            raise BadInputError(f"--method {method} needs --mask; a control vector is evaluated as caa")
        alpha = 1.0 if delta is None else delta
        dirs = read_cvec(cvec_path, hook.shape["n_layer"], hook.shape["n_embd"])
        return iv.caa(hook, dirs, alpha), {"method": "caa", "cvec": str(cvec_path), "alpha": alpha}
    m = SadiMask.load(mask_path)
    m.check_fits(hook)
    if top_k is not None:
        m = m.with_top_k(top_k)
    info = {"method": method, "mask": str(mask_path), "site": m.site, "top_k": m.top_k}
    if method == "sadi":
        d = m.delta if delta is None else delta
        return iv.sadi(m.units(), d), dict(info, delta=d)
    if method == "random":
        d = m.delta if delta is None else delta
        return iv.random_units(hook, m.site, m.top_k, d, seed=seed), dict(info, delta=d, seed=seed)
    if method == "fixed":
        values = m.value_table()
        if values is None:
            raise BadInputError(f"{mask_path}: this head mask stores no per-value differences (made by an older sadi-cpp); rebuild it")
        alpha = 1.0 if delta is None else delta
        return iv.fixed(hook, m.site, m.mask, values, alpha), dict(info, alpha=alpha)
    raise BadInputError(f"unknown method '{method}' with --mask: use sadi, fixed or random")


@app.command("eval")
@_errors
def eval_cmd(
    args: Annotated[List[str], typer.Argument(help="[MODEL] DATA: multiple-choice JSONL {prompt, choices, label}.", show_default=False)],
    mask: Annotated[Optional[Path], typer.Option("--mask", help="Mask sidecar (methods sadi, fixed, random).")] = None,
    cvec: Annotated[Optional[Path], typer.Option("--cvec", help="llama.cpp control vector (method caa).")] = None,
    method: Annotated[str, typer.Option("--method", help="sadi | fixed (add the mean difference) | random (K random units) | caa.")] = "sadi",
    delta: Annotated[Optional[float], typer.Option("--delta", help="sadi/random: delta (default: the mask's); fixed/caa: scale of the added vector (default 1).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Another K from the mask's table.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --method random.")] = 0,
    positions: Positions = "last",
    norm: Norm = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use the first N items only.")] = None,
    n_ctx: NCtx = 1024,
    threads: Threads = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Accuracy unsteered and steered on the same items, the paired difference with a 95% interval."""
    from sadi_cpp.evaluate import evaluate
    from sadi_cpp.positions import check_policy

    model, (data,) = _split_two(args, "DATA")
    check_policy(positions)
    items = _read_items(Path(data), limit)
    hook = _load(model, n_ctx, threads)
    config, info = _intervention(hook, method, mask, cvec, delta, top_k, seed)
    with progress_bar("items", len(items), quiet or as_json) as step:
        result = evaluate(hook, items, config, positions=positions, normalize=norm, progress=step)
    report = dict(info, data=str(data), positions=positions, normalize=norm, **result.as_dict())
    if as_json:
        out.print_json(json.dumps(report))
        return
    table = Table(title=f"{len(items)} items, {info['method']}, positions {positions}")
    for col in ("", "accuracy", "95% interval"):
        table.add_column(col, justify="right")
    table.add_row("unsteered", f"{result.base_acc:.3f}", _ci(result.base_ci))
    table.add_row("steered", f"{result.acc:.3f}", _ci(result.ci))
    table.add_row("difference", f"{result.diff:+.3f}", _ci(result.diff_ci))
    out.print(table)
    verdict = "outside the noise" if result.significant else "within the noise (the interval holds 0)"
    out.print(f"answers fixed {result.fixed}, broken {result.broken}; the difference is {verdict}", highlight=False)


@app.command()
@_errors
def tune(
    args: Annotated[List[str], typer.Argument(help="[MODEL] TRAIN DEV: pairs or multiple-choice JSONL, and multiple-choice JSONL.", show_default=False)],
    site: Site = "head",
    method: Annotated[str, typer.Option("--method", help="sadi | fixed | random | caa (caa: rows are layers).")] = "sadi",
    k_grid: Annotated[Optional[str], typer.Option("--k-grid", help="Rows: K values (caa: layers), e.g. 1,3,5,10. Default per site from the paper's ranges.")] = None,
    delta_grid: Annotated[Optional[str], typer.Option("--delta-grid", help="Columns: delta (fixed/caa: scale), e.g. 4,9,19,39.")] = None,
    rank_abs: Annotated[bool, typer.Option("--abs", help="Rank units by |mean difference|.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --method random.")] = 0,
    positions: Positions = "last",
    norm: Norm = False,
    limit_train: Annotated[Optional[int], typer.Option("--limit-train", help="Use the first N training lines' pairs.")] = None,
    limit_dev: Annotated[Optional[int], typer.Option("--limit-dev", help="Use the first N dev items.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="sadi: mask sidecar (default beside the model); caa: control vector. Not written for fixed/random.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the grid as a heatmap (PNG).")] = None,
    n_ctx: NCtx = 1024,
    threads: Threads = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Grid-search K and delta on DEV from statistics built once on TRAIN; write the best into the sidecar."""
    from sadi_cpp.contrast import mean_differences
    from sadi_cpp.hook import check_site
    from sadi_cpp.interventions import METHODS
    from sadi_cpp.mask import default_mask_path, mask_from_contrast
    from sadi_cpp.pairs import file_sha256, first_lines, read_pairs
    from sadi_cpp.positions import check_policy
    from sadi_cpp.tune import tune as run_tune

    model, (train, dev) = _split_two(args, "TRAIN DEV")
    check_site(site)
    check_policy(positions)
    if method not in METHODS:
        raise BadInputError(f"unknown method '{method}': use one of {', '.join(METHODS)}")
    if output is not None and method in ("fixed", "random"):
        raise BadInputError(f"--method {method} is an ablation: tune prints its grid but writes no file (drop -o)")
    for target in (output, plot):  # refuse before the minutes of work, not after
        if target is not None and not target.parent.is_dir():
            raise BadInputError(f"{target.parent}: no such folder for {target.name}")
    rows = _ints(k_grid, "--k-grid")
    cols = _floats(delta_grid, "--delta-grid")
    pairs = read_pairs(train)
    if limit_train is not None:
        pairs = first_lines(pairs, limit_train)
    items = _read_items(Path(dev), limit_dev)
    hook = _load(model, n_ctx, threads)
    sites = ("residual",) if method == "caa" else (site,)
    with progress_bar("pairs", len(pairs), quiet or as_json) as step:
        contrast = mean_differences(hook, pairs, sites=sites, progress=step)
    contrast.pairs_sha256 = file_sha256(train)
    with progress_bar("items", len(items), quiet or as_json) as step:
        result = run_tune(hook, contrast, items, method, site, rows, cols, "abs" if rank_abs else "signed", norm,
                          positions, seed, progress=step)
    best_row, best_col = result.best
    report = dict(result.as_dict(), train=str(train), dev=str(dev), n_pairs=contrast.n_used)
    if method == "sadi":
        m = mask_from_contrast(hook, contrast, site, int(best_row), best_col, "abs" if rank_abs else "signed")
        m.positions = positions
        m.tuned = json.dumps(dict(report, dev_sha256=file_sha256(dev)), sort_keys=True)
        target = output or default_mask_path(hook.llm.model_path, train, site)
        m.save(target)
        report["written"] = str(target)
    elif method == "caa":
        from sadi_cpp.cvec import write_cvec
        from sadi_cpp.interventions import one_layer

        target = output or Path(hook.llm.model_path).with_name(f"{Path(hook.llm.model_path).stem}.{Path(train).stem}.caa.gguf")
        write_cvec(best_col * one_layer(contrast.diffs["residual"], int(best_row)), target, hook.shape["arch"])
        report["written"] = str(target)
    if plot is not None:
        from sadi_cpp.plot import plot_grid

        plot_grid(result, plot)
        report["plot"] = str(plot)
    if as_json:
        out.print_json(json.dumps(report))
        return
    d = result.as_dict()
    table = Table(title=f"{method} ({site}) dev accuracy, {len(items)} items; baseline {result.baseline:.3f}")
    table.add_column(f"{d['rows']} \\ {d['cols']}", justify="right")
    for c in result.cols:
        table.add_column(f"{c:g}", justify="right")
    for r, row in zip(result.rows, result.accuracy):
        table.add_row(str(r), *[("[bold]" if (r, c) == result.best else "") + f"{a:.3f}" for c, a in zip(result.cols, row)])
    out.print(table)
    out.print(f"best: {d['rows']} {best_row}, {d['cols']} {best_col:g}, dev accuracy {result.best_accuracy:.3f} "
              f"(baseline {result.baseline:.3f})", highlight=False)
    if "written" in report:
        out.print(f"written to {report['written']}", highlight=False, soft_wrap=True)


@app.command("export-cvec")
@_errors
def export_cvec(
    pairs: Annotated[Path, typer.Argument(help="Pairs or multiple-choice JSONL.")],
    model: Annotated[Optional[str], typer.Argument(help="GGUF model (default: Gemma 3 270M Q4_K_M).")] = None,
    layers: Annotated[Optional[str], typer.Option("--layers", help="Layers to steer, e.g. 6 or 4,6,8 (default: the middle layer). Not 0.")] = None,
    scale: Annotated[float, typer.Option("--scale", help="Multiply the mean residual difference by this.")] = 1.0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Control-vector GGUF (default: beside the model, <model>.<pairs>.cvec.gguf).")] = None,
    n_ctx: NCtx = 512,
    threads: Threads = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Export the mean residual-stream difference (CAA) as a llama.cpp control vector (--control-vector)."""
    from sadi_cpp.contrast import mean_differences
    from sadi_cpp.cvec import write_cvec
    from sadi_cpp.pairs import read_pairs

    items = read_pairs(pairs)
    hook = _load(model, n_ctx, threads)
    n_layer = hook.shape["n_layer"]
    chosen = _ints(layers, "--layers") or [n_layer // 2]
    bad = [il for il in chosen if not 1 <= il < n_layer]
    if bad:
        raise BadInputError(f"--layers {bad} outside 1..{n_layer - 1} (llama.cpp control vectors cannot steer layer 0)")
    with progress_bar("pairs", len(items), quiet or as_json) as step:
        contrast = mean_differences(hook, items, sites=("residual",), progress=step)
    dirs = np.zeros((n_layer, hook.shape["n_embd"]), np.float32)
    dirs[chosen] = scale * contrast.diffs["residual"][chosen]
    target = output or Path(hook.llm.model_path).with_name(f"{Path(hook.llm.model_path).stem}.{pairs.stem}.cvec.gguf")
    write_cvec(dirs, target, hook.shape["arch"])
    report = {"written": str(target), "layers": chosen, "scale": scale, "pairs_used": contrast.n_used,
              "norms": {str(il): float(np.linalg.norm(dirs[il])) for il in chosen}}
    if as_json:
        out.print_json(json.dumps(report))
    elif not quiet:
        out.print(f"control vector for layers {chosen} (scale {scale:g}, {contrast.n_used} pairs) written to {target}",
                  highlight=False, soft_wrap=True)
