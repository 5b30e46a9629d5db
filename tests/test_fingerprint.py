"""The model fingerprint read from the GGUF header alone equals the one gguf-py's full reader gives."""

import hashlib

import gguf
import pytest

from sadi_cpp import BadInputError
from sadi_cpp.masks.fingerprint import tensors_sha256


def gguf_py_hash(path) -> str:
    h = hashlib.sha256()
    for t in gguf.GGUFReader(str(path)).tensors:
        h.update(f"{t.name}:{','.join(str(int(d)) for d in t.shape)}:{t.tensor_type.name}\n".encode())
    return h.hexdigest()


def test_header_hash_equals_gguf_pys(tiny, tiny_path, tmp_path):
    assert tensors_sha256(tiny_path) == gguf_py_hash(tiny_path)
    templated = tiny.write(tmp_path / "t.gguf", chat_template="{{ x }}")  # more keys, same tensors
    assert tensors_sha256(templated) == tensors_sha256(tiny_path)


def test_damaged_models_are_refused(tiny_path, tmp_path):
    data = tiny_path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:200])
    with pytest.raises(BadInputError, match="cut.gguf: truncated or damaged"):
        tensors_sha256(cut)
    (tmp_path / "not.gguf").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(BadInputError, match="not a GGUF file"):
        tensors_sha256(tmp_path / "not.gguf")
