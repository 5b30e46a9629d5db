"""Commands for open-ended generation: pairs (contrastive pairs from two words), eval-gen (steering
measured on what the model writes) and tune-gen (a delta for generation under a fluency budget)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import typer
from rich import box
from rich.table import Table
from typing_extensions import Annotated

from sadi_cpp.cli.common import Rpc, JsonOut, Model, NCtx, Quiet, Threads, app, err, errors, fitted_gate, interval, load_model, out, plain, progress_bar
from sadi_cpp.errors import BadInputError
from sadi_cpp.files import check_output

Deltas = Annotated[Optional[List[float]], typer.Option("--delta", help="SADI strength; repeat for several (default: the mask's).")]
GenPositions = Annotated[Optional[str], typer.Option("--positions", help="Rows steered: last | last+generated | all (default: the mask's; last+generated without a mask).")]
Scorer = Annotated[Optional[str], typer.Option("--scorer", help="exact-match | sentiment | regex | keywords | module:function (default: exact-match when every prompt has an answer, else sentiment).")]
Pattern = Annotated[Optional[List[str]], typer.Option("--pattern", help="regex / keywords: a pattern; repeat for several (any match scores 1).")]
Samples = Annotated[int, typer.Option("--samples", help="Texts per prompt and setting (needs --temperature > 0).")]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", help="Tokens to generate per text.")]
Temperature = Annotated[float, typer.Option("--temperature", "-t", help="Sampling temperature (0: greedy).")]
TopP = Annotated[float, typer.Option("--top-p", help="Nucleus sampling.")]
Seed = Annotated[int, typer.Option("--seed", help="Sampling seed (every setting draws the same random numbers per prompt).")]
Stop = Annotated[Optional[List[str]], typer.Option("--stop", help="End a text before this string; repeatable (escapes like \\n are read).")]
Chat = Annotated[bool, typer.Option("--chat", help="Wrap each prompt in the model's chat template.")]
ChatFormat = Annotated[Optional[str], typer.Option("--chat-format", help="Use this llama-cpp-python chat format instead; implies --chat.")]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Use the first N prompts only.")]
GateOpt = Annotated[Optional[Path], typer.Option("--gate", help="Gate sidecar: the SADI settings steer only the prompts it fires on.")]


@app.command()
@errors
def pairs(
    positive: Annotated[str, typer.Option("--positive", help="The concept to steer towards, e.g. happy.", show_default=False)],
    negative: Annotated[str, typer.Option("--negative", help="Its opposite, e.g. sad.", show_default=False)],
    output: Annotated[Path, typer.Option("--output", "-o", help="Pairs JSONL to write (for build-mask).", show_default=False)],
    template: Annotated[str, typer.Option("--template", help="persona | tone | topic (sadi-cpp's template sets).")] = "persona",
    template_file: Annotated[Optional[Path], typer.Option("--template-file", help="Your own template set (JSON with instructions and continuations).")] = None,
    n: Annotated[int, typer.Option("--n", help="Pairs to write.")] = 200,
    seed: Annotated[int, typer.Option("--seed", help="Which pairs are drawn.")] = 0,
    model: Model = None,
    chat_format: ChatFormat = None,
    no_chat: Annotated[bool, typer.Option("--no-chat", help="Plain text even when the model has a chat template.")] = False,
    rpc: Rpc = None,
    as_json: JsonOut = False,
) -> None:
    """Contrastive pairs from two words: each template's instruction with either word, then the same continuation."""
    from sadi_cpp.data.concepts import check_words, concept_pairs, load_template
    from sadi_cpp.data.mcdata import write_jsonl
    from sadi_cpp.llama.chat import chat_text, choose_chat, has_chat_template

    check_words(positive, negative)
    check_output(output, "pairs file")
    templates = load_template(template_file if template_file is not None else template)
    hook = load_model(model, 2048, None, rpc)
    use_chat = not no_chat and (chat_format is not None or has_chat_template(hook))
    if use_chat:
        choose_chat(hook, True, chat_format)
    frame = (lambda s: chat_text(hook, s)) if use_chat else (lambda s: s + "\n\n")
    rows = concept_pairs(templates, positive, negative, n, seed, frame, special=use_chat)
    write_jsonl(rows, output)
    how = f"the chat format {chat_format}" if chat_format else "the model's chat template" if use_chat else "plain text (no chat template)"
    if as_json:
        out.print_json(json.dumps({"written": str(output), "pairs": len(rows), "template": templates.name, "rendered": how,
                                   "example": rows[0]}))
        return
    out.print(f"{len(rows)} pairs ({templates.name} templates, {positive!r} against {negative!r}, rendered as {how}) "
              f"written to {output}", highlight=False, soft_wrap=True)
    out.print(f"example, positive: {plain(rows[0]['positive'])!r}", highlight=False, soft_wrap=True)
    out.print(f"example, negative: {plain(rows[0]['negative'])!r}", highlight=False, soft_wrap=True)


_ESCAPES = {"\\n": "\n", "\\t": "\t", "\\r": "\r", "\\\\": "\\"}


def _stops(stop: Optional[List[str]]) -> Tuple[str, ...]:
    """--stop values with \\n, \\t, \\r and \\\\ read as the characters (a shell passes "\\n" as two);
    any other backslash stays as it is."""
    return tuple(re.sub(r"\\[ntr\\]", lambda m: _ESCAPES[m.group()], s) for s in (stop or []))


def _settings(hook: Any, mask: Optional[Path], delta: Optional[List[float]], fixed: Optional[List[float]], caa: Optional[Path],
              caa_alpha: Optional[List[float]], caa_layer: Optional[int], cvec: Optional[Path], cvec_scale: Optional[List[float]],
              positions: Optional[str], gate: Optional[Path], random_seed: Optional[int] = None) -> List[Any]:
    """The settings compared with unsteered, from the options (each checked against the model)."""
    from sadi_cpp.generation import settings as made
    from sadi_cpp.masks.build import directions_from_pairs
    from sadi_cpp.masks.gate_file import load_gate
    from sadi_cpp.masks.mask import SadiMask

    m = SadiMask.load(mask) if mask is not None else None
    policy = positions or (m.positions if m is not None else "last+generated")
    out_settings: List[Any] = []
    if m is not None:
        note = m.check_fits(hook)
        if note:
            err.print(f"note: {note}", soft_wrap=True)
        gated = fitted_gate(load_gate(gate), hook) if gate is not None else None
        deltas = made.check_strengths(delta, "--delta") or [m.delta]
        out_settings += made.sadi_settings(m, deltas, policy, gate=gated)
        if random_seed is not None:
            out_settings += made.random_settings(hook, m, deltas, policy, random_seed)
        out_settings += made.fixed_settings(hook, m, made.check_strengths(fixed, "--fixed"), policy, str(mask))
    if caa is not None:
        dirs, _, _ = directions_from_pairs(hook, caa, None if caa_layer is None else [caa_layer])
        out_settings += made.caa_settings(hook, dirs, made.check_strengths(caa_alpha, "--caa-alpha") or [1.0], policy)
    if cvec is not None:
        out_settings += made.cvec_settings(hook, cvec, made.check_strengths(cvec_scale, "--cvec-scale") or [1.0])
    return out_settings


def _check_sources(mask: Optional[Path], caa: Optional[Path], cvec: Optional[Path], fixed: Optional[List[float]],
                   gate: Optional[Path], delta: Optional[List[float]], random_seed: Optional[int] = None) -> None:
    if mask is None and caa is None and cvec is None:
        raise BadInputError("give something to compare with unsteered: --mask (SADI), --caa PAIRS or --cvec FILE")
    if mask is None and (fixed or gate is not None or delta or random_seed is not None):
        raise BadInputError("--delta, --fixed, --random and --gate act on a mask: give --mask")


def _ci(value: float, lo_hi: Tuple[float, float]) -> str:
    return f"{value:+.2f} [{lo_hi[0]:+.2f}, {lo_hi[1]:+.2f}]"


def _table(result: Any, title: str) -> Table:
    """One row per setting; --json has every number at full precision."""
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for col in ("setting", "score [95%]", "vs unsteered [95%]", "loglik/tok (vs)", "degen."):
        table.add_column(col, justify="right")
    for s in result.settings:
        same = s.kind == "unsteered"
        table.add_row(s.name, _ci(s.score, s.score_ci), "" if same else _ci(s.diff, s.diff_ci),
                      f"{s.fluency:.2f}" + ("" if same else f" ({s.fluency_diff:+.2f})"), f"{100 * s.degenerate:.0f}%")
    return table


def _notes(result: Any) -> None:
    for s in result.settings[1:]:
        verdict = "outside the noise" if s.significant else "within the noise"
        fired = "" if s.gate_fired is None else f"; gate fired on {s.gate_fired} of {result.n_prompts} prompts"
        out.print(f"{s.name}: score {s.diff:+.3f} against unsteered ({verdict}), log-likelihood per token "
                  f"{s.fluency_diff:+.3f} nats, {100 * s.degenerate:.0f}% degenerate ({100 * s.empty:.0f}% empty){fired}",
                  highlight=False, soft_wrap=True)


def _write_texts(path: Optional[Path], result: Any, prompts: List[Any]) -> None:
    from sadi_cpp.data.mcdata import write_jsonl

    if path is not None:
        rows = result.texts()
        for row in rows:
            row["prompt_text"] = prompts[row["prompt"]].prompt
        write_jsonl(rows, path)


@app.command("eval-gen")
@errors
def eval_gen_cmd(
    prompts_path: Annotated[Path, typer.Argument(metavar="PROMPTS", help="JSONL {prompt} per line ({prompt, answer, aliases} for QA).", show_default=False)],
    model: Model = None,
    mask: Annotated[Optional[Path], typer.Option("--mask", help="SADI mask sidecar.")] = None,
    delta: Deltas = None,
    fixed: Annotated[Optional[List[float]], typer.Option("--fixed", help="Also the fixed-vector baseline on the mask's units at this scale; repeatable.")] = None,
    random_seed: Annotated[Optional[int], typer.Option("--random", help="Also SADI's scaling on as many units drawn at random with this seed, at each --delta (a control).")] = None,
    caa: Annotated[Optional[Path], typer.Option("--caa", help="Also CAA built from these pairs (one layer).")] = None,
    caa_alpha: Annotated[Optional[List[float]], typer.Option("--caa-alpha", help="CAA scale; repeatable (default 1).")] = None,
    caa_layer: Annotated[Optional[int], typer.Option("--caa-layer", help="CAA layer (default: the middle one).")] = None,
    cvec: Annotated[Optional[Path], typer.Option("--cvec", help="Also a llama.cpp control vector, at every token as llama.cpp applies it.")] = None,
    cvec_scale: Annotated[Optional[List[float]], typer.Option("--cvec-scale", help="Control-vector scale; repeatable (default 1).")] = None,
    gate: GateOpt = None,
    positions: GenPositions = None,
    scorer: Scorer = None,
    pattern: Pattern = None,
    samples: Samples = 1,
    max_tokens: MaxTokens = 48,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = 0,
    stop: Stop = None,
    chat: Chat = False,
    chat_format: ChatFormat = None,
    limit: Limit = None,
    texts: Annotated[Optional[Path], typer.Option("--texts", help="Write every generated text with its scores (JSONL).")] = None,
    plot: Annotated[Optional[Path], typer.Option("--plot", help="Write behaviour against fluency over the settings (PNG).")] = None,
    n_ctx: NCtx = 4096,
    threads: Threads = None,
    rpc: Rpc = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Generate for every prompt unsteered and steered; compare behaviour scores and fluency."""
    from sadi_cpp.data.prompts import read_prompts
    from sadi_cpp.generation.eval_gen import eval_gen
    from sadi_cpp.generation.generate import Sampling
    from sadi_cpp.generation.scorers import default_scorer, load_scorer
    from sadi_cpp.llama.chat import choose_chat
    from sadi_cpp.plot import plot_tradeoff

    _check_sources(mask, caa, cvec, fixed, gate, delta, random_seed)
    for path, what in ((texts, "texts file"), (plot, "plot")):
        if path is not None:
            check_output(path, what)
    sampling = Sampling(max_tokens, temperature, top_p, samples, seed, _stops(stop))
    prompts = read_prompts(prompts_path, limit)
    score = load_scorer(scorer or default_scorer(prompts), pattern or ())
    hook = load_model(model, n_ctx, threads, rpc)
    use_chat = choose_chat(hook, chat, chat_format)
    settings = _settings(hook, mask, delta, fixed, caa, caa_alpha, caa_layer, cvec, cvec_scale, positions, gate, random_seed)
    total = 2 * len(prompts) * (len(settings) + 1) * samples
    with progress_bar("texts", total, quiet, plain=as_json, label="generate and score") as step:
        result = eval_gen(hook, prompts, settings, score, sampling, use_chat, step)
    _write_texts(texts, result, prompts)
    if plot is not None:
        plot_tradeoff(result.settings, result.scorer, plot)
    if as_json:
        out.print_json(json.dumps(dict(result.as_dict(), prompts=str(prompts_path), texts=None if texts is None else str(texts),
                                       plot=None if plot is None else str(plot))))
        return
    out.print(_table(result, f"{len(prompts)} prompts x {samples} sample(s), scorer {result.scorer}"))
    _notes(result)
    for path, what in ((texts, "texts"), (plot, "plot")):
        if path is not None:
            out.print(f"{what} written to {path}", highlight=False, soft_wrap=True)


@app.command("tune-gen")
@errors
def tune_gen_cmd(
    dev: Annotated[Path, typer.Argument(help="Prompts JSONL to choose the delta on.", show_default=False)],
    mask: Annotated[Path, typer.Option("--mask", help="SADI mask sidecar.", show_default=False)],
    model: Model = None,
    delta: Annotated[Optional[List[float]], typer.Option("--delta", help="A delta to try; repeat (default 1, 2, 4, 8, 16).")] = None,
    test: Annotated[Optional[Path], typer.Option("--test", help="Prompts JSONL to score the chosen delta on (held out).")] = None,
    budget: Annotated[float, typer.Option("--budget", help="Most log-likelihood per token (nats) the steered texts may lose against unsteered.")] = 0.5,
    max_degenerate: Annotated[float, typer.Option("--max-degenerate", help="Most the share of degenerate texts may rise (0..1).")] = 0.1,
    lower: Annotated[bool, typer.Option("--lower", help="A lower score is better (e.g. steering away from a sentiment).")] = False,
    gate: GateOpt = None,
    positions: GenPositions = None,
    scorer: Scorer = None,
    pattern: Pattern = None,
    samples: Samples = 1,
    max_tokens: MaxTokens = 48,
    temperature: Temperature = 0.0,
    top_p: TopP = 1.0,
    seed: Seed = 0,
    stop: Stop = None,
    chat: Chat = False,
    chat_format: ChatFormat = None,
    limit: Limit = None,
    n_ctx: NCtx = 4096,
    threads: Threads = None,
    rpc: Rpc = None,
    quiet: Quiet = False,
    as_json: JsonOut = False,
) -> None:
    """Choose the delta with the best score whose texts stay within a fluency budget; check it held out."""
    from sadi_cpp.data.prompts import read_prompts
    from sadi_cpp.generation.generate import Sampling
    from sadi_cpp.generation.scorers import default_scorer, load_scorer
    from sadi_cpp.generation.tune_gen import progress_total, tune_gen
    from sadi_cpp.llama.chat import choose_chat

    sampling = Sampling(max_tokens, temperature, top_p, samples, seed, _stops(stop))
    dev_prompts = read_prompts(dev, limit)
    test_prompts = read_prompts(test) if test is not None else None
    score = load_scorer(scorer or default_scorer(dev_prompts), pattern or ())
    hook = load_model(model, n_ctx, threads, rpc)
    use_chat = choose_chat(hook, chat, chat_format)
    settings = _settings(hook, mask, delta or [1.0, 2.0, 4.0, 8.0, 16.0], None, None, None, None, None, None, positions, gate)
    total = progress_total(len(dev_prompts), len(test_prompts or []), len(settings), samples)
    with progress_bar("texts", total, quiet, plain=as_json, label="generate and score") as step:
        result = tune_gen(hook, dev_prompts, settings, score, sampling, use_chat, budget, max_degenerate, lower, test_prompts, step)
    if as_json:
        out.print_json(json.dumps(dict(result.as_dict(), dev_prompts=str(dev), budget=budget, max_degenerate=max_degenerate)))
        return
    _print_tune(result, settings, budget, max_degenerate, lower)


def _print_tune(result: Any, settings: List[Any], budget: float, max_degenerate: float, lower: bool) -> None:
    out.print(_table(result.dev, f"dev: {result.dev.n_prompts} prompts, scorer {result.dev.scorer}"))
    ok = [s.name for s, e in zip(settings, result.pick.eligible) if e]
    out.print(f"within the budget ({budget:g} nats per token, degenerate share +{max_degenerate:g} at most): "
              f"{', '.join(ok) or 'none'}", highlight=False, soft_wrap=True)
    if result.pick.index < 0:
        out.print("no delta within the budget scores " + ("lower" if lower else "higher") + " than unsteered on dev",
                  highlight=False, soft_wrap=True)
        return
    chosen = settings[result.pick.index]
    held: Dict[str, Any] = result.held_out
    verdict = "holds" if result.improves else "does not hold (the interval reaches 0 or the wrong side)"
    out.print(f"chosen: {chosen.name} (positions {chosen.positions}); held out on dev (picked on one half, scored on the "
              f"other): {held['diff']:+.3f} {interval(held['diff_ci'])}, the gain {verdict}", highlight=False, soft_wrap=True)
    if result.test is not None:
        t = result.test.settings[1]
        out.print(f"test ({result.test.n_prompts} prompts): {t.diff:+.3f} {interval(t.diff_ci)} against unsteered, "
                  f"log-likelihood per token {t.fluency_diff:+.3f}, {100 * t.degenerate:.0f}% degenerate", highlight=False, soft_wrap=True)
    out.print(f"use it: sadi-cpp generate PROMPT --mask MASK --delta {chosen.strength:g} --positions {chosen.positions}",
              highlight=False, soft_wrap=True)
