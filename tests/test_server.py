"""sadi-cpp serve on the tiny f32 model: a real server in a subprocess, spoken to with the official
openai client and with raw HTTP. Requests decoded together must answer exactly as alone."""

from __future__ import annotations

import http.client
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import numpy as np
import openai
import pytest

from helpers import f32_tol
from server_helpers import Server, wait_until, write_random_gates, write_random_masks
from tiny_model import TinyLlama

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")
MASKS = {"tiny.head": ("head", 3, 9.0), "tiny.neuron": ("neuron", 20, 15.0), "tiny.hidden": ("hidden", 6, -6.0)}
# a random condition at layer 0 (fires on some prompts), one that always fires, one that never does
GATES = {"tiny.gate": (0, 0.0), "always": (0, -1.0), "never": (1, 1.0)}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("serve")
    model = TinyLlama().write(root / "tiny-chat.gguf", chat_template=TEMPLATE)
    masks = root / "masks"
    masks.mkdir()
    write_random_masks(model, masks, MASKS)
    write_random_gates(model, masks, GATES)
    other = TinyLlama(n_layer=2).write(root / "other.gguf")
    write_random_masks(other, masks, {"other.head": ("head", 2, 9.0)})
    write_random_gates(other, masks, {"other.gate": (0, 0.0)})
    (masks / "broken.sadi.gguf").write_bytes(b"GGUF\x03\x00\x00\x00garbage")
    # an f32 KV cache: requests grouped differently then differ by f32 rounding only (see the
    # concurrency test's tolerance)
    with Server([str(model), "--masks", str(masks), "--n-parallel", "24", "--n-ctx", "128", "--cache-type", "f32"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory):
    """A server with an API key, one sequence, no waiting line, on a model without a chat template;
    a request may run 8,000 tokens (several seconds of decoding: the busy state the tests hold)."""
    root = tmp_path_factory.mktemp("guarded")
    model = TinyLlama().write(root / "tiny.gguf")
    with Server([str(model), "--masks", str(root), "--n-parallel", "1", "--max-queue", "0", "--n-ctx", str(LONG + 64),
                 "--log-prompts"], api_key="sekrit") as srv:
        yield srv


LONG = 8000  # tokens of a request that must still be running when the test looks (7.6 s here, alone)


def client(srv: Server, key: Optional[str] = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key or srv.api_key or "none", max_retries=0, timeout=120)


def test_start_lists_masks_and_skips_the_others(served: Server):
    status, body = served.get("/v1/masks")
    assert status == 200
    assert {m["id"] for m in body["data"]} == set(MASKS) | set(GATES)
    gate = next(m for m in body["data"] if m["id"] == "tiny.gate")
    assert (gate["object"], gate["layer"], gate["threshold"]) == ("sadi.gate", 0, 0.0)
    head = next(m for m in body["data"] if m["id"] == "tiny.head")
    assert (head["site"], head["top_k"], head["delta"], head["positions"]) == ("head", 3, 9.0, "last")
    assert head["model"]["arch"] == "llama" and len(head["pairs_sha256"]) == 64
    log = served.output()
    assert "skipped other.head.sadi.gguf: made for another model" in log
    assert "skipped broken.sadi.gguf" in log
    assert "skipped other.gate.sadi.gguf: made for another model" in log
    assert served.get("/v1/models")[1]["data"][0]["id"] == "tiny-chat.gguf"
    assert served.get("/health")[1]["status"] == "ok"


def test_completion_and_chat_whole_and_streamed(served: Server):
    c = client(served)
    steer = {"mask": "tiny.head", "delta": 12}
    whole = c.completions.create(model="x", prompt="Hello there", max_tokens=12, temperature=0, extra_body={"sadi": steer})
    assert whole.choices[0].finish_reason in ("length", "stop")
    # the byte vocabulary: BOS, then one token per byte of "▁Hello▁there" (SentencePiece's space marks)
    assert whole.usage.completion_tokens >= 1 and whole.usage.prompt_tokens == 1 + len("▁Hello▁there".encode())
    assert whole.model_extra["sadi"] == {"mask": "tiny.head", "top_k": 3, "delta": 12.0, "positions": "last"}
    pieces = list(c.completions.create(model="x", prompt="Hello there", max_tokens=12, temperature=0, stream=True,
                                       extra_body={"sadi": steer}))
    assert "".join(p.choices[0].text for p in pieces) == whole.choices[0].text
    assert pieces[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(p.model_extra["sadi"]["mask"] == "tiny.head" for p in pieces)

    msgs = [{"role": "user", "content": "Hi"}]
    chat = c.chat.completions.create(model="x", messages=msgs, max_tokens=10, temperature=0, logprobs=True, top_logprobs=2)
    assert chat.model_extra["sadi"] is None
    assert chat.choices[0].message.role == "assistant"
    content = chat.choices[0].logprobs.content
    assert len(content) == chat.usage.completion_tokens
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob >= t.logprob - 1e-9 for t in content)
    streamed = list(c.chat.completions.create(model="x", messages=msgs, max_tokens=10, temperature=0, stream=True,
                                              stream_options={"include_usage": True}))
    assert streamed[0].choices[0].delta.role == "assistant"
    assert "".join(s.choices[0].delta.content or "" for s in streamed if s.choices) == chat.choices[0].message.content
    assert streamed[-1].usage.completion_tokens == chat.usage.completion_tokens


def test_steering_changes_the_answer_and_sampling_is_reproducible(served: Server):
    c = client(served)

    def text(**kw: Any) -> str:
        return c.completions.create(model="x", prompt="abc", max_tokens=16, **kw).choices[0].text

    plain = text(temperature=0)
    assert text(temperature=0, extra_body={"sadi": {"mask": "tiny.neuron", "positions": "all"}}) != plain
    assert text(temperature=0, extra_body={"sadi": {"mask": "tiny.neuron", "delta": 0}}) == plain
    assert text(temperature=0, extra_body={"sadi": None}) == plain
    wide = {"top_k": 0, "min_p": 0.0}  # llama.cpp-style fields go in the extra body
    a = text(temperature=1.0, seed=7, top_p=1.0, extra_body=wide)
    assert a == text(temperature=1.0, seed=7, top_p=1.0, extra_body=wide)
    assert any(text(temperature=1.0, seed=s, top_p=1.0, extra_body=wide) != a for s in range(8, 12))


def test_gated_requests_report_the_decision_and_follow_it(served: Server):
    c = client(served)
    args = dict(model="x", prompt="Hello there", max_tokens=12, temperature=0)
    plain = c.completions.create(**args).choices[0].text
    steer = {"mask": "tiny.neuron", "delta": 15, "positions": "last+generated"}
    steered = c.completions.create(**args, extra_body={"sadi": steer}).choices[0].text
    assert steered != plain
    shut = c.completions.create(**args, extra_body={"sadi": {**steer, "gate": "never"}})
    assert shut.choices[0].text == plain
    assert shut.model_extra["sadi"]["gate"]["fired"] is False and shut.model_extra["sadi"]["gate"]["name"] == "never"
    opened = c.completions.create(**args, extra_body={"sadi": {**steer, "gate": "always"}})
    assert opened.model_extra["sadi"]["gate"]["fired"] is True and opened.choices[0].text != plain
    chunks = list(c.completions.create(**args, stream=True, extra_body={"sadi": {**steer, "gate": "always"}}))
    assert "".join(p.choices[0].text for p in chunks) == opened.choices[0].text
    assert all(p.model_extra["sadi"]["gate"]["fired"] is True for p in chunks)  # every chunk comes after the decision
    chat = list(c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0,
                                          stream=True, extra_body={"sadi": {**steer, "gate": "never"}}))
    assert chat[0].model_extra["sadi"]["gate"]["fired"] is None  # the role chunk goes out before the prompt is decoded
    assert chat[-1].model_extra["sadi"]["gate"]["fired"] is False


def test_composed_and_gated_requests_with_the_openai_client_answer_in_a_batch_as_alone(served: Server):
    c = client(served)
    mix = [None, {"mask": "tiny.head"}, [{"mask": "tiny.head", "delta": 4}, {"mask": "tiny.neuron", "delta": -3}],
           {"mask": "tiny.neuron", "delta": 15, "positions": "last+generated", "gate": "always"},
           [{"mask": "tiny.hidden", "delta": 6, "positions": "last+generated", "gate": "tiny.gate"}, {"mask": "tiny.head", "delta": 5}],
           {"mask": "tiny.head", "delta": 12, "gate": "never"}] * 3

    def ask(i: int) -> Any:
        words = "".join(chr(97 + (7 * i + k) % 26) for k in range(5 + i % 7))
        r = c.completions.create(model="x", prompt=words, max_tokens=10 + i % 5, temperature=0, logprobs=0,
                                 extra_body={"sadi": mix[i]})
        lp = r.choices[0].logprobs
        return r.choices[0].text, (lp.token_logprobs if lp else []), r.model_extra["sadi"]

    before = served.get("/health")[1]["decodes"]
    with ThreadPoolExecutor(len(mix)) as pool:
        together = list(pool.map(ask, range(len(mix))))
    assert served.get("/health")[1]["decodes"] - before < sum(len(t[1]) for t in together)  # they shared decodes
    tol = logprob_tolerance(TinyLlama())
    for i, (t, a) in enumerate(zip(together, [ask(i) for i in range(len(mix))])):
        assert t[0] == a[0], (i, mix[i])
        assert np.abs(np.array(t[1]) - np.array(a[1])).max(initial=0) <= tol
        t_score, a_score = _pop_gate_score(t[2]), _pop_gate_score(a[2])
        assert t[2] == a[2] and (a_score is None) == (t_score is None)
        if a_score is not None:
            assert abs(t_score - a_score) <= GATE_TOL


def _scrape(srv: Server) -> Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]:
    """GET /metrics parsed with Prometheus' own parser: {(sample name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    status, text = srv.get("/metrics")
    assert status == 200 and isinstance(text, str), text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metrics_move_with_requests_and_each_request_has_one_access_log_line(served: Server):
    before = _scrape(served)
    c = client(served)
    r = c.completions.create(model="x", prompt="secret words", max_tokens=6, temperature=0,
                             extra_body={"sadi": {"mask": "tiny.neuron", "gate": "always"}})
    assert served.post("/v1/completions", {"prompt": "x", "top_p": 3})[0] == 400
    assert served.get("/no/such/route")[0] == 404
    wait_until(lambda: "GET other 404" in served.output(), "the access log line of the 404")
    after = _scrape(served)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved("sadi_requests_total", route="/v1/completions", status="200") == 1
    assert moved("sadi_requests_total", route="/v1/completions", status="400") == 1
    assert moved("sadi_requests_total", route="other", status="404") == 1  # a client cannot grow the label set
    assert moved("sadi_prompt_tokens_total") == r.usage.prompt_tokens
    assert moved("sadi_completion_tokens_total") == r.usage.completion_tokens
    assert moved("sadi_steered_requests_total", mask="tiny.neuron") == 1
    assert moved("sadi_gate_decisions_total", gate="always", fired="true") == 1
    assert moved("sadi_decode_seconds_count") >= 1 and moved("sadi_decode_seconds_sum") > 0
    assert after[("sadi_sequences_running", ())] >= 0 and after[("sadi_steering_configurations", ())] >= 1
    lines = [l for l in served.output().splitlines() if " POST /v1/completions 200 " in l]
    want = (f"prompt_tokens={r.usage.prompt_tokens} cached_tokens={r.usage.prompt_tokens_details.cached_tokens} "
            f"completion_tokens={r.usage.completion_tokens} mask=tiny.neuron gate=always fired=True")
    assert any(want in l for l in lines), (want, lines)
    assert "secret words" not in served.output()  # prompts stay out of the log unless --log-prompts


SCHEMA = {"type": "object", "properties": {"count": {"type": "integer"}, "ok": {"type": "boolean"},
                                          "mood": {"enum": ["happy", "sad"]}}, "required": ["count", "ok", "mood"]}


def test_structured_output_and_logit_bias(served: Server):
    c = client(served)
    fmt = {"type": "json_schema", "json_schema": {"name": "report", "schema": SCHEMA}}
    for sadi in (None, {"mask": "tiny.neuron", "positions": "all"}):
        chat = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Report."}], max_tokens=120,
                                         temperature=0, response_format=fmt, extra_body={"sadi": sadi})
        got = json.loads(chat.choices[0].message.content)  # the grammar ends it: it parses whole
        assert chat.choices[0].finish_reason == "stop"
        assert set(got) == {"count", "ok", "mood"} and isinstance(got["count"], int) and isinstance(got["ok"], bool)
        assert got["mood"] in ("happy", "sad")
        sampled = c.completions.create(model="x", prompt="Report:", max_tokens=120, temperature=1.0, seed=3,
                                       extra_body={"sadi": sadi, "response_format": fmt, "top_k": 0, "min_p": 0.0})
        assert set(json.loads(sampled.choices[0].text)) == {"count", "ok", "mood"}
    answers = {c.completions.create(model="x", prompt=f"Q{i}?", max_tokens=8, temperature=1.0, seed=i,
                                    extra_body={"grammar": 'root ::= "yes" | "no"'}).choices[0].text for i in range(8)}
    assert answers <= {"yes", "no"} and answers  # nothing but the grammar's words
    msgs = [{"role": "user", "content": "abc"}]
    first = c.chat.completions.create(model="x", messages=msgs, max_tokens=4, temperature=0, logprobs=True).choices[0]
    byte = first.logprobs.content[0].bytes  # the byte vocabulary: byte b is token 3 + b
    banned = c.chat.completions.create(model="x", messages=msgs, max_tokens=4, temperature=0, logprobs=True,
                                       logit_bias={str(3 + byte[0]): -100})
    assert banned.choices[0].logprobs.content[0].bytes != byte
    q = c.completions.create(model="x", prompt="abc", max_tokens=4, temperature=0, logit_bias={str(3 + ord("Q")): 100})
    assert q.choices[0].text.startswith("Q")


def test_n_choices_share_the_prompt_and_are_reproducible(served: Server):
    c = client(served)
    args = dict(model="x", prompt="Once upon", max_tokens=12)
    greedy = c.completions.create(**args, temperature=0, n=3)
    one = c.completions.create(**args, temperature=0)
    assert [ch.index for ch in greedy.choices] == [0, 1, 2]
    assert {ch.text for ch in greedy.choices} == {one.choices[0].text}  # the same logits: the same greedy answer
    assert greedy.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counted (and evaluated) once
    assert greedy.usage.completion_tokens == 3 * one.usage.completion_tokens
    wide = {"top_k": 0, "min_p": 0.0, "sadi": {"mask": "tiny.neuron", "positions": "last+generated", "gate": "always"}}
    sampled = c.completions.create(**args, temperature=1.0, top_p=1.0, seed=11, n=3, extra_body=wide)
    again = c.completions.create(**args, temperature=1.0, top_p=1.0, seed=11, n=3, extra_body=wide)
    texts = [ch.text for ch in sampled.choices]
    assert texts == [ch.text for ch in again.choices]  # seeds 11, 12, 13: reproducible
    assert len(set(texts)) > 1
    assert sampled.model_extra["sadi"]["gate"]["fired"] is True
    chunks = list(c.completions.create(**args, temperature=1.0, top_p=1.0, seed=11, n=3, stream=True, extra_body=wide))
    streamed = ["".join(ch.choices[0].text for ch in chunks if ch.choices and ch.choices[0].index == i) for i in range(3)]
    assert streamed == texts
    assert sorted(ch.choices[0].index for ch in chunks if ch.choices and ch.choices[0].finish_reason) == [0, 1, 2]
    chat = c.chat.completions.create(model="x", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, temperature=0, n=2)
    assert len(chat.choices) == 2 and chat.choices[0].message.content == chat.choices[1].message.content


def test_kept_prompt_prefixes_answer_as_a_server_without_them(served: Server):
    """Reused prompt cells give the answers a server that evaluates every prompt gives (f32 KV:
    token for token, log-probabilities within the cross-talk tolerance); a request steered at
    every position never reuses cells made without its steering."""
    system = "You are terse. Answer in one line. "  # 36 bytes: one token each (with the answer, within --n-ctx 128)
    def ask(srv: Server, prompt: str, sadi: Any = None) -> Tuple[Dict[str, Any], int]:
        status, body = srv.post("/v1/completions", {"prompt": prompt, "max_tokens": 10, "temperature": 0, "logprobs": 0, "sadi": sadi})
        assert status == 200, body
        choice = body["choices"][0]
        lp = choice["logprobs"] or {"tokens": [], "token_logprobs": []}
        ask.prompt_tokens = body["usage"]["prompt_tokens"]  # type: ignore[attr-defined]
        return {"tokens": lp["tokens"], "lp": lp["token_logprobs"]}, body["usage"]["prompt_tokens_details"]["cached_tokens"]

    first, cached = ask(served, system + "Q: why?", {"mask": "tiny.neuron", "delta": 15, "positions": "all"})
    assert cached == 0
    _, cached = ask(served, system + "Q: why?")  # unsteered: its whole prompt is kept
    plain_b, cached_b = ask(served, system + "Q: how so?")  # the system prompt comes from the kept cells
    steered_b, cached_s = ask(served, system + "Q: how so?", {"mask": "tiny.head", "delta": 9})  # `last`: all but its last token
    n_b = ask.prompt_tokens  # type: ignore[attr-defined]
    again, cached_all = ask(served, system + "Q: why?", {"mask": "tiny.neuron", "delta": 15, "positions": "all"})
    n_system = 1 + len(("▁" + system.replace(" ", "▁")).encode())  # BOS, a token per byte ("▁" for a space: 3 bytes)
    assert cached_b >= n_system  # the shared beginning, from the first request's kept cells
    assert cached_s == n_b - 1  # all but the steered last token
    tol = logprob_tolerance(TinyLlama())
    # never the unsteered cells: its answer is the one computed fresh (other cache cells: f32 rounding apart)
    assert cached_all == 0 and again["tokens"] == first["tokens"]
    assert np.abs(np.array(again["lp"]) - np.array(first["lp"])).max(initial=0) <= tol
    model = served.args[1]
    # a request that arrives while another with the same prompt is still generating takes that one's cells
    running = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
    running.request("POST", "/v1/completions", json.dumps({"prompt": system + "Q: and then?", "max_tokens": 60, "min_tokens": 60,
                                                           "stream": True, "temperature": 0}), {"Content-Type": "application/json"})
    assert running.getresponse().fp.readline()  # its first chunk: its prompt is evaluated
    shared, cached_r = ask(served, system + "Q: and then?", {"mask": "tiny.head", "delta": 9})
    assert cached_r == ask.prompt_tokens - 1  # type: ignore[attr-defined]
    running.close()
    with Server([model, "--masks", served.args[3], "--n-ctx", "128", "--cache-type", "f32", "--prompt-cache", "0"]) as fresh:
        for got, sadi, prompt in ((plain_b, None, system + "Q: how so?"), (steered_b, {"mask": "tiny.head", "delta": 9}, system + "Q: how so?"),
                                  (shared, {"mask": "tiny.head", "delta": 9}, system + "Q: and then?")):
            want, cached = ask(fresh, prompt, sadi)
            assert cached == 0 and got["tokens"] == want["tokens"], (sadi, got, want)
            assert np.abs(np.array(got["lp"]) - np.array(want["lp"])).max(initial=0) <= tol
    scraped = _scrape(served)
    assert scraped[("sadi_prompt_cache_hits_total", ())] >= 2 and scraped[("sadi_prompt_cache_reused_tokens_total", ())] >= 2 * n_system


def test_stop_strings_end_the_answer(served: Server):
    c = client(served)
    full = c.completions.create(model="x", prompt="Hello", max_tokens=24, temperature=0).choices[0].text
    cut = next((i for i in range(2, len(full)) if full[i].isprintable() and not full[i].isspace()), None)
    assert cut is not None, f"no printable character to stop at in {full!r}"
    stop = full[cut]
    first = full.index(stop)
    got = c.completions.create(model="x", prompt="Hello", max_tokens=24, temperature=0, stop=[stop])
    assert got.choices[0].text == full[:first] and got.choices[0].finish_reason == "stop"
    streamed = c.completions.create(model="x", prompt="Hello", max_tokens=24, temperature=0, stop=[stop], stream=True)
    assert "".join(p.choices[0].text for p in streamed) == full[:first]


def _spec(i: int) -> Dict[str, Any]:
    """Request i of the cross-talk mix: chat or completion, one of three masks at several deltas
    and policies or none, prompts and answers of different lengths."""
    rng = np.random.default_rng(100 + i)
    steering = [None, {"mask": "tiny.head"}, {"mask": "tiny.head", "delta": -3, "top_k": 5},
                {"mask": "tiny.neuron", "positions": "all"}, {"mask": "tiny.hidden", "delta": 6, "positions": "last+generated"},
                {"mask": "tiny.neuron", "delta": 4}, None,
                [{"mask": "tiny.head", "delta": 4}, {"mask": "tiny.neuron", "delta": -3, "weighting": "mean-diff"}],
                [{"mask": "tiny.hidden", "delta": 2, "positions": "all"}, {"mask": "tiny.head", "delta": 5}],
                {"mask": "tiny.head", "gate": "tiny.gate"},
                [{"mask": "tiny.neuron", "delta": 6, "positions": "last+generated"}, {"mask": "tiny.head", "delta": -4, "gate": "tiny.gate"}],
                {"mask": "tiny.hidden", "delta": 6, "positions": "last+generated", "gate": "always"}][i % 12]
    words = "".join(chr(c) for c in rng.integers(97, 123, size=int(rng.integers(2, 60))))
    spec: Dict[str, Any] = {"max_tokens": int(rng.integers(3, 30)), "temperature": 0, "sadi": steering}
    if i % 2:
        spec["messages"] = [{"role": "user", "content": words}]
        spec["logprobs"] = True
    else:
        spec["prompt"] = words
        spec["logprobs"] = 0
    return spec


def _answer(srv: Server, spec: Dict[str, Any]) -> Dict[str, Any]:
    chat = "messages" in spec
    status, body = srv.post("/v1/chat/completions" if chat else "/v1/completions", spec)
    assert status == 200, body
    choice = body["choices"][0]
    if choice["logprobs"] is None:  # the first token sampled ended the answer
        tokens, lp = [], []
        text = choice["message"]["content"] if chat else choice["text"]
    elif chat:  # the bytes of every token: exact token identity on the byte vocabulary
        tokens = [bytes(t["bytes"]) for t in choice["logprobs"]["content"]]
        lp = [t["logprob"] for t in choice["logprobs"]["content"]]
        text = choice["message"]["content"]
    else:
        tokens = choice["logprobs"]["tokens"]
        lp = choice["logprobs"]["token_logprobs"]
        text = choice["text"]
    return {"text": text, "tokens": tokens, "finish": choice["finish_reason"], "sadi": body["sadi"], "lp": lp,
            "gate_score": _pop_gate_score(body["sadi"])}


def _pop_gate_score(sadi: Any) -> Optional[float]:
    """The gate's score in a response's sadi field, taken out of it (compared with a tolerance)."""
    for part in sadi if isinstance(sadi, list) else [sadi] if sadi else []:
        if "gate" in part:
            return part["gate"].pop("score")
    return None


GATE_TOL = 4 * 256 * float(np.finfo(np.float32).eps)


def _gate_of(spec: Dict[str, Any]) -> Optional[str]:
    parts = spec["sadi"] if isinstance(spec["sadi"], list) else [spec["sadi"]] if spec["sadi"] else []
    return next((p["gate"] for p in parts if "gate" in p), None)


def logprob_tolerance(tiny: TinyLlama) -> float:
    """How far a token's log-probability may move when its request shares decodes with others.
    With an f32 KV cache the two runs differ only by f32 rounding: a row's sums run in another order
    in another grouping of rows (another matmul kernel), a few ulps per operation, which we bound
    by ORACLE_ULPS f32 eps relative to the largest logit (as the oracle tests do). A logit is
    w . (g * x / rms(x)) for the output row w and the final norm's weights g, and x / rms(x) has
    norm sqrt(n_embd): so |logit| <= max_w |w * g| * sqrt(n_embd). A log-probability is a logit less
    the log-sum-exp of all of them: its error is at most twice a logit's."""
    bound = np.linalg.norm(tiny.w["output.weight"] * tiny.w["output_norm.weight"], axis=1).max() * np.sqrt(tiny.n_embd)
    return 2 * f32_tol([bound])


def test_64_concurrent_requests_answer_exactly_as_alone(served: Server):
    specs = [_spec(i) for i in range(72)]
    before = served.get("/health")[1]["decodes"]
    with ThreadPoolExecutor(len(specs)) as pool:
        together = list(pool.map(lambda s: _answer(served, s), specs))
    decodes = served.get("/health")[1]["decodes"] - before
    alone = [_answer(served, s) for s in specs]
    tol = logprob_tolerance(TinyLlama())
    for i, (t, a) in enumerate(zip(together, alone)):
        t_lp, a_lp = np.array(t.pop("lp")), np.array(a.pop("lp"))
        assert np.abs(t_lp - a_lp).max(initial=0) <= tol, (i, t_lp, a_lp, tol)
        t_gate, a_gate = t.pop("gate_score"), a.pop("gate_score")
        if a_gate is not None:
            # the score is a cosine of f32 rows that differ by f32 rounding between groupings (see
            # logprob_tolerance): relative error ORACLE_ULPS eps per value, a few times that in the cosine
            assert abs(t_gate - a_gate) <= GATE_TOL, (i, t_gate, a_gate)
            assert abs(a_gate - GATES[_gate_of(specs[i])][1]) > GATE_TOL  # no decision this close to call
        assert (t_gate is None) == (a_gate is None)
        assert t == a, f"request {i} ({specs[i]['sadi']}) answered differently in the batch"
        asked = specs[i]["sadi"]
        if isinstance(asked, list):  # composed: the response lists the masks in the request's order
            assert [part["mask"] for part in t["sadi"]] == [part["mask"] for part in asked]
        elif asked:
            assert t["sadi"]["mask"] == asked["mask"]
        else:
            assert t["sadi"] is None
    fired = [a["sadi"]["gate"]["fired"] if isinstance(a["sadi"], dict) else a["sadi"][1]["gate"]["fired"]
             for s, a in zip(specs, alone) if _gate_of(s) == "tiny.gate"]
    assert 0 < sum(fired) < len(fired), fired  # the random gate fired on some prompts and not on others
    # the requests really shared decodes: one at a time needs a decode per generated token
    tokens = sum(len(a["tokens"]) for a in alone)
    assert decodes < tokens / 4, (decodes, tokens)
    # and steering acted: steered requests differ from the same prompt unsteered
    differs = sum(_answer(served, {**s, "sadi": None})["tokens"] != a["tokens"] for s, a in zip(specs, alone) if s["sadi"])
    assert differs >= 10, differs


@pytest.mark.parametrize("body, fragment", [
    ({"prompt": "x", "temperature": "hot"}, "temperature"),
    ({"prompt": "x", "sadi": {"mask": "nope"}}, "unknown mask 'nope'"),
    ({"prompt": "x", "sadi": {"mask": ["tiny.head"]}}, "unknown mask ['tiny.head']"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "delta": "big"}}, "sadi.delta"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "delta": 1e300 * 10}}, "sadi.delta"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "top_k": 0}}, "sadi.top_k"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "positions": "first"}}, "sadi.positions"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "strength": 3}}, "unknown field(s) strength"),
    ({"prompt": "x", "sadi": [{"mask": "tiny.head"}, {"mask": "nope"}]}, "sadi.mask: unknown mask 'nope'"),
    ({"prompt": "x", "sadi": [{"mask": "tiny.head"}] * 100}, "sadi: a list of 1..8 steering objects, got 100"),
    ({"prompt": "x", "sadi": [{"mask": "tiny.head", "positions": "all"}, {"mask": "tiny.neuron", "positions": "last"}]},
     "sadi.positions: one position policy"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "weighting": "loud"}}, "sadi.weighting: unknown weighting 'loud'"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "gate": "nope"}}, "sadi.gate: unknown gate 'nope'"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "gate": "other.gate"}}, "sadi.gate: unknown gate 'other.gate'"),
    ({"prompt": "x", "sadi": {"mask": "tiny.gate"}}, "sadi.mask: unknown mask 'tiny.gate'"),
    ({"prompt": "x", "sadi": {"gate": "tiny.gate"}}, "sadi.mask: a gate gates a mask"),
    ({"prompt": "x", "sadi": [{"mask": "tiny.head", "gate": "always"}, {"mask": "tiny.neuron", "gate": "never"}]},
     "sadi.gate: one gate for the whole steering"),
    ({"prompt": "x", "sadi": {"mask": "tiny.head", "gate": "always", "positions": "all"}}, "sadi.positions: a gate decides"),
    ({"prompt": "x", "sadi": "tiny.head"}, "sadi"),
    ({"prompt": "x" * 200}, "the prompt has 204 tokens"),  # BOS, "▁" (3 bytes), 200 bytes
    ({"prompt": "x", "n": 17}, "n must be in 1..16"),
    ({"prompt": "x", "n": 0}, "n must be in 1..16"),
    ({"prompt": "x", "logit_bias": {"999999": 3}}, "logit_bias: token 999999 is outside this model's vocabulary"),
    ({"prompt": "x", "logit_bias": {"five": 3}}, "logit_bias keys are token ids, got 'five'"),
    ({"prompt": "x", "logit_bias": {"5": 300}}, "logit_bias: the bias of token 5 must be a number in -100..100"),
    ({"prompt": "x", "grammar": "root ::= foo"}, "grammar: llama.cpp could not parse the grammar"),
    ({"prompt": "x", "grammar": 'root ::= "a"', "response_format": {"type": "json_object"}}, "grammar: give either"),
    ({"prompt": "x", "response_format": {"type": "xml"}}, "response_format type 'xml': use text, json_object or json_schema"),
    ({"prompt": "x", "response_format": {"type": "json_schema"}}, "response_format: a json_schema response_format needs"),
    ({"prompt": ["a", "b"]}, "give one string"),
    ({"prompt": "x", "top_p": 3}, "top_p"),
    ({"prompt": "x", "seed": -5}, "seed must be in"),
    ({"prompt": "x", "logprobs": 50}, "logprobs must be at most 20"),
])
def test_bad_requests_get_400_with_the_reason(served: Server, body: Dict[str, Any], fragment: str):
    status, reply = served.post("/v1/completions", body)
    assert status == 400, reply
    assert fragment in reply["error"]["message"], reply
    assert reply["error"]["type"] == "invalid_request_error"


def test_malformed_bodies_and_nan_get_400(served: Server):
    status, reply = served.request("POST", "/v1/completions", raw=b"{not json")
    assert status == 400 and "error" in reply
    status, reply = served.request("POST", "/v1/completions", raw=b'{"prompt": "x", "sadi": {"mask": "tiny.head", "delta": NaN}}')
    assert status == 400 and "sadi.delta" in reply["error"]["message"], reply
    status, reply = served.post("/v1/chat/completions", {"messages": []})
    assert status == 400 and "messages" in reply["error"]["message"]
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    status, reply = served.post("/v1/chat/completions", {"messages": [{"role": "user", "content": [image]}]})
    assert status == 400 and "only text parts" in reply["error"]["message"], reply
    parts = [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}]
    joined = served.post("/v1/chat/completions", {"messages": [{"role": "user", "content": parts}], "max_tokens": 4, "temperature": 0})
    whole = served.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0})
    assert joined[0] == 200 and joined[1]["choices"] == whole[1]["choices"], joined
    # accepted oddities: an empty stop string (ignored), seed -1 (random), max_tokens 0 (up to the context)
    status, reply = served.post("/v1/completions", {"prompt": "x", "stop": [""], "seed": -1, "max_tokens": 0, "temperature": 0})
    assert status == 200 and reply["usage"]["completion_tokens"] >= 1, reply
    assert served.get("/health")[1]["status"] == "ok"  # none of it hurt the server


def test_api_key_chat_template_and_busy(guarded: Server):
    status, reply = guarded.get("/v1/models", headers={"Authorization": "Bearer wrong"})
    assert status == 401 and reply["error"]["code"] == "invalid_api_key"
    assert guarded.request("GET", "/v1/masks", headers={"Authorization": ""})[0] == 401
    with pytest.raises(openai.AuthenticationError):
        client(guarded, key="wrong").completions.create(model="x", prompt="a", max_tokens=2)
    c = client(guarded)
    assert c.completions.create(model="x", prompt="a", max_tokens=2, temperature=0).usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError, match="no chat template"):
        c.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}])
    # one sequence, no waiting line: a second request while one runs gets 429. The first asks for
    # LONG tokens (end tokens masked until then): it holds the sequence until its client goes away.
    conn = http.client.HTTPConnection("127.0.0.1", guarded.port, timeout=60)
    conn.request("POST", "/v1/completions", json.dumps({"prompt": "a", "max_tokens": LONG, "min_tokens": LONG, "stream": True,
                                                        "temperature": 0}),
                 {"Content-Type": "application/json", "Authorization": "Bearer sekrit"})
    resp = conn.getresponse()
    assert resp.status == 200
    resp.fp.readline()  # the first chunk arrived: the request holds the only sequence
    status, reply = guarded.post("/v1/completions", {"prompt": "b", "max_tokens": 2})
    assert status == 429 and reply["error"]["type"] == "rate_limit_error", reply
    # the client goes away mid-answer: its sequence is freed long before the answer could end
    started = guarded.get("/health")[1]["decodes"]
    conn.close()
    wait_until(lambda: guarded.get("/health")[1]["running"] == 0, "the sequence was freed")
    assert guarded.get("/health")[1]["decodes"] - started < LONG // 2, "the answer ran on after its client left"
    status, reply = guarded.post("/v1/completions", {"prompt": "b", "max_tokens": 2})
    assert status == 200, reply
    # metrics need the key too; with --log-prompts the access log shows each prompt
    assert guarded.request("GET", "/metrics", headers={"Authorization": ""})[0] == 401
    assert guarded.post("/v1/completions", {"prompt": "tell me about otters", "max_tokens": 2})[0] == 200
    wait_until(lambda: "prompt='tell me about otters'" in guarded.output(), "the prompt in the access log")


def test_playground_page_is_self_contained(served: Server):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    conn.request("GET", "/")
    page = conn.getresponse().read().decode()
    assert "<select id=\"mask\">" in page and "/v1/masks" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from outside the machine


def test_chat_format_for_a_model_without_template(tmp_path: Path):
    """--chat-format names llama-cpp-python's format; the prompt is the one that format builds."""
    model = TinyLlama().write(tmp_path / "plain.gguf")
    import sadi_cpp
    from sadi_cpp.llama.chat import chat_prompt, use_chat_format

    hook = sadi_cpp.load(str(model), n_ctx=64)
    try:
        use_chat_format(hook, "chatml")
        tokens, stop = chat_prompt(hook, [{"role": "user", "content": "Hi"}])
        # llama-cpp-python's chatml formatter called directly, tokenized the way its handler does
        from llama_cpp.llama_chat_format import format_chatml

        made = format_chatml(messages=[{"role": "user", "content": "Hi"}])
        assert "<|im_start|>user\nHi<|im_end|>" in made.prompt
        want = hook.llm.tokenize(made.prompt.encode(), add_bos=not made.added_special, special=True)
        assert tokens == want and stop == [made.stop]
    finally:
        hook.llm.close()
    with Server([str(model), "--masks", str(tmp_path), "--chat-format", "chatml", "--n-ctx", "128"]) as srv:
        status, reply = srv.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})
    assert status == 200 and reply["usage"]["prompt_tokens"] == len(want), reply


def test_random_bodies_never_hurt_the_server(served: Server):
    """300 bodies of random fields and types: each answer is 200 or 400 with an error message,
    and the server keeps answering correctly afterwards."""
    rng = np.random.default_rng(7)
    values = [None, True, -1, 0, 3, 10**30, -1e308, 0.5, float("inf"), "", "x" * 50, "tiny.head", [], ["a"], {}, {"mask": "tiny.head"},
              {"mask": "tiny.hidden", "delta": -1e4}, {"mask": ["tiny.head"], "positions": []}, [{"role": "user"}], [{"role": "bot", "content": "x"}], [1, 2], {"a": [None]}]
    fields = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stream", "seed", "logprobs",
              "top_logprobs", "sadi", "n", "repeat_penalty", "presence_penalty", "min_tokens", "stream_options", "model"]
    before = served.post("/v1/completions", {"prompt": "abc", "max_tokens": 6, "temperature": 0})[1]["choices"][0]["text"]
    for i in range(300):
        body = {f: values[int(rng.integers(len(values)))] for f in rng.choice(fields, int(rng.integers(1, 6)), replace=False)}
        body.setdefault("max_tokens", 4)
        if isinstance(body.get("max_tokens"), int) and not isinstance(body["max_tokens"], bool) and body["max_tokens"] > 8:
            body["max_tokens"] = 8  # keep it quick: the point is the field mix
        body["stream"] = False
        route = "/v1/chat/completions" if i % 2 else "/v1/completions"
        status, reply = served.post(route, body)
        assert status in (200, 400), (body, status, reply)
        if status == 400:
            assert reply["error"]["message"], body
    assert served.get("/health")[1]["running"] == 0
    after = served.post("/v1/completions", {"prompt": "abc", "max_tokens": 6, "temperature": 0})[1]["choices"][0]["text"]
    assert after == before


def test_serve_refuses_bad_options_before_loading_anything(tmp_path: Path):
    from helpers import bad

    bad(["serve", "--masks", str(tmp_path / "none")], "no such folder of masks")
    bad(["serve", "--n-parallel", "0"], "--n-parallel must be in 1..64")
    bad(["serve", "--port", "0"], "--port must be in 1..65535")
    bad(["serve", "--api-key", " "], "--api-key is empty")
    bad(["serve", "a.gguf", "--model", "b.gguf"], "give the model once")
