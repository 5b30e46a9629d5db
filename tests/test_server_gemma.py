"""sadi-cpp serve on the default quantized model: 64 concurrent greedy requests (8 prompts x 8
steering configurations) against the same requests sent alone.

On this model llama.cpp's numbers depend on how rows are grouped into a decode: plain llama.cpp,
without sadi-cpp, moves the first token's log-probabilities by up to 0.126 nats when 16 prompts
share a decode instead of running alone (benchmarks/grouping_drift.py); the drift compounds over
the generated tokens and grows with the steering strength. So a batched answer may leave its solo twin at a near-tie. Two checks:

1. exact, at the engine: a row's logits are bit-identical whatever configurations the other
   sequences of its decode carry (none, or others'): another request's steering never reaches it;
2. through the server: every answer equals its solo run token for token, or leaves it where the
   two tokens were a near-tie in the batched run (log-probabilities within TIE_NATS, the solo token
   among the batched top 20).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional

import numpy as np
import pytest

import sadi_cpp
from sadi_cpp.llama.batch import BatchRow
from sadi_cpp.masks.mask import SadiMask
from sadi_cpp.models import resolve_model
from server_helpers import Server, wait_until, write_random_masks

# Measured on the 2-core development machine: in one run of this mix 21 of the 64 answers left
# their solo twin, at gaps of up to 0.17 nats, and tokens that stayed equal drifted by up to 0.33
# nats (an earlier mix with stronger deltas: gaps up to 0.35, drift up to 0.63). 1 nat leaves
# room for another CPU's kernels; another request's configuration reaching a row is what check 1
# rules out exactly.
TIE_NATS = 1.0
# log-probabilities returned per token: the most the API gives. A near tie can sit in a flat
# distribution (seen here: five tokens within 0.2 nats at -2.2), so the solo token must be found
# among many alternatives to measure its gap.
TOP = 20

PROMPTS = [
    "The movie was", "I think the food at this place", "Once upon a time, an old man", "The weather today is",
    "My favourite thing about the city", "She opened the letter and", "The best way to learn a language is",
    "Honestly, the service was",
]
# the paper's ranges: head delta up to ~10, neuron ~20, hidden ~10; negative ones too
CONFIGS: List[Optional[Dict[str, Any]]] = [
    None,
    {"mask": "g.head"},
    {"mask": "g.head", "delta": -4, "top_k": 8},
    {"mask": "g.neuron"},
    {"mask": "g.neuron", "delta": 5, "positions": "last+generated"},
    {"mask": "g.hidden", "positions": "all"},
    {"mask": "g.hidden", "delta": -5},
    {"mask": "g.head", "delta": 6, "positions": "all"},
]
SPECS = {"g.head": ("head", 5, 9.0), "g.neuron": ("neuron", 100, 19.0), "g.hidden": ("hidden", 10, 9.0)}


@pytest.fixture(scope="module")
def masks(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("gemma-masks")
    write_random_masks(resolve_model(None), folder, SPECS)
    return folder


def test_other_sequences_configurations_never_reach_a_row(masks):
    """Check 1: 8 prompts, each its own configuration, in one decode; each prompt's row against
    the same decode with only its own sequence bound. Bit-identical: nothing leaks across rows."""
    hook = sadi_cpp.load(None, n_ctx=1024, n_batch=512, n_ubatch=512)
    try:
        for c, spec in enumerate(CONFIGS):
            if spec is not None:
                m = SadiMask.load(masks / f"{spec['mask']}.sadi.gguf")
                hook.configure(f"c{c}", m.with_top_k(spec.get("top_k", m.top_k)), spec.get("delta", m.delta))
        tokens = [hook.llm.tokenize(p.encode()) for p in PROMPTS]

        def decode(bound: List[int]) -> np.ndarray:
            hook.kv_clear()
            rows, outputs = [], []
            for s, toks in enumerate(tokens):
                hook.bind(s, f"c{s}" if s in bound and CONFIGS[s] is not None else None)
                everywhere = (CONFIGS[s] or {}).get("positions") == "all"
                rows += [BatchRow(t, i, (s,), everywhere or i == len(toks) - 1) for i, t in enumerate(toks)]
                outputs.append(len(rows) - 1)
            return hook.decode(rows, outputs)

        mixed = decode(list(range(len(PROMPTS))))
        unsteered = decode([])
        for s in range(len(PROMPTS)):
            own_only = decode([s])
            assert np.array_equal(mixed[s], own_only[s]), f"prompt {s}: other sequences' steering changed its logits"
            if CONFIGS[s] is not None:
                assert not np.array_equal(mixed[s], unsteered[s]), f"prompt {s}: its own steering did nothing"
    finally:
        hook.llm.close()


def _ask(srv: Server, p: int, c: int) -> Dict[str, Any]:
    body = {"prompt": PROMPTS[p], "max_tokens": 4 + (3 * p + c) % 9, "temperature": 0, "repeat_penalty": 1.0,
            "logprobs": TOP, "sadi": CONFIGS[c]}
    status, reply = srv.post("/v1/completions", body)
    assert status == 200, reply
    lp = reply["choices"][0]["logprobs"]
    return {"tokens": lp["tokens"], "lp": lp["token_logprobs"], "top": lp["top_logprobs"], "sadi": reply["sadi"]}


def test_64_concurrent_requests_answer_as_alone_up_to_near_ties(masks):
    """Check 2, through a real server with 16 sequences (so requests also queue and join)."""
    model = resolve_model(None)
    with Server([str(model), "--masks", str(masks), "--n-parallel", "16", "--n-ctx", "256"]) as srv:
        pairs = [(p, c) for p in range(len(PROMPTS)) for c in range(len(CONFIGS))]
        with ThreadPoolExecutor(len(pairs)) as pool:
            together = dict(zip(pairs, pool.map(lambda pc: _ask(srv, *pc), pairs)))
        alone = {pc: _ask(srv, *pc) for pc in pairs}
    same = 0
    for (p, c), t in together.items():
        a = alone[(p, c)]
        assert (t["sadi"] or {}).get("mask") == (CONFIGS[c] or {}).get("mask")
        if t["tokens"] == a["tokens"]:
            same += 1
            continue
        j = next(k for k, (x, y) in enumerate(zip(t["tokens"], a["tokens"])) if x != y)
        solo_token = a["tokens"][j]
        assert solo_token in t["top"][j], f"{(p, c)}: solo token {solo_token!r} not in the batched top {TOP}"
        gap = t["lp"][j] - t["top"][j][solo_token]
        assert gap <= TIE_NATS, f"{(p, c)} leaves its solo answer at token {j} by {gap:.3f} nats"
    assert same >= len(pairs) // 2, f"only {same} of {len(pairs)} answers equal their solo run"


def test_a_client_that_goes_away_frees_its_sequence(masks):
    """Whole (non-streaming) answers too: the server watches the connection while the answer is
    being generated and frees the sequence as soon as the client has gone."""
    import http.client
    import json

    with Server([str(resolve_model(None)), "--masks", str(masks), "--n-parallel", "1", "--max-queue", "0"]) as srv:
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60)
        # 1,500 tokens take ~40 s here; end tokens are masked until then (min_tokens)
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "Once upon a time", "max_tokens": 1500, "min_tokens": 1500}),
                     {"Content-Type": "application/json"})
        wait_until(lambda: srv.get("/health")[1]["decodes"] > 0, "the answer is being generated")
        started = srv.get("/health")[1]["decodes"]
        conn.close()
        wait_until(lambda: srv.get("/health")[1]["running"] == 0, "the sequence was freed")
        assert srv.get("/health")[1]["decodes"] - started < 750, "the answer ran on after its client left"
        status, reply = srv.post("/v1/completions", {"prompt": "Hello", "max_tokens": 2})
        assert status == 200, reply
