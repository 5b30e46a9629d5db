"""The GGUF sidecar: round trip, readable by gguf-py, refused when damaged, written atomically."""

import os
import re
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest

from sadi_cpp import BadInputError
from sadi_cpp.masks.mask import SadiMask
from sadi_cpp.masks.sidecar import ARCH, read_sidecar

MODEL = {"arch": "llama", "n_layer": 3, "n_embd": 32, "n_head": 4, "head_dim": 8, "n_ff": 48, "n_vocab": 259,
         "tensors_sha256": "ab" * 32}


def sample_mask() -> SadiMask:
    table = np.random.default_rng(3).standard_normal((3, 48)).astype(np.float32)
    return SadiMask(site="neuron", mean_diff=table, top_k=7, delta=12.5, positions="last", rank_by="abs",
                    n_pairs=150, pairs_sha256="cd" * 32, model=dict(MODEL), tool_version="0.1.0")


def test_round_trip_and_gguf_py_reads_it(tmp_path):
    m = sample_mask()
    path = m.save(tmp_path / "m.sadi.gguf")
    back = SadiMask.load(path)
    assert np.array_equal(back.mean_diff, m.mean_diff) and np.array_equal(back.mask, m.mask)
    for key in ("site", "top_k", "delta", "positions", "rank_by", "n_pairs", "pairs_sha256", "tool_version", "model"):
        assert getattr(back, key) == getattr(m, key), key
    reader = gguf.GGUFReader(str(path))
    assert reader.get_field("general.architecture").contents() == ARCH != "controlvector"
    assert reader.get_field("sadi.model.n_ff").contents() == 48
    names = {t.name: t for t in reader.tensors}
    assert np.array_equal(np.array(names["sadi.mean_diff"].data), m.mean_diff)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_truncated_and_corrupted_files_are_refused(tmp_path):
    path = sample_mask().save(tmp_path / "m.sadi.gguf")
    data = path.read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match="cut.gguf: truncated or damaged"):
        read_sidecar(tmp_path / "cut.gguf")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(BadInputError, match="junk.gguf"):
        read_sidecar(tmp_path / "junk.gguf")


def test_other_gguf_files_are_refused(tiny_path):
    with pytest.raises(BadInputError, match=r"a GGUF model \(architecture 'llama', 30 tensors\), not a sadi-cpp mask"):
        read_sidecar(tiny_path)


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(KeyboardInterrupt):
        sample_mask().save(tmp_path / "m.sadi.gguf")
    assert os.listdir(tmp_path) == []


# ---- hostile and damaged files (each must end in a BadInputError naming the file and the part) ----

from sadi_cpp.masks import sidecar  # noqa: E402
from sadi_cpp.masks.sidecar import SidecarContent, write_sidecar  # noqa: E402

V = gguf.GGUFValueType


def content(**changes) -> SidecarContent:
    """The sample mask's sidecar content with fields changed (written with a valid checksum, so
    that the validator, not the checksum, has to catch the damage)."""
    m = sample_mask()
    meta = {k: getattr(m, k) for k in sidecar.STR_KEYS + sidecar.UINT_KEYS + sidecar.FLOAT_KEYS}
    meta["tuned"] = ""
    model = dict(m.model)
    tensors = {sidecar.MASK_TENSOR: m.mask.astype(np.int8), sidecar.TABLE_TENSOR: m.mean_diff}
    for key, value in changes.items():
        if key in model:
            model[key] = value
        elif key in tensors:
            tensors[key] = value
        else:
            meta[key] = value
    return SidecarContent(meta, model, tensors)


def raw_gguf(path, kv, tensors=None):
    """A GGUF file with exactly these keys ((key, value, GGUFValueType)) and tensors."""
    w = gguf.GGUFWriter(str(path), "sadi")
    for key, value, vtype in kv:
        w.add_key_value(key, value, vtype)
    for name, arr in (tensors or {}).items():
        w.add_tensor(name, arr)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def v1_keys(m):
    """The keys a format-1 sidecar held (sadi-cpp before the checksum)."""
    kv = [("sadi.format_version", 1, V.UINT32)] + [(f"sadi.{k}", str(getattr(m, k)), V.STRING) for k in sidecar.STR_KEYS]
    kv += [("sadi.top_k", m.top_k, V.UINT32), ("sadi.delta", m.delta, V.FLOAT32), ("sadi.n_pairs", m.n_pairs, V.UINT32)]
    kv += [(f"sadi.model.{k}", v, V.STRING if isinstance(v, str) else V.UINT32) for k, v in m.model.items()]
    return kv


def test_a_format_1_file_without_checksum_still_loads(tmp_path):
    m = sample_mask()
    path = raw_gguf(tmp_path / "v1.sadi.gguf", v1_keys(m), {sidecar.MASK_TENSOR: m.mask.astype(np.int8), sidecar.TABLE_TENSOR: m.mean_diff})
    back = SadiMask.load(path)
    assert np.array_equal(back.mask, m.mask) and back.delta == m.delta


def test_empty_strings_survive_the_round_trip(tmp_path):
    m = sample_mask()
    m.pairs_sha256 = ""  # gguf-py's add_string would drop the key and the file would not load
    assert SadiMask.load(m.save(tmp_path / "m.sadi.gguf")).pairs_sha256 == ""


@pytest.mark.parametrize("changes,message", [
    ({"sadi.mask": np.full((3, 48), 2, np.int8)}, "values other than 0 and 1"),
    ({"sadi.mask": -np.eye(3, 48, dtype=np.int8)}, "values other than 0 and 1"),
    ({"sadi.mask": np.eye(3, 48, dtype=np.int8), "top_k": 3}, "not the top 3"),
    ({"top_k": 0, "sadi.mask": np.zeros((3, 48), np.int8)}, "sadi.top_k is 0"),
    ({"sadi.mean_diff": np.zeros((3, 40), np.float32), "sadi.mask": np.zeros((3, 40), np.int8)}, "needs (3, 48)"),
    ({"site": "hidden"}, "needs (3, 32)"),
    ({"site": "mlp"}, "sadi.site is 'mlp'"),
    ({"positions": "every"}, "sadi.positions is 'every'"),
    ({"rank_by": "magic"}, "sadi.rank_by is 'magic'"),
    ({"delta": float("nan")}, "sadi.delta is nan"),
    ({"n_layer": 0}, "sadi.model.n_layer is 0"),
])
def test_the_validator_names_the_damaged_field(tmp_path, changes, message):
    path = write_sidecar(content(**changes), tmp_path / "bad.sadi.gguf")
    with pytest.raises(BadInputError, match=re.escape(message)) as e:
        SadiMask.load(path)
    assert "bad.sadi.gguf" in str(e.value)


@pytest.mark.parametrize("key,value,vtype,message", [
    ("sadi.delta", [9.0, 1.0], V.ARRAY, "sadi.delta is a array, the format says f32"),
    ("sadi.n_pairs", "many", V.STRING, "sadi.n_pairs is a string, the format says u32"),
    ("sadi.model.n_head", "4", V.STRING, "sadi.model.n_head is a string, the format says u32"),
    ("sadi.model.tensors_sha256", 7, V.UINT32, "sadi.model.tensors_sha256 is a u32, the format says string"),
    ("sadi.extra", list(range(1000)), V.ARRAY, "unexpected key sadi.extra"),
])
def test_keys_of_the_wrong_type_or_unknown_are_refused(tmp_path, key, value, vtype, message):
    m = sample_mask()
    kv = [(k, v, t) for k, v, t in v1_keys(m) if k != key] + [(key, value, vtype)]
    path = raw_gguf(tmp_path / "typed.sadi.gguf", kv, {sidecar.MASK_TENSOR: m.mask.astype(np.int8), sidecar.TABLE_TENSOR: m.mean_diff})
    with pytest.raises(BadInputError, match=re.escape(message)):
        SadiMask.load(path)


def test_invalid_utf8_and_a_changed_value_are_refused(tmp_path):
    path = sample_mask().save(tmp_path / "m.sadi.gguf")
    data = path.read_bytes()
    i = data.index(b"sadi.rank_by") + len(b"sadi.rank_by") + 4 + 8  # its value: after the type and the length
    (tmp_path / "utf.sadi.gguf").write_bytes(data[:i] + b"\xff\xfe" + data[i + 2:])
    with pytest.raises(BadInputError, match="sadi.rank_by is not UTF-8"):
        SadiMask.load(tmp_path / "utf.sadi.gguf")
    j = data.index(struct.pack("<f", 12.5))  # delta 12.5 -> 12.5000x: the checksum catches it
    (tmp_path / "delta.sadi.gguf").write_bytes(data[:j] + bytes([data[j] ^ 1]) + data[j + 1:])
    with pytest.raises(BadInputError, match="does not match its checksum"):
        SadiMask.load(tmp_path / "delta.sadi.gguf")


def test_tensor_offsets_outside_the_file_or_overlapping_are_refused(tmp_path):
    path = sample_mask().save(tmp_path / "m.sadi.gguf")
    data = bytearray(path.read_bytes())
    # the tensor infos end with the offsets: mean_diff's offset is the u64 after its name, dims and type
    name = data.index(b"sadi.mean_diff") + len(b"sadi.mean_diff")
    offset_at = name + 4 + 2 * 8 + 4
    for offset, message in ((2**40, "outside the file"), (0, "overlap")):
        data[offset_at:offset_at + 8] = struct.pack("<Q", offset)
        (tmp_path / "off.sadi.gguf").write_bytes(bytes(data))
        with pytest.raises(BadInputError, match=message):
            SadiMask.load(tmp_path / "off.sadi.gguf")


def test_a_forged_array_count_ends_fast_in_bounded_memory(tmp_path):
    m = sample_mask()
    kv = v1_keys(m) + [("sadi.extra", [1, 2, 3], V.ARRAY)]
    path = raw_gguf(tmp_path / "forged.sadi.gguf", kv, {sidecar.MASK_TENSOR: m.mask.astype(np.int8), sidecar.TABLE_TENSOR: m.mean_diff})
    data = bytearray(path.read_bytes())
    count_at = data.index(b"sadi.extra") + len(b"sadi.extra") + 4 + 4  # after the key: value type, element type
    assert struct.unpack_from("<Q", data, count_at)[0] == 3
    for count in (2**20, 2**40, 2**64 - 1):
        data[count_at:count_at + 8] = struct.pack("<Q", count)
        path.write_bytes(bytes(data))
        # in a child limited to 1 GiB of address space and 60 s: a reader that trusted the count
        # would loop past the end of the file or allocate without bound
        script = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
                  "from sadi_cpp.masks.mask import SadiMask\nfrom sadi_cpp import BadInputError\n"
                  f"try:\n    SadiMask.load({str(path)!r})\nexcept BadInputError as e:\n    print('refused:', e)\n")
        res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert res.returncode == 0 and "refused:" in res.stdout and "sadi.extra" in res.stdout, res.stderr[-2000:]
