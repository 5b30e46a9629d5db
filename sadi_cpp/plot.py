"""Heatmaps (need matplotlib: pip install 'sadi-cpp[plot]'): a mask's layer x unit mean differences,
and a tune grid's dev accuracies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import atomic_path, check_output


def _pyplot(path: Path) -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadInputError("plots need matplotlib: pip install matplotlib", field="plot") from None
    check_output(path, "plot")
    return plt


def _save(plt: Any, fig: Any, path: Path) -> Path:
    try:
        with atomic_path(path, "plot") as tmp:
            fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def plot_grid(result: Any, path: Union[str, Path]) -> Path:
    """Dev accuracy of every (row, column) cell of a tune run, the baseline in the title."""
    path = Path(path)
    plt = _pyplot(path)
    d = result.as_dict()
    acc = np.asarray(result.accuracy)
    fig, ax = plt.subplots(figsize=(2 + 1.1 * acc.shape[1], 1.5 + 0.6 * acc.shape[0]))
    im = ax.imshow(acc, cmap="viridis", aspect="auto")
    for r in range(acc.shape[0]):
        for c in range(acc.shape[1]):
            ax.text(c, r, f"{acc[r, c]:.3f}", ha="center", va="center", color="white" if acc[r, c] < acc.mean() else "black")
    ax.set_xticks(range(len(result.cols)), [f"{v:g}" for v in result.cols])
    ax.set_yticks(range(len(result.rows)), [str(v) for v in result.rows])
    ax.set_xlabel(d["cols"])
    ax.set_ylabel(d["rows"])
    ax.set_title(f"{result.method} ({result.site}) dev accuracy, baseline {result.baseline:.3f}, n={result.n_dev}")
    fig.colorbar(im, ax=ax, label="accuracy")
    return _save(plt, fig, path)


def plot_mask(mask: Any, path: Union[str, Path]) -> Path:
    path = Path(path)
    plt = _pyplot(path)
    table = mask.mean_diff
    lim = float(np.abs(table).max()) or 1.0
    fig, ax = plt.subplots(figsize=(min(16, 4 + table.shape[1] / 64), 4 + table.shape[0] / 8))
    im = ax.imshow(table, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
    layers, units = np.nonzero(mask.mask)
    ax.scatter(units, layers, marker="s", facecolors="none", edgecolors="black", s=40, label=f"mask (K={mask.top_k})")
    ax.set_xlabel(f"{mask.site} unit")
    ax.set_ylabel("layer")
    ax.set_title(f"SADI mean difference (positive - negative), {mask.n_pairs} pairs")
    ax.legend(loc="upper right")
    fig.colorbar(im, ax=ax, label="mean difference")
    return _save(plt, fig, path)


def plot_tradeoff(settings: Any, scorer: str, path: Union[str, Path]) -> Path:
    """Behaviour against fluency, one point per setting (eval-gen's results), a line through each
    kind's strengths in order, the behaviour's 95% interval as an error bar: where a user picks a
    strength that moves the behaviour and keeps the text fluent."""
    path = Path(path)
    plt = _pyplot(path)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    kinds = list(dict.fromkeys(s.kind for s in settings))
    for kind in kinds:
        points = sorted((s for s in settings if s.kind == kind), key=lambda s: (s.strength is None, s.strength or 0.0))
        x = [s.fluency for s in points]
        y = [s.score for s in points]
        err = np.array([[s.score - s.score_ci[0] for s in points], [s.score_ci[1] - s.score for s in points]])
        marker = "*" if kind == "unsteered" else "o"
        ax.errorbar(x, y, yerr=err, marker=marker, markersize=12 if kind == "unsteered" else 6, capsize=3,
                    linestyle="-" if len(points) > 1 else "none", label=kind)
        for s in points:
            if s.strength is not None:
                ax.annotate(f"{s.strength:g}", (s.fluency, s.score), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set_xlabel("fluency: unsteered log-likelihood per token of the text (nats)")
    ax.set_ylabel(f"behaviour: mean {scorer} score (95% interval)")
    ax.set_title("behaviour against fluency (labels: delta or scale)")
    ax.legend()
    return _save(plt, fig, path)
