"""The GGUF sidecar: round trip, readable by gguf-py, refused when damaged, written atomically."""

import os

import gguf
import numpy as np
import pytest

from sadi_cpp import BadInputError
from sadi_cpp.mask import SadiMask
from sadi_cpp.sidecar import ARCH, read_sidecar

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
    with pytest.raises(BadInputError, match="architecture 'llama', not a sadi-cpp mask"):
        read_sidecar(tiny_path)


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", boom)
    with pytest.raises(KeyboardInterrupt):
        sample_mask().save(tmp_path / "m.sadi.gguf")
    assert os.listdir(tmp_path) == []
