"""Loads the compiled engine after llama_cpp, so that both share one libllama/libggml."""

from __future__ import annotations

import importlib.metadata
from typing import Optional


def pinned_llama_cpp_python() -> Optional[str]:
    """The llama-cpp-python version sadi-cpp was built for: the pin in its own package metadata
    (from pyproject.toml, the pin's one source); None when the metadata is not installed."""
    try:
        requires = importlib.metadata.requires("sadi-cpp") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for req in requires:
        name, sep, version = req.partition("==")
        if sep and name.strip() == "llama-cpp-python":
            return version.split(";")[0].strip()
    return None


def load_core():
    """Import llama_cpp (which maps its libraries) and then sadi_cpp._core, which links the same ones."""
    pinned = pinned_llama_cpp_python()
    installed = importlib.metadata.version("llama-cpp-python")
    if pinned is not None and installed != pinned:
        raise ImportError(
            f"sadi-cpp was built for llama-cpp-python {pinned}, but {installed} is installed; "
            f"run: pip install llama-cpp-python=={pinned} and reinstall sadi-cpp"
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
