"""Commands that make files from data: prepare (task files to multiple choice), export-cvec."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from typing_extensions import Annotated

from sadi_cpp.cli.common import Rpc, JsonOut, Model, NCtx, Quiet, Threads, app, errors, ints, load_model, out, progress_bar
from sadi_cpp.errors import BadInputError
from sadi_cpp.files import check_output


@app.command()
@errors
def prepare(
    task: Annotated[str, typer.Argument(help="copa | storycloze | sst2 | boolq | winogrande | mmlu | nli (the paper's formats) | copa-cloze; "
                                             "for generation: triviaqa (prompts), triviaqa-pairs (pairs for build-mask), neutral (sadi-cpp's open prompts)")],
    output: Annotated[Path, typer.Option("--output", "-o", help="JSONL to write.", show_default=False)],
    raw: Annotated[Optional[Path], typer.Argument(help="The task's JSONL file (fields as in its usual release); none for neutral.")] = None,
    start: Annotated[int, typer.Option("--start", help="Skip this many rows first.")] = 0,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Convert at most this many rows.")] = None,
    split: Annotated[str, typer.Option("--split", help="neutral: dev or test (no prompt in common).")] = "dev",
    seed: Annotated[int, typer.Option("--seed", help="triviaqa-pairs: which other question's answer is the wrong one.")] = 0,
) -> None:
    """Turn a task file into multiple-choice JSONL with the paper's prompt format, or into prompts / pairs for generation."""
    from sadi_cpp.data.mcdata import write_jsonl
    from sadi_cpp.data.prompts import GEN_TASKS, convert_generation
    from sadi_cpp.data.tasks import convert_file

    check_output(output, "data file")
    if task in GEN_TASKS:
        rows = convert_generation(task, raw, start, limit, split, seed)
    elif raw is None:
        raise BadInputError(f"prepare {task} needs the task's JSONL file (RAW)", field="raw")
    else:
        rows = convert_file(task, raw, start, limit)
    write_jsonl(rows, output)
    what = "pairs" if task == "triviaqa-pairs" else "prompts" if task in GEN_TASKS else "items"
    out.print(f"{len(rows)} {task} {what} written to {output}", highlight=False, soft_wrap=True)


@app.command("export-cvec")
@errors
def export_cvec(
    pairs: Annotated[Path, typer.Argument(help="Pairs or multiple-choice JSONL.")],
    model: Model = None,
    layers: Annotated[Optional[str], typer.Option("--layers", help="Layers to steer, e.g. 6 or 4,6,8 (default: the middle layer). Not 0.")] = None,
    scale: Annotated[float, typer.Option("--scale", help="Multiply the mean residual difference by this.")] = 1.0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Control-vector GGUF (default: beside the model, <model>.<pairs>.cvec.gguf).")] = None,
    n_ctx: NCtx = 512,
    threads: Threads = None,
    rpc: Rpc = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Export the mean residual-stream difference (CAA) as a llama.cpp control vector (--control-vector)."""
    from sadi_cpp.data.pairs import read_pairs
    from sadi_cpp.masks.build import directions_from_pairs
    from sadi_cpp.masks.cvec import default_cvec_path, write_cvec

    if output is not None:
        check_output(output, "control vector")
    items = read_pairs(pairs)
    chosen = ints(layers, "--layers")
    hook = load_model(model, n_ctx, threads, rpc)
    with progress_bar("pairs", len(items), quiet, plain=as_json) as step:
        dirs, chosen, n_used = directions_from_pairs(hook, items, chosen, scale, progress=step)
    target = write_cvec(dirs, output or default_cvec_path(hook.model_path, pairs), hook.shape.arch)
    report = {"written": str(target), "layers": chosen, "scale": scale, "pairs_used": n_used,
              "norms": {str(il): float(np.linalg.norm(dirs[il])) for il in chosen}}
    if as_json:
        out.print_json(json.dumps(report))
    elif not quiet:
        out.print(f"control vector for layers {chosen} (scale {scale:g}, {n_used} pairs) written to {target}",
                  highlight=False, soft_wrap=True)
