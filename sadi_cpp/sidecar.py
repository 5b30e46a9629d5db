"""The mask sidecar's file layer: a GGUF file (docs/mask-format.md) of plain fields and tensors,
written with gguf-py and read back with the format's keys and types checked. What the fields
mean, and whether they agree with each other, is sadi_cpp.mask's business."""

from __future__ import annotations

from dataclasses import dataclass, field
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

STR_KEYS = ("site", "positions", "rank_by", "pairs_sha256", "tool_version")
UINT_KEYS = ("top_k", "n_pairs")
FLOAT_KEYS = ("delta",)
TUNED_KEY = "tuned"  # optional: JSON summary of the tune run that set top_k and delta


@dataclass
class SidecarContent:
    """What one sidecar holds: the metadata (STR_KEYS, UINT_KEYS, FLOAT_KEYS and optionally
    ``tuned``), the model fingerprint (fingerprint.FIELDS) and the tensors by name."""

    meta: Dict[str, Any]
    model: Dict[str, Any]
    tensors: Dict[str, np.ndarray] = field(default_factory=dict)


def write_sidecar(content: SidecarContent, path: Union[str, Path]) -> Path:
    """Write atomically: a temporary file beside the target, renamed over it when complete."""
    path = Path(path)
    meta = content.meta
    with atomic_path(path, "mask file") as tmp:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_name(f"SADI {meta['site']} mask")
        w.add_uint32(f"{ARCH}.format_version", FORMAT_VERSION)
        for key in STR_KEYS:
            w.add_string(f"{ARCH}.{key}", str(meta[key]))
        for key in UINT_KEYS:
            w.add_uint32(f"{ARCH}.{key}", int(meta[key]))
        for key in FLOAT_KEYS:
            w.add_float32(f"{ARCH}.{key}", float(meta[key]))
        for key in FIELDS:
            value = content.model.get(key)
            if isinstance(value, str):
                w.add_string(f"{ARCH}.model.{key}", value)
            else:
                w.add_uint32(f"{ARCH}.model.{key}", int(value))
        if meta.get(TUNED_KEY):
            w.add_string(f"{ARCH}.{TUNED_KEY}", meta[TUNED_KEY])
        for name, array in content.tensors.items():
            w.add_tensor(name, array)
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


def read_sidecar(path: Union[str, Path]) -> SidecarContent:
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
    meta: Dict[str, Any] = {k: _field(reader, f"{ARCH}.{k}", path) for k in STR_KEYS + UINT_KEYS + FLOAT_KEYS}
    tuned = reader.get_field(f"{ARCH}.{TUNED_KEY}")
    meta[TUNED_KEY] = tuned.contents() if tuned is not None else ""
    model = {k: _field(reader, f"{ARCH}.model.{k}", path) for k in FIELDS}
    tensors = {t.name: np.array(t.data) for t in reader.tensors}
    return SidecarContent(meta, model, tensors)
