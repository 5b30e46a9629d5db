"""How much plain llama.cpp (no sadi-cpp) moves a prompt's next-token log-probabilities when the
prompt shares a decode with others instead of running alone.

    python benchmarks/grouping_drift.py [--prompts 16] [--model PATH]

N prompts of random words are decoded in one batch (one sequence each, a unified KV cache, the
context the server uses) and each alone; printed: the largest |log-probability difference| over
the 5 most likely tokens of each prompt, and whether the grouped decode repeats bit for bit.
This is the rounding the server's batched answers inherit (docs/server.md).
"""

from __future__ import annotations

import argparse

import numpy as np
from llama_cpp import Llama, llama_cpp
from llama_cpp import _internals as internals

from sadi_cpp.models import resolve_model

WORDS = "the a movie film was great bad story of an old man who went to sea and found nothing but love hate joy".split()


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    return x - (x.max() + np.log(np.exp(x - x.max()).sum()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    n = args.prompts
    llm = Llama(str(resolve_model(args.model)), n_ctx=4096, n_batch=512, n_threads=args.threads, verbose=False)
    params = llm.context_params
    params.n_seq_max, params.kv_unified, params.n_ctx = n, True, 4096
    llm._ctx.close()
    ctx = internals.LlamaContext(model=llm._model, params=params, verbose=False)
    rng = np.random.default_rng(0)
    prompts = [llm.tokenize(" ".join(rng.choice(WORDS, int(rng.integers(3, 25)))).encode()) for _ in range(n)]
    n_vocab = llm.n_vocab()
    batch = internals.LlamaBatch(n_tokens=512, embd=0, n_seq_max=n, verbose=False)

    def decode(seqs):
        ctx.kv_cache_clear()
        b, row, out = batch.batch, 0, {}
        for s in seqs:
            for i, t in enumerate(prompts[s]):
                b.token[row], b.pos[row], b.n_seq_id[row], b.seq_id[row][0] = t, i, 1, s
                b.logits[row] = int(i == len(prompts[s]) - 1)
                if b.logits[row]:
                    out[s] = row
                row += 1
        b.n_tokens = row
        assert llama_cpp.llama_decode(ctx.ctx, b) == 0
        return {s: log_softmax(np.ctypeslib.as_array(ctx.get_logits_ith(r), shape=(n_vocab,)).copy()) for s, r in out.items()}

    together = decode(list(range(n)))
    drift = []
    for s in range(n):
        alone = decode([s])[s]
        top = np.argsort(-alone)[:5]
        drift.append(float(np.abs(alone[top] - together[s][top]).max()))
    again = decode(list(range(n)))
    print(f"{n} prompts in one decode against each alone, max |d log-prob| over each prompt's top 5:")
    print(" ".join(f"{d:.3f}" for d in drift))
    print(f"largest {max(drift):.3f} nats; prompts with no change: {sum(d == 0 for d in drift)} of {n}")
    print("the grouped decode repeats bit for bit:", all(np.array_equal(together[s], again[s]) for s in range(n)))


if __name__ == "__main__":
    main()
