"""A model's fingerprint: what a mask records of the model it was built for, and whether a mask
fits a model. The shape numbers and the tensor layout (names and shapes) must match; the tensor
types may differ (the same model quantized another way, e.g. Q4_K_M and Q8_0: masks built on each
pick the same units), which is accepted with a note."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Union

import gguf

from sadi_cpp.errors import BadInputError
from sadi_cpp.masks.gguf_file import read_header

SHAPE_FIELDS = ("arch", "n_layer", "n_embd", "n_head", "head_dim", "n_ff", "n_vocab")
FIELDS = SHAPE_FIELDS + ("tensors_sha256",)
# optional (masks before it lack it): names and shapes only, the same for every quantization
LAYOUT_FIELD = "layout_sha256"


def _hashes(path: Union[str, Path]) -> Dict[str, str]:
    """sha256 over the model's tensor infos, one line per tensor in file order: with the types
    (``name:ne0,ne1,...:TYPE``) and without (``name:ne0,ne1,...``). Only the header is parsed,
    every key's value skipped by its size: milliseconds, not the seconds that parsing a large
    vocabulary takes."""
    header = read_header(path, decode=set())
    typed, layout = hashlib.sha256(), hashlib.sha256()
    for t in header.tensors:
        try:
            type_name = gguf.GGMLQuantizationType(t.ggml_type).name
        except ValueError:
            raise BadInputError(f"{path}: tensor {t.name} has unknown ggml type {t.ggml_type}") from None
        shape = f"{t.name}:{','.join(str(d) for d in t.dims)}"
        typed.update(f"{shape}:{type_name}\n".encode())
        layout.update(f"{shape}\n".encode())
    return {"tensors_sha256": typed.hexdigest(), LAYOUT_FIELD: layout.hexdigest()}


def tensors_sha256(path: Union[str, Path]) -> str:
    return _hashes(path)["tensors_sha256"]


def model_fingerprint(path: Union[str, Path], shape: Any, n_vocab: int) -> Dict[str, object]:
    """Shape numbers plus the tensor hashes (with types, and the layout without them)."""
    fp: Dict[str, object] = {k: getattr(shape, k) for k in SHAPE_FIELDS if k != "n_vocab"}
    fp["n_vocab"] = int(n_vocab)
    fp.update(_hashes(path))
    return fp


def hook_fingerprint(hook: Any) -> Dict[str, object]:
    """The fingerprint of the model a :class:`~sadi_cpp.llama.hook.Hook` runs."""
    return model_fingerprint(hook.model_path, hook.shape, hook.n_vocab)


@dataclass(frozen=True)
class Fit:
    """Whether a mask (built for ``want``) fits a model (``have``): ``problem`` says why not ('' if
    it fits); ``note`` says what differs but is accepted ('' if nothing does)."""

    problem: str = ""
    note: str = ""


def fit(want: Dict[str, object], have: Dict[str, object]) -> Fit:
    shape = [f"{k}: mask {want.get(k)!r}, model {have.get(k)!r}" for k in SHAPE_FIELDS if want.get(k) != have.get(k)]
    if shape:
        return Fit(problem="; ".join(shape))
    if want.get("tensors_sha256") == have.get("tensors_sha256"):
        return Fit()
    if want.get(LAYOUT_FIELD) and want.get(LAYOUT_FIELD) == have.get(LAYOUT_FIELD):
        return Fit(note="this mask was built on the same model with other tensor types (another quantization)")
    if want.get(LAYOUT_FIELD):
        return Fit(problem="the same shape, other tensors")
    return Fit(problem="the same shape, other tensors or tensor types; masks made before sadi-cpp recorded the layout "
                       "cannot tell another quantization of the same model: rebuild the mask to use it there")


def fingerprint_mismatch(want: Dict[str, object], have: Dict[str, object]) -> str:
    """'' when a mask built for ``want`` fits ``have``, else why not."""
    return fit(want, have).problem
