"""API misuse must never crash the process: each case runs in a subprocess, which must exit
normally (not by a signal) after printing the clear error it met."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import eval_fresh

import sadi_cpp
from sadi_cpp import BadInputError, SadiError
from sadi_cpp.llama.batch import BatchRow

PROMPT = [1, 5, 6, 7, 8, 9]


def run_script(tiny_path, body: str, tmp_path) -> str:
    script = textwrap.dedent("""
        import threading, numpy as np, sadi_cpp
        from llama_cpp import Llama
        llm = Llama(model_path=MODEL, n_ctx=64, verbose=False)
        hook = sadi_cpp.attach(llm)
        m = np.zeros((3, 4), bool); m[1, 2] = True
        def expect_error(fn, fragment):
            try:
                fn()
            except sadi_cpp.SadiError as e:
                assert fragment in str(e), str(e)
                print("refused:", e)
            else:
                raise SystemExit("no error")
    """).replace("MODEL", repr(str(tiny_path))) + textwrap.dedent(body) + "\nprint('clean exit')\n"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode >= 0, f"killed by signal {-res.returncode}: {res.stderr[-2000:]}"
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "clean exit" in res.stdout
    return res.stdout


def test_a_detached_hook_refuses_to_decode(tiny_path, tmp_path):
    out = run_script(tiny_path, """
        llm.eval([1, 5, 6])
        hook.detach()
        expect_error(lambda: hook.continuation_logits([7, 8]), "detached")
        expect_error(lambda: hook.set_steering({"head": m}, 2.0), "detached")
        llm.reset(); llm.eval([1, 5, 6])  # the Llama itself works on its plain context
    """, tmp_path)
    assert out.count("refused:") == 2


def test_a_closed_llama_is_refused_not_read(tiny_path, tmp_path):
    out = run_script(tiny_path, """
        llm.eval([1, 5, 6])
        llm.close()
        expect_error(lambda: llm.create_completion("hello", max_tokens=4), "closed")
        expect_error(lambda: hook.set_steering({"head": m}, 2.0), "closed")
        expect_error(lambda: hook.continuation_logits([7, 8]), "closed")
        expect_error(lambda: hook.logits(), "closed")
        hook.detach(); hook.clear_steering()
    """, tmp_path)
    assert out.count("refused:") == 4


def test_two_threads_get_a_clear_error_not_an_abort(tiny_path, tmp_path):
    out = run_script(tiny_path, """
        errors, done = [], []
        def steer_and_generate():
            try:
                with hook.steering({"head": m}, delta=2.0, positions="all"):
                    for _ in range(5):
                        llm.create_completion("a b c d e f g", max_tokens=16, temperature=0.0)
                done.append(1)
            except sadi_cpp.SadiError as e:
                errors.append(str(e))
        threads = [threading.Thread(target=steer_and_generate) for _ in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        assert errors or len(done) == 4
        assert all("another thread" in e for e in errors), errors
        print("errors", len(errors), "done", len(done))
        # and the hook still works for one thread afterwards
        llm.create_completion("a b", max_tokens=2, temperature=0.0)
    """, tmp_path)
    assert "errors" in out


def test_accumulator_slots_are_bounded(tiny_path, tmp_path):
    out = run_script(tiny_path, """
        with hook.recording(sites=("hidden",), capture=False) as rec:
            expect_error(lambda: rec.set_slot(10**9), "slot")
            expect_error(lambda: rec.set_slot(-1), "slot")
            rec.set_slot(3)
            llm.eval([1, 5, 6])
        assert rec.counts("hidden", 3).tolist() == [1, 1, 1]
    """, tmp_path)
    assert out.count("refused:") == 2


def test_absurd_deltas_are_refused_and_a_strong_run_leaves_nothing_behind(tiny, make_llama):
    hook = sadi_cpp.attach(make_llama())
    plain = hook.llm.create_completion("a b c d", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    mask = {"hidden": np.ones((tiny.n_layer, tiny.n_embd), bool)}
    for delta in (1e30, -2e4, float("nan"), float("inf"), "nine", None):
        with pytest.raises(BadInputError, match="delta"):
            hook.set_steering(mask, delta, positions="all")
    assert not hook.steers
    with hook.steering(mask, delta=1e4, positions="all"):  # the strongest allowed, on every value
        hook.llm.create_completion("a b c d", max_tokens=8, temperature=0.0)
    after = hook.llm.create_completion("a b c d", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    assert after == plain
    assert np.array_equal(eval_fresh(hook.llm, PROMPT), eval_fresh(make_llama(), PROMPT))


def test_misuse_errors_are_project_errors(make_llama):
    hook = sadi_cpp.attach(make_llama())
    hook.detach()
    with pytest.raises(SadiError):
        hook.decode([BatchRow(1, 0, (0,))])
