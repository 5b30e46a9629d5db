"""Open-ended generation on the tiny model, against independent computations: llama-cpp-python's
own greedy generation (unsteered and under the hook's steering), each setting generated alone, a
full-sort sampler, a direct log-softmax of the same text, and eval-gen's statistics recomputed
with numpy."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_f32_close, f32_tol

import sadi_cpp
from sadi_cpp import BadInputError, Steering
from sadi_cpp.data.prompts import GenPrompt
from sadi_cpp.generation.eval_gen import UNSTEERED, eval_gen, per_prompt
from sadi_cpp.generation.fluency import degenerate, loglik_per_token
from sadi_cpp.generation.generate import Sampling, Setting, generate_many, pick
from sadi_cpp.generation.scorers import Scorer, load_scorer, normalize_answer

PROMPTS = ["Item 4: ", "a b c d e", "The quick brown", "zz", "Hello there, friend"]


def head_mask(tiny, hook, units):
    m = np.zeros((tiny.n_layer, hook.n_units("head")), bool)
    for layer, unit in units:
        m[layer, unit] = True
    return {"head": m}


@pytest.fixture
def hook(make_llama):
    return sadi_cpp.attach(make_llama(n_ctx=1024, n_batch=256, n_ubatch=256))


def tokens_of(hook, texts):
    return [hook.tokenize(t, special=True) for t in texts]


def test_greedy_generation_equals_llama_cpp_pythons_own_unsteered_and_steered(tiny, hook):
    toks = tokens_of(hook, PROMPTS[:2])
    mask = head_mask(tiny, hook, [(1, 0), (2, 1)])
    for policy in ("last", "last+generated", "all"):
        setting = Setting("s", Steering(mask, 3.0), policy)
        made = generate_many(hook, toks, [UNSTEERED, setting], Sampling(max_tokens=12))
        for i, t in enumerate(toks):
            hook.kv_clear()
            plain = hook.llm.create_completion(t, max_tokens=12, temperature=0.0)["choices"][0]["text"]
            hook.kv_clear()
            with hook.steering(mask, 3.0, positions=policy):
                steered = hook.llm.create_completion(t, max_tokens=12, temperature=0.0)["choices"][0]["text"]
            assert made.texts[(0, i, 0)].text == plain
            assert made.texts[(1, i, 0)].text == steered, policy
    assert any(made.texts[(0, i, 0)].text != made.texts[(1, i, 0)].text for i in range(2))  # the steering shows


def _first_difference(a, b):
    return next((k for k in range(min(len(a), len(b))) if a[k] != b[k]), None)


def test_many_settings_in_one_run_equal_each_setting_alone(tiny, hook):
    toks = tokens_of(hook, PROMPTS)
    settings = [UNSTEERED, Setting("h", Steering(head_mask(tiny, hook, [(1, 0), (2, 1)]), 4.0), "last+generated"),
                Setting("n", Steering({"neuron": np.eye(tiny.n_layer, hook.n_units("neuron"), dtype=bool)}, 6.0), "last"),
                Setting("a", Steering(add={"residual": np.full((tiny.n_layer, tiny.n_embd), 0.3, np.float32)}), "all")]
    sampling = Sampling(max_tokens=10)
    together = generate_many(hook, toks, settings, sampling)
    for c, setting in enumerate(settings):
        alone = generate_many(hook, toks, [setting], sampling)
        for i in range(len(toks)):
            a, b = together.texts[(c, i, 0)].tokens, alone.texts[(0, i, 0)].tokens
            k = _first_difference(a, b)
            if k is None:
                assert len(a) == len(b)
                continue
            # batches group f32 sums differently: a different token is allowed only at a near-tie,
            # two logits within the f32 rounding bound of each other (helpers.ORACLE_ULPS)
            with hook.steering(setting.steering, positions=setting.positions) if c else _nothing():
                hook.kv_clear()
                hook.eval(toks[i] + a[:k])
                logits = hook.logits()
            assert abs(logits[a[k]] - logits[b[k]]) <= f32_tol(logits), (c, i, k)


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_sampling_draws_from_the_top_p_set_as_a_full_sort_does():
    rng0 = np.random.default_rng(1)
    for trial in range(100):
        n = int(rng0.integers(2, 3000))
        logits = (rng0.normal(size=n) * rng0.uniform(0.1, 8)).astype(np.float32)
        temperature, top_p = float(rng0.uniform(0.2, 2)), float(rng0.uniform(0.05, 0.99))
        z = logits.astype(np.float64) / temperature
        p = np.exp(z - z.max())
        order = np.lexsort((np.arange(n), -p))
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p * p.sum())) + 1]
        u = np.random.default_rng([trial]).random()
        q = np.cumsum(p[keep])
        want = int(keep[min(int(np.searchsorted(q, u * q[-1], side="right")), len(keep) - 1)])
        assert pick(logits, np.random.default_rng([trial]), temperature, top_p) == want
    assert pick(np.array([0.0, 5.0, 1.0], np.float32), np.random.default_rng(0), 0.0, 1.0) == 1


def test_settings_share_random_numbers_and_stop_strings_cut(hook):
    toks = tokens_of(hook, PROMPTS[:3])
    twin = Setting("twin", Steering(), "last", kind="unsteered")
    made = generate_many(hook, toks, [UNSTEERED, twin], Sampling(max_tokens=16, temperature=1.0, samples=3, seed=7))
    for i in range(3):
        texts = [made.texts[(0, i, s)].text for s in range(3)]
        assert [made.texts[(1, i, s)].text for s in range(3)] == texts  # the same draws for both settings
    assert len({made.texts[(0, i, s)].text for i in range(3) for s in range(3)}) > 3  # samples differ
    free = made.texts[(0, 0, 0)]
    stop = free.text[3:5]
    cut = generate_many(hook, toks[:1], [UNSTEERED], Sampling(max_tokens=16, temperature=1.0, samples=1, seed=7, stop=(stop,))).texts[(0, 0, 0)]
    assert cut.finish == "stop" and cut.text == free.text[: free.text.find(stop)]
    assert b"".join(hook.token_bytes(t) for t in cut.tokens).decode("utf-8", "ignore") == cut.text[: len(b"".join(hook.token_bytes(t) for t in cut.tokens).decode("utf-8", "ignore"))]


def test_fluency_equals_a_direct_log_softmax_of_the_same_text(hook, make_llama):
    toks = tokens_of(hook, PROMPTS[:3])
    texts = [[70, 80, 90, 100], [45], []]
    got = loglik_per_token(hook, toks, texts)
    direct = make_llama(logits_all=True)
    for i, (p, t) in enumerate(zip(toks, texts)):
        if not t:
            assert np.isnan(got[i])
            continue
        direct.reset()
        direct.eval(p + t)
        rows = np.asarray(direct.scores[len(p) - 1: len(p) - 1 + len(t)], np.float64)
        logp = rows - np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1, keepdims=True)) - rows.max(1, keepdims=True)
        want = float(np.mean([logp[k, tok] for k, tok in enumerate(t)]))
        assert_f32_close(got[i], want, what=f"text {i}")


def _bootstrap(x, seed=0, n_boot=2000):
    """The interval by hand: items resampled with numpy's generator, nan items left out of a resample's mean."""
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n_boot, len(x)))
    means = [np.nanmean(x[row]) for row in idx if np.isfinite(x[row]).any()]
    return float(np.nanmean(x)), tuple(np.percentile(means, [2.5, 97.5]))


def test_eval_gen_numbers_recomputed_by_hand(tiny, hook):
    prompts = [GenPrompt(p, where=f"p{i}") for i, p in enumerate(PROMPTS)]
    count_e = Scorer("count", lambda text, prompt: float(text.count("e") + len(text) % 3))
    settings = [Setting("h", Steering(head_mask(tiny, hook, [(1, 0), (2, 1)]), 4.0), "last+generated", strength=4.0)]
    r = eval_gen(hook, prompts, settings, count_e, Sampling(max_tokens=8, temperature=1.0, samples=2, seed=3))
    assert [s.name for s in r.settings] == ["unsteered", "h"]
    for c, s in enumerate(r.settings):
        texts = [[r.generations[(c, i, k)].text for k in range(2)] for i in range(len(prompts))]
        scores = np.array([[t.count("e") + len(t) % 3 for t in row] for row in texts], float)
        np.testing.assert_array_equal(r.scores[c], scores)
        base = np.array([[t.count("e") + len(t) % 3 for t in (r.generations[(0, i, k)].text for k in range(2))]
                         for i in range(len(prompts))], float)
        mean, ci = _bootstrap(scores.mean(1))
        assert s.score == pytest.approx(mean) and s.score_ci == pytest.approx(ci)
        diff, dci = _bootstrap(scores.mean(1) - base.mean(1))
        assert s.diff == pytest.approx(diff) and s.diff_ci == pytest.approx(dci)
        flu = r.fluency[c]
        for i in range(len(prompts)):
            for k in range(2):
                g = r.generations[(c, i, k)]
                one = loglik_per_token(hook, [hook.tokenize(PROMPTS[i], special=True)], [g.tokens])[0]
                # one text alone against many per decode: the same f32 sums grouped differently
                # (helpers.ORACLE_ULPS, relative to the value's magnitude)
                assert (np.isnan(one) and np.isnan(flu[i, k])) or one == pytest.approx(flu[i, k], abs=f32_tol([one]))
        assert s.fluency == pytest.approx(float(np.nanmean(per_prompt(flu))))
        verdicts = [any(degenerate(r.generations[(c, i, k)].text)) for i in range(len(prompts)) for k in range(2)]
        assert s.degenerate == pytest.approx(np.mean(verdicts))


def test_degenerate_and_exact_match_rules():
    assert degenerate("") == (True, False) and degenerate(" ...!! ") == (True, False)
    assert degenerate("I am happy. I am happy. I am happy. I am happy.") == (False, True)
    assert degenerate("The walk by the river was quiet and cold this morning.") == (False, False)
    assert normalize_answer("The  Beatles!") == "beatles" and normalize_answer("an Apple, a day") == "apple day"
    em = load_scorer("exact-match")
    q = GenPrompt("Q?", ("Henry IV", "King Henry IV"))
    assert em(" the king Henry IV.\nQuestion: next", q) == 1.0
    assert em(" Henry V", q) == 0.0
    with pytest.raises(BadInputError, match="exact-match needs 'answer'"):
        em("x", GenPrompt("Q?"))


def test_scorers_and_their_errors(tmp_path):
    assert load_scorer("sentiment")("What a wonderful, happy day!", GenPrompt("p")) > 0.5
    assert load_scorer("sentiment")("This is awful and sad.", GenPrompt("p")) < -0.3
    assert load_scorer("regex", ["ab+c"])("xxABBBCxx", GenPrompt("p")) == 1.0
    assert load_scorer("keywords", ["cat"])("concatenate", GenPrompt("p")) == 0.0
    assert load_scorer("keywords", ["cat"])("a Cat sat", GenPrompt("p")) == 1.0
    with pytest.raises(BadInputError, match="unknown scorer 'nope'"):
        load_scorer("nope")
    with pytest.raises(BadInputError, match="needs at least one --pattern"):
        load_scorer("regex")
    with pytest.raises(BadInputError, match="not a regular expression"):
        load_scorer("regex", ["(unclosed"])
    user = tmp_path / "my_scores.py"
    user.write_text("def fine(text, row):\n    return len(text)\n"
                    "def broken(text, row):\n    raise ValueError('no luck')\n"
                    "def wrong(text, row):\n    return 'high'\n")
    assert load_scorer(f"{user}:fine")("abcd", GenPrompt("p")) == 4.0
    with pytest.raises(BadInputError, match=r"scorer .*my_scores.py:broken raised ValueError: no luck \(scoring a text of here\)"):
        load_scorer(f"{user}:broken")("abcd", GenPrompt("p", where="here"))
    with pytest.raises(BadInputError, match="returned 'high'"):
        load_scorer(f"{user}:wrong")("abcd", GenPrompt("p"))
    with pytest.raises(BadInputError, match="has no function 'missing'"):
        load_scorer(f"{user}:missing")
    with pytest.raises(BadInputError, match="could not import no_such_module_here"):
        load_scorer("no_such_module_here:f")


def test_generation_refuses_what_cannot_work(hook):
    with pytest.raises(BadInputError, match="all the same text"):
        Sampling(samples=2)
    with pytest.raises(BadInputError, match="max_tokens"):
        Sampling(max_tokens=0)
    with pytest.raises(BadInputError, match="do not fit the context"):
        generate_many(hook, [list(range(3, 1000))], [UNSTEERED], Sampling(max_tokens=100))
