"""The mask sidecar: a GGUF file (docs/mask-format.md) written with gguf-py, read back with checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Union

import gguf
import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import atomic_path
from sadi_cpp.fingerprint import FIELDS

ARCH = "sadi"  # never "controlvector": llama.cpp would load the file as a control vector
FORMAT_VERSION = 1
MASK_TENSOR = "sadi.mask"
TABLE_TENSOR = "sadi.mean_diff"
VALUES_TENSOR = "sadi.mean_diff_values"  # optional: head site, every value of kqv_out
TUNED_KEY = "tuned"  # optional: JSON summary of the tune run that set top_k and delta

_STR_KEYS = ("site", "positions", "rank_by", "pairs_sha256", "tool_version")


def write_sidecar(mask: "Any", path: Union[str, Path]) -> Path:
    """Write atomically: a temporary file beside the target, renamed over it when complete."""
    path = Path(path)
    with atomic_path(path, "mask file") as tmp:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_name(f"SADI {mask.site} mask")
        w.add_uint32(f"{ARCH}.format_version", FORMAT_VERSION)
        for key in _STR_KEYS:
            w.add_string(f"{ARCH}.{key}", str(getattr(mask, key)))
        w.add_uint32(f"{ARCH}.top_k", int(mask.top_k))
        w.add_float32(f"{ARCH}.delta", float(mask.delta))
        w.add_uint32(f"{ARCH}.n_pairs", int(mask.n_pairs))
        for key in FIELDS:
            value = mask.model.get(key)
            if isinstance(value, str):
                w.add_string(f"{ARCH}.model.{key}", value)
            else:
                w.add_uint32(f"{ARCH}.model.{key}", int(value))
        if mask.tuned:
            w.add_string(f"{ARCH}.{TUNED_KEY}", mask.tuned)
        w.add_tensor(MASK_TENSOR, mask.mask.astype(np.int8))
        w.add_tensor(TABLE_TENSOR, mask.mean_diff.astype(np.float32))
        if mask.values is not None:
            w.add_tensor(VALUES_TENSOR, mask.values.astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def _field(reader: gguf.GGUFReader, key: str, path: Path) -> Any:
    f = reader.get_field(key)
    if f is None:
        raise BadInputError(f"{path}: missing key {key}; the sidecar is damaged or from another tool, rebuild it with build-mask")
    return f.contents()


def read_sidecar(path: Union[str, Path]) -> "Any":
    from sadi_cpp.mask import SadiMask

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such mask file")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # truncated or corrupted: gguf-py raises assorted errors
        raise BadInputError(f"{path}: not a readable GGUF mask (truncated or corrupted: {e}); rebuild it with build-mask") from None
    arch = _field(reader, "general.architecture", path)
    if arch != ARCH:
        raise BadInputError(f"{path}: a GGUF of architecture '{arch}', not a sadi-cpp mask ('{ARCH}')")
    version = _field(reader, f"{ARCH}.format_version", path)
    if version != FORMAT_VERSION:
        raise BadInputError(f"{path}: mask format {version}; this sadi-cpp reads format {FORMAT_VERSION}")
    meta: Dict[str, Any] = {k: _field(reader, f"{ARCH}.{k}", path) for k in _STR_KEYS + ("top_k", "delta", "n_pairs")}
    model = {k: _field(reader, f"{ARCH}.model.{k}", path) for k in FIELDS}
    tensors = {t.name: t for t in reader.tensors}
    for name in (MASK_TENSOR, TABLE_TENSOR):
        if name not in tensors:
            raise BadInputError(f"{path}: missing tensor {name}; rebuild the mask with build-mask")
    table = np.array(tensors[TABLE_TENSOR].data, dtype=np.float32)
    bits = np.array(tensors[MASK_TENSOR].data)
    if table.ndim != 2 or bits.shape != table.shape or table.shape[0] != model["n_layer"]:
        raise BadInputError(f"{path}: tensor shapes {bits.shape} and {table.shape} do not fit n_layer {model['n_layer']}")
    values = None
    if VALUES_TENSOR in tensors:
        values = np.array(tensors[VALUES_TENSOR].data, dtype=np.float32)
        want = (model["n_layer"], model["n_head"] * model["head_dim"])
        if values.shape != want or not np.isfinite(values).all():
            raise BadInputError(f"{path}: tensor {VALUES_TENSOR} has shape {values.shape} (want {want}) or is not finite; the file is corrupted")
    tuned = reader.get_field(f"{ARCH}.{TUNED_KEY}")
    mask = bits.astype(bool)
    if int(mask.sum()) != meta["top_k"] or not np.isfinite(table).all():
        raise BadInputError(f"{path}: the mask does not hold top_k={meta['top_k']} units or the table is not finite; the file is corrupted")
    return SadiMask(
        site=meta["site"],
        mean_diff=table,
        top_k=int(meta["top_k"]),
        delta=float(meta["delta"]),
        positions=meta["positions"],
        rank_by=meta["rank_by"],
        n_pairs=int(meta["n_pairs"]),
        pairs_sha256=meta["pairs_sha256"],
        model=model,
        tool_version=meta["tool_version"],
        mask=mask,
        values=values,
        tuned=tuned.contents() if tuned is not None else "",
    )
