"""The sidecars' file layer: a GGUF file (docs/mask-format.md) of plain fields and tensors,
written with gguf-py and read back with sadi_cpp.masks.gguf_file's bounded reader. Two kinds share
it: masks (no ``sadi.kind`` key, as every mask ever written) and gates (``sadi.kind`` = "gate",
sadi_cpp.masks.gate_file). Only the keys, value types and tensors a kind's :class:`Schema` defines
are accepted, and a sha256 of the content (every key's value and every tensor's bytes) is stored
and checked, so a damaged file is refused instead of read as a slightly different mask. What the
fields mean, and whether they agree with each other, is sadi_cpp.masks.mask's (and gate_file's) business."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import gguf
import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import atomic_path
from sadi_cpp.masks.fingerprint import FIELDS, LAYOUT_FIELD
from sadi_cpp.masks.gguf_file import FLOAT32, STRING, TYPE_NAMES, UINT32, read_bytes, read_header

ARCH = "sadi"  # never "controlvector": llama.cpp would load the file as a control vector
FORMAT_VERSION = 2  # 2 added sadi.checksum; version 1 files (no checksum) are still read
MASK_TENSOR = "sadi.mask"
TABLE_TENSOR = "sadi.mean_diff"
VALUES_TENSOR = "sadi.mean_diff_values"  # optional: head site, every value of kqv_out

STR_KEYS = ("site", "positions", "rank_by", "pairs_sha256", "tool_version")
UINT_KEYS = ("top_k", "n_pairs")
FLOAT_KEYS = ("delta",)
TUNED_KEY = "tuned"  # optional: JSON summary of the tune run that set top_k and delta
CHECKSUM_KEY = f"{ARCH}.checksum"
KIND_KEY = f"{ARCH}.kind"  # absent in masks; "gate" in gates

# Every key a sidecar may hold, with its one GGUF type; True: required.
KEYS: Dict[str, Tuple[int, bool]] = {
    "general.architecture": (STRING, True), "general.name": (STRING, False), "general.alignment": (UINT32, False),
    f"{ARCH}.format_version": (UINT32, True), CHECKSUM_KEY: (STRING, False), f"{ARCH}.{TUNED_KEY}": (STRING, False),
    **{f"{ARCH}.{k}": (STRING, k in ("site", "positions", "rank_by")) for k in STR_KEYS},
    **{f"{ARCH}.{k}": (UINT32, True) for k in UINT_KEYS},
    **{f"{ARCH}.{k}": (FLOAT32, True) for k in FLOAT_KEYS},
    **{f"{ARCH}.model.{k}": (STRING if k in ("arch", "tensors_sha256") else UINT32, True) for k in FIELDS},
    f"{ARCH}.model.{LAYOUT_FIELD}": (STRING, False),
}
# tensor name -> (ggml type, numpy dtype, required)
TENSORS = {MASK_TENSOR: (24, np.int8, True), TABLE_TENSOR: (0, np.float32, True), VALUES_TENSOR: (0, np.float32, False)}


@dataclass(frozen=True)
class Schema:
    """One kind of sidecar: its keys (name -> (GGUF type, required)) and tensors (name -> (ggml
    type, numpy dtype, required)), the kind's name and the command that makes it."""

    kind: str
    keys: Dict[str, Tuple[int, bool]]
    tensors: Dict[str, Tuple[int, Any, bool]]
    maker: str


MASK = Schema("mask", KEYS, TENSORS, "build-mask")


@dataclass
class SidecarContent:
    """What one sidecar holds: the metadata (STR_KEYS, UINT_KEYS, FLOAT_KEYS and ``tuned``), the
    model fingerprint (fingerprint.FIELDS) and the tensors by name."""

    meta: Dict[str, Any]
    model: Dict[str, Any]
    tensors: Dict[str, np.ndarray] = field(default_factory=dict)


def _kv(content: SidecarContent) -> Dict[str, Tuple[int, Any]]:
    """The sadi.* keys of ``content`` as GGUF (type, value)."""
    meta = content.meta
    kv: Dict[str, Tuple[int, Any]] = {f"{ARCH}.format_version": (UINT32, FORMAT_VERSION)}
    kv.update({f"{ARCH}.{k}": (STRING, str(meta[k])) for k in STR_KEYS})
    kv.update({f"{ARCH}.{k}": (UINT32, int(meta[k])) for k in UINT_KEYS})
    kv.update({f"{ARCH}.{k}": (FLOAT32, float(meta[k])) for k in FLOAT_KEYS})
    for k in FIELDS:
        value = content.model[k]
        kv[f"{ARCH}.model.{k}"] = (STRING, value) if isinstance(value, str) else (UINT32, int(value))
    if content.model.get(LAYOUT_FIELD):
        kv[f"{ARCH}.model.{LAYOUT_FIELD}"] = (STRING, str(content.model[LAYOUT_FIELD]))
    if meta.get(TUNED_KEY):
        kv[f"{ARCH}.{TUNED_KEY}"] = (STRING, meta[TUNED_KEY])
    return kv


def checksum(kv: Dict[str, Tuple[int, Any]], tensors: Dict[str, np.ndarray]) -> str:
    """sha256 over the sadi.* keys (sorted; each value as stored: u32/f32 little-endian, strings
    UTF-8) and the tensors (sorted by name: dtype, shape, bytes), each part length-prefixed."""
    h = hashlib.sha256()

    def part(b: bytes) -> None:
        h.update(struct.pack("<Q", len(b)))
        h.update(b)

    for key in sorted(k for k in kv if k.startswith(f"{ARCH}.") and k != CHECKSUM_KEY):
        vtype, value = kv[key]
        part(key.encode())
        part(struct.pack("<I", vtype))
        part(value.encode() if vtype == STRING else struct.pack("<f" if vtype == FLOAT32 else "<I", value))
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        part(name.encode())
        part(f"{a.dtype.str}{a.shape}".encode())
        part(a.tobytes())
    return h.hexdigest()


def write_sidecar(content: SidecarContent, path: Union[str, Path]) -> Path:
    """Write a mask atomically: a temporary file beside the target, renamed over it when complete."""
    return write_fields(path, f"SADI {content.meta['site']} mask", _kv(content), content.tensors, "mask file")


def kind_of(path: Union[str, Path]) -> str:
    """The kind of a sadi-cpp sidecar ("mask" or "gate", from ``sadi.kind``); BadInputError when the
    header cannot be read. Other files give "" (the readers then say what they are)."""
    kv = read_header(Path(path), decode={KIND_KEY, "general.architecture"}).kv
    if kv.get("general.architecture", (None, None))[1] != ARCH:
        return ""
    raw = kv.get(KIND_KEY, (STRING, "mask"))
    return str(raw[1]) if raw[0] == STRING else ""


def write_fields(path: Union[str, Path], name: str, kv: Dict[str, Tuple[int, Any]], tensors: Dict[str, np.ndarray],
                 what: str) -> Path:
    """Write keys and tensors with their checksum, atomically."""
    path = Path(path)
    with atomic_path(path, what) as tmp:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_name(name)
        for key, (vtype, value) in kv.items():
            # add_key_value, not add_string: gguf-py's add_string drops empty strings
            w.add_key_value(key, value, gguf.GGUFValueType(vtype))
        w.add_key_value(CHECKSUM_KEY, checksum(kv, tensors), gguf.GGUFValueType.STRING)
        for tensor, array in tensors.items():
            w.add_tensor(tensor, array)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path


def read_sidecar(path: Union[str, Path]) -> SidecarContent:
    """Read a mask in time and memory bounded by its size; BadInputError naming the file and the
    key or tensor on anything the format does not allow."""
    kv, tensors = read_fields(path, MASK)
    meta: Dict[str, Any] = {k: kv.get(f"{ARCH}.{k}", (STRING, ""))[1] for k in STR_KEYS + UINT_KEYS + FLOAT_KEYS}
    meta[TUNED_KEY] = kv.get(f"{ARCH}.{TUNED_KEY}", (STRING, ""))[1]
    return SidecarContent(meta, model_fields(kv), tensors)


def model_fields(kv: Dict[str, Tuple[int, Any]]) -> Dict[str, Any]:
    """The model fingerprint stored in a sidecar's keys."""
    model = {k: kv[f"{ARCH}.model.{k}"][1] for k in FIELDS}
    if f"{ARCH}.model.{LAYOUT_FIELD}" in kv:
        model[LAYOUT_FIELD] = kv[f"{ARCH}.model.{LAYOUT_FIELD}"][1]
    return model


def read_fields(path: Union[str, Path], schema: Schema) -> Tuple[Dict[str, Tuple[int, Any]], Dict[str, np.ndarray]]:
    """The keys (name -> (type, value)) and tensors of a sidecar of ``schema``'s kind, each checked
    against the schema and the checksum; BadInputError naming the file otherwise."""
    path = Path(path)
    kind, maker = schema.kind, schema.maker
    if not path.is_file():
        raise BadInputError(f"{path}: no such {kind} file")
    try:
        header = read_header(path, decode=set(schema.keys) | {KIND_KEY})  # other keys: skipped by size, then refused
    except BadInputError as e:
        raise BadInputError(f"{e}; not a readable {kind}, rebuild it with {maker}") from None
    kv = header.kv
    arch = kv.get("general.architecture")
    if arch is None or arch[0] != STRING:
        raise BadInputError(f"{path}: a GGUF file without general.architecture, not a sadi-cpp {kind}")
    if arch[1] == "controlvector":
        raise BadInputError(f"{path}: a llama.cpp control vector, not a sadi-cpp {kind} (eval takes it with --cvec)")
    if arch[1] != ARCH:
        raise BadInputError(f"{path}: a GGUF model (architecture '{arch[1]}', {len(header.tensors)} tensors), not a "
                            f"sadi-cpp {kind}: give a {kind} file (*.sadi.gguf, made by {maker} for this model)")
    raw = kv.get(KIND_KEY, (STRING, "mask"))
    found = raw[1] if raw[0] == STRING else None
    if found != kind:
        if found not in ("mask", "gate"):
            raise BadInputError(f"{path}: {KIND_KEY} is {raw[1]!r}, not a kind this sadi-cpp reads (mask, gate)")
        raise BadInputError(f"{path}: a sadi-cpp {found}, not a {kind} (give it with --{found})")
    for key, (vtype, value) in kv.items():
        if key not in schema.keys:
            raise BadInputError(f"{path}: unexpected key {key}; the file is damaged or not a sadi-cpp {kind}")
        want = schema.keys[key][0]
        if vtype != want:
            raise BadInputError(f"{path}: key {key} is a {TYPE_NAMES.get(vtype, vtype)}, the format says {TYPE_NAMES[want]}; the file is damaged")
    version = kv.get(f"{ARCH}.format_version", (UINT32, None))[1]
    if version not in (1, FORMAT_VERSION):
        raise BadInputError(f"{path}: {kind} format {version}; this sadi-cpp reads formats 1 and {FORMAT_VERSION}")
    for key, (_, required) in schema.keys.items():
        if required and key not in kv:
            raise BadInputError(f"{path}: missing key {key}; the sidecar is damaged or from another tool, rebuild it with {maker}")
    if version >= 2 and CHECKSUM_KEY not in kv:
        raise BadInputError(f"{path}: missing key {CHECKSUM_KEY}; the sidecar is damaged, rebuild it with {maker}")
    tensors = _read_tensors(path, header, schema)
    if CHECKSUM_KEY in kv and kv[CHECKSUM_KEY][1] != checksum(kv, tensors):
        raise BadInputError(f"{path}: the content does not match its checksum: the file was changed or damaged; rebuild it with {maker}")
    return kv, tensors


def _read_tensors(path: Path, header: Any, schema: Schema) -> Dict[str, np.ndarray]:
    data_size = header.size - header.data_start
    spans = []
    tensors: Dict[str, np.ndarray] = {}
    for t in header.tensors:
        if t.name not in schema.tensors or t.name in tensors:
            raise BadInputError(f"{path}: unexpected or repeated tensor {t.name}; the file is damaged or not a sadi-cpp {schema.kind}")
        ggml_type, dtype, _ = schema.tensors[t.name]
        if t.ggml_type != ggml_type or len(t.dims) != 2:
            raise BadInputError(f"{path}: tensor {t.name} has type {t.ggml_type} and {len(t.dims)} dimensions; the format says {ggml_type} and 2")
        n_bytes = t.dims[0] * t.dims[1] * np.dtype(dtype).itemsize
        if t.offset > data_size or n_bytes > data_size - t.offset:
            raise BadInputError(f"{path}: tensor {t.name} lies outside the file (truncated or damaged)")
        spans.append((t.offset, t.offset + n_bytes, t.name))
        raw = read_bytes(path, header.data_start + t.offset, n_bytes)
        tensors[t.name] = np.frombuffer(raw, dtype=dtype).reshape(t.dims[1], t.dims[0])
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise BadInputError(f"{path}: tensors {a} and {b} overlap; the file is damaged")
    for name, (_, _, required) in schema.tensors.items():
        if required and name not in tensors:
            raise BadInputError(f"{path}: missing tensor {name}; rebuild the {schema.kind} with {schema.maker}")
    return tensors
