"""Seeded fuzzing of the readers of untrusted files: the mask sidecar and the JSON-lines readers.
Every mutated file must end in a clean BadInputError or a valid load, in bounded time and memory
(the size bound on what the readers allocate is what tests/test_sidecar.py checks with forged counts).

The suite runs a few hundred cases; the long run reports counts by outcome:
    python tests/test_fuzz.py --cases 10000
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from sadi_cpp import BadInputError
from sadi_cpp.masks.mask import SadiMask
from sadi_cpp.data.mcdata import read_mc
from sadi_cpp.data.pairs import read_pairs

MODEL = {"arch": "llama", "n_layer": 3, "n_embd": 32, "n_head": 4, "head_dim": 8, "n_ff": 48, "n_vocab": 259,
         "tensors_sha256": "ab" * 32}


def valid_mask_bytes(directory: Path) -> bytes:
    table = np.random.default_rng(3).standard_normal((3, 4)).astype(np.float32)
    m = SadiMask(site="head", mean_diff=table, top_k=3, delta=9.0, n_pairs=10, pairs_sha256="cd" * 32, model=dict(MODEL),
                 tool_version="0.1.0", values=np.random.default_rng(4).standard_normal((3, 32)).astype(np.float32),
                 tuned=json.dumps({"best": {"top_k": 3}}))
    return m.save(directory / "valid.sadi.gguf").read_bytes()


VALID_PAIRS = "\n".join(json.dumps(r) for r in [
    {"prompt": "Q: ", "positive": "good", "negative": "bad"},
    {"positive": "I agree.", "negative": "I disagree."},
    {"prompt": "Is it?\nAnswer:", "choices": [" No", " Yes", " Maybe\u2028so"], "label": 1},
]) + "\n"


def mutate(data: bytes, rng: random.Random) -> bytes:
    b = bytearray(data)
    kind = rng.randrange(6)
    if kind == 0:  # flip a few bits
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del b[rng.randrange(len(b)):]
    elif kind == 2 and len(b) >= 8:  # a huge count or length where a number was
        i = rng.randrange(len(b) - 8)
        b[i:i + 8] = struct.pack("<Q", rng.choice([2**20, 2**32, 2**40, 2**63, 2**64 - 1, rng.randrange(2**64)]))
    elif kind == 3:  # random bytes inserted
        i = rng.randrange(len(b) + 1)
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))
    elif kind == 4:  # a region overwritten with random bytes
        i = rng.randrange(len(b))
        for j in range(i, min(len(b), i + rng.randint(1, 64))):
            b[j] = rng.randrange(256)
    else:  # a region duplicated
        i = rng.randrange(len(b))
        j = rng.randrange(i, len(b) + 1)
        b[j:j] = b[i:j]
    return bytes(b)


def run_cases(n: int, seed: int, directory: Path) -> Dict[str, collections.Counter]:
    """Mutate and read ``n`` files per reader; return the outcome counts per reader. Any exception
    other than BadInputError propagates (that is the failure this looks for)."""
    rng = random.Random(seed)
    readers: Dict[str, tuple] = {
        "sidecar": (valid_mask_bytes(directory), SadiMask.load),
        "pairs": (VALID_PAIRS.encode(), read_pairs),
        "multiple-choice": (((json.dumps({"prompt": "p", "choices": [" a", " b"], "label": 0}) + "\n") * 3).encode(), read_mc),
    }
    original = {}
    for name, (data, read) in readers.items():
        path = directory / f"original.{name}"
        path.write_bytes(data)
        original[name] = read(path)
    out: Dict[str, collections.Counter] = {}
    for name, (data, read) in readers.items():
        counts: collections.Counter = collections.Counter()
        path = directory / f"case.{name}"
        for _ in range(n):
            path.write_bytes(mutate(data, rng))
            try:
                got = read(path)
                counts["valid load" if same(name, got, original[name]) else "valid load of CHANGED content"] += 1
            except BadInputError as e:
                counts["clean error: " + classify(str(e))] += 1
        out[name] = counts
    return out


def same(name: str, got, want) -> bool:
    """A valid load must be the original content (a mutation of bytes that carry no content, such
    as alignment padding or general.name, may load); JSON lines may legitimately change."""
    if name != "sidecar":
        return True
    return (np.array_equal(got.mean_diff, want.mean_diff) and np.array_equal(got.mask, want.mask)
            and np.array_equal(got.values, want.values) and got.model == want.model
            and all(getattr(got, k) == getattr(want, k) for k in ("site", "top_k", "delta", "positions", "rank_by", "n_pairs", "pairs_sha256", "tuned")))


def classify(message: str) -> str:
    for words in ("checksum", "truncated or damaged", "not UTF-8", "malformed JSON", "missing field", "missing key",
                  "unexpected key", "is a ", "not a GGUF", "mask format", "tensor", "field", "nested"):
        if words in message:
            return words
    return "other"


def test_mutated_files_end_in_a_clean_error_or_a_valid_load(tmp_path):
    results = run_cases(300, seed=0, directory=tmp_path)
    for name, counts in results.items():
        assert sum(counts.values()) == 300, name
        assert any(k.startswith("clean error") for k in counts), (name, counts)  # the mutations do damage
    # a damaged sidecar is never read as a different mask: every valid load is the original one
    assert results["sidecar"]["valid load of CHANGED content"] == 0
    assert results["sidecar"]["valid load"] < 300


def test_valid_sidecar_loads_after_the_fuzzer_leaves_it_alone(tmp_path):
    data = valid_mask_bytes(tmp_path)
    (tmp_path / "same.sadi.gguf").write_bytes(data)
    assert SadiMask.load(tmp_path / "same.sadi.gguf").top_k == 3


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=10000, help="cases per reader")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        start = time.perf_counter()
        results = run_cases(args.cases, args.seed, Path(d))
        seconds = time.perf_counter() - start
    for name, counts in results.items():
        print(f"{name}: {sum(counts.values())} cases")
        for outcome, k in counts.most_common():
            print(f"  {k:6d}  {outcome}")
    print(f"{seconds:.1f} s, no crash, no exception other than BadInputError")


if __name__ == "__main__":
    main(sys.argv[1:])
