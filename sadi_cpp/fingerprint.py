"""A model's fingerprint: what a mask records of the model it was built for."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Union

import gguf

from sadi_cpp.errors import BadInputError

FIELDS = ("arch", "n_layer", "n_embd", "n_head", "head_dim", "n_ff", "n_vocab", "tensors_sha256")


def model_fingerprint(path: Union[str, Path], shape: Any, n_vocab: int) -> Dict[str, object]:
    """Shape numbers plus a sha256 of the model's tensor names, shapes and types (not the weights:
    that would read the whole file; the same architecture re-quantized differs in types)."""
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf-py raises ValueError/struct errors on damaged files
        raise BadInputError(f"{path}: cannot read the GGUF header ({e})") from None
    h = hashlib.sha256()
    for t in reader.tensors:
        h.update(f"{t.name}:{','.join(str(int(d)) for d in t.shape)}:{t.tensor_type.name}\n".encode())
    fp: Dict[str, object] = {k: getattr(shape, k) for k in ("arch", "n_layer", "n_embd", "n_head", "head_dim", "n_ff")}
    fp["n_vocab"] = int(n_vocab)
    fp["tensors_sha256"] = h.hexdigest()
    return fp


def fingerprint_mismatch(want: Dict[str, object], have: Dict[str, object]) -> str:
    """'' when equal, else the differing fields as 'field: mask X, model Y; ...'."""
    diffs = [f"{k}: mask {want.get(k)!r}, model {have.get(k)!r}" for k in FIELDS if want.get(k) != have.get(k)]
    return "; ".join(diffs)
