"""Helpers shared by the test modules (fixtures are in conftest.py)."""

from __future__ import annotations

import numpy as np
from llama_cpp import Llama
from typer.testing import CliRunner

from sadi_cpp.cli import app

runner = CliRunner()

# The sites the numpy oracle (tiny_model.py) models: the dense llama has no expert site.
ORACLE_SITES = ("head", "neuron", "hidden")


def last_logits(llm: Llama) -> np.ndarray:
    """The logits of the last decoded output row."""
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).copy()


def eval_fresh(llm: Llama, tokens) -> np.ndarray:
    """Evaluate tokens from an empty cache; return the last token's logits."""
    llm.reset()
    llm.eval(list(tokens))
    return last_logits(llm)


def bad(args, *fragments):
    """Run the CLI and expect bad input: exit code 2, no traceback, the fragments in the message."""
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for f in fragments:
        assert f in res.output, res.output
    return res


# Tolerances follow from f32 rounding. The engine computes in f32 (ggml), the oracle in float64;
# each value is a dot product of up to n_ff = 48 terms, through 3 layers with RMS norms and a
# softmax, so rounding errors of a few eps per operation add up to some hundred eps of the
# magnitudes involved. ORACLE_ULPS bounds that, relative to the largest magnitude of the reference
# (at least 1: intermediate terms are O(1) even where a result is near 0). Comparing two llama.cpp
# runs that group rows differently (ubatch splits, batched against sequential) meets the same
# reordering of sums, so the same bound applies.
F32_EPS = float(np.finfo(np.float32).eps)
ORACLE_ULPS = 256


def f32_tol(reference, ulps: float = ORACLE_ULPS) -> float:
    return ulps * F32_EPS * max(1.0, float(np.nanmax(np.abs(reference))))


def assert_f32_close(got, want, ulps: float = ORACLE_ULPS, what: str = "") -> None:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    err, tol = float(np.nanmax(np.abs(got - want))), f32_tol(want, ulps)
    assert err <= tol, f"{what}: max abs error {err:.3g} > {tol:.3g} ({ulps} f32 eps of the largest |value|)"
