"""Every command block and Python snippet of the README runs, in order, as a user would run them:
a fresh home folder (the default model assembled there), the example files in the working folder,
the clone's Python package on the path as from the clone root. Checked: exit code 0 and the shape
of what each step prints (no golden strings: numbers and text move with the machine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

from server_helpers import free_port

ROOT = Path(__file__).resolve().parents[1]

# What the run must print somewhere (the server in the background prints when it likes, so no
# order): fragments of each README step's output.
SHAPES = [
    r"pairs used: 180, skipped: none",  # build-mask
    r"mask written to .*sentiment_pairs\.head\.sadi\.gguf",
    r"site: head\s+top_k: 5",  # inspect
    r"heatmap written to heads\.png",
    r"unsteered\s+┃ steered \(head, K=5, delta=9\)",  # generate --compare
    r"architecture gemma3: n_layer 18",  # check
    r"head\s+ok: kqv_out-L",
    r"gate written to .*complaint_pairs\.gate\.sadi\.gguf",  # build-gate
    r"steered \(head, K=5, delta=9; gate",  # generate --gate
    r"score -?[0-9.]+ >= threshold -?[0-9.]+, fired",
    r"score -?[0-9.]+ < threshold -?[0-9.]+, did not fire",
    r"steered \(head, K=5, delta=4\)",  # SmolLM2 chat
    r"200 pairs \(persona templates, 'happy' against 'sad'",  # pairs
    r"steered \(head, K=5, delta=2\)",  # generate --compare of the two-words mask
    r"20 prompts x 2 sample\(s\), scorer sentiment",  # eval-gen
    r"sadi 5: score [+-][0-9.]+ against unsteered",
    r"dev accuracy, 64 items",  # tune
    r"held-out check: ",
    r"56 items, sadi, positions last",  # eval
    r"difference │",
    r"listening on http://127\.0\.0\.1:\d+",  # serve
    r'"sadi":\{"mask":"gemma-3-270m-q4_k_m\.sentiment_pairs\.head"',  # curl
    r"None ['\"]",  # the openai snippet: unsteered, then steered
    r"\{'mask': 'gemma-3-270m-q4_k_m\.sentiment_pairs\.head'",
    r"\(1, 18, 4\)",  # the Python API snippet
]


def blocks(text: str) -> List[Tuple[str, str]]:
    """(kind, body) of every fenced block, in order."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M)


def script(text: str, port: int) -> str:
    """One bash script: the console blocks' commands (lines after "$ ") and the Python blocks,
    with the server moved from port 8000 to ``port``."""
    lines = ["set -e"]
    for kind, body in blocks(text):
        if kind == "console":
            for line in body.splitlines():
                if line.startswith("$ "):
                    cmd = line[2:].replace("localhost:8000", f"localhost:{port}")
                    if cmd.startswith("sadi-cpp serve"):
                        cmd = cmd.replace("sadi-cpp serve", f"sadi-cpp serve --port {port}", 1)
                    lines.append(cmd)
        elif kind == "python":
            lines.append("python - <<'README_PY'\n" + body.replace("127.0.0.1:8000", f"127.0.0.1:{port}") + "README_PY")
    lines.append("kill $(jobs -p) 2>/dev/null; wait || true")
    return "\n".join(lines) + "\n"


def test_the_readme_runs_as_written(tmp_path: Path):
    text = (ROOT / "README.md").read_text()
    assert len([k for k, _ in blocks(text) if k in ("console", "python")]) >= 6  # the README was really parsed
    work, home = tmp_path / "work", tmp_path / "home"
    work.mkdir()
    home.mkdir()
    shutil.copytree(ROOT / "examples", work / "examples")
    env = dict(os.environ, HOME=str(home), COLUMNS="100", PYTHONPATH=str(ROOT),
               PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    run = subprocess.run(["bash", "-c", script(text, free_port())], cwd=work, env=env, capture_output=True, text=True,
                         timeout=1800)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    missing = [shape for shape in SHAPES if not re.search(shape, out)]
    assert not missing, f"the README run never printed {missing}:\n{out[-6000:]}"
    assert "Traceback" not in out, out[-4000:]
