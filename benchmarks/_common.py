"""Shared helpers of the benchmark scripts: machine description, medians, peak RSS, tables, JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"


def machine() -> Dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import llama_cpp

    import sadi_cpp

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem, 1), "os": platform.platform(),
            "python": platform.python_version(), "llama_cpp_python": llama_cpp.__version__, "sadi_cpp": sadi_cpp.__version__}


def peak_rss_mib() -> float:
    """This process's peak resident set size (VmHWM), MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def run_worker(script: Path, args: List[str], timeout: int = 3600) -> Dict[str, Any]:
    """Run ``script --worker args`` in a fresh process (clean peak RSS); it prints one JSON line last."""
    res = subprocess.run([sys.executable, str(script), "--worker", *args], capture_output=True, text=True, timeout=timeout,
                         cwd=str(ROOT.parent))
    if res.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(h) for h in headers]] + [[f"{c:.3g}" if isinstance(c, float) else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for n, r in enumerate(cells):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths)))
        if n == 0:
            print("  ".join("-" * w for w in widths))


def write_json(name: str, obj: Dict[str, Any]) -> Path:
    path = ROOT / "benchmarks" / "out" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))
    print(f"wrote {path}")
    return path


def ratio_table(runs: Dict[str, Dict[str, List[float]]], ref: str) -> Tuple[List[List[Any]], Dict[str, Dict[str, Any]]]:
    """Rows [name, prompt tok/s, ratio, generated tok/s, ratio] and their JSON: medians of each
    configuration's runs, ratios per round and prompt (the same position in every run list) to
    ``ref``, so that the machine's drift cancels, then their median."""
    rows, out = [], {}
    for name, r in runs.items():
        p, g = median(r["prompt_tps"]), median(r["gen_tps"])
        pr = median([a / b for a, b in zip(r["prompt_tps"], runs[ref]["prompt_tps"])])
        gr = median([a / b for a, b in zip(r["gen_tps"], runs[ref]["gen_tps"])])
        rows.append([name, round(p, 1), round(pr, 3), round(g, 1), round(gr, 3)])
        out[name] = {"prompt_tps": p, "prompt_ratio": pr, "gen_tps": g, "gen_ratio": gr, "runs": r}
    return rows, out


def llama_cpp_server(args: List[str]) -> List[str]:
    """The command that runs ``python -m llama_cpp.server ARGS`` with sadi-cpp's AMX workaround
    applied first: on a llama.cpp build with AMX kernels llama_cpp.server crashes in them after
    its first request (README), and with it both servers run the same kernels."""
    code = ("import runpy, sys; from sadi_cpp.llama.runtime import avoid_amx_repacking; avoid_amx_repacking(); "
            "sys.argv = ['llama_cpp.server'] + sys.argv[1:]; runpy.run_module('llama_cpp.server', run_name='__main__', alter_sys=True)")
    return [sys.executable, "-c", code, *args]
