"""Commands that measure: eval (unsteered against steered on the same items) and tune (grid search)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import typer
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

from sadi_cpp.cli.common import (
    Rpc,     JsonOut, Model, NCtx, NoCache, Norm, Positions, Quiet, Site, Threads, answers_line, app, choice_names, constant_warning,
    err, errors, fitted_gate, floats, interval, ints, load_masks, load_model, note_kept, out, progress_bar, steering_of,
)
from sadi_cpp.errors import BadInputError
from sadi_cpp.files import check_output


@app.command("eval")
@errors
def eval_cmd(
    data: Annotated[Path, typer.Argument(help="Multiple-choice JSONL {prompt, choices, label}.", show_default=False)],
    model: Model = None,
    mask: Annotated[Optional[List[Path]], typer.Option("--mask", help="Mask sidecar (methods sadi, fixed, random); repeat it to evaluate several masks composed (sadi).")] = None,
    cvec: Annotated[Optional[Path], typer.Option("--cvec", help="llama.cpp control vector (method caa).")] = None,
    method: Annotated[str, typer.Option("--method", help="sadi | fixed (add the mean difference) | random (K random units) | caa.")] = "sadi",
    delta: Annotated[Optional[List[float]], typer.Option("--delta", help="sadi/random: delta (default: the mask's); with several masks, one per --mask.")] = None,
    weighting: Annotated[str, typer.Option("--weighting", help="sadi: uniform, or mean-diff (delta scaled by each unit's |mean difference| over the strongest's).")] = "uniform",
    alpha: Annotated[Optional[float], typer.Option("--alpha", help="fixed/caa: scale of the added vector (default: fixed, the scale tune chose on dev; caa, 1: the vector as stored).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Another K from the mask's table.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --method random.")] = 0,
    gate: Annotated[Optional[Path], typer.Option("--gate", help="sadi: gate sidecar from build-gate; each item is steered only if the gate fires on its prompt.")] = None,
    positions: Positions = "last",
    norm: Norm = False,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Use the first N items only.")] = None,
    n_ctx: NCtx = 1024,
    threads: Threads = None,
    rpc: Rpc = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Accuracy unsteered and steered on the same items, the paired difference with a 95% interval."""
    from sadi_cpp.data.mcdata import read_mc
    from sadi_cpp.evaluation.evaluate import evaluate
    from sadi_cpp.masks.gate_file import load_gate
    from sadi_cpp.positions import check_gated, check_policy

    check_gated(check_policy(positions), gate is not None)
    check_method(method, mask, cvec, delta, alpha)
    if gate is not None and method != "sadi":
        raise BadInputError("--gate gates a SADI steering (--method sadi)")
    parts = load_masks(mask, delta, top_k, weighting) if mask else []
    gated = load_gate(gate) if gate is not None else None
    items = read_mc(data, limit)
    hook = load_model(model, n_ctx, threads, rpc)
    config, info = from_files(hook, method, mask, parts, cvec, alpha, seed, weighting, gated)
    if gated is not None:
        info["gate"] = {"file": str(gate), "layer": gated.layer, "threshold": gated.threshold}
    with progress_bar("items", len(items), quiet, plain=as_json) as step:
        result = evaluate(hook, items, config, positions=positions, normalize=norm, progress=step)
    report = dict(info, data=str(data), positions=positions, normalize=norm, **result.as_dict())
    if as_json:
        out.print_json(json.dumps(report))
        return
    table = Table(title=f"{len(items)} items, {info['method']}, positions {positions}")
    for col in ("", "accuracy", "95% interval"):
        table.add_column(col, justify="right")
    table.add_row("unsteered", f"{result.base_acc:.3f}", interval(result.base_ci))
    table.add_row("steered", f"{result.acc:.3f}", interval(result.ci))
    table.add_row("difference", f"{result.diff:+.3f}", interval(result.diff_ci))
    out.print(table)
    if result.gate_fired is not None:
        out.print(f"gate fired on {result.gate_fired} of {len(items)} items (the others were scored unsteered)", highlight=False)
    verdict = "outside the noise" if result.significant else "within the noise (the interval holds 0)"
    out.print(f"answers gained {result.gained} (wrong to right), lost {result.lost} (right to wrong); "
              f"the difference is {verdict}", highlight=False)
    names = choice_names(items)
    out.print(answers_line("answers unsteered", result.base_answers, names) + "; " +
              answers_line("steered", result.answers, names), highlight=False, soft_wrap=True)
    if result.base_answers.constant:
        out.print(constant_warning(result.base_answers, names, len(items)), highlight=False, soft_wrap=True)
    if info.get("tuned_improves") is False:
        out.print("note: tune marked this mask \"improves\": false: on its dev items no setting beat the baseline "
                  "outside the noise once the pick was accounted for (sadi-cpp inspect shows the record)", soft_wrap=True)


@app.command()
@errors
def tune(
    train: Annotated[Path, typer.Argument(help="Pairs or multiple-choice JSONL: the statistics.", show_default=False)],
    dev: Annotated[Path, typer.Argument(help="Multiple-choice JSONL: the items each cell is scored on.", show_default=False)],
    model: Model = None,
    site: Site = "head",
    method: Annotated[str, typer.Option("--method", help="sadi | fixed | random | caa (caa: rows are layers).")] = "sadi",
    k_grid: Annotated[Optional[str], typer.Option("--k-grid", help="Rows: K values (caa: layers), e.g. 1,3,5,10. Default per site from the paper's ranges.")] = None,
    delta_grid: Annotated[Optional[str], typer.Option("--delta-grid", help="Columns: delta (fixed/caa: scale), e.g. 4,9,19,39.")] = None,
    rank_abs: Annotated[bool, typer.Option("--abs", help="Rank units by |mean difference|.")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of --method random.")] = 0,
    with_mask: Annotated[Optional[List[Path]], typer.Option("--with-mask", help="sadi: a mask every cell is composed with (repeatable); the baseline is then that steering alone.")] = None,
    with_delta: Annotated[Optional[List[float]], typer.Option("--with-delta", help="The delta of each --with-mask, in order (default: the mask's).")] = None,
    gate: Annotated[Optional[Path], typer.Option("--gate", help="sadi: gate sidecar; every cell steers only the items the gate fires on.")] = None,
    positions: Positions = "last",
    norm: Norm = False,
    limit_train: Annotated[Optional[int], typer.Option("--limit-train", help="Use the first N training lines' pairs.")] = None,
    limit_dev: Annotated[Optional[int], typer.Option("--limit-dev", help="Use the first N dev items.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="sadi: mask sidecar (default beside the model); caa: control vector. Not written for fixed/random.")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write the grid as a heatmap (PNG).")] = None,
    no_cache: NoCache = False,
    n_ctx: NCtx = 1024,
    threads: Threads = None,
    rpc: Rpc = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Grid-search K and delta on DEV from statistics built once on TRAIN; write the best into the sidecar."""
    from sadi_cpp.data.mcdata import read_mc
    from sadi_cpp.data.pairs import file_sha256, read_pairs
    from sadi_cpp.evaluation.tune import check_grid, save_tuned, tune_fixed_baseline
    from sadi_cpp.evaluation.tune import tune as run_tune
    from sadi_cpp.masks.stats_cache import gather
    from sadi_cpp.positions import check_gated, check_policy
    from sadi_cpp.sites import check_site

    check_site(site)
    check_gated(check_policy(positions), gate is not None)
    companions, gated = _tune_checks(method, output, plot, with_mask, with_delta, gate)
    rows, cols = ints(k_grid, "--k-grid"), floats(delta_grid, "--delta-grid")
    pairs = read_pairs(train)
    if limit_train is not None:
        pairs = pairs.first_lines(limit_train)
    items = read_mc(dev, limit_dev)
    rank_by = "abs" if rank_abs else "signed"
    hook = load_model(model, n_ctx, threads, rpc)
    rows, cols = check_grid(method, rows, cols, hook.shape, site)  # against the model, before any decode
    compose_with = steering_of(companions, hook, "uniform") if companions else None
    fitted_gate(gated, hook)
    with progress_bar("pairs", len(pairs), quiet, plain=as_json) as step:
        contrast, cache, reused = gather(hook, pairs, ("residual",) if method == "caa" else (site,), progress=step,
                                         use_cache=not no_cache)
    if cache is not None:
        note_kept(f"the statistics, in {cache} (a tune with the same model, pairs and sites reuses them)")
        if reused and not quiet:
            err.print(f"statistics reused from {cache} (no pair decoded; --no-cache recomputes them)", highlight=False, soft_wrap=True)
    with progress_bar("items", len(items), quiet, plain=as_json) as step:
        result = run_tune(hook, contrast, items, method, site, rows, cols, rank_by, norm, positions, seed, progress=step,
                          compose_with=compose_with, gate=gated)
    report = dict(result.as_dict(), train=str(train), dev=str(dev), n_pairs=contrast.n_used,
                  statistics={"cache": None if cache is None else str(cache), "reused": reused})
    report.update(_extras_report(with_mask, companions, gate, gated))
    if method == "sadi":  # the fixed baseline at its best on the same units, for eval's default
        with progress_bar("items", len(items), quiet, plain=as_json, label="fixed baseline: items") as step:
            report["fixed"] = tune_fixed_baseline(hook, contrast, result, items, rank_by, progress=step)
    written = save_tuned(hook, contrast, result, dict(report, dev_sha256=file_sha256(dev)), train, output, rank_by)
    if written is not None:
        report["written"] = str(written)
    if plot is not None:
        from sadi_cpp.plot import plot_grid

        report["plot"] = str(plot_grid(result, plot))
    if as_json:
        out.print_json(json.dumps(report))
        return
    _print_tune(result, report, items, written)


def _tune_checks(method: str, output: Optional[Path], plot: Optional[Path], with_mask: Optional[List[Path]],
                 with_delta: Optional[List[float]], gate: Optional[Path]) -> Tuple[List[Tuple[Any, float]], Any]:
    """tune's options checked before the model loads (refused before the minutes of work, not
    after); returns the --with-mask masks with their deltas and the --gate."""
    from sadi_cpp.evaluation.interventions import METHODS
    from sadi_cpp.masks.gate_file import load_gate

    if method not in METHODS:
        raise BadInputError(f"unknown method '{method}': use one of {', '.join(METHODS)}", field="method")
    if output is not None and method in ("fixed", "random"):
        raise BadInputError(f"--method {method} is an ablation: tune prints its grid but writes no file (drop -o)")
    for target, what in ((output, "output"), (plot, "plot")):
        if target is not None:
            check_output(target, what)
    if (with_mask or gate is not None) and method != "sadi":
        raise BadInputError("--with-mask and --gate tune a SADI mask (--method sadi)")
    if with_delta and not with_mask:
        raise BadInputError("--with-delta gives the delta of a --with-mask")
    return (load_masks(with_mask, with_delta, None, "uniform") if with_mask else []), (load_gate(gate) if gate is not None else None)


def _extras_report(with_mask: Optional[List[Path]], companions: List[Tuple[Any, float]], gate: Optional[Path], gated: Any) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if companions:
        out["composed_with"] = [{"mask": str(p), "site": m.site, "top_k": m.top_k, "delta": d}
                                for p, (m, d) in zip(with_mask or [], companions)]
    if gated is not None:
        out["gate"] = {"file": str(gate), "layer": gated.layer, "threshold": gated.threshold}
    return out


def _print_tune(result: Any, report: Dict[str, Any], items: Any, written: Optional[Path]) -> None:
    """tune's table, the best cell, the answer spread, the held-out check and the file written."""
    method, site = result.method, result.site
    d = result.as_dict()
    if report.get("composed_with"):
        out.print("every cell composed with " + ", ".join(f"{c['mask']} (delta {c['delta']:g})" for c in report["composed_with"])
                  + "; the baseline is that steering alone", highlight=False, soft_wrap=True)
    if report.get("gate"):
        out.print(f"every cell gated by {report['gate']['file']}: items the gate does not fire on are scored unsteered",
                  highlight=False, soft_wrap=True)
    table = Table(title=f"{method} ({site}) dev accuracy, {len(items)} items; baseline {result.baseline:.3f}")
    table.add_column(f"{d['rows']} \\ {d['cols']}", justify="right")
    for c in result.cols:
        table.add_column(f"{c:g}", justify="right")
    for r, row in zip(result.rows, result.accuracy):
        table.add_row(str(r), *[Text(f"{a:.3f}", style="bold" if (r, c) == result.best else "") for c, a in zip(result.cols, row)])
    out.print(table)
    best_row, best_col = result.best
    names = choice_names(items)
    check = result.check
    held = check.held_out
    out.print(f"best: {d['rows']} {best_row}, {d['cols']} {best_col:g}, dev accuracy {result.best_accuracy:.3f} "
              f"(baseline {result.baseline:.3f})", highlight=False)
    out.print(answers_line("answers baseline", result.baseline_answers, names) + "; " +
              answers_line("best cell", result.best_answers, names), highlight=False, soft_wrap=True)
    if result.baseline_answers.constant:
        out.print(constant_warning(result.baseline_answers, names, len(items)), highlight=False, soft_wrap=True)
    where = (f"a cell picked on half of dev and scored on the other half, both ways: {held.acc:.3f} against the "
             f"baseline's {held.base_acc:.3f}, difference {held.diff:+.3f} {interval(held.diff_ci)}")
    if check.improves:
        out.print(f"held-out check: {where}; the gain holds on items the pick did not see", highlight=False, soft_wrap=True)
    else:
        out.print(f"held-out check: {where}; NO cell beats the baseline outside the noise once the pick among "
                  f"{check.n_cells} cells is accounted for: the best cell is not an improvement", highlight=False, soft_wrap=True)
    if "fixed" in report:
        fx = report["fixed"]
        out.print(f"fixed baseline on the best cell's {fx['top_k']} units: best alpha {fx['alpha']:g}, dev accuracy "
                  f"{fx['best_accuracy']:.3f} (eval --method fixed uses this alpha)", highlight=False)
    if written is not None:
        mark = "" if check.improves else " (marked \"improves\": false in sadi.tuned)"
        out.print(f"written to {written}{mark}", highlight=False, soft_wrap=True)


def check_method(method: str, mask: Optional[List[Path]], cvec: Optional[Path], delta: Optional[List[float]],
                 alpha: Optional[float]) -> None:
    """eval's choice of what to compare, checked before the model loads."""
    from sadi_cpp.evaluation.interventions import METHODS

    if method not in METHODS:
        raise BadInputError(f"unknown method '{method}': use one of {', '.join(METHODS)}", field="method")
    if (not mask) == (cvec is None):
        raise BadInputError("give exactly one of --mask (SADI, fixed, random; repeatable for sadi) or --cvec (CAA control vector)")
    if mask and len(mask) > 1 and method != "sadi":
        raise BadInputError(f"--method {method} takes one mask; several masks are evaluated composed, as sadi")
    scales_delta = method in ("sadi", "random") and cvec is None
    if (delta and not scales_delta) or (alpha is not None and scales_delta):
        raise BadInputError(f"--method {'caa' if cvec is not None else method} takes "
                            f"{'--delta' if scales_delta else '--alpha (the scale of the added vector)'}")
    if cvec is not None and method not in ("sadi", "caa"):
        raise BadInputError(f"--method {method} needs --mask; a control vector is evaluated as caa")
    if mask and method == "caa":
        raise BadInputError("--method caa needs --cvec (a control vector); a mask is evaluated as sadi, fixed or random")


def from_files(hook: Any, method: str, paths: Optional[List[Path]], parts: List[Tuple[Any, float]], cvec_path: Optional[Path],
               alpha: Optional[float], seed: int, weighting: str = "uniform", gate: Any = None) -> Tuple[Any, Dict[str, Any]]:
    """The steering ``eval`` compares with the baseline: ``method`` on mask sidecars (sadi: one, or
    several composed; fixed, random: one) or a control vector (caa). ``parts``: each mask with its
    delta (load_masks). ``alpha`` scales the added vector of fixed (default: the scale tune chose
    for it on the same dev items, kept in the mask's ``sadi.tuned`` record) and caa (default 1: the
    vector as stored; tune --method caa stores it with its tuned scale). Returns it with a
    description for reports."""
    from sadi_cpp.evaluation.interventions import FIXED_ALPHAS, caa, fixed, random_units
    from sadi_cpp.masks.cvec import read_cvec

    if cvec_path is not None:
        alpha = 1.0 if alpha is None else alpha
        dirs = read_cvec(cvec_path, hook.shape.n_layer, hook.shape.n_embd)
        return caa(hook.shape, dirs, alpha), {"method": "caa", "cvec": str(cvec_path), "alpha": alpha}
    assert paths
    m, d = parts[0]
    info: Dict[str, Any] = {"method": method, "mask": str(paths[0]), "site": m.site, "top_k": m.top_k,
                            "tuned_improves": m.tuned_record.improves if m.tuned_record else None}
    if method == "sadi":
        steering = steering_of(parts, hook, weighting, gate)
        if len(parts) > 1:
            info["masks"] = [{"mask": str(p), "site": mm.site, "top_k": mm.top_k, "delta": dd} for p, (mm, dd) in zip(paths, parts)]
        return steering, dict(info, delta=d, weighting=weighting)
    note = m.check_fits(hook)
    if note:
        err.print(f"note: {note}", soft_wrap=True)
    if method == "random":
        steering = random_units(hook.shape, m.site, m.top_k, d, seed=seed)
        units = np.argwhere(steering.mask[m.site]).tolist()
        return steering, dict(info, delta=d, seed=seed, units=[{"layer": int(l), "unit": int(u)} for l, u in units])
    values = m.value_table()
    if values is None:
        raise BadInputError(f"{paths[0]}: this head mask stores no per-value differences (made by an older sadi-cpp); rebuild it")
    if alpha is None:
        alpha = m.tuned_record.fixed_alpha if m.tuned_record else None
        if alpha is None:
            raise BadInputError(f"{paths[0]}: no tuned scale for the fixed baseline in this mask (tune writes one); "
                                f"give --alpha, e.g. one of tune's grid {', '.join(f'{a:g}' for a in FIXED_ALPHAS)}")
    return fixed(hook.shape, m.site, m.mask, values, alpha), dict(info, alpha=alpha)
