"""Prints how much the default model's last-token logits move when a WHOLE row of a site is scaled,
per layer (post-norms should erase a common factor). Used for the figures in docs/engine.md."""

import numpy as np

import sadi_cpp


def main() -> None:
    hook = sadi_cpp.load(None, n_ctx=256)
    llm = hook.llm
    tokens = llm.tokenize(b"The capital of France is")

    def logits() -> np.ndarray:
        llm.reset()
        llm.eval(tokens)
        return hook.logits()

    plain = logits()
    n_layer = hook.shape.n_layer
    for site in ("head", "hidden"):
        for delta in (0.01, 0.1, 1.0, 29.0):
            diffs = []
            for layer in range(n_layer):
                mask = np.zeros((n_layer, hook.n_units(site)), bool)
                mask[layer] = True
                with hook.steering({site: mask}, delta=delta):
                    diffs.append(float(np.abs(logits() - plain).max()))
            print(f"{site:6s} delta {delta:5g}: " + " ".join(f"{d:.3f}" for d in diffs))


if __name__ == "__main__":
    main()
