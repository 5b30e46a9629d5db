"""How much llama.cpp's logits depend on where a prompt is split into decode calls (no hook).

    python scripts/split_check.py [--data ../shared/data]

Evaluates the second COPA val prompt (the reference code's template) on the default model once
whole and then as eval(p[:k]); eval(p[k:]) for several k, and prints the largest difference of the
last token's logits. docs/eval.md explains why scoring fixes the split.
"""

import argparse
from pathlib import Path

import numpy as np
from llama_cpp import Llama

from sadi_cpp.models import default_model_path
from sadi_cpp.data.tasks import convert_file


def last_logits(llm: Llama) -> np.ndarray:
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).copy()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    prompt = convert_file("copa", args.data / "copa" / "val.jsonl", limit=2)[1]["prompt"]
    llm = Llama(str(default_model_path()), n_ctx=1024, n_threads=2, verbose=False)
    tokens = llm.tokenize(prompt.encode())
    llm.reset()
    llm.eval(tokens)
    whole = last_logits(llm)
    print(f"prompt of {len(tokens)} tokens; max |logit difference| vs one decode:")
    for k in (1, 3, 5, 10, 20, len(tokens) - 1):
        llm.reset()
        llm.eval(tokens[:k])
        llm.eval(tokens[k:])
        print(f"  split at {k:3d}: {np.abs(last_logits(llm) - whole).max():.4f}")


if __name__ == "__main__":
    main()
