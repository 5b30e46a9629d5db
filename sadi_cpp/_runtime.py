"""Loads the compiled engine after llama_cpp, so that both share one libllama/libggml."""

from __future__ import annotations

import importlib.metadata

PINNED_LLAMA_CPP_PYTHON = "0.3.36"


def load_core():
    """Import llama_cpp (which maps its libraries) and then sadi_cpp._core, which links the same ones."""
    installed = importlib.metadata.version("llama-cpp-python")
    if installed != PINNED_LLAMA_CPP_PYTHON:
        raise ImportError(
            f"sadi-cpp was built for llama-cpp-python {PINNED_LLAMA_CPP_PYTHON}, but {installed} is installed; "
            f"run: pip install llama-cpp-python=={PINNED_LLAMA_CPP_PYTHON} and reinstall sadi-cpp"
        )
    import llama_cpp  # noqa: F401  (maps llama_cpp/lib/libllama before _core needs it)

    try:
        from sadi_cpp import _core
    except ImportError as e:
        raise ImportError(
            f"sadi_cpp's compiled engine is missing ({e}). Install the package (pip install .) and do not "
            "run Python from the source folder, whose sadi_cpp/ has no compiled _core."
        ) from None
    return _core
