"""SADI steps 1 and 2: mean (positive - negative) differences per unit, and the top-K mask::

    hook = sadi_cpp.load()
    m = build_mask(hook, "examples/sentiment_pairs.jsonl", site="head", top_k=5)
    m.save("gemma.sentiment.head.sadi.gguf")
    with hook.steering(m, delta=m.delta):
        print(hook.llm("The movie was", max_tokens=20)["choices"][0]["text"])
    m20 = m.with_top_k(20)   # another K from the stored table, no pairs re-run
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from sadi_cpp import __version__
from sadi_cpp.masks import sidecar
from sadi_cpp.masks.contrast import Contrast, mean_differences
from sadi_cpp.errors import BadInputError
from sadi_cpp.masks.fingerprint import fingerprint_mismatch, model_fingerprint
from sadi_cpp.llama.hook import Hook
from sadi_cpp.data.pairs import Pair, file_sha256, read_pairs
from sadi_cpp.positions import POLICIES
from sadi_cpp.sites import DEFAULT_DELTA, DEFAULT_TOP_K, SITES, check_site
from sadi_cpp.masks.stats_cache import gather

RANK_BY = ("signed", "abs")


def select_top_k(mean_diff: np.ndarray, top_k: int, rank_by: str = "signed") -> np.ndarray:
    """Bool mask of the top_k units across all layers, by signed value or by absolute value."""
    if rank_by not in RANK_BY:
        raise BadInputError(f"unknown ranking '{rank_by}': use signed or abs")
    n = mean_diff.size
    if not 1 <= top_k <= n:
        raise BadInputError(f"top-k {top_k} is outside 1..{n} (the number of units at this site)")
    score = np.abs(mean_diff) if rank_by == "abs" else mean_diff
    order = np.argsort(-score.ravel(), kind="stable")[:top_k]
    mask = np.zeros(n, dtype=bool)
    mask[order] = True
    return mask.reshape(mean_diff.shape)


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

    def value_table(self) -> Optional[np.ndarray]:
        """Mean difference per value of the site's tensor [n_layer, width]; None if not stored."""
        return self.mean_diff if self.site != "head" else self.values

    def units(self) -> Dict[str, np.ndarray]:
        """{site: bool [n_layer, n_units]}: what Hook.steering takes."""
        return {self.site: self.mask}

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

    def check_fits(self, hook: Hook) -> None:
        """BadInputError naming the differing fields when this mask was built for another model."""
        have = model_fingerprint(hook.llm.model_path, hook.shape, hook.llm.n_vocab())
        diff = fingerprint_mismatch(self.model, have)
        if diff:
            raise BadInputError(f"this mask was made for another model ({diff}); build one for this model with build-mask")

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


@dataclass
class BuildStats:
    n_used: int = 0
    skipped: Dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    cache: Optional[Path] = None  # the statistics' cache file (build_mask(cache=True))
    reused: bool = False  # the statistics came from the cache


def build_mask(
    hook: Hook,
    pairs: Union[str, Path, Iterable[Union[Pair, dict]]],
    site: str = "head",
    top_k: Optional[int] = None,
    rank_by: str = "signed",
    delta: Optional[float] = None,
    strict: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    stats: Optional[BuildStats] = None,
    batched: bool = True,
    cache: bool = False,
) -> SadiMask:
    """SADI steps 1-2 on ``hook``'s model. ``pairs``: a JSONL path or an iterable of Pair/dicts.

    Each text is evaluated from an empty cache; the site's values at its last token are summed in
    the engine's streaming accumulators (memory does not grow with the number of pairs). A pair
    longer than the context is skipped and counted, or refused with ``strict``. Multiple-choice
    items count as one pair per wrong choice. ``batched``: many pairs per decode, shared prompts
    evaluated once (see sadi_cpp.masks.contrast); False evaluates each text alone. ``cache``: reuse or
    keep the statistics on disk (sadi_cpp.masks.stats_cache).
    """
    check_site(site)
    if site not in hook.sites:
        raise BadInputError(hook.site_problem(site))
    top_k = DEFAULT_TOP_K[site] if top_k is None else top_k
    delta = DEFAULT_DELTA[site] if delta is None else delta
    pairs_hash = ""
    if isinstance(pairs, (str, Path)):
        pairs_hash, pairs = file_sha256(pairs), read_pairs(pairs)
    if cache:
        contrast, path, reused = gather(hook, pairs, (site,), progress=progress, batched=batched, strict=strict)
    else:
        contrast, path, reused = mean_differences(hook, pairs, sites=(site,), strict=strict, progress=progress, batched=batched), None, False
    contrast.pairs_sha256 = pairs_hash
    if stats is not None:
        stats.n_used, stats.skipped, stats.seconds = contrast.n_used, contrast.skipped, contrast.seconds
        stats.cache, stats.reused = path, reused
    return mask_from_contrast(hook, contrast, site, top_k, delta, rank_by)


def mask_from_contrast(hook: Hook, contrast: Contrast, site: str, top_k: int, delta: float, rank_by: str = "signed") -> SadiMask:
    """SADI step 2 on statistics already gathered (see sadi_cpp.masks.contrast)."""
    llm = hook.llm
    return SadiMask(
        site=site,
        mean_diff=contrast.units(hook, site),
        top_k=top_k,
        delta=float(delta),
        rank_by=rank_by,
        n_pairs=contrast.n_used,
        pairs_sha256=contrast.pairs_sha256,
        model=model_fingerprint(llm.model_path, hook.shape, llm.n_vocab()),
        tool_version=__version__,
        values=contrast.diffs[site].astype(np.float32) if site == "head" else None,
    )


def default_mask_path(model_path: Union[str, Path], pairs_path: Union[str, Path], site: str) -> Path:
    """Beside the model: <model>.<pairs>.<site>.sadi.gguf"""
    model_path, pairs_path = Path(model_path), Path(pairs_path)
    return model_path.with_name(f"{model_path.stem}.{pairs_path.stem}.{site}.sadi.gguf")


__all__ = ["SadiMask", "BuildStats", "build_mask", "mask_from_contrast", "select_top_k", "default_mask_path"]
