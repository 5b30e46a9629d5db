"""A bounded reader of GGUF headers: every count and length is checked against the bytes that are
left before it is used, so a damaged or hostile file ends in a clean error in time and memory
proportional to its size (gguf-py's reader trusts the counts: a forged array count of 2^40 makes
it loop past the end of the file).

Two uses: the model fingerprint (tensor names, shapes and types, skipping every key's value by its
size, without parsing a 262k-token vocabulary string by string into Python objects) and the mask
sidecar (keys and their typed values, tensor infos with checked offsets).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple, Union

from sadi_cpp.errors import BadInputError

MAGIC = b"GGUF"
# GGUF value types
UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)
_SCALAR = {UINT8: "<B", INT8: "<b", UINT16: "<H", INT16: "<h", UINT32: "<I", INT32: "<i", FLOAT32: "<f",
           BOOL: "<?", UINT64: "<Q", INT64: "<q", FLOAT64: "<d"}
TYPE_NAMES = {UINT8: "u8", INT8: "i8", UINT16: "u16", INT16: "i16", UINT32: "u32", INT32: "i32", FLOAT32: "f32",
              BOOL: "bool", STRING: "string", ARRAY: "array", UINT64: "u64", INT64: "i64", FLOAT64: "f64"}
MAX_DIMS = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


@dataclass
class TensorInfo:
    name: str
    dims: Tuple[int, ...]  # ne0, ne1, ... (ggml order: the fastest-varying first)
    ggml_type: int
    offset: int  # from the start of the data section


@dataclass
class Header:
    version: int
    kv: Dict[str, Tuple[int, Any]]  # key -> (GGUF value type, value); arrays: (ARRAY, (elem type, count)) unless decoded
    tensors: List[TensorInfo]
    data_start: int  # file offset of the tensor data section
    size: int  # file size


class _Cursor:
    def __init__(self, buf: Any, path: Path):
        self.buf, self.pos, self.end, self.path = buf, 0, len(buf), path

    def fail(self, what: str) -> BadInputError:
        return BadInputError(f"{self.path}: truncated or damaged GGUF header ({what} at byte {self.pos})")

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise self.fail(f"{what} runs past the end of the file")

    def u32(self, what: str) -> int:
        self.need(4, what)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, what: str) -> int:
        self.need(8, what)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, what: str, decode: bool = True) -> str:
        n = self.u64(f"{what} length")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n]) if decode else b""
        self.pos += n
        if not decode:
            return ""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def scalar(self, vtype: int, what: str) -> Any:
        fmt = _SCALAR[vtype]
        size = struct.calcsize(fmt)
        self.need(size, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def value(self, vtype: int, what: str, decode: bool) -> Any:
        if vtype in _SCALAR:
            return self.scalar(vtype, what)
        if vtype == STRING:
            return self.string(what, decode)
        if vtype != ARRAY:
            raise self.fail(f"{what} has unknown value type {vtype}")
        etype = self.u32(f"{what} element type")
        count = self.u64(f"{what} element count")
        if etype in _SCALAR:
            size = struct.calcsize(_SCALAR[etype]) * count
            self.need(size, what)
            if decode:
                items = list(struct.unpack_from(f"<{count}{_SCALAR[etype][1]}", self.buf, self.pos))
                self.pos += size
                return items
            self.pos += size
            return (etype, count)
        if etype == STRING:
            self.need(8 * count, what)  # each string takes at least its 8-byte length
            if decode:
                return [self.string(f"{what} element", True) for _ in range(count)]
            buf, pos, end = self.buf, self.pos, self.end
            unpack = _U64.unpack_from
            for _ in range(count):  # skip by length only: no Python string per element
                if pos + 8 > end:
                    self.pos = pos
                    raise self.fail(f"{what} element length runs past the end of the file")
                pos += 8 + unpack(buf, pos)[0]
                if pos > end:
                    self.pos = end
                    raise self.fail(f"{what} element runs past the end of the file")
            self.pos = pos
            return (etype, count)
        raise self.fail(f"{what} is an array of {TYPE_NAMES.get(etype, etype)}, which GGUF files here do not hold")


def read_header(path: Union[str, Path], decode: Optional[Set[str]] = None, max_kv: int = 1 << 20) -> Header:
    """Parse a GGUF file's header. Values of the keys in ``decode`` (all keys when None) are read;
    the others are skipped by size (arrays then read as (element type, count))."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            if size < 24:
                raise BadInputError(f"{path}: not a GGUF file ({size} bytes, shorter than a GGUF header)")
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise BadInputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        c = _Cursor(buf, path)
        if bytes(buf[:4]) != MAGIC:
            raise BadInputError(f"{path}: not a GGUF file (it does not start with 'GGUF')")
        c.pos = 4
        version = c.u32("version")
        if version not in (2, 3):
            raise BadInputError(f"{path}: GGUF version {version}; version 3 (or 2) is read here")
        n_tensors = c.u64("tensor count")
        n_kv = c.u64("key count")
        # a key takes at least 12 bytes (length + type), a tensor info at least 24
        if n_kv > min(max_kv, size // 12) or n_tensors > size // 24:
            raise c.fail(f"{n_kv} keys and {n_tensors} tensors cannot fit in {size} bytes")
        kv: Dict[str, Tuple[int, Any]] = {}
        for i in range(n_kv):
            key = c.string(f"key {i}")
            vtype = c.u32(f"type of {key}")
            if key in kv:
                raise c.fail(f"key {key} appears twice")
            kv[key] = (vtype, c.value(vtype, key, decode is None or key in decode))
        tensors: List[TensorInfo] = []
        for i in range(n_tensors):
            name = c.string(f"tensor {i} name")
            n_dims = c.u32(f"tensor {name} dimension count")
            if not 1 <= n_dims <= MAX_DIMS:
                raise c.fail(f"tensor {name} has {n_dims} dimensions")
            dims = tuple(c.u64(f"tensor {name} dimension") for _ in range(n_dims))
            ggml_type = c.u32(f"tensor {name} type")
            offset = c.u64(f"tensor {name} offset")
            tensors.append(TensorInfo(name, dims, ggml_type, offset))
        alignment = kv.get("general.alignment", (UINT32, DEFAULT_ALIGNMENT))
        if alignment[0] != UINT32 or not isinstance(alignment[1], int) or alignment[1] < 1 or alignment[1] & (alignment[1] - 1):
            raise c.fail("general.alignment is not a u32 power of two")
        align = alignment[1]
        data_start = (c.pos + align - 1) // align * align
        return Header(version, kv, tensors, data_start, size)
    finally:
        buf.close()


def read_bytes(path: Union[str, Path], start: int, n: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(n)
