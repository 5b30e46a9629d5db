"""Start-up cost of a command that checks a mask against its model (issue: the fingerprint).

    python benchmarks/bench_startup.py [--repeats 3]

- fingerprint: sadi_cpp.masks.fingerprint.tensors_sha256 on the default model (the GGUF header only,
  keys' values skipped by size) against the same hash through gguf-py's GGUFReader (which parses
  the 262k-token vocabulary string by string); the hashes must be equal.
- generate: wall time of `sadi-cpp generate -n 8 --mask M PROMPT` from the shell, against a plain
  llama-cpp-python process that loads the same model and generates 8 tokens (python -c).
Medians over the repeats; run alone (ggml's threads spin, a second job distorts everything).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List

from _common import ROOT, machine, median, print_table, write_json

PROMPT = "My opinion of the new phone is that it"


def wall(cmd: List[str]) -> float:
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd} failed:\n{res.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import gguf

    from sadi_cpp.masks.fingerprint import tensors_sha256
    from sadi_cpp.models import default_model_path

    model = str(default_model_path())
    header_s = []
    for _ in range(5):
        start = time.perf_counter()
        ours = tensors_sha256(model)
        header_s.append(time.perf_counter() - start)
    start = time.perf_counter()
    h = hashlib.sha256()
    for t in gguf.GGUFReader(model).tensors:
        h.update(f"{t.name}:{','.join(str(int(d)) for d in t.shape)}:{t.tensor_type.name}\n".encode())
    gguf_py_s = time.perf_counter() - start
    assert h.hexdigest() == ours, "the header hash differs from gguf-py's"

    cli = shutil.which("sadi-cpp") or sys.exit("sadi-cpp is not on PATH: pip install . first")
    with tempfile.TemporaryDirectory() as d:
        mask = str(Path(d) / "m.sadi.gguf")
        subprocess.run([cli, "build-mask", str(ROOT / "examples" / "sentiment_pairs.jsonl"), "-o", mask, "-q"], check=True)
        plain = ("from llama_cpp import Llama; llm = Llama(model_path=%r, n_ctx=1024, verbose=False); "
                 "llm(%r, max_tokens=8, temperature=0.0)" % (model, PROMPT))
        gen_s, plain_s = [], []
        for _ in range(args.repeats):  # interleaved, so that drift hits both alike
            gen_s.append(wall([cli, "generate", "-n", "8", "--mask", mask, PROMPT]))
            plain_s.append(wall([sys.executable, "-c", plain]))
    rows = [["fingerprint, header reader", f"{1000 * median(header_s):.1f} ms"],
            ["fingerprint, gguf-py GGUFReader", f"{gguf_py_s:.1f} s"],
            ["sadi-cpp generate -n 8 (shell, wall)", f"{median(gen_s):.2f} s"],
            ["plain llama-cpp-python, load + 8 tokens (wall)", f"{median(plain_s):.2f} s"],
            ["generate / plain", f"{median(gen_s) / median(plain_s):.2f}x"]]
    print_table(["what", "median"], rows)
    write_json("startup.json", {"machine": machine(), "repeats": args.repeats, "fingerprint_header_s": header_s,
                                "fingerprint_gguf_py_s": gguf_py_s, "generate_wall_s": gen_s, "plain_wall_s": plain_s})


if __name__ == "__main__":
    main()
