"""Commands around gates: build-gate, tune-gate (inspect shows gates too)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional

import typer
from typing_extensions import Annotated

from sadi_cpp.cli.common import (
    Rpc,     JsonOut, Model, ModelArg, NCtx, Threads, app, errors, fitted_gate, load_model, one_model, out, progress_bar, threshold_line,
)
from sadi_cpp.files import check_output

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")]


@app.command("build-gate")
@errors
def build_gate_cmd(
    pairs: Annotated[Path, typer.Argument(help="JSONL pairs: the positive text of each should make the gate fire, the negative text not (any schema build-mask reads).")],
    model_arg: ModelArg = None,
    model: Model = None,
    layer: Annotated[Optional[int], typer.Option("--layer", help="Layer whose residual stream the gate reads (default: the lowest layer that separates the pairs within 0.02 AUC of the best).")] = None,
    dev: Annotated[Optional[Path], typer.Option("--dev", help="Pairs to choose the threshold on (default: held-out halves of PAIRS).")] = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="Held-out pairs to report precision and recall on.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Gate file (default: beside the model, <model>.<pairs>.gate.sadi.gguf).")] = None,
    quiet: Quiet = False,
    n_ctx: NCtx = 512,
    threads: Threads = None,
    rpc: Rpc = None,
    as_json: JsonOut = False,
) -> None:
    """Build a gate (a condition that decides per input whether a steering acts) and save it as a sidecar."""
    from sadi_cpp.data.pairs import read_pairs
    from sadi_cpp.masks.gate_build import build_gate
    from sadi_cpp.masks.gate_file import default_gate_path

    model = one_model(model_arg, model)
    if output is not None:
        check_output(output, "gate file")
    items = read_pairs(pairs)
    dev_items = read_pairs(dev) if dev is not None else None
    test_items = read_pairs(test) if test is not None else None
    hook = load_model(model, n_ctx, threads, rpc)
    target = check_output(output or default_gate_path(hook.model_path, pairs), "gate file")
    with progress_bar("texts", 2 * (len(items) + len(dev_items or ())), quiet, plain=as_json) as step:
        gate, report = build_gate(hook, items, layer=layer, dev=dev_items, progress=step)
    aucs = " ".join(f"{i}:{a:.2f}" for i, a in enumerate(report["layer_auc"]))
    _finish(hook, gate, report, test_items, target, quiet, as_json,
            [f"pairs used: {report['n_pairs']}; held-out AUC per layer: {aucs}",
             f"layer {report['layer']}; " + threshold_line(report["threshold"])])


@app.command("tune-gate")
@errors
def tune_gate_cmd(
    gate_file: Annotated[Path, typer.Argument(help="Gate sidecar from build-gate.")],
    dev: Annotated[Path, typer.Argument(help="Pairs to choose the threshold on: positive texts should fire, negative texts not.")],
    model: Model = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="Held-out pairs to report precision and recall on.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Where to write the tuned gate (default: over GATE_FILE).")] = None,
    quiet: Quiet = False,
    n_ctx: NCtx = 512,
    threads: Threads = None,
    rpc: Rpc = None,
    as_json: JsonOut = False,
) -> None:
    """Choose a gate's threshold on dev pairs (best balanced accuracy) and write it into the gate."""
    from sadi_cpp.data.pairs import read_pairs
    from sadi_cpp.masks.gate_build import tune_threshold
    from sadi_cpp.masks.gate_file import load_gate

    target = check_output(output or gate_file, "gate file")
    gate = load_gate(gate_file)
    dev_items = read_pairs(dev)
    test_items = read_pairs(test) if test is not None else None
    hook = load_model(model, n_ctx, threads, rpc)
    fitted_gate(gate, hook)
    with progress_bar("texts", 2 * len(dev_items), quiet, plain=as_json, label="dev") as step:
        gate, chosen = tune_threshold(hook, gate, dev_items, step)
    _finish(hook, gate, {"threshold": chosen}, test_items, target, quiet, as_json, [threshold_line(chosen)])


def _finish(hook: Any, gate: Any, report: Dict[str, Any], test_items: Any, target: Path, quiet: bool, as_json: bool,
            lines: List[str]) -> None:
    """Measure on the test pairs (if any), write the gate, print the report (``lines`` first)."""
    from sadi_cpp.masks.gate_build import check_gate
    from sadi_cpp.masks.gate_file import save_gate

    if test_items is not None:
        with progress_bar("texts", 2 * len(test_items), quiet, plain=as_json, label="test") as step:
            report["test"] = check_gate(hook, gate, test_items, step)
    save_gate(gate, target)
    report["gate"] = str(target)
    if as_json:
        out.print_json(json.dumps(report))
        return
    if quiet:
        return
    if "test" in report:
        lines.append("test: " + threshold_line(report["test"]))
    for line in lines:
        out.print(line, soft_wrap=True)
    out.print(f"gate written to {target}", soft_wrap=True, highlight=False)
