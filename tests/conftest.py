"""Shared fixtures: the tiny llama model (written once per session) and Llama factories.
Shared helper functions are in helpers.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from llama_cpp import Llama

from tiny_model import TinyLlama

GGML_TYPE_F32 = 0
# scripts/vulkan_check.sh runs the oracle tests with the tiny model's layers on a GPU backend
# (SADI_TEST_N_GPU_LAYERS=-1); unset, everything stays on the CPU as in CI
N_GPU_LAYERS = int(os.environ.get("SADI_TEST_N_GPU_LAYERS", "0"))


@pytest.fixture(scope="session")
def tiny() -> TinyLlama:
    return TinyLlama()


@pytest.fixture(scope="session")
def tiny_path(tiny: TinyLlama, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny.write(tmp_path_factory.mktemp("models") / "tiny-llama-f32.gguf")


@pytest.fixture
def make_llama(tiny_path: Path):
    """Llama on the tiny model with an f32 KV cache (the oracle computes in f32/f64 too)."""
    made = []

    def make(**kw) -> Llama:
        args = dict(model_path=str(tiny_path), n_ctx=256, n_batch=256, n_ubatch=256, n_threads=2,
                    type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32, verbose=False, logits_all=False, n_gpu_layers=N_GPU_LAYERS)
        args.update(kw)
        llm = Llama(**args)
        made.append(llm)
        return llm

    yield make
    for llm in made:
        llm.close()


@pytest.fixture(autouse=True)
def stats_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test keeps its cached statistics (sadi_cpp.masks.stats_cache) in a folder of its own, never
    in the user's ~/.cache; subprocesses inherit the variable."""
    path = tmp_path_factory.mktemp("stats-cache")
    monkeypatch.setenv("SADI_CPP_CACHE", str(path))
    return path
