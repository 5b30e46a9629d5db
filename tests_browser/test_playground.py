"""The playground page in a real headless Chromium: it loads, lists the masks, and streams an
unsteered and a steered answer side by side. The screenshot is kept as the test's artifact
(in $SADI_CPP_ARTIFACTS, else the test's temporary folder), not in git.

Apart from the suite (tests/) because it needs a browser that pip cannot install: run it with
``apt-get install chromium && pytest tests_browser`` (.ci/run does, after the suite)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from browser import Browser, find_browser
from server_helpers import Server, write_random_gates, write_random_masks
from tiny_model import TinyLlama


@pytest.fixture(scope="module")
def browser():
    exe = find_browser()
    if exe is None:
        pytest.fail("the playground test needs Chromium: apt-get install chromium")
    b = Browser(exe)
    yield b
    b.close()


def test_playground_streams_both_answers_side_by_side(browser: Browser, tmp_path: Path):
    model = TinyLlama().write(tmp_path / "tiny.gguf")
    write_random_masks(model, tmp_path, {"tiny.head": ("head", 3, 9.0), "tiny.neuron": ("neuron", 20, 15.0)})
    with Server([str(model), "--masks", str(tmp_path), "--n-ctx", "128"]) as srv:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=srv.url + "/")
        options = browser.wait_for("document.querySelectorAll('#mask option').length === 2 && "
                                   "[...document.querySelectorAll('#mask option')].map(o => o.value)")
        assert options == ["tiny.head", "tiny.neuron"]
        assert browser.eval("document.getElementById('delta').value") == "9"  # the first mask's recommended delta
        browser.eval("document.getElementById('mask').value = 'tiny.neuron';"
                     "document.getElementById('mask').dispatchEvent(new Event('change'));"
                     "document.getElementById('positions').value = 'all';"
                     "document.getElementById('prompt').value = 'Hello';"
                     "document.getElementById('max-tokens').value = '24';"
                     "document.getElementById('run').click()")
        browser.wait_for("document.getElementById('plain').dataset.done === 'true' && "
                         "document.getElementById('steered').dataset.done === 'true'")
        page = browser.eval("({plain: document.getElementById('plain').textContent,"
                            " steered: document.getElementById('steered').textContent,"
                            " title: document.getElementById('steered-title').textContent,"
                            " status: document.getElementById('status').textContent})")
        artifacts = Path(os.environ.get("SADI_CPP_ARTIFACTS", tmp_path))
        artifacts.mkdir(parents=True, exist_ok=True)
        (artifacts / "playground.png").write_bytes(browser.screenshot())
        # the same two requests through the API: the page shows exactly these answers
        base = {"prompt": "Hello", "max_tokens": 24, "temperature": 0}
        plain = srv.post("/v1/completions", base)[1]["choices"][0]["text"]
        steered = srv.post("/v1/completions", {**base, "sadi": {"mask": "tiny.neuron", "delta": 15, "positions": "all"}})[1]
    assert page["status"] == ""
    assert page["title"] == "steered: tiny.neuron, delta 15, all"
    assert page["plain"] == plain
    assert page["steered"] == steered["choices"][0]["text"]
    assert page["plain"] != page["steered"]


def test_playground_composes_two_masks_and_shows_the_gate(browser: Browser, tmp_path: Path):
    model = TinyLlama().write(tmp_path / "tiny.gguf")
    write_random_masks(model, tmp_path, {"tiny.head": ("head", 3, 9.0), "tiny.neuron": ("neuron", 20, 15.0)})
    write_random_gates(model, tmp_path, {"always": (0, -1.0), "never": (1, 1.0)})
    with Server([str(model), "--masks", str(tmp_path), "--n-ctx", "128"]) as srv:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=srv.url + "/")
        gates = browser.wait_for("document.querySelectorAll('#gate option').length === 3 && "
                                 "[...document.querySelectorAll('#gate option')].map(o => o.value)")
        assert gates == ["", "always", "never"]
        pages = {}
        for gate in ("never", "always"):
            browser.eval("document.getElementById('mask2').value = 'tiny.neuron';"
                         "document.getElementById('mask2').dispatchEvent(new Event('change'));"
                         f"document.getElementById('gate').value = '{gate}';"
                         "document.getElementById('positions').value = 'last+generated';"
                         "document.getElementById('prompt').value = 'Hello';"
                         "document.getElementById('max-tokens').value = '24';"
                         "document.getElementById('run').click()")
            browser.wait_for("document.getElementById('plain').dataset.done === 'true' && "
                             "document.getElementById('steered').dataset.done === 'true'")
            pages[gate] = browser.eval("({plain: document.getElementById('plain').textContent,"
                                       " steered: document.getElementById('steered').textContent,"
                                       " title: document.getElementById('steered-title').textContent,"
                                       " gate: document.getElementById('gate-result').textContent,"
                                       " status: document.getElementById('status').textContent})")
        base = {"prompt": "Hello", "max_tokens": 24, "temperature": 0}
        composed = [{"mask": "tiny.head", "delta": 9, "positions": "last+generated", "gate": "always"},
                    {"mask": "tiny.neuron", "delta": 15}]
        steered = srv.post("/v1/completions", {**base, "sadi": composed})[1]
    never, always = pages["never"], pages["always"]
    assert never["status"] == always["status"] == ""
    assert always["title"] == "steered: tiny.head, delta 9 + tiny.neuron, delta 15, last+generated, gate always"
    assert never["gate"].startswith("gate never: score ") and never["gate"].endswith("did not fire: this answer is unsteered")
    assert never["steered"] == never["plain"]
    assert always["gate"].startswith("gate always: score ") and always["gate"].endswith("fired: steered")
    assert always["steered"] == steered["choices"][0]["text"] != always["plain"]


def test_playground_json_mode_and_n_choices(browser: Browser, tmp_path: Path):
    model = TinyLlama().write(tmp_path / "tiny.gguf")
    write_random_masks(model, tmp_path, {"tiny.head": ("head", 3, 9.0)})
    with Server([str(model), "--masks", str(tmp_path), "--n-ctx", "128"]) as srv:
        browser.call("Page.enable")
        browser.call("Page.navigate", url=srv.url + "/")
        browser.wait_for("document.querySelectorAll('#mask option').length === 1")
        browser.eval("document.getElementById('json').checked = true;"
                     "document.getElementById('n').value = '2';"
                     "document.getElementById('temperature').value = '1';"
                     "document.getElementById('prompt').value = 'Data:';"
                     "document.getElementById('max-tokens').value = '16';"
                     "document.getElementById('run').click()")
        browser.wait_for("document.getElementById('plain').dataset.done === 'true' && "
                         "document.getElementById('steered').dataset.done === 'true'")
        page = browser.eval("({plain: document.getElementById('plain').textContent,"
                            " status: document.getElementById('status').textContent})")
    assert page["status"] == ""
    # two choices, each shown with its number; JSON mode: each an object from its first token
    assert page["plain"].startswith("[1] {") and "\n\n[2] {" in page["plain"], page["plain"]
