"""The sadi-cpp command line: parses, calls the library, prints. Exit codes: 0 ok, 2 bad input, 1 other."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from typing_extensions import Annotated

import sadi_cpp
from sadi_cpp.errors import BadInputError, SadiError

app = typer.Typer(help="SADI activation steering for GGUF models in llama.cpp.", no_args_is_help=True, add_completion=False)
out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sadi-cpp {sadi_cpp.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """SADI activation steering for GGUF models in llama.cpp."""


def _errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One place that turns library errors into a one-line message and the exit code."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BadInputError as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except (SadiError, RuntimeError, OSError, ValueError) as e:
            err.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return run


def _load(model: Optional[str], n_ctx: int, threads: Optional[int]) -> "sadi_cpp.Hook":
    kwargs: dict = {"n_ctx": n_ctx}
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    return sadi_cpp.load(model, **kwargs)


@contextmanager
def progress_bar(what: str, total: int, hidden: bool) -> Iterator[Callable[[int], None]]:
    """A bar on stderr with the rate in ``what``/s; yields the function that advances it."""
    with Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} " + what + "/s"),
        TimeRemainingColumn(), console=err, disable=hidden, transient=False,
    ) as bar:
        task = bar.add_task(what, total=total, rate="-")

        def step(n: int) -> None:
            bar.advance(task, n)
            t = bar.tasks[0]
            if t.elapsed:
                bar.update(task, rate=f"{t.completed / t.elapsed:.1f}")

        yield step


def _split_model(args: List[str], what: str) -> Tuple[Optional[str], str]:
    """`[MODEL] X`: one argument is X, two are MODEL and X."""
    if len(args) == 1:
        return None, args[0]
    if len(args) == 2:
        return args[0], args[1]
    raise BadInputError(f"expected [MODEL] {what}, got {len(args)} arguments")


Site = Annotated[str, typer.Option("--site", help="head (attention heads), neuron (FFN units) or hidden (FFN output elements).")]
NCtx = Annotated[int, typer.Option("--n-ctx", help="Context length of the model.")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: llama.cpp's choice).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


@app.command("build-mask")
@_errors
def build_mask_cmd(
    pairs: Annotated[Path, typer.Argument(help="JSONL pairs: {prompt, positive, negative}, {positive, negative} or multiple-choice {prompt, choices, label} per line.")],
    model: Annotated[Optional[str], typer.Argument(help="GGUF model (default: Gemma 3 270M Q4_K_M).")] = None,
    site: Site = "head",
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Units to keep (default: head 5, neuron 100, hidden 10; paper ranges 1-10, 3-500, 1-20).")] = None,
    rank_abs: Annotated[bool, typer.Option("--abs", help="Rank units by |mean difference| instead of the signed value.")] = False,
    delta: Annotated[Optional[float], typer.Option("--delta", help="Recommended delta stored in the mask (default: head 9, neuron 19, hidden 9).")] = None,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Mask file (default: beside the model, <model>.<pairs>.<site>.sadi.gguf).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on a pair longer than the context instead of skipping it.")] = False,
    sequential: Annotated[bool, typer.Option("--sequential", help="Evaluate each text alone (slower) instead of many pairs per decode.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary.")] = False,
    n_ctx: NCtx = 512,
    threads: Threads = None,
    as_json: JsonOut = False,
) -> None:
    """Build a SADI mask from contrastive pairs (SADI steps 1-2) and save it as a GGUF sidecar."""
    from sadi_cpp.mask import BuildStats, build_mask, default_mask_path
    from sadi_cpp.pairs import file_sha256, read_pairs

    from sadi_cpp.hook import check_site

    check_site(site)
    items = read_pairs(pairs)  # validate the whole file before loading the model
    hook = _load(model, n_ctx, threads)
    target = output or default_mask_path(hook.llm.model_path, pairs, site)
    stats = BuildStats()
    with progress_bar("pairs", len(items), quiet or as_json) as step:
        mask = build_mask(hook, items, site=site, top_k=top_k, rank_by="abs" if rank_abs else "signed",
                          delta=delta, strict=strict, progress=step, stats=stats, batched=not sequential)
    mask.pairs_sha256 = file_sha256(pairs)
    mask.save(target)
    summary = {
        "mask": str(target), "site": site, "top_k": mask.top_k, "delta": mask.delta, "pairs_used": stats.n_used,
        "pairs_skipped": stats.skipped, "seconds": round(stats.seconds, 2),
        "top_units": [{"layer": l, "unit": u, "mean_diff": v} for l, u, v in mask.top_units(10)],
    }
    if as_json:
        out.print_json(json.dumps(summary))
    elif not quiet:
        skipped = ", ".join(f"{n} {why}" for why, n in stats.skipped.items()) or "none"
        out.print(f"pairs used: {stats.n_used}, skipped: {skipped}, {stats.n_used / max(stats.seconds, 1e-9):.1f} pairs/s")
        out.print(_units_table(mask, 10))
        out.print(f"mask written to {target}", soft_wrap=True, highlight=False)


def _units_table(mask: Any, n: int) -> Table:
    table = Table(title=f"top {min(n, mask.top_k)} of {mask.top_k} {mask.site} units")
    for col in ("layer", mask.site, "mean diff"):
        table.add_column(col, justify="right")
    for layer, unit, value in mask.top_units(n):
        table.add_row(str(layer), str(unit), f"{value:+.5f}")
    return table


@app.command()
@_errors
def generate(
    args: Annotated[List[str], typer.Argument(help="[MODEL] PROMPT: the GGUF model is optional (default model).", show_default=False)],
    mask: Annotated[Path, typer.Option("--mask", help="Mask sidecar from build-mask.")],
    delta: Annotated[Optional[float], typer.Option("--delta", help="Steering strength (default: the mask's recommended delta).")] = None,
    top_k: Annotated[Optional[int], typer.Option("--top-k", help="Use another K from the mask's stored table.")] = None,
    positions: Annotated[Optional[str], typer.Option("--positions", help="last | last+generated | all (default: the mask's).")] = None,
    chat: Annotated[bool, typer.Option("--chat", help="Wrap the prompt in the model's chat template (tokenizer.chat_template).")] = False,
    chat_format: Annotated[Optional[str], typer.Option("--chat-format", help="Use this llama-cpp-python chat format instead (e.g. gemma, chatml); implies --chat.")] = None,
    compare: Annotated[bool, typer.Option("--compare", help="Print the unsteered and the steered output side by side.")] = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-n", help="Tokens to generate.")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", "-t", help="Sampling temperature (0: greedy).")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p", help="Nucleus sampling.")] = 0.95,
    seed: Annotated[int, typer.Option("--seed", help="Sampling seed.")] = 0,
    n_ctx: NCtx = 1024,
    threads: Threads = None,
    as_json: JsonOut = False,
) -> None:
    """Generate text with the model steered by a SADI mask (streams tokens)."""
    from sadi_cpp.mask import SadiMask
    from sadi_cpp.positions import check_policy

    model, prompt = _split_model(args, "PROMPT")
    m = SadiMask.load(mask)
    if top_k is not None:
        m = m.with_top_k(top_k)
    policy = check_policy(positions or m.positions)
    hook = _load(model, n_ctx, threads)
    m.check_fits(hook)
    chat = _set_chat_format(hook, chat, chat_format)
    d = m.delta if delta is None else delta
    stream = not (compare or as_json)

    def run() -> str:
        hook.llm.set_seed(seed)
        sampling = dict(max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed, stream=True)
        if chat:
            chunks = (c["choices"][0]["delta"].get("content", "") for c in hook.llm.create_chat_completion(
                messages=[{"role": "user", "content": prompt}], **sampling))
        else:
            chunks = (c["choices"][0]["text"] for c in hook.llm.create_completion(prompt, **sampling))
        text = []
        for piece in chunks:
            text.append(piece)
            if stream:
                sys.stdout.write(piece)
                sys.stdout.flush()
        if stream:
            sys.stdout.write("\n")
        return "".join(text)

    unsteered = run() if compare or as_json else None
    with hook.steering(m, delta=d, positions=policy):
        steered = run()
    if as_json:
        out.print_json(json.dumps({"prompt": prompt, "delta": d, "site": m.site, "top_k": m.top_k,
                                   "positions": policy, "unsteered": unsteered, "steered": steered}))
    elif compare:
        table = Table(show_lines=True)
        table.add_column("unsteered")
        table.add_column(f"steered ({m.site}, K={m.top_k}, delta={d:g})")
        table.add_row(unsteered, steered)
        out.print(table)


def _set_chat_format(hook: "sadi_cpp.Hook", chat: bool, chat_format: Optional[str]) -> bool:
    """Decide how --chat wraps the prompt; a model without a template needs an explicit format."""
    from llama_cpp.llama_chat_format import LlamaChatCompletionHandlerRegistry

    if chat_format is not None:
        known = sorted(LlamaChatCompletionHandlerRegistry()._chat_handlers)
        if chat_format not in known:
            raise BadInputError(f"unknown --chat-format '{chat_format}': use one of {', '.join(known)}")
        hook.llm.chat_handler = None
        hook.llm.chat_format = chat_format
        return True
    if chat and "tokenizer.chat_template" not in hook.llm.metadata:
        raise BadInputError(
            f"{hook.llm.model_path}: this model has no chat template (tokenizer.chat_template) for --chat; "
            "drop --chat, or name a format with --chat-format (e.g. gemma, chatml)"
        )
    return chat


@app.command()
@_errors
def inspect(
    mask: Annotated[Path, typer.Argument(help="Mask sidecar (.sadi.gguf).")],
    top: Annotated[int, typer.Option("--top", help="How many units to list.")] = 10,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write a layer x unit heatmap of mean differences (PNG).")] = None,
    as_json: JsonOut = False,
) -> None:
    """Show a mask: its metadata, the model it fits, its top units."""
    from sadi_cpp.mask import SadiMask

    m = SadiMask.load(mask)
    info = {
        "file": str(mask), "site": m.site, "top_k": m.top_k, "delta": m.delta, "positions": m.positions,
        "rank_by": m.rank_by, "n_pairs": m.n_pairs, "pairs_sha256": m.pairs_sha256, "tool_version": m.tool_version,
        "model": m.model, "top_units": [{"layer": l, "unit": u, "mean_diff": v} for l, u, v in m.top_units(top)],
    }
    if plot is not None:
        from sadi_cpp.plot import plot_mask

        plot_mask(m, plot)
        info["plot"] = str(plot)
    if as_json:
        out.print_json(json.dumps(info))
        return
    for key in ("site", "top_k", "delta", "positions", "rank_by", "n_pairs", "pairs_sha256", "tool_version"):
        out.print(f"{key}: {info[key]}", highlight=False)
    mdl = m.model
    out.print(f"model: {mdl['arch']}, n_layer {mdl['n_layer']}, n_embd {mdl['n_embd']}, n_head {mdl['n_head']}, "
              f"head_dim {mdl['head_dim']}, n_ff {mdl['n_ff']}, n_vocab {mdl['n_vocab']}, tensors {mdl['tensors_sha256'][:16]}",
              highlight=False)
    out.print(_units_table(m, top))
    if plot is not None:
        out.print(f"heatmap written to {plot}")


from sadi_cpp import cli_eval  # noqa: E402,F401  (registers prepare, eval, tune and export-cvec)
