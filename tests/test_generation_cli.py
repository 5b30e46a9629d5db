"""pairs, eval-gen, tune-gen and the generation tasks of prepare on the tiny model: the files they
write, what they print, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_f32_close, bad, runner
from tiny_model import TinyLlama

import sadi_cpp
from sadi_cpp.cli import app
from sadi_cpp.data.concepts import SLOT, concept_pairs, load_template
from sadi_cpp.data.pairs import read_pairs
from sadi_cpp.masks.contrast import mean_differences

# "</s>" is a control token of the tiny vocabulary: a chat template that spells it shows whether
# rendered pairs are read back with their control tokens
TEMPLATE = "{{ bos_token }}{% for m in messages %}</s>{{ m['content'] }}</s>{% endfor %}"


def ok(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res


def read_lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_stop_strings_read_only_the_usual_escapes():
    from sadi_cpp.cli.generation import _stops

    # a shell passes "\n" as two characters; an unknown escape or a non-ASCII text stays as written
    assert _stops(["\\n", "a\\tb", "\\x", "é\\n", "\\\\n"]) == ("\n", "a\tb", "\\x", "é\n", "\\n")


def test_a_template_file_that_asks_for_too_many_pairs_is_refused(tmp_path):
    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"instructions": [f"Be {{concept}} {i}." for i in range(2000)],
                                "continuations": [" ".join(["word"] * 600)]}))
    with pytest.raises(sadi_cpp.BadInputError, match="candidate pairs"):
        load_template(huge)


def test_template_pairs_differ_only_in_the_word_and_are_seeded():
    t = load_template("persona")
    frame = lambda s: f"[{s}]\n"  # noqa: E731
    rows = concept_pairs(t, "happy", "gloomy", 120, 5, frame)
    assert len(rows) == 120 and len({json.dumps(r) for r in rows}) == 120  # no pair twice
    for r in rows:
        assert r["positive"].replace("happy", SLOT) == r["negative"].replace("gloomy", SLOT)
        head, cont = r["positive"].split("]\n")
        assert head[1:].replace("happy", SLOT) in t.instructions
        assert any(c.startswith(cont) and (len(c) == len(cont) or c[len(cont)] == " ") for c in t.continuations)
    assert concept_pairs(t, "happy", "gloomy", 120, 5, frame) == rows
    assert concept_pairs(t, "happy", "gloomy", 120, 6, frame) != rows
    with pytest.raises(sadi_cpp.BadInputError, match="--n must be 1.."):
        concept_pairs(t, "happy", "gloomy", 10 ** 6, 0, frame)
    with pytest.raises(sadi_cpp.BadInputError, match="are the same"):
        concept_pairs(t, "happy", "happy", 3, 0, frame)


def test_pairs_plain_and_through_a_chat_template(tiny_path, tmp_path):
    out = tmp_path / "p.jsonl"
    res = ok(["pairs", "--positive", "calm", "--negative", "angry", "-m", str(tiny_path), "--n", "30", "-o", str(out), "--template", "tone"])
    assert "plain text" in res.output and "30 pairs" in res.output
    rows = read_lines(out)
    assert len(rows) == 30 and all("special" not in r for r in rows)
    assert all("calm" in r["positive"] and "\n\n" in r["positive"] for r in rows)

    templated = TinyLlama().write(tmp_path / "chat.gguf", chat_template=TEMPLATE)
    chat = tmp_path / "chat.jsonl"
    ok(["pairs", "--positive", "calm", "--negative", "angry", "-m", str(templated), "--n", "30", "-o", str(chat), "--template", "tone"])
    rows = read_lines(chat)
    assert all(r["special"] is True and r["positive"].startswith("</s>") for r in rows)
    hook = sadi_cpp.load(str(templated))
    tokens = hook.tokenize(rows[0]["positive"], special=True)
    instruction = rows[0]["positive"].split("</s>")[1]
    assert tokens[:3] == [1, 2] + hook.tokenize(instruction, add_bos=False)[:1]  # BOS once, then the control token
    assert tokens.count(2) == 2
    assert hook.tokenize(rows[0]["positive"]).count(2) == 0  # without "special": plain text

    # build-mask reads the pairs with their control tokens: the mean difference equals one taken
    # by hand from recordings of the texts tokenized with control tokens
    got = mean_differences(hook, read_pairs(chat), sites=("head",), batched=False).diffs["head"]
    sums = []
    for side in ("positive", "negative"):
        with hook.recording(sites=("head",), positions="last") as rec:
            for r in rows:
                hook.kv_clear()
                hook.eval(hook.tokenize(r[side], special=True))
        sums.append(rec.values("head")[:, :, :].mean(axis=0))
    assert_f32_close(got, sums[0] - sums[1], what="mean difference of special pairs")
    bad(["pairs", "--positive", "a", "--negative", "b", "-m", str(tiny_path), "-o", str(tmp_path / "x.jsonl"),
         "--template-file", str(tmp_path / "none.json")], "no such template file")
    broken = tmp_path / "t.json"
    broken.write_text(json.dumps({"instructions": ["Be it."], "continuations": ["So"]}))
    bad(["pairs", "--positive", "a", "--negative", "b", "-m", str(tiny_path), "-o", str(tmp_path / "x.jsonl"),
         "--template-file", str(broken)], "must hold {concept} exactly once")


@pytest.fixture
def gen_setup(tiny_path, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    ok(["pairs", "--positive", "calm", "--negative", "angry", "-m", str(tiny_path), "--n", "40", "-o", str(pairs)])
    mask = tmp_path / "m.sadi.gguf"
    ok(["build-mask", str(pairs), "-m", str(tiny_path), "--top-k", "3", "-o", str(mask), "-q"])
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "answer": "e", "aliases": ["ee"]}) + "\n"
                               for p in ("Item 4: ", "a b c", "The quick brown", "zz top", "Hello there", "x y z")))
    scorer = tmp_path / "tiny_scores.py"
    scorer.write_text("def vowels(text, row):\n    return sum(text.count(v) for v in 'aeiou') + len(row['prompt']) % 2\n")
    return pairs, mask, prompts, scorer


def test_eval_gen_reports_every_setting_and_writes_texts_and_a_plot(tiny_path, tmp_path, gen_setup):
    pairs, mask, prompts, scorer = gen_setup
    cv = tmp_path / "c.gguf"
    ok(["export-cvec", str(pairs), "-m", str(tiny_path), "--layers", "1", "-o", str(cv), "-q"])
    texts, plot = tmp_path / "texts.jsonl", tmp_path / "plot.png"
    res = ok(["eval-gen", str(prompts), "-m", str(tiny_path), "--mask", str(mask), "--delta", "2", "--delta", "8",
              "--fixed", "1", "--random", "0", "--caa", str(pairs), "--caa-alpha", "3", "--cvec", str(cv), "--cvec-scale", "2",
              "--scorer", f"{scorer}:vowels", "--max-tokens", "6", "--texts", str(texts), "--plot", str(plot), "--json", "-q"])
    report = json.loads(res.stdout)
    names = [s["name"] for s in report["settings"]]
    assert names == ["unsteered", "sadi 2", "sadi 8", "random 2", "random 8", "fixed 1", "caa 3", "cvec 2"]
    assert [s["positions"] for s in report["settings"]] == ["last"] * 7 + ["all"]
    rows = read_lines(texts)
    assert len(rows) == 8 * 6 and plot.stat().st_size > 1000
    for s in report["settings"]:
        mine = [r for r in rows if r["setting"] == s["name"]]
        per = [r["score"] for r in sorted(mine, key=lambda r: r["prompt"])]
        assert s["score"] == pytest.approx(np.mean(per))
        for r in mine:  # the user's function on each written text
            assert r["score"] == sum(r["text"].count(v) for v in "aeiou") + len(r["prompt_text"]) % 2
    em = json.loads(ok(["eval-gen", str(prompts), "-m", str(tiny_path), "--mask", str(mask), "--max-tokens", "4", "--json", "-q"]).stdout)
    assert em["scorer"] == "exact-match"  # every prompt has an answer
    table = ok(["eval-gen", str(prompts), "-m", str(tiny_path), "--mask", str(mask), "--max-tokens", "4", "--scorer", "regex",
                "--pattern", "a", "-q"]).output
    assert "unsteered" in table and "vs unsteered" in table.replace("\n", " ") or "unsteered" in table
    assert "against unsteered" in table


def test_eval_gen_errors_name_the_option(tiny_path, tmp_path, gen_setup):
    pairs, mask, prompts, scorer = gen_setup
    base = ["eval-gen", str(prompts), "-m", str(tiny_path)]
    bad(base, "give something to compare with unsteered")
    bad(base + ["--mask", str(mask), "--scorer", "nope"], "--scorer", "unknown scorer 'nope'")
    bad(base + ["--mask", str(mask), "--scorer", f"{scorer}:absent"], "has no function 'absent'")
    bad(base + ["--mask", str(mask), "--scorer", "regex"], "--pattern")
    bad(base + ["--mask", str(mask), "--samples", "3"], "--samples", "temperature")
    bad(base + ["--mask", str(mask), "--delta", "2", "--delta", "2"], "--delta lists a value twice")
    bad(base + ["--mask", str(mask), "--max-tokens", "600"], "--max-tokens", "do not fit one decode")
    bad(base + ["--fixed", "1"], "give something to compare")
    raising = tmp_path / "raising.py"
    raising.write_text("def f(text, row):\n    return 1 / 0\n")
    bad(base + ["--mask", str(mask), "--scorer", f"{raising}:f", "--max-tokens", "2"], "raising.py:f raised ZeroDivisionError")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    bad(["eval-gen", str(empty), "-m", str(tiny_path), "--mask", str(mask)], "no prompts in the file")


def test_tune_gen_picks_within_the_budget_and_checks_held_out(tiny_path, tmp_path, gen_setup):
    pairs, mask, prompts, scorer = gen_setup
    res = ok(["tune-gen", str(prompts), "-m", str(tiny_path), "--mask", str(mask), "--delta", "1", "--delta", "30",
              "--scorer", f"{scorer}:vowels", "--max-tokens", "6", "--test", str(prompts), "--budget", "100",
              "--max-degenerate", "1", "--json", "-q"])
    r = json.loads(res.stdout)
    dev = r["dev"]["settings"]
    assert r["eligible"] == [True, True]  # a budget nobody exceeds
    best = max(range(2), key=lambda k: dev[1 + k]["score"])
    if dev[1 + best]["score"] > dev[0]["score"]:
        assert r["chosen"]["strength"] == [1.0, 30.0][best]
        assert r["test"]["settings"][1]["name"] == dev[1 + best]["name"]
    else:
        assert r["chosen"] is None and r["test"] is None
    assert set(r["held_out"]) == {"picks", "diff", "diff_ci"}
    tight = json.loads(ok(["tune-gen", str(prompts), "-m", str(tiny_path), "--mask", str(mask), "--delta", "1",
                           "--scorer", f"{scorer}:vowels", "--max-tokens", "6", "--budget", "0", "--max-degenerate", "0",
                           "--json", "-q"]).stdout)
    drop = tight["dev"]["settings"][0]["fluency"] - tight["dev"]["settings"][1]["fluency"]
    assert tight["eligible"] == [bool(drop <= 0 and tight["dev"]["settings"][1]["degenerate"] <= tight["dev"]["settings"][0]["degenerate"])]


def test_prepare_generation_tasks(tmp_path):
    raw = tmp_path / "tqa.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Q one?", "answer": "Paris", "aliases": ["Paris", "paris, france"]},
        {"question": "Q two?", "answer": "Mars", "aliases": ["Mars"]},
        {"question": "Q three?", "answer": "PARIS", "aliases": ["PARIS"]},
        {"question": "Q four?", "answer": "Nile", "aliases": ["Nile", "River Nile"]}]))
    ok(["prepare", "triviaqa", str(raw), "-o", str(tmp_path / "p.jsonl")])
    rows = read_lines(tmp_path / "p.jsonl")
    assert rows[0] == {"prompt": "Question: Q one?\nAnswer:", "answer": "Paris", "aliases": ["Paris", "paris, france"]}
    ok(["prepare", "triviaqa-pairs", str(raw), "-o", str(tmp_path / "pp.jsonl")])
    for pair in read_lines(tmp_path / "pp.jsonl"):
        q = next(r for r in read_lines(raw) if pair["prompt"] == f"Question: {r['question']}\nAnswer:")
        assert pair["positive"] == " " + q["answer"]
        assert pair["negative"].strip().lower() not in {a.lower() for a in q["aliases"]}
    ok(["prepare", "neutral", "--split", "dev", "-o", str(tmp_path / "d.jsonl")])
    ok(["prepare", "neutral", "--split", "test", "-o", str(tmp_path / "t.jsonl")])
    dev, test = ({r["prompt"] for r in read_lines(tmp_path / f)} for f in ("d.jsonl", "t.jsonl"))
    assert len(dev) >= 20 and len(test) >= 40 and not dev & test
    bad(["prepare", "neutral", "--split", "train", "-o", str(tmp_path / "x.jsonl")], "--split must be one of dev, test")
    bad(["prepare", "triviaqa", "-o", str(tmp_path / "x.jsonl")], "needs the task's JSONL file")
