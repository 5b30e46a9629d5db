"""Run by tests/test_rpc.py in a process of its own (it puts RPC workers into llama.cpp's device
registry, which no other test should see): the engine on a tiny model split over the workers
against the same model in one process, with every comparison asserted here. Prints a JSON summary.

    python tests/rpc_check.py --rpc HOST:PORT,HOST:PORT --dir TMPDIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_model import TinyLlama  # noqa: E402

import sadi_cpp  # noqa: E402
from sadi_cpp import Steering  # noqa: E402
from sadi_cpp.llama.batch import BatchRow  # noqa: E402

PROMPT = [1] + [(13 * i + 7) % 250 + 3 for i in range(29)]
OTHER = [1] + [(5 * i + 3) % 240 + 9 for i in range(21)]
F32 = dict(type_k=0, type_v=0, n_threads=2, n_threads_batch=2)


def logits_of(hook, tokens):
    hook.kv_clear()
    hook.eval(tokens)
    return hook.logits()


def same(a, b, what):
    """Bit for bit: both sides run the same CPU kernels of the same ggml on the same rows (no
    weight repacking on an f32 model), so nothing may differ."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, (what, a.shape, b.shape)
    assert np.array_equal(a, b, equal_nan=True), f"{what}: max difference {np.nanmax(np.abs(a - b)):.3g}"


def mask_for(hook, site, layers, seed):
    rng = np.random.default_rng(seed)
    m = np.zeros((hook.shape.n_layer, hook.n_units(site)), bool)
    for il in layers:
        m[il, rng.choice(hook.n_units(site), size=min(3, hook.n_units(site)), replace=False)] = True
    return {site: m}


def compare(local, remote, boundary, summary):
    n_layer = local.shape.n_layer
    base = logits_of(local, PROMPT)
    same(logits_of(remote, PROMPT), base, "unhooked logits")
    for site in local.sites:
        if site == "residual":
            continue
        for layers in ([boundary], list(range(n_layer))):  # the last layer of the first worker, and every layer
            m = mask_for(local, site, layers, len(layers))
            with local.steering(m, 0.0), remote.steering(m, 0.0):
                same(logits_of(remote, PROMPT), base, f"{site}: delta 0")
            for policy in ("last", "all"):
                with local.steering(m, 6.0, positions=policy), remote.steering(m, 6.0, positions=policy):
                    want = logits_of(local, PROMPT)
                    same(logits_of(remote, PROMPT), want, f"{site} layers {layers} {policy}")
                    assert np.abs(want - base).max() > 1e-3, f"{site}: the edit shows"
                summary["checks"] += 1
        for policy in ("last", "all"):
            got = []
            for hook in (local, remote):
                with hook.recording(sites=(site,), positions=policy) as rec:
                    hook.eval(PROMPT)
                got.append(rec.values(site))
            same(got[1], got[0], f"{site} recording {policy}")
            summary["checks"] += 1


def several_configurations(local, remote, summary):
    outs = []
    for hook in (local, remote):
        a = hook.configure("a", mask_for(hook, "head", range(hook.shape.n_layer), 1), 5.0)
        b = hook.configure("b", Steering(add={"residual": np.full((hook.shape.n_layer, hook.shape.n_embd), 0.2, np.float32)}))
        hook.kv_clear()
        hook.bind(0, a)
        hook.bind(1, b)
        rows = [BatchRow(t, p, (0,), True) for p, t in enumerate(PROMPT)] + [BatchRow(t, p, (1,), True) for p, t in enumerate(OTHER)]
        outs.append(hook.decode(rows, [len(PROMPT) - 1, len(rows) - 1]))
        hook.bind(0, None)
        hook.bind(1, None)
    same(outs[1], outs[0], "two configurations in one decode")
    summary["checks"] += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rpc", required=True)
    ap.add_argument("--dir", type=Path, required=True)
    a = ap.parse_args()
    endpoints = a.rpc.split(",")
    summary = {"checks": 0, "layers": {}, "copy": {}}
    dense = TinyLlama().write(a.dir / "tiny.gguf")
    moe = TinyLlama().write(a.dir / "tiny-moe.gguf", n_expert=2)
    for name, path, batch in (("dense", dense, 256), ("dense ubatch 7", dense, 7), ("moe", moe, 256)):
        sizes = dict(n_ctx=256, n_batch=max(batch, 32), n_ubatch=batch, **F32)
        remote = sadi_cpp.load(str(path), rpc=endpoints, **sizes)
        local = sadi_cpp.load(str(path), **sizes)
        assert local.workers == {} and set(remote.workers) == set(endpoints), remote.workers
        layers = sadi_cpp.llama.rpc.placement(remote)["residual"]
        assert set(layers) <= set(endpoints), layers  # every layer on a worker: none stayed here
        boundary = remote.workers[endpoints[0]][-1]
        compare(local, remote, boundary, summary)
        if name == "dense":
            several_configurations(local, remote, summary)
        summary["layers"][name] = remote.workers
        summary["copy"][name] = remote.engine.copy_stats()
        assert summary["copy"][name]["gets"] > 0  # the device path really ran
        assert local.engine.copy_stats()["gets"] == 0
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
