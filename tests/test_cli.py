"""The CLI on the tiny model: the flow, --json, and bad input (exit code 2, one line, no traceback)."""

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import sadi_cpp
from sadi_cpp.cli import app
from sadi_cpp.masks.mask import SadiMask
from helpers import bad

runner = CliRunner()
PAIRS = "\n".join(
    json.dumps({"prompt": f"Item {i}: ", "positive": p, "negative": n})
    for i, (p, n) in enumerate([("good", "bad"), ("yes", "no"), ("warm", "cold"), ("fine", "poor")] * 2)
)


@pytest.fixture
def pairs(tmp_path):
    p = tmp_path / "pairs.jsonl"
    p.write_text(PAIRS + "\n")
    return p


@pytest.fixture
def built(tiny_path, pairs, tmp_path):
    out = tmp_path / "tiny.pairs.head.sadi.gguf"
    res = runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "--site", "head", "--top-k", "3", "-o", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def test_version_and_help():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and sadi_cpp.__version__ in res.output
    for cmd in ("build-mask", "generate", "inspect"):
        res = runner.invoke(app, [cmd, "--help"])
        assert res.exit_code == 0 and "Usage" in res.output


def test_build_mask_writes_a_sidecar_with_a_summary(tiny_path, pairs, tmp_path):
    out = tmp_path / "m.sadi.gguf"
    res = runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "--site", "neuron", "--top-k", "4", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["pairs_used"] == 8 and summary["pairs_skipped"] == {} and len(summary["top_units"]) == 4
    m = SadiMask.load(out)
    assert m.site == "neuron" and m.top_k == 4 and m.n_pairs == 8 and m.model["arch"] == "llama"
    seq = tmp_path / "seq.sadi.gguf"
    res = runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "--site", "neuron", "--top-k", "4", "-o", str(seq), "--sequential", "-q"])
    assert res.exit_code == 0, res.output
    # The CLI's context keeps K and V in f16 (11 significant bits, eps 2^-10), and the two ways group
    # the decodes differently, so the means of O(1) activations agree to about that rounding.
    assert np.abs(SadiMask.load(seq).mean_diff - m.mean_diff).max() <= 2**-10 * max(1.0, np.abs(m.mean_diff).max())


def test_default_path_is_beside_the_model(tiny_path, pairs, tmp_path):
    import shutil

    model = tmp_path / "copy.gguf"
    shutil.copy(tiny_path, model)
    res = runner.invoke(app, ["build-mask", str(pairs), str(model), "--site", "hidden", "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "copy.pairs.hidden.sadi.gguf").is_file()


def test_inspect_and_plot(built, tmp_path):
    res = runner.invoke(app, ["inspect", str(built), "--json", "--plot", str(tmp_path / "heat.png")])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["site"] == "head" and info["top_k"] == 3 and len(info["top_units"]) == 3
    assert (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, ["inspect", str(built)])
    assert res.exit_code == 0 and "n_layer 3" in res.output


def test_generate_delta_zero_is_unsteered_and_a_strong_delta_is_not(built, tiny_path):
    base = ["generate", "-m", str(tiny_path), "Item 9: ", "--mask", str(built), "-n", "8", "--json"]
    res = runner.invoke(app, base + ["--delta", "0"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["steered"] == out["unsteered"]
    res = runner.invoke(app, base + ["--delta", "40", "--positions", "all"])
    out = json.loads(res.stdout)
    assert out["steered"] != out["unsteered"]


def test_generate_streams_text(built, tiny_path):
    res = runner.invoke(app, ["generate", "-m", str(tiny_path), "Item 9: ", "--mask", str(built), "-n", "4"])
    assert res.exit_code == 0, res.output
    assert res.stdout.endswith("\n") and len(res.stdout) > 1


def test_bad_pairs_files(tiny_path, tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"positive": "a", "negative": "b"}\n{oops}\n')
    bad(["build-mask", str(p), str(tiny_path)], "p.jsonl:2", "malformed JSON")
    p.write_text('{"positive": "a"}\n')
    bad(["build-mask", str(p), str(tiny_path)], "p.jsonl:1", "missing field 'negative'")
    p.write_text("")
    bad(["build-mask", str(p), str(tiny_path)], "no pairs")


def test_long_pairs_skip_or_fail_with_strict(tiny_path, tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text(PAIRS + "\n" + json.dumps({"positive": "z" * 400, "negative": "a"}) + "\n")
    res = runner.invoke(app, ["build-mask", str(p), str(tiny_path), "--n-ctx", "128", "-o", str(tmp_path / "m.gguf"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["pairs_skipped"] == {"longer than the context": 1}
    bad(["build-mask", str(p), str(tiny_path), "--n-ctx", "128", "--strict", "-o", str(tmp_path / "s.gguf")], "p.jsonl:9", "--n-ctx")
    assert not (tmp_path / "s.gguf").exists()


def test_bad_models_options_and_masks(tiny, tiny_path, pairs, built, tmp_path):
    not_gguf = tmp_path / "model.bin"
    not_gguf.write_bytes(b"\x00" * 64)
    bad(["build-mask", str(pairs), str(not_gguf)], "model.bin", "not a GGUF")
    bad(["build-mask", str(pairs), str(tiny_path), "--site", "mlp"], "unknown site 'mlp'")
    bad(["build-mask", str(pairs), str(tiny_path), "--top-k", "13", "-o", str(tmp_path / "k.gguf")], "top-k 13", "1..12")
    assert not (tmp_path / "k.gguf").exists()

    from tiny_model import TinyLlama

    other = TinyLlama(n_ff=64, seed=5).write(tmp_path / "other.gguf")
    bad(["generate", "-m", str(other), "hi", "--mask", str(built)], "another model", "n_ff: mask 48, model 64", "--model")

    data = built.read_bytes()
    cut = tmp_path / "cut.sadi.gguf"
    cut.write_bytes(data[: len(data) // 3])
    bad(["inspect", str(cut)], "cut.sadi.gguf", "truncated or damaged")
    bad(["generate", "-m", str(tiny_path), "hi", "--mask", str(cut)], "cut.sadi.gguf")
    bad(["inspect", str(tmp_path / "none.gguf")], "no such mask file")
    bad(["generate", "a", "b", "--mask", str(built)], "unexpected extra argument")
    bad(["build-mask", str(pairs), str(tiny_path), "--model", str(tiny_path)], "give the model once")


def test_generate_chat_uses_the_models_template_or_a_named_format(tiny, built, tiny_path, tmp_path):
    bad(["generate", "-m", str(tiny_path), "hi", "--mask", str(built), "--chat"], "no chat template", "--chat-format")
    bad(["generate", "-m", str(tiny_path), "hi", "--mask", str(built), "--chat-format", "nope"], "unknown chat format 'nope'")

    def steered(model, prompt, *extra):
        res = runner.invoke(app, ["generate", "--model", str(model), prompt, "--mask", str(built), "-n", "6", "--json", *extra])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)["steered"]

    # A template that wraps the message in markers: --chat must generate exactly what the wrapped
    # prompt generates without --chat (greedy), and something else than the bare prompt.
    templated = tiny.write(tmp_path / "templated.gguf", chat_template="{{ bos_token }}{% for m in messages %}[[{{ m['content'] }}]]{% endfor %}")
    with_chat = steered(templated, "Item 9: ", "--chat")
    assert with_chat == steered(templated, "[[Item 9: ]]")
    assert with_chat != steered(templated, "Item 9: ")
    assert steered(tiny_path, "Item 9: ", "--chat-format", "chatml") == steered(
        tiny_path, "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nItem 9: <|im_end|>\n<|im_start|>assistant\n")


def test_errors_a_user_can_fix_are_one_line_and_bugs_keep_their_traceback(tiny_path, pairs, monkeypatch):
    res = runner.invoke(app, ["--debug", "inspect", "missing.sadi.gguf"])
    assert res.exit_code == 2 and "Traceback" in res.output and "no such mask file" in res.output

    import sadi_cpp.masks.build

    def bug(*args, **kwargs):
        raise ZeroDivisionError("a bug, not the user's fault")

    monkeypatch.setattr(sadi_cpp.masks.build, "build_mask", bug)
    res = runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "-q"])
    assert res.exit_code == 1 and isinstance(res.exception, ZeroDivisionError)  # not swallowed into "error: ..."


def test_output_paths_are_checked_before_any_work(tiny_path, pairs, tmp_path):
    # the folder is checked before the model loads: with a missing model too, the folder is the error
    bad(["build-mask", str(pairs), str(tmp_path / "no-model.gguf"), "-o", str(tmp_path / "missing" / "m.gguf")], "no such folder")
    bad(["build-mask", str(pairs), str(tiny_path), "-o", str(tmp_path)], "a folder; give the mask file a file name")
    link = tmp_path / "link.gguf"
    link.symlink_to(tmp_path / "elsewhere.gguf")
    bad(["build-mask", str(pairs), str(tiny_path), "-o", str(link)], "symbolic link")
    fifo = tmp_path / "fifo.gguf"
    os.mkfifo(fifo)
    bad(["build-mask", str(pairs), str(tiny_path), "-o", str(fifo)], "not a regular file")
    bad(["build-mask", str(pairs), str(tiny_path), "-o", "/dev/null"], "not a regular file")
    assert not (tmp_path / "elsewhere.gguf").exists() and Path("/dev/null").is_char_device()
    bad(["export-cvec", str(pairs), "-m", str(tmp_path / "no-model.gguf"), "-o", str(tmp_path / "missing" / "v.gguf")], "no such folder")
    bad(["prepare", "sst2", str(pairs), "-o", str(tmp_path / "missing" / "d.jsonl")], "no such folder")
    bad(["inspect", "whatever.sadi.gguf", "--plot", str(tmp_path / "missing" / "p.png")], "no such folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo.gguf", "link.gguf", "pairs.jsonl"]  # nothing written


def test_a_new_mask_gets_the_umask_mode_and_a_replaced_one_keeps_its_mode(tiny_path, pairs, tmp_path):
    out = tmp_path / "m.sadi.gguf"
    umask = os.umask(0o022)
    try:
        res = runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "-o", str(out), "-q"])
        assert res.exit_code == 0, res.output
        assert stat.S_IMODE(out.stat().st_mode) == 0o644
        os.chmod(out, 0o600)
        res = runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "-o", str(out), "-q", "--top-k", "2"])
        assert res.exit_code == 0 and SadiMask.load(out).top_k == 2
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    finally:
        os.umask(umask)


@pytest.mark.parametrize("signum,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
@pytest.mark.parametrize("command", ["build-mask", "tune", "eval"])
def test_interrupts_exit_with_one_line_and_leave_no_file(tiny_path, built, tmp_path_factory, signum, code, word, command):
    tmp_path = tmp_path_factory.mktemp("interrupted")
    big = tmp_path / "big.jsonl"  # about 25 s of work on the tiny model: the signal lands mid-way
    big.write_text("".join(json.dumps({"prompt": f"Item {i}: it is", "choices": [" good", " bad"], "label": i % 2}) + "\n"
                           for i in range(20000)))
    out = tmp_path / "out.sadi.gguf"
    args = {"build-mask": ["build-mask", str(big), str(tiny_path), "-o", str(out)],
            "tune": ["tune", str(big), str(big), "-m", str(tiny_path), "-o", str(out)],
            "eval": ["eval", str(big), "-m", str(tiny_path), "--mask", str(built)]}[command]
    script = "import sys; from sadi_cpp.cli import app; sys.argv[0] = 'sadi-cpp'; app()"
    # SIGINT back to its default in the child: a shell that started this run in the background
    # set it to "ignore", and Python then installs no KeyboardInterrupt handler
    proc = subprocess.Popen([sys.executable, "-c", script, *args, "-q"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # a failed check must not leave the command running
            proc.kill()
            proc.wait()
    assert proc.returncode == code, stderr
    assert word in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.jsonl"]  # no mask, no temporary file


def test_check_names_the_sites_a_model_allows(tiny, tiny_path, tmp_path):
    res = runner.invoke(app, ["check", str(tiny_path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["arch"] == "llama" and info["shape"]["n_layer"] == tiny.n_layer and info["n_vocab"] == 259
    dense = {k: v for k, v in info["sites"].items() if k != "expert"}
    assert all(s["ok"] for s in dense.values()) and info["sites"]["neuron"]["node"].startswith("ffn_")
    assert not info["sites"]["expert"]["ok"] and "mixture-of-experts" in info["sites"]["expert"]["problem"]
    moe = tiny.write(tmp_path / "moe.gguf", n_expert=2)
    res = runner.invoke(app, ["check", "-m", str(moe)])
    assert res.exit_code == 0, res.output
    assert "head     ok: kqv_out-L" in res.stdout and "neuron   no:" in res.stdout and "ffn_down" in res.stdout
    assert "expert   ok: ffn_moe_swiglu-L (input of ffn_moe_down)" in res.stdout, res.stdout
    bad(["check", str(tmp_path / "none.gguf")], "no such model file")
