"""prepare, eval, tune and export-cvec on the tiny model: what they print, what they write, and
the control vector's round trip through llama.cpp's own control-vector code."""

import ctypes
import json

import gguf
import numpy as np
import pytest
from helpers import assert_f32_close, bad, eval_fresh
from typer.testing import CliRunner

import sadi_cpp
from sadi_cpp.cli import app
from sadi_cpp.masks.mask import SadiMask

runner = CliRunner()
WORDS = ["good", "bad", "warm", "cold", "fine", "poor", "kind", "mean", "calm", "loud", "soft", "hard"]


@pytest.fixture
def mc(tmp_path):
    """Twelve two-choice items (train) and ten (dev), as multiple-choice JSONL."""
    def write(name, n, offset):
        rows = [{"prompt": f"Item {i + offset}: it is", "choices": [" " + WORDS[i % 12], " " + WORDS[(i + 5) % 12]], "label": i % 2}
                for i in range(n)]
        p = tmp_path / name
        p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return p
    return write("train.jsonl", 12, 0), write("dev.jsonl", 10, 50)


def run(args):
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return res



def test_tune_writes_the_best_cell_of_its_grid(tiny_path, mc, tmp_path):
    train, dev = mc
    out, plot = tmp_path / "tuned.sadi.gguf", tmp_path / "grid.png"
    res = run(["tune", "-m", str(tiny_path), str(train), str(dev), "--site", "neuron", "--k-grid", "2,8,20",
               "--delta-grid", "-1,3,30", "-o", str(out), "--plot", str(plot), "--json"])
    report = json.loads(res.stdout)
    grid = np.array(report["accuracy"])
    assert grid.shape == (3, 3)
    r, c = np.unravel_index(np.argmax(grid), grid.shape)
    assert report["best"] == {"top_k": [2, 8, 20][r], "delta": [-1.0, 3.0, 30.0][c], "accuracy": grid.max()}
    assert len(set(grid.ravel().tolist())) > 1  # the grid is not flat: the cells differ
    m = SadiMask.load(out)
    assert (m.site, m.top_k, m.delta) == ("neuron", report["best"]["top_k"], report["best"]["delta"])
    assert json.loads(m.tuned)["best"] == report["best"] and m.n_pairs == 12
    assert plot.read_bytes()[:4] == b"\x89PNG"

    # eval with the tuned mask reproduces the dev accuracy of the chosen cell and the baseline
    res = run(["eval", "-m", str(tiny_path), str(dev), "--mask", str(out), "--json"])
    ev = json.loads(res.stdout)
    assert ev["acc"] == pytest.approx(report["best"]["accuracy"]) and ev["base_acc"] == pytest.approx(report["baseline"])


def test_eval_with_delta_zero_is_the_unsteered_accuracy(tiny_path, mc, tmp_path):
    train, dev = mc
    mask = tmp_path / "m.sadi.gguf"
    run(["build-mask", str(train), str(tiny_path), "--site", "head", "--top-k", "3", "-o", str(mask), "-q"])
    for method, scale in (("sadi", "--delta"), ("fixed", "--alpha"), ("random", "--delta")):
        ev = json.loads(run(["eval", "-m", str(tiny_path), str(dev), "--mask", str(mask), "--method", method, scale, "0", "--json"]).stdout)
        assert ev["acc"] == ev["base_acc"] and ev["diff"] == 0 and ev["gained"] == ev["lost"] == 0, method
    res = run(["eval", "-m", str(tiny_path), str(dev), "--mask", str(mask), "--delta", "25"])
    assert "unsteered" in res.stdout and "difference" in res.stdout and "answers gained" in res.stdout


def test_caa_control_vector_loads_in_llama_cpp_and_matches_the_engine(tiny, tiny_path, mc, tmp_path, make_llama):
    train, dev = mc
    cv = tmp_path / "caa.gguf"
    res = run(["export-cvec", str(train), "-m", str(tiny_path), "--layers", "1,2", "--scale", "40", "-o", str(cv), "--json"])
    assert json.loads(res.stdout)["layers"] == [1, 2]

    # the file as llama.cpp's loader reads it: architecture, hint, and direction.N tensors of n_embd
    reader = gguf.GGUFReader(str(cv))
    assert reader.get_field("general.architecture").contents() == "controlvector"
    assert reader.get_field("controlvector.model_hint").contents() == "llama"
    assert reader.get_field("controlvector.layer_count").contents() == 2
    dirs = {t.name: np.array(t.data, np.float32) for t in reader.tensors}
    assert sorted(dirs) == ["direction.1", "direction.2"] and all(d.shape == (tiny.n_embd,) for d in dirs.values())

    buf = np.zeros((tiny.n_layer - 1) * tiny.n_embd, np.float32)  # llama.cpp's buffer starts at layer 1
    for name, d in dirs.items():
        il = int(name.split(".")[1])
        buf[(il - 1) * tiny.n_embd: il * tiny.n_embd] = d
    plain = make_llama()
    prompt = plain.tokenize(b"Item 3: it is")
    before = eval_fresh(plain, prompt)
    rc = sadi_cpp.llama.hook.llama_cpp.llama_set_adapter_cvec(plain._ctx.ctx, buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float)),
                                                        buf.size, tiny.n_embd, 1, tiny.n_layer - 1)
    assert rc == 0
    with_cvec = eval_fresh(plain, prompt)
    assert np.abs(with_cvec - before).max() > 0.1  # the control vector changes the logits

    hook = sadi_cpp.attach(make_llama())
    from sadi_cpp.masks.cvec import read_cvec

    with hook.steering(add={"residual": read_cvec(cv, tiny.n_layer, tiny.n_embd)}, positions="all"):
        ours = eval_fresh(hook.llm, prompt)
    assert_f32_close(ours, with_cvec)

    ev = json.loads(run(["eval", "-m", str(tiny_path), str(dev), "--cvec", str(cv), "--positions", "all", "--json"]).stdout)
    assert ev["method"] == "caa" and ev["alpha"] == 1.0

    res = run(["tune", "-m", str(tiny_path), str(train), str(dev), "--method", "caa", "--k-grid", "1,2", "--delta-grid", "1,20",
               "--limit-train", "6", "-o", str(tmp_path / "best.gguf"), "--json"])
    report = json.loads(res.stdout)
    best = report["best"]
    assert report["n_pairs"] == 6
    back = read_cvec(tmp_path / "best.gguf", tiny.n_layer, tiny.n_embd)
    assert [il for il in range(tiny.n_layer) if back[il].any()] == [best["layer"]]


def test_prepare_and_bad_input(tiny_path, mc, tmp_path):
    raw = tmp_path / "sst.jsonl"
    raw.write_text("\n".join(json.dumps({"text": f"film {i} .", "label": i % 2}) for i in range(4)) + "\n")
    out = tmp_path / "sst-mc.jsonl"
    res = run(["prepare", "sst2", str(raw), "-o", str(out), "--limit", "3"])
    assert "3 sst2 items" in res.stdout and len(out.read_text().splitlines()) == 3
    bad(["prepare", "sst2", str(raw), "-o", str(tmp_path / "nodir" / "x.jsonl")], "no such folder")

    train, dev = mc
    mask = tmp_path / "m.sadi.gguf"
    run(["build-mask", str(train), str(tiny_path), "--top-k", "2", "-o", str(mask), "-q"])
    bad(["eval", "-m", str(tiny_path), str(dev)], "exactly one of --mask")
    bad(["eval", "-m", str(tiny_path), str(dev), "--mask", str(mask), "--method", "magic"], "unknown method 'magic'")
    bad(["eval", "-m", str(tiny_path), str(train), str(dev), "--mask", str(mask)], "unexpected extra argument")
    bad(["eval", "-m", str(tiny_path), str(raw), "--mask", str(mask)], "sst.jsonl:1", "missing field 'prompt'")
    bad(["eval", "-m", str(tiny_path), str(dev), "--cvec", str(mask)], "not a control vector")
    bad(["tune", "-m", str(tiny_path), str(train), str(dev), "--method", "fixed", "-o", str(tmp_path / "f.gguf")], "ablation")
    bad(["tune", "-m", str(tiny_path), str(train), str(dev), "--k-grid", "1,x"], "--k-grid")
    bad(["tune", "-m", str(tiny_path), str(train), str(dev), "-o", str(tmp_path / "nodir" / "m.gguf")], "no such folder")
    bad(["export-cvec", str(train), "-m", str(tiny_path), "--layers", "0"], "layer 0")
    assert not (tmp_path / "f.gguf").exists()
