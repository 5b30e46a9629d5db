"""A model's fingerprint: what a mask records of the model it was built for."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Dict, Union

import gguf

from sadi_cpp.errors import BadInputError
from sadi_cpp.masks.gguf_file import read_header

FIELDS = ("arch", "n_layer", "n_embd", "n_head", "head_dim", "n_ff", "n_vocab", "tensors_sha256")


def tensors_sha256(path: Union[str, Path]) -> str:
    """sha256 over the model's tensor infos, one line ``name:ne0,ne1,...:TYPE`` each, in file order
    (names, shapes and types, not the weights: reading those would take the whole file). Only the
    header is parsed, every key's value skipped by its size: milliseconds, not the seconds that
    parsing a large vocabulary takes."""
    header = read_header(path, decode=set())
    h = hashlib.sha256()
    for t in header.tensors:
        try:
            type_name = gguf.GGMLQuantizationType(t.ggml_type).name
        except ValueError:
            raise BadInputError(f"{path}: tensor {t.name} has unknown ggml type {t.ggml_type}") from None
        h.update(f"{t.name}:{','.join(str(d) for d in t.dims)}:{type_name}\n".encode())
    return h.hexdigest()


def model_fingerprint(path: Union[str, Path], shape: Any, n_vocab: int) -> Dict[str, object]:
    """Shape numbers plus the tensor-info hash (the same architecture re-quantized differs in types)."""
    fp: Dict[str, object] = {k: getattr(shape, k) for k in ("arch", "n_layer", "n_embd", "n_head", "head_dim", "n_ff")}
    fp["n_vocab"] = int(n_vocab)
    fp["tensors_sha256"] = tensors_sha256(path)
    return fp


def fingerprint_mismatch(want: Dict[str, object], have: Dict[str, object]) -> str:
    """'' when equal, else the differing fields as 'field: mask X, model Y; ...'."""
    diffs = [f"{k}: mask {want.get(k)!r}, model {have.get(k)!r}" for k in FIELDS if want.get(k) != have.get(k)]
    return "; ".join(diffs)


def hook_fingerprint(hook: Any) -> Dict[str, object]:
    """The fingerprint of the model a :class:`~sadi_cpp.llama.hook.Hook` runs."""
    return model_fingerprint(hook.model_path, hook.shape, hook.n_vocab)
