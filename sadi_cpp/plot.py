"""The layer x unit heatmap of a mask's mean differences (needs matplotlib: pip install 'sadi-cpp[plot]')."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Union

import numpy as np

from sadi_cpp.errors import BadInputError


def plot_mask(mask: Any, path: Union[str, Path]) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BadInputError("--plot needs matplotlib: pip install matplotlib") from None
    path = Path(path)
    if not path.parent.is_dir():
        raise BadInputError(f"{path.parent}: no such folder for the plot")
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
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
