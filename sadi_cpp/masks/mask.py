"""The SADI mask (step 2's result): the table of mean differences per unit, the top-K units kept,
the recommended delta and the model it fits; saved as a GGUF sidecar (sadi_cpp.masks.sidecar) and
checked part against part when read back::

    m = SadiMask.load("gemma.sentiment.head.sadi.gguf")
    with hook.steering(m, delta=m.delta):
        ...
    m20 = m.with_top_k(20)   # another K from the stored table, no pairs re-run
"""

from __future__ import annotations

import math
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple, Union

import numpy as np

from sadi_cpp import __version__
from sadi_cpp.errors import BadInputError
from sadi_cpp.masks import sidecar
from sadi_cpp.masks.fingerprint import fit, hook_fingerprint
from sadi_cpp.positions import POLICIES
from sadi_cpp.sites import SITES, check_site

if TYPE_CHECKING:  # annotations only
    from sadi_cpp.llama.hook import Hook
    from sadi_cpp.masks.contrast import Contrast

RANK_BY = ("signed", "abs")
WEIGHTINGS = ("uniform", "mean-diff")


def select_top_k(mean_diff: np.ndarray, top_k: int, rank_by: str = "signed") -> np.ndarray:
    """Bool mask of the top_k units across all layers, by signed value or by absolute value."""
    if rank_by not in RANK_BY:
        raise BadInputError(f"unknown ranking '{rank_by}': use signed or abs", field="rank_by")
    n = mean_diff.size
    if not 1 <= top_k <= n:
        raise BadInputError(f"top-k {top_k} is outside 1..{n} (the number of units at this site)", field="top_k")
    score = np.abs(mean_diff) if rank_by == "abs" else mean_diff
    order = np.argsort(-score.ravel(), kind="stable")[:top_k]
    mask = np.zeros(n, dtype=bool)
    mask[order] = True
    return mask.reshape(mean_diff.shape)


@dataclass(frozen=True)
class Tuned:
    """What tune recorded in a mask (its ``sadi.tuned`` JSON). A field is None where the record
    lacks it or holds a value of another type: the record is text from a file, not trusted."""

    improves: Optional[bool]
    n_dev: Optional[int]
    dev: Optional[str]
    accuracy: Optional[float]  # the best cell's dev accuracy
    baseline: Optional[float]
    fixed_alpha: Optional[float]  # the fixed baseline's tuned scale

    @classmethod
    def parse(cls, text: str) -> Optional["Tuned"]:
        try:
            record = json.loads(text) if text else None
        except ValueError:
            return None
        if not isinstance(record, dict):
            return None

        def get(obj: Any, key: str, kind: Any) -> Any:
            value = obj.get(key) if isinstance(obj, dict) else None
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            return value if isinstance(value, kind) and (kind is not int or not isinstance(value, bool)) else None

        return cls(get(record, "improves", bool), get(record, "n_dev", int), get(record, "dev", str),
                   get(record.get("best"), "accuracy", float), get(record, "baseline", float),
                   get(record.get("fixed"), "alpha", float))


@dataclass
class SadiMask:
    """A SADI identification mask with the table it came from and the model it fits."""

    site: str
    mean_diff: np.ndarray  # [n_layer, n_units] float32
    top_k: int
    delta: float
    positions: str = "last"
    rank_by: str = "signed"
    n_pairs: int = 0
    pairs_sha256: str = ""
    model: Dict[str, Any] = field(default_factory=dict)
    tool_version: str = ""
    mask: np.ndarray = field(default=None)  # type: ignore[assignment]
    # Head site only: the mean difference of every value [n_layer, n_head*head_dim] (the fixed-vector
    # baseline adds these); for neurons and hidden elements a unit is one value, so it is mean_diff.
    values: Optional[np.ndarray] = None
    tuned: str = ""  # JSON summary of the tune run that chose top_k and delta, "" if none

    def __post_init__(self) -> None:
        check_site(self.site)
        self.mean_diff = np.asarray(self.mean_diff, dtype=np.float32)
        if self.values is not None:
            self.values = np.asarray(self.values, dtype=np.float32)
        if self.mask is None:
            self.mask = select_top_k(self.mean_diff, self.top_k, self.rank_by)

    @property
    def tuned_record(self) -> Optional[Tuned]:
        """tune's record in this mask, or None (never tuned, or a record that is not a JSON object)."""
        return Tuned.parse(self.tuned)

    def value_table(self) -> Optional[np.ndarray]:
        """Mean difference per value of the site's tensor [n_layer, width]; None if not stored."""
        return self.mean_diff if self.site != "head" else self.values

    def units(self) -> Dict[str, np.ndarray]:
        """{site: bool [n_layer, n_units]}: what Hook.steering takes."""
        return {self.site: self.mask}

    def weights(self, weighting: str = "uniform") -> Dict[str, np.ndarray]:
        """Per-unit weights of the delta ({} for ``uniform``: every masked unit gets delta). For
        ``mean-diff`` each masked unit's |mean difference| over the largest one among them, so the
        strongest unit gets delta and the others less, in proportion to their statistic."""
        if weighting == "uniform":
            return {}
        if weighting != "mean-diff":
            raise BadInputError(f"unknown weighting '{weighting}': use {' or '.join(WEIGHTINGS)}", field="weighting")
        size = np.abs(np.where(self.mask, self.mean_diff, 0.0)).astype(np.float32)
        top = float(size.max(initial=0.0))
        return {self.site: size / top if top > 0 else size}

    def with_top_k(self, top_k: int, rank_by: Optional[str] = None) -> "SadiMask":
        """The same table with another K (and ranking); no pairs are re-run."""
        rank = rank_by or self.rank_by
        return replace(self, top_k=top_k, rank_by=rank, mask=select_top_k(self.mean_diff, top_k, rank))

    def top_units(self, n: Optional[int] = None) -> List[Tuple[int, int, float]]:
        """(layer, unit, mean difference) of the masked units, strongest first."""
        layers, units = np.nonzero(self.mask)
        rows = [(int(l), int(u), float(self.mean_diff[l, u])) for l, u in zip(layers, units)]
        key = (lambda r: -abs(r[2])) if self.rank_by == "abs" else (lambda r: -r[2])
        return sorted(rows, key=key)[:n]

    def check_fits(self, hook: Any) -> str:
        """BadInputError (field ``model``) when this mask was built for another model; else a note
        on what differs but is accepted (another quantization of the same model), or ''."""
        result = fit(self.model, hook_fingerprint(hook))
        if result.problem:
            raise BadInputError(f"this mask was made for another model ({result.problem}); load the model it was made for, "
                                "or build a mask for this one with build-mask", field="model")
        return result.note

    def save(self, path: Union[str, Path]) -> Path:
        meta = {k: getattr(self, k) for k in sidecar.STR_KEYS + sidecar.UINT_KEYS + sidecar.FLOAT_KEYS}
        meta[sidecar.TUNED_KEY] = self.tuned
        tensors = {sidecar.MASK_TENSOR: self.mask.astype(np.int8), sidecar.TABLE_TENSOR: self.mean_diff.astype(np.float32)}
        if self.values is not None:
            tensors[sidecar.VALUES_TENSOR] = self.values.astype(np.float32)
        return sidecar.write_sidecar(sidecar.SidecarContent(meta, dict(self.model), tensors), path)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "SadiMask":
        """Read a sidecar and check that its parts agree (BadInputError naming the file otherwise)."""
        content = sidecar.read_sidecar(path)
        return cls.from_content(content, str(path))

    @classmethod
    def from_content(cls, content: "sidecar.SidecarContent", where: str) -> "SadiMask":
        """A mask from a sidecar's fields, every part checked against the others: the one validator
        of masks read from files (inspect, generate, eval). BadInputError names the file and field."""
        meta, model, tensors = content.meta, content.model, content.tensors

        def bad(what: str) -> BadInputError:
            return BadInputError(f"{where}: {what}; the file is damaged, rebuild it with build-mask")

        site = meta["site"]
        if site not in SITES:
            raise bad(f"sadi.site is '{site}', not one of {', '.join(SITES)}")
        if meta["positions"] not in POLICIES:
            raise bad(f"sadi.positions is '{meta['positions']}', not one of {', '.join(POLICIES)}")
        if meta["rank_by"] not in RANK_BY:
            raise bad(f"sadi.rank_by is '{meta['rank_by']}', not one of {', '.join(RANK_BY)}")
        delta = float(meta["delta"])
        if not math.isfinite(delta):
            raise bad(f"sadi.delta is {delta}")
        for key in ("n_layer", "n_embd", "n_head", "head_dim", "n_ff", "n_vocab"):
            if not 1 <= model[key] < 1 << 31:
                raise bad(f"sadi.model.{key} is {model[key]}")
        table = tensors[sidecar.TABLE_TENSOR]
        # an expert mask's width (n_expert * n_ff_exp) is not among the model fields: the table's own,
        # checked against the model when the mask is applied
        n_units = {"head": model["n_head"], "neuron": model["n_ff"], "hidden": model["n_embd"],
                   "expert": table.shape[-1] if table.ndim == 2 and table.shape[-1] >= 1 else -1}[site]
        want = (model["n_layer"], n_units)
        bits = tensors[sidecar.MASK_TENSOR]
        for name, arr in ((sidecar.TABLE_TENSOR, table), (sidecar.MASK_TENSOR, bits)):
            if arr.shape != want:
                raise bad(f"tensor {name} has shape {arr.shape}; a {site} mask of this model needs {want} (n_layer, n_units)")
        if not np.isfinite(table).all():
            raise bad(f"tensor {sidecar.TABLE_TENSOR} holds a NaN or an infinity")
        if not np.isin(bits, (0, 1)).all():
            raise bad(f"tensor {sidecar.MASK_TENSOR} holds values other than 0 and 1")
        top_k = int(meta["top_k"])
        if not 1 <= top_k <= table.size:
            raise bad(f"sadi.top_k is {top_k}, outside 1..{table.size}")
        mask = bits.astype(bool)
        if not np.array_equal(mask, select_top_k(table, top_k, meta["rank_by"])):
            raise bad(f"tensor {sidecar.MASK_TENSOR} is not the top {top_k} of its table by {meta['rank_by']} value")
        values = tensors.get(sidecar.VALUES_TENSOR)
        if values is not None:
            want_values = (model["n_layer"], model["n_head"] * model["head_dim"])
            if site != "head" or values.shape != want_values or not np.isfinite(values).all():
                raise bad(f"tensor {sidecar.VALUES_TENSOR} has shape {values.shape} (a head mask's is {want_values}) or is not finite")
        return cls(
            site=site, mean_diff=np.array(table, dtype=np.float32), top_k=top_k, delta=delta,
            positions=meta["positions"], rank_by=meta["rank_by"], n_pairs=int(meta["n_pairs"]),
            pairs_sha256=meta["pairs_sha256"], model=dict(model), tool_version=meta["tool_version"], mask=mask,
            values=None if values is None else np.array(values, dtype=np.float32), tuned=meta.get(sidecar.TUNED_KEY, ""),
        )


def mask_from_contrast(hook: Hook, contrast: Contrast, site: str, top_k: int, delta: float, rank_by: str = "signed") -> SadiMask:
    """SADI step 2 on statistics already gathered (see sadi_cpp.masks.contrast)."""
    return SadiMask(
        site=site,
        mean_diff=contrast.units(hook, site),
        top_k=top_k,
        delta=float(delta),
        rank_by=rank_by,
        n_pairs=contrast.n_used,
        pairs_sha256=contrast.pairs_sha256,
        model=hook_fingerprint(hook),
        tool_version=__version__,
        values=contrast.diffs[site].astype(np.float32) if site == "head" else None,
    )


def default_mask_path(model_path: Union[str, Path], pairs_path: Union[str, Path], site: str) -> Path:
    """Beside the model: <model>.<pairs>.<site>.sadi.gguf"""
    model_path, pairs_path = Path(model_path), Path(pairs_path)
    return model_path.with_name(f"{model_path.stem}.{pairs_path.stem}.{site}.sadi.gguf")


__all__ = ["SadiMask", "RANK_BY", "select_top_k", "mask_from_contrast", "default_mask_path"]
