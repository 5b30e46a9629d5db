"""llama.cpp control-vector files: write a residual-stream direction per layer, read one back.

The format is the one llama.cpp's ``--control-vector`` loads: ``general.architecture =
controlvector``, ``controlvector.model_hint`` (the model architecture), ``controlvector.layer_count``
(the number of direction tensors) and one F32 tensor ``direction.N`` of n_embd values per layer N.
llama.cpp adds direction N to the output of layer N (its ``l_out-N``) at every token; it has no
slot for layer 0, so neither does this file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import gguf
import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import atomic_path

ARCH = "controlvector"


def default_cvec_path(model_path: Union[str, Path], pairs_path: Union[str, Path]) -> Path:
    """Beside the model: <model>.<pairs>.cvec.gguf (export-cvec's and tune --method caa's default)."""
    model_path, pairs_path = Path(model_path), Path(pairs_path)
    return model_path.with_name(f"{model_path.stem}.{pairs_path.stem}.cvec.gguf")


def write_cvec(directions: np.ndarray, path: Union[str, Path], model_hint: str) -> Path:
    """Write the non-zero rows of ``directions`` [n_layer, n_embd] as ``direction.N``, atomically."""
    d = np.asarray(directions, dtype=np.float32)
    if d.ndim != 2 or not np.isfinite(d).all():
        raise BadInputError(f"control-vector directions must be a finite [n_layer, n_embd] array, got shape {d.shape}")
    if d[0].any():
        raise BadInputError("llama.cpp control vectors cannot steer layer 0; choose layers 1.." + str(d.shape[0] - 1))
    layers = [il for il in range(1, d.shape[0]) if d[il].any()]
    if not layers:
        raise BadInputError("the control vector is zero in every layer; nothing to export")
    path = Path(path)
    with atomic_path(path, "control vector") as tmp:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_string(f"{ARCH}.model_hint", model_hint)
        w.add_int32(f"{ARCH}.layer_count", len(layers))
        for il in layers:
            w.add_tensor(f"direction.{il}", d[il])
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def read_cvec(path: Union[str, Path], n_layer: int, n_embd: int) -> np.ndarray:
    """The directions [n_layer, n_embd] of a control-vector GGUF (zero for layers it lacks)."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such control-vector file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:
        raise BadInputError(f"{path}: not a readable GGUF control vector ({e})") from None
    arch = reader.get_field("general.architecture")
    if arch is None or arch.contents() != ARCH:
        raise BadInputError(f"{path}: not a control vector (general.architecture is not '{ARCH}')")
    out = np.zeros((n_layer, n_embd), np.float32)
    for t in reader.tensors:
        base, _, idx = t.name.partition(".")
        if base != "direction" or not idx.isdigit() or not 1 <= int(idx) < n_layer:
            raise BadInputError(f"{path}: tensor {t.name} is not direction.N with N in 1..{n_layer - 1}")
        data = np.array(t.data, dtype=np.float32).reshape(-1)
        if data.size != n_embd:
            raise BadInputError(f"{path}: {t.name} has {data.size} values; this model's n_embd is {n_embd}")
        out[int(idx)] += data  # llama.cpp sums repeated directions of one layer too
    return out
