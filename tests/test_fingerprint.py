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


def test_a_mask_fits_its_model_in_any_quantization_and_no_other():
    from sadi_cpp.masks.fingerprint import fit

    shape = {"arch": "llama", "n_layer": 3, "n_embd": 32, "n_head": 4, "head_dim": 8, "n_ff": 48, "n_vocab": 259}
    mask = dict(shape, tensors_sha256="t-f32", layout_sha256="l")
    assert fit(mask, dict(mask)) == fit(mask, mask) and not fit(mask, mask).problem and not fit(mask, mask).note
    requantized = fit(mask, dict(shape, tensors_sha256="t-q8", layout_sha256="l"))
    assert not requantized.problem and "another quantization" in requantized.note
    assert fit(mask, dict(shape, tensors_sha256="t-x", layout_sha256="other")).problem == "the same shape, other tensors"
    assert fit(mask, dict(mask, n_ff=64)).problem == "n_ff: mask 48, model 64"
    old = dict(shape, tensors_sha256="t-f32")  # a mask from before the layout hash
    assert not fit(old, dict(shape, tensors_sha256="t-f32", layout_sha256="l")).problem
    assert "rebuild the mask" in fit(old, dict(shape, tensors_sha256="t-q8", layout_sha256="l")).problem
