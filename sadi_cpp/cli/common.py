"""What every command shares: the Typer app, the consoles, the error boundary, model loading, the
progress bar, option types and small option parsers."""

from __future__ import annotations

import json
import re
import signal
import time
import traceback
import typing
from contextlib import contextmanager
from functools import wraps
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

import typer
from typer.models import OptionInfo
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text
from typing_extensions import Annotated

import sadi_cpp
from sadi_cpp.errors import BadInputError, SadiError

# A bug must surface as a plain Python traceback (no rich locals dump); --debug adds one to the
# project's own errors too.
app = typer.Typer(help="SADI activation steering for GGUF models in llama.cpp.", no_args_is_help=True,
                  add_completion=False, pretty_exceptions_enable=False)
# Text from files and requests is data, never markup: rich prints strings as they are, and
# plain() takes control characters (ESC sequences) out of them; styles come as Text objects.
out = Console(markup=False, emoji=False, highlight=False)
err = Console(stderr=True, markup=False, emoji=False, highlight=False)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def plain(value: Any) -> str:
    """``value`` as text with control characters (but newline and tab) shown as \\xNN escapes."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


class _State:
    debug = False
    kept: List[str] = []  # finished work of the running command that survives an interrupt


def note_kept(what: str) -> None:
    """Say what an interrupt (or a lost RPC worker) from now on leaves behind on purpose (e.g.
    cached statistics)."""
    from sadi_cpp.llama.rpc import on_fault

    _State.kept.append(what)
    on_fault(note="kept: " + "; ".join(_State.kept))


def _interrupted(word: str) -> str:
    kept = "; ".join(_State.kept)
    return f"{word}; " + (f"kept: {kept}" if kept else "nothing of the unfinished step was written")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sadi-cpp {sadi_cpp.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Print a traceback with every error.")] = False,
) -> None:
    """SADI activation steering for GGUF models in llama.cpp."""
    _State.debug = debug


class Terminated(BaseException):
    """SIGTERM, raised where the command is so that files being written are cleaned up."""


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The error boundary: the project's own errors and file-system errors become one line and an
    exit code (2: bad input, 1: other); anything else is a bug and keeps its traceback. Ctrl-C and
    SIGTERM end the command with one line and 130 / 143; files being written are removed on the
    way out (files.atomic_path), so nothing partial is left."""

    options = _options_of(fn)

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        previous = signal.signal(signal.SIGTERM, _terminate)
        _State.kept = []
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            err.print(_interrupted("interrupted"), highlight=False, soft_wrap=True)
            raise typer.Exit(130) from None
        except Terminated:
            err.print(_interrupted("terminated"), highlight=False, soft_wrap=True)
            raise typer.Exit(143) from None
        except (SadiError, OSError) as e:
            if _State.debug:
                traceback.print_exc()
            message = _with_option(e, options) if isinstance(e, SadiError) else f"{e.filename or ''}: {e.strerror or e}"
            err.print(Text.assemble(("error:", "red"), " ", plain(message)), soft_wrap=True)
            raise typer.Exit(2 if isinstance(e, BadInputError) else 1) from None
        finally:
            signal.signal(signal.SIGTERM, previous)

    return run


def _options_of(fn: Callable[..., Any]) -> FrozenSet[str]:
    """The option names (--n-ctx, ...) a command declares."""
    names = set()
    for hint in typing.get_type_hints(fn, include_extras=True).values():
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, OptionInfo):  # Annotated options keep their first name as the default
                decls = [meta.default, *meta.param_decls]
                names.update(d for d in decls if isinstance(d, str) and d.startswith("--"))
    return frozenset(names)


def _with_option(e: SadiError, options: FrozenSet[str]) -> str:
    """The library's message, led by the option of this command that its ``field`` names."""
    message = str(e)
    field = getattr(e, "field", None)
    option = "--" + field.replace("_", "-") if field else ""
    if option not in options or option in message:
        return message
    if message.startswith(field + " "):
        return option + message[len(field):]
    return f"{option}: {message}"


def one_model(model_arg: Optional[str], model: Optional[str]) -> Optional[str]:
    """The model given as the [MODEL] argument or with --model (not both)."""
    if model_arg is not None and model is not None:
        raise BadInputError("give the model once: as the argument or with --model, not both")
    return model_arg if model_arg is not None else model


def llama_kwargs(threads: Optional[int], **kwargs: Any) -> Dict[str, Any]:
    """Llama() arguments: ``kwargs`` and, when given, the threads for generation and prompts."""
    if threads:
        kwargs["n_threads"] = kwargs["n_threads_batch"] = threads
    return kwargs


def load_model(model: Optional[str], n_ctx: int, threads: Optional[int], rpc: Optional[str] = None) -> "sadi_cpp.Hook":
    """The model, with the engine; ``rpc``: its layers on these llama.cpp RPC workers (checked first)."""
    hook = sadi_cpp.load(model, rpc=rpc, **llama_kwargs(threads, n_ctx=n_ctx))
    if rpc is not None:
        from sadi_cpp.llama.rpc import on_fault

        on_fault(note=_interrupted("the command stopped"))
    return hook


PLAIN_EVERY_SECONDS = 5.0  # a plain progress line at least this often (and at every tenth of the work)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


class _TimeColumn(ProgressColumn):
    """ETA while running, the time taken once done (rich's own column shows 0:00:00 then)."""

    def render(self, task: Any) -> Text:
        if task.finished:
            return Text(f"took {_clock(task.finished_time or task.elapsed or 0)}")
        if task.time_remaining is None:
            return Text("ETA -")
        return Text(f"ETA {_clock(task.time_remaining)}")


@contextmanager
def progress_bar(what: str, total: int, quiet: bool, plain: bool = False, label: Optional[str] = None) -> Iterator[Callable[[int], None]]:
    """Progress on stderr; yields the function that advances it. On a terminal: a bar with the
    rate in ``what``/s and the ETA, then the time taken. Elsewhere (a log file, CI) or with
    ``plain`` (--json): a line every tenth of the work or every few seconds, and a last line with
    the time taken. ``label`` names the phase (default: ``what``). ``quiet``: nothing."""
    if quiet:
        yield lambda n: None
    elif err.is_terminal and not plain:
        with Progress(TextColumn(label or what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]} " + what + "/s"),
                      _TimeColumn(), console=err, transient=False) as bar:
            task = bar.add_task(what, total=total, rate="-")

            def step(n: int) -> None:
                bar.advance(task, n)
                t = bar.tasks[0]
                if t.elapsed:
                    bar.update(task, rate=f"{t.completed / t.elapsed:.1f}")

            yield step
    else:
        yield from _plain_progress(what, total, label or what)


def _plain_progress(what: str, total: int, label: str) -> Iterator[Callable[[int], None]]:
    start = last = time.monotonic()
    state = {"done": 0, "tenth": 0}

    def line(done: int, now: float) -> str:
        rate = done / max(now - start, 1e-9)
        eta = _clock((total - done) / rate) if rate > 0 else "-"
        return f"{label} {done}/{total} ({100 * done // max(total, 1)}%), {rate:.1f} {what}/s, ETA {eta}"

    def step(n: int) -> None:
        nonlocal last
        state["done"] += n
        done, now = state["done"], time.monotonic()
        tenth = 10 * done // max(total, 1)
        if done < total and (tenth > state["tenth"] or now - last >= PLAIN_EVERY_SECONDS):
            err.print(line(done, now), highlight=False, soft_wrap=True)
            state["tenth"], last = tenth, now

    err.print(f"{label} 0/{total}", highlight=False)
    yield step
    took = time.monotonic() - start
    err.print(f"{label} {state['done']}/{total} done in {_clock(took)} ({state['done'] / max(took, 1e-9):.1f} {what}/s)",
              highlight=False, soft_wrap=True)


def units_table(mask: Any, n: int) -> Table:
    table = Table(title=f"top {min(n, mask.top_k)} of {mask.top_k} {mask.site} units")
    for col in ("layer", mask.site, "mean diff"):
        table.add_column(col, justify="right")
    for layer, unit, value in mask.top_units(n):
        table.add_row(str(layer), str(unit), f"{value:+.5f}")
    return table


def load_masks(paths: Sequence[Any], deltas: Optional[Sequence[float]], top_k: Optional[int],
               weighting: str) -> List[Tuple[Any, float]]:
    """(mask, delta) for each --mask, checked before the model loads: as many --delta as --mask
    (or none: each mask's own), --top-k with one mask only, a known weighting."""
    from sadi_cpp.masks.mask import WEIGHTINGS, SadiMask

    if weighting not in WEIGHTINGS:
        raise BadInputError(f"unknown weighting '{weighting}': use {' or '.join(WEIGHTINGS)}", field="weighting")
    if deltas and len(deltas) != len(paths):
        raise BadInputError(f"give one --delta per --mask ({len(paths)} masks, {len(deltas)} deltas), or none to use each mask's own")
    if top_k is not None and len(paths) != 1:
        raise BadInputError("--top-k takes one mask; with several, set each mask's K with build-mask or tune")
    masks = [SadiMask.load(p) for p in paths]
    if top_k is not None:
        masks = [masks[0].with_top_k(top_k)]
    return [(m, m.delta if not deltas else float(d)) for m, d in zip(masks, deltas or [None] * len(masks))]


def steering_of(parts: List[Tuple[Any, float]], hook: Any, weighting: str, gate: Any = None) -> Any:
    """The Steering of the masks (each checked against the model; a note where one was built on
    another quantization of it): one mask as it is, several composed; ``gate`` (a loaded Gate,
    checked against the model too) gates it."""
    from sadi_cpp.steering import Steering, as_steering

    made = []
    for m, delta in parts:
        note = m.check_fits(hook)
        if note:
            err.print(f"note: {note}", soft_wrap=True)
        made.append(Steering(m.units(), delta, weights=m.weights(weighting)))
    fitted_gate(gate, hook)
    return as_steering(made[0], gate=gate) if len(made) == 1 else Steering.compose(made, gate=gate)


def fitted_gate(gate: Any, hook: Any) -> Any:
    """``gate`` (None passes) checked against the model, with a note where it was built on another
    quantization of it."""
    from sadi_cpp.masks.gate_file import gate_fits

    if gate is not None:
        note = gate_fits(gate, hook)
        if note:
            err.print(f"note: {note}", soft_wrap=True)
    return gate


def gate_line(result: Any, gate: Any) -> str:
    """What a gate decided, in words (result: a GateResult or None)."""
    if result is None:
        return "gate: not scored (no prompt token was steered)"
    verdict = "fired: the output is steered" if result.fired else "did not fire: the output is unsteered"
    return f"gate {gate.name or ''}: score {result.score:.4f} {'>=' if result.fired else '<'} threshold {gate.threshold:.4f}, {verdict}"


def threshold_line(found: Dict[str, Any]) -> str:
    """One line on a threshold and what it gave where it was measured."""
    def num(x: Any) -> str:
        return "-" if x is None else f"{x:.3f}"

    def ci(x: Any) -> str:
        return "" if not x or x[0] is None else f" [{x[0]:.3f}, {x[1]:.3f}]"

    return (f"threshold {found['threshold']:.4f} on {found['on']} ({found['positives']} should fire, {found['negatives']} "
            f"should not): precision {num(found['precision'])}{ci(found.get('precision_95ci'))}, recall "
            f"{num(found['recall'])}{ci(found.get('recall_95ci'))}" + (f", AUC {found['auc']:.3f}" if "auc" in found else ""))


def gate_info(g: Any, path: Any) -> Dict[str, Any]:
    """What inspect reports of a gate."""
    tuned = json.loads(g.tuned) if g.tuned else None
    return {"file": str(path), "kind": "gate", "name": g.name, "layer": g.layer, "threshold": g.threshold,
            "n_pairs": g.n_pairs, "pairs_sha256": g.pairs_sha256, "tool_version": g.tool_version, "model": g.model,
            "tuned": tuned}


def print_gate(info: Dict[str, Any]) -> None:
    for key in ("kind", "name", "layer", "threshold", "n_pairs", "pairs_sha256", "tool_version"):
        out.print(f"{key}: {plain(info[key])}", soft_wrap=True)
    mdl = info["model"]
    out.print(plain(f"model: {mdl['arch']}, n_layer {mdl['n_layer']}, n_embd {mdl['n_embd']}, tensors {mdl['tensors_sha256'][:16]}"))
    tuned = info["tuned"]
    if isinstance(tuned, dict) and {"threshold", "on", "positives", "negatives", "precision", "recall"} <= set(tuned):
        out.print(plain("chosen: " + threshold_line(tuned)), soft_wrap=True)


def tuned_line(tuned: Any) -> str:
    """One line on what tune found for a mask (a masks.mask.Tuned)."""
    def num(x: Optional[float]) -> str:
        return "?" if x is None else f"{x:.3f}"

    verdict = {True: "an improvement, held out",
               False: "NOT an improvement: no cell beat the baseline outside the noise once the pick was accounted for",
               None: "no verdict recorded"}[tuned.improves]
    return (f"on {tuned.n_dev if tuned.n_dev is not None else '?'} dev items ({tuned.dev or '?'}), dev accuracy "
            f"{num(tuned.accuracy)} against the baseline's {num(tuned.baseline)}; {verdict}")


def floats(text: Optional[str], what: str) -> Optional[List[float]]:
    """Comma-separated numbers, or None when the option was not given."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise BadInputError(f"{what} must be comma-separated numbers, got '{text}'") from None


def ints(text: Optional[str], what: str) -> Optional[List[int]]:
    values = floats(text, what)
    if values is not None and any(v != int(v) for v in values):
        raise BadInputError(f"{what} must be comma-separated integers, got '{text}'")
    return None if values is None else [int(v) for v in values]


def interval(lo_hi: Tuple[float, float]) -> str:
    return f"[{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"


def choice_names(items: Sequence[Any]) -> List[str]:
    """The choices' texts when every item has the same ones, else their indices."""
    first = items[0].choices
    if all(it.choices == first for it in items):
        return [c.strip() or repr(c) for c in first]
    return [f"choice {j}" for j in range(max(len(it.choices) for it in items))]


def answers_line(label: str, bias: Any, names: List[str]) -> str:
    return f"{label}: " + ", ".join(f"{names[j] if j < len(names) else j} {n}" for j, n in enumerate(bias.counts))


def constant_warning(bias: Any, names: List[str], n_items: int) -> str:
    return (f"warning: the unsteered model answers {bias.describe(names)} ({bias.counts[bias.top]} of {n_items}): "
            "this format is not answered by this model, so steering cannot be judged on it (it mostly moves that bias); "
            "try a cloze-style format, e.g. `sadi-cpp prepare copa-cloze`")


Model = Annotated[Optional[str], typer.Option("--model", "-m", help="GGUF model (default: Gemma 3 270M Q4_K_M).")]
ModelArg = Annotated[Optional[str], typer.Argument(metavar="[MODEL]", help="GGUF model, the same as --model.", show_default=False)]
Site = Annotated[str, typer.Option("--site", help="head (attention heads), neuron (FFN units), hidden (FFN output elements) or expert (neurons of a mixture-of-experts FFN).")]
NCtx = Annotated[int, typer.Option("--n-ctx", help="Context length of the model.")]
Threads = Annotated[Optional[int], typer.Option("--threads", help="CPU threads (default: llama.cpp's choice).")]
Rpc = Annotated[Optional[str], typer.Option("--rpc", help="Split the model over llama.cpp RPC workers: HOST:PORT[,HOST:PORT...] (start each with sadi-cpp worker).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
Positions = Annotated[str, typer.Option("--positions", help="Rows steered: last (the paper's: last prompt token) | last+generated | all.")]
Norm = Annotated[bool, typer.Option("--norm", help="Rank choices by mean log-probability per token instead of the sum.")]
NoCache = Annotated[bool, typer.Option("--no-cache", help="Compute the pair statistics again instead of reusing the cached ones (~/.cache/sadi-cpp).")]
