"""The sites SADI reads and steers, and the model shape that sizes them (mirrors cpp/sadi/shape.hpp).

- ``head``:     one attention head's output (head_dim values), the input of the output projection;
- ``neuron``:   one FFN intermediate unit, the input of ffn_down;
- ``hidden``:   one element of the FFN output, before the residual add;
- ``expert``:   one neuron of one expert of a mixture-of-experts FFN (unit e * n_ff_exp + j), the
                input of the experts' down projection; zero where a token did not select expert e;
- ``residual``: the residual stream after a layer (read and added to only: the CAA baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from sadi_cpp.errors import BadInputError

SITES = ("head", "neuron", "hidden", "expert")
# Sites that can also be read and added to (not masked): the residual stream after each layer.
RECORD_SITES = SITES + ("residual",)

# Per-site defaults, inside the paper's search ranges (K: heads 1-10, neurons 3-500, hidden 1-20;
# strength = 1 + delta: 5-80 for heads and hidden, 10-90 for neurons): build-mask's K and delta,
# and tune's grid.
# (expert neurons take the neuron values: the paper has no MoE model)
DEFAULT_TOP_K = {"head": 5, "neuron": 100, "hidden": 10, "expert": 100}
DEFAULT_DELTA = {"head": 9.0, "neuron": 19.0, "hidden": 9.0, "expert": 19.0}
DEFAULT_GRIDS = {
    "head": ([1, 3, 5, 10], [4.0, 9.0, 19.0, 39.0]),
    "neuron": ([10, 50, 100, 300], [9.0, 19.0, 49.0, 89.0]),
    "hidden": ([1, 5, 10, 20], [4.0, 9.0, 19.0, 39.0]),
    "expert": ([10, 50, 100, 300], [9.0, 19.0, 49.0, 89.0]),
}


def check_site(site: str, allowed: Sequence[str] = SITES) -> str:
    if site not in allowed:
        raise BadInputError(f"unknown site '{site}': use one of {', '.join(allowed)}", field="site")
    return site


@dataclass(frozen=True)
class Shape:
    """What the engine read from the model (cpp/sadi/shape.hpp's ModelShape)."""

    arch: str
    n_layer: int
    n_head: int
    head_dim: int  # value head size: kqv_out is n_head * head_dim wide
    n_ff: int
    n_embd: int
    n_expert: int = 0  # experts of a mixture-of-experts FFN (0: dense)
    n_ff_exp: int = 0  # neurons of one expert

    @classmethod
    def from_engine(cls, fields: Mapping[str, Any]) -> "Shape":
        return cls(**{k: fields[k] for k in cls.__dataclass_fields__})

    def n_units(self, site: str) -> int:
        """Units SADI ranks and masks at ``site`` (heads, neurons, hidden or residual elements)."""
        check_site(site, RECORD_SITES)
        return {"head": self.n_head, "neuron": self.n_ff, "hidden": self.n_embd, "residual": self.n_embd,
                "expert": self.n_expert * self.n_ff_exp}[site]

    def width(self, site: str) -> int:
        """Values in one row of the site's tensor (heads: n_head * head_dim)."""
        return self.n_units(site) * (self.head_dim if site == "head" else 1)

    def to_units(self, site: str, values: np.ndarray) -> np.ndarray:
        """Reduce site values [..., width] to SADI units: heads become their mean over head_dim."""
        if site == "head":
            return values.reshape(*values.shape[:-1], self.n_head, self.head_dim).mean(axis=-1)
        return values
