"""tune and eval say what the data can show: a constant-answer baseline, a flat grid that is no
improvement, a real effect that is one; progress in logs; statistics kept across an interrupt;
baselines at fair scales."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import runner

import sadi_cpp
from sadi_cpp.cli import app
from sadi_cpp.masks.contrast import mean_differences
from sadi_cpp.evaluation.interventions import BASELINE
from sadi_cpp.masks.mask import SadiMask
from sadi_cpp.data.mcdata import MCItem
from sadi_cpp.scoring.score import score_items
from sadi_cpp.evaluation.tune import config_for

WORDS = ["good", "bad", "warm", "cold", "fine", "poor", "kind", "mean", "calm", "loud", "soft", "hard"]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_file(tmp_path, n=12):
    return write(tmp_path / "train.jsonl", [{"prompt": f"Item {i}: it is", "choices": [" " + WORDS[i % 12], " " + WORDS[(i + 5) % 12]],
                                             "label": i % 2} for i in range(n)])


def tune_json(*args):
    res = runner.invoke(app, ["tune", *map(str, args), "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.stdout), res


def test_a_constant_answer_and_a_flat_grid_are_reported_as_such(tiny_path, tmp_path):
    train = train_file(tmp_path)
    # the same prompt and choices every time: the unsteered model gives one answer to every item,
    # and the labels alternate, so the baseline is 50% by construction
    dev = write(tmp_path / "dev.jsonl", [{"prompt": "Item 7: it is", "choices": [" warm", " cold"], "label": i % 2} for i in range(24)])
    out = tmp_path / "flat.sadi.gguf"
    report, res = tune_json(train, dev, "-m", tiny_path, "--site", "neuron", "--k-grid", "2,4", "--delta-grid", "0.001,0.002", "-o", out)
    assert report["constant_baseline"] and report["answers"]["baseline"]["share"] == 1.0
    assert report["baseline"] == 0.5 and not report["improves"]
    assert json.loads(SadiMask.load(out).tuned)["improves"] is False  # written, and marked
    # the same run as a person reads it
    res = runner.invoke(app, ["tune", str(train), str(dev), "-m", str(tiny_path), "--site", "neuron", "--k-grid", "2,4",
                              "--delta-grid", "0.001,0.002", "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert "warning: the unsteered model answers 'warm' on 100% of the items" in res.stdout or "'cold' on 100%" in res.stdout
    assert "NO cell beats the baseline outside the noise" in res.stdout and '"improves": false' in res.stdout
    ev = runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", str(out)])
    assert ev.exit_code == 0 and "warning: the unsteered model answers" in ev.stdout
    shown = runner.invoke(app, ["inspect", str(out)])
    assert shown.exit_code == 0 and "NOT an improvement" in shown.stdout


def test_a_real_effect_is_reported_as_an_improvement(tiny, tiny_path, tmp_path, make_llama):
    train = train_file(tmp_path)
    # find items whose answer one grid cell flips, and label them with the steered answer
    hook = sadi_cpp.attach(make_llama(n_ctx=1024, n_batch=512, n_ubatch=512, type_k=1, type_v=1))  # the CLI's context
    contrast = mean_differences(hook, str(train), sites=("head",))
    cell = config_for(hook, contrast, "sadi", "head", 2, 30.0)
    candidates = [MCItem(f"Case {i}: {WORDS[i % 12]} and {WORDS[i // 12 % 12]}", (" " + WORDS[(i + 3) % 12], " " + WORDS[(i + 7) % 12]), 0)
                  for i in range(400)]
    pred = score_items(hook, candidates, [BASELINE, cell]).predictions()
    flips = [(it, int(p)) for it, b, p in zip(candidates, pred[0], pred[1]) if b != p]
    assert len(flips) >= 20, len(flips)
    dev = write(tmp_path / "dev.jsonl", [{"prompt": it.prompt, "choices": list(it.choices), "label": p} for it, p in flips[:40]])
    report, _ = tune_json(train, dev, "-m", tiny_path, "--site", "head", "--k-grid", "2", "--delta-grid", "0.001,30")
    # the CLI's own context may round a few answers differently from this one: "about" 0 and 1
    assert report["baseline"] <= 0.15 and report["best"]["delta"] == 30.0 and report["best"]["accuracy"] >= 0.85
    assert report["improves"] and report["check"]["held_out"]["diff_ci"][0] > 0


def test_progress_lines_appear_when_stderr_is_a_file(tiny_path, tmp_path):
    train = train_file(tmp_path)
    dev = write(tmp_path / "dev.jsonl", [{"prompt": f"Item {i}: it is", "choices": [" warm", " cold"], "label": i % 2} for i in range(30)])
    log = tmp_path / "stderr.log"
    script = "import sys; from sadi_cpp.cli import app; sys.argv[0] = 'sadi-cpp'; app()"
    with open(log, "w") as f:
        res = subprocess.run([sys.executable, "-c", script, "tune", str(train), str(dev), "-m", str(tiny_path), "--k-grid", "1",
                              "--delta-grid", "2", "--json"], stdout=subprocess.PIPE, stderr=f, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0
    lines = log.read_text().splitlines()
    running = [l for l in lines if re.match(r"items \d+/30 \(\d+%\), [\d.]+ items/s, ETA \d+:\d\d$", l)]
    assert len(running) >= 3, lines  # a line every tenth of the work, with rate and ETA
    assert any(re.match(r"items 30/30 done in \d+:\d\d \([\d.]+ items/s\)$", l) for l in lines), lines
    assert any(re.match(r"pairs 12/12 done in", l) for l in lines), lines
    quiet = subprocess.run([sys.executable, "-c", script, "tune", str(train), str(dev), "-m", str(tiny_path), "--k-grid", "1",
                            "--delta-grid", "2", "-q"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_statistics_survive_an_interrupt_and_the_next_tune_reuses_them(tiny_path, tmp_path, stats_cache, monkeypatch):
    big = write(tmp_path / "big.jsonl", [{"prompt": f"Item {i}: it is", "choices": [" good", " bad"], "label": i % 2} for i in range(300)])
    dev = write(tmp_path / "dev.jsonl", [{"prompt": f"Thing {i}: it is", "choices": [" warm", " cold"], "label": i % 2}
                                         for i in range(20000)])  # long enough to be interrupted while scoring
    script = "import sys; from sadi_cpp.cli import app; sys.argv[0] = 'sadi-cpp'; app()"
    args = ["tune", str(big), str(dev), "-m", str(tiny_path), "--k-grid", "1", "--delta-grid", "2", "-q"]
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(stats_cache.rglob("*.npz")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert list(stats_cache.rglob("*.npz")), "the statistics were not kept"
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "kept: the statistics, in" in stderr and "Traceback" not in stderr, stderr

    # the next run: its statistics phase decodes nothing (count the decodes before scoring starts)
    import sadi_cpp.llama.hook
    import sadi_cpp.evaluation.tune

    decodes, at_scoring = [], []
    real_decode, real_score = sadi_cpp.llama.hook.Hook.decode, sadi_cpp.evaluation.tune.score_items
    monkeypatch.setattr(sadi_cpp.llama.hook.Hook, "decode", lambda self, *a, **k: decodes.append(1) or real_decode(self, *a, **k))
    monkeypatch.setattr(sadi_cpp.evaluation.tune, "score_items", lambda *a, **k: at_scoring.append(len(decodes)) or real_score(*a, **k))
    small = write(tmp_path / "small.jsonl", read_rows(dev, 10))
    res = runner.invoke(app, ["tune", str(big), str(small), "-m", str(tiny_path), "--k-grid", "1", "--delta-grid", "2", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["statistics"]["reused"] and at_scoring[0] == 0 and len(decodes) > 0
    res = runner.invoke(app, ["tune", str(big), str(small), "-m", str(tiny_path), "--k-grid", "1",
                              "--delta-grid", "2", "--json", "--no-cache"])
    assert res.exit_code == 0 and not json.loads(res.stdout)["statistics"]["reused"]


def read_rows(path, n):
    return [json.loads(l) for l in path.read_text().splitlines()[:n]]


def test_baselines_default_to_fair_scales_and_random_names_its_units(tiny_path, tmp_path):
    train = train_file(tmp_path)
    dev = write(tmp_path / "dev.jsonl", [{"prompt": f"Item {i + 50}: it is", "choices": [" warm", " cold"], "label": i % 2} for i in range(10)])
    out = tmp_path / "tuned.sadi.gguf"
    report, _ = tune_json(train, dev, "-m", tiny_path, "--site", "neuron", "--k-grid", "2,8", "--delta-grid", "3,30", "-o", out)
    fixed = report["fixed"]
    assert fixed["top_k"] == report["best"]["top_k"] and fixed["alpha"] == fixed["alpha_grid"][int(np.argmax(fixed["accuracy"]))]
    ev = json.loads(runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", str(out), "--method", "fixed", "--json"]).stdout)
    assert ev["alpha"] == fixed["alpha"] and ev["acc"] == pytest.approx(fixed["best_accuracy"])
    built = tmp_path / "built.sadi.gguf"
    assert runner.invoke(app, ["build-mask", str(train), str(tiny_path), "--site", "neuron", "-o", str(built), "-q"]).exit_code == 0
    res = runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", str(built), "--method", "fixed"])
    assert res.exit_code == 2 and "no tuned scale for the fixed baseline" in res.output and "--alpha" in res.output
    res = runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", str(built), "--method", "fixed", "--delta", "3"])
    assert res.exit_code == 2 and "takes --alpha" in res.output
    ev = json.loads(runner.invoke(app, ["eval", str(dev), "-m", str(tiny_path), "--mask", str(built), "--method", "random",
                                        "--seed", "4", "--json"]).stdout)
    assert len(ev["units"]) == SadiMask.load(built).top_k and ev["seed"] == 4


def test_a_damaged_statistics_cache_is_computed_again(tiny_path, tmp_path, stats_cache):
    train = train_file(tmp_path)
    dev = write(tmp_path / "dev.jsonl", [{"prompt": f"Item {i + 50}: it is", "choices": [" warm", " cold"], "label": i % 2} for i in range(4)])
    args = [train, dev, "-m", tiny_path, "--k-grid", "1", "--delta-grid", "2"]
    first, _ = tune_json(*args)
    (cached,) = list(stats_cache.rglob("*.npz"))
    for damage in (b"PK\x03\x04garbage", b"", cached.read_bytes()[:100]):
        cached.write_bytes(damage)
        again, _ = tune_json(*args)
        assert not again["statistics"]["reused"] and again["accuracy"] == first["accuracy"]
    assert tune_json(*args)[0]["statistics"]["reused"]  # written anew, and reused next time
