"""Loads the compiled engine after llama_cpp, so that both share one libllama/libggml."""

from __future__ import annotations

import functools
import importlib.metadata
import os
from typing import Any, Optional


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

    avoid_amx_repacking()

    try:
        from sadi_cpp import _core
    except ImportError as e:
        _core = installed_core()
        if _core is None:
            raise ImportError(f"sadi_cpp's compiled engine is missing ({e}): install the package (pip install .)") from None
    return _core


def installed_core() -> Any:
    """The compiled engine of the installed sadi-cpp, loaded as sadi_cpp._core, when Python runs
    from a source checkout (its sadi_cpp/ folder comes first on sys.path and has no engine); None
    when sadi-cpp is not installed. The checkout's Python modules then run with the installed
    engine, so both must be of one version (ImportError otherwise)."""
    import importlib.util
    import sys

    import sadi_cpp

    try:
        dist = importlib.metadata.distribution("sadi-cpp")
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [f for f in dist.files or [] if f.parts[:1] == ("sadi_cpp",) and f.name.startswith("_core.")
             and f.suffix in (".so", ".pyd", ".dylib")]
    if not found:
        return None
    if dist.version != sadi_cpp.__version__:
        raise ImportError(f"the installed sadi-cpp is {dist.version} but this source folder is {sadi_cpp.__version__}: "
                          "reinstall it from here (pip install .)")
    spec = importlib.util.spec_from_file_location("sadi_cpp._core", str(dist.locate_file(found[0])))
    if spec is None or spec.loader is None:
        return None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sadi_cpp._core"] = module
    spec.loader.exec_module(module)
    sadi_cpp._core = module  # type: ignore[attr-defined]
    return module


# llama.cpp's AMX kernels (compiled in by a native build on Intel CPUs with AMX, e.g. Xeon
# Sapphire Rapids) crash in ggml_backend_amx_mul_mat on the first decode of every model tried here
# (the default Gemma 3 Q4_K_M and Q8_0 test models; upstream llama.cpp issue #20824, open without
# a fix). The weights reach those kernels only through the "extra" buffer types that repack them
# at load time; with those off, llama.cpp computes with its ordinary CPU kernels.
AMX_ENV = "SADI_CPP_ALLOW_AMX"


def has_amx_kernels(system_info: str) -> bool:
    return "AMX_INT8 = 1" in system_info


def avoid_amx_repacking() -> None:
    """On a llama.cpp build with AMX kernels, every Llama made in this process from now on loads
    its weights without the repacking extra buffer types (model param ``use_extra_bufts`` off), so
    the crashing AMX path is never taken. ``SADI_CPP_ALLOW_AMX=1`` keeps llama.cpp's default."""
    from llama_cpp import llama_cpp as lib

    if os.environ.get(AMX_ENV) == "1" or getattr(lib.llama_model_default_params, "_sadi_no_amx", False):
        return
    if not has_amx_kernels(lib.llama_print_system_info().decode("utf-8", errors="replace")):
        return
    default = lib.llama_model_default_params

    @functools.wraps(default)
    def without_repacking() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    without_repacking._sadi_no_amx = True  # type: ignore[attr-defined]
    lib.llama_model_default_params = without_repacking
