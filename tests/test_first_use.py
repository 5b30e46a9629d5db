"""What a first-time user meets: Python from the clone root, errors that point at the fix, a mask on
another quantization of its model, help that reads like a Typer CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from arch_models import write_arch
from helpers import bad, runner
from sadi_cpp.cli import app
from tiny_model import TinyLlama

ROOT = Path(__file__).resolve().parents[1]
PAIRS = "\n".join(json.dumps({"prompt": f"Item {i}: ", "positive": p, "negative": n})
                  for i, (p, n) in enumerate([("good", "bad"), ("yes", "no"), ("warm", "cold"), ("fine", "poor")] * 2))


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    p = tmp_path / "pairs.jsonl"
    p.write_text(PAIRS + "\n")
    return p


def test_python_from_the_clone_root_uses_the_installed_engine(tiny_path: Path):
    """The clone's sadi_cpp/ comes first on sys.path there (it has no compiled engine); the
    README's Python snippets run from there."""
    code = ("import sadi_cpp, numpy as np; h = sadi_cpp.load(%r, n_ctx=64); m = np.zeros((3, 4), bool); m[0, 1] = True\n"
            "with h.steering({'head': m}, delta=2.0): h.eval(h.tokenize('Hello'))\n"
            "print(sadi_cpp.__file__)" % str(tiny_path))
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Path(res.stdout.strip()).resolve() == (ROOT / "sadi_cpp" / "__init__.py").resolve()  # the source tree's package


def test_inspect_says_a_model_is_a_model(tiny_path: Path):
    bad(["inspect", str(tiny_path)], "a GGUF model (architecture 'llama'", "not a sadi-cpp mask")


def test_tune_refuses_a_bad_grid_before_any_decode(tiny_path: Path, pairs: Path, tmp_path: Path):
    dev = tmp_path / "dev.jsonl"
    dev.write_text(json.dumps({"prompt": "Q: ", "choices": [" a", " b"], "label": 0}) + "\n")
    for grid, fragment in ((["--k-grid", "0,5"], "--k-grid"), (["--k-grid", "100000"], "--k-grid"),
                           (["--delta-grid", "nan"], "--delta-grid"), (["--method", "caa", "--k-grid", "0"], "--k-grid")):
        res = bad(["tune", str(pairs), str(dev), "-m", str(tiny_path), *grid], fragment)
        assert "pairs 0/" not in res.output, "pairs were decoded before the grid was refused"


def test_a_key_typo_is_pointed_at(tiny_path: Path, tmp_path: Path):
    p = tmp_path / "typo.jsonl"
    p.write_text(json.dumps({"prompt": "Q", "postive": "a", "negative": "b"}) + "\n")
    bad(["build-mask", str(p), str(tiny_path)], "typo.jsonl:1", "missing field 'positive'", "'postive' is not a field: a typo of 'positive'?")
    p.write_text(json.dumps({"prompt": "Q", "choices": [" a", " b"], "lable": 0}) + "\n")
    bad(["build-mask", str(p), str(tiny_path)], "missing field 'label'", "'lable' is not a field")


def test_a_mask_fits_another_quantization_of_its_model_and_no_other_model(tmp_path: Path, pairs: Path):
    tiny = TinyLlama()
    f32 = write_arch(tiny, "llama", tmp_path / "tiny-f32.gguf")
    q8 = write_arch(tiny, "llama", tmp_path / "tiny-q8_0.gguf", quant=True)
    other = write_arch(TinyLlama(n_ff=64), "llama", tmp_path / "other.gguf")
    mask = tmp_path / "m.sadi.gguf"
    res = runner.invoke(app, ["build-mask", str(pairs), str(f32), "-o", str(mask), "--top-k", "3", "-q"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["generate", "hi", "-m", str(q8), "--mask", str(mask), "-n", "3"])
    assert res.exit_code == 0, res.output
    assert "note: this mask was built on the same model with other tensor types (another quantization)" in res.output
    res = runner.invoke(app, ["generate", "hi", "-m", str(f32), "--mask", str(mask), "-n", "3"])
    assert res.exit_code == 0 and "note:" not in res.output, res.output
    bad(["generate", "hi", "-m", str(other), "--mask", str(mask)], "--model", "made for another model", "n_ff: mask 48, model 64")


def test_eval_says_when_tune_found_no_improvement(tiny_path: Path, pairs: Path, tmp_path: Path):
    from sadi_cpp.masks.mask import SadiMask

    mask = tmp_path / "m.sadi.gguf"
    assert runner.invoke(app, ["build-mask", str(pairs), str(tiny_path), "-o", str(mask), "-q"]).exit_code == 0
    m = SadiMask.load(mask)
    m.tuned = json.dumps({"improves": False, "n_dev": 4, "dev": "dev.jsonl", "best": {"accuracy": 0.5}, "baseline": 0.5})
    m.save(mask)
    dev = tmp_path / "dev.jsonl"
    dev.write_text("\n".join(json.dumps({"prompt": f"Q{i}: ", "choices": [" a", " b"], "label": i % 2}) for i in range(4)) + "\n")
    res = runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", str(mask), "-q"])
    assert res.exit_code == 0, res.output
    assert 'tune marked this mask "improves": false' in res.output
    res = runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", str(mask), "-q", "--json"])
    assert json.loads(res.stdout)["tuned_improves"] is False


def test_help_reads_like_a_typer_cli():
    commands = ["build-mask", "generate", "inspect", "check", "eval", "tune", "prepare", "export-cvec", "serve", "build-gate", "tune-gate",
                "pairs", "eval-gen", "tune-gen"]
    for cmd in commands:
        res = runner.invoke(app, [cmd, "--help"], terminal_width=160)
        assert res.exit_code == 0, res.output
        usage = next(line for line in res.output.splitlines() if "Usage:" in line)
        assert "{" not in usage and "[[" not in usage, usage
        assert "<bool>" not in res.output and "<str>" not in res.output, res.output
    usage = next(line for line in runner.invoke(app, ["build-mask", "--help"], terminal_width=160).output.splitlines() if "Usage:" in line)
    assert "PAIRS [MODEL]" in usage, usage
