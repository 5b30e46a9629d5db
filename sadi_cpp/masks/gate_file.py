"""The gate sidecar: a gate (sadi_cpp.gate) and the model it fits in a GGUF file of the sidecar
format (``sadi.kind`` = "gate", docs/mask-format.md), checked part by part when read::

    save_gate(gate, "gemma.negative.gate.sadi.gguf")
    gate = load_gate("gemma.negative.gate.sadi.gguf")
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, Tuple, Union

import numpy as np

from sadi_cpp.errors import BadInputError
from sadi_cpp.gate import Gate
from sadi_cpp.masks import sidecar
from sadi_cpp.masks.fingerprint import FIELDS, LAYOUT_FIELD, fit, hook_fingerprint
from sadi_cpp.masks.gguf_file import FLOAT32, STRING, UINT32

ARCH = sidecar.ARCH
DIRECTION_TENSOR = "sadi.gate_direction"
CENTER_TENSOR = "sadi.gate_center"

GATE = sidecar.Schema(
    kind="gate",
    keys={
        "general.architecture": (STRING, True), "general.name": (STRING, False), "general.alignment": (UINT32, False),
        f"{ARCH}.format_version": (UINT32, True), sidecar.KIND_KEY: (STRING, True), sidecar.CHECKSUM_KEY: (STRING, True),
        f"{ARCH}.layer": (UINT32, True), f"{ARCH}.threshold": (FLOAT32, True), f"{ARCH}.n_pairs": (UINT32, True),
        f"{ARCH}.pairs_sha256": (STRING, False), f"{ARCH}.tool_version": (STRING, False), f"{ARCH}.tuned": (STRING, False),
        **{f"{ARCH}.model.{k}": (STRING if k in ("arch", "tensors_sha256") else UINT32, True) for k in FIELDS},
        f"{ARCH}.model.{LAYOUT_FIELD}": (STRING, False),
    },
    tensors={DIRECTION_TENSOR: (0, np.float32, True), CENTER_TENSOR: (0, np.float32, True)},
    maker="build-gate",
)


def save_gate(gate: Gate, path: Union[str, Path]) -> Path:
    """Write atomically (a temporary file beside the target, renamed over it when complete)."""
    kv: Dict[str, Tuple[int, Any]] = {
        f"{ARCH}.format_version": (UINT32, sidecar.FORMAT_VERSION), sidecar.KIND_KEY: (STRING, "gate"),
        f"{ARCH}.layer": (UINT32, gate.layer), f"{ARCH}.threshold": (FLOAT32, gate.threshold),
        f"{ARCH}.n_pairs": (UINT32, gate.n_pairs), f"{ARCH}.pairs_sha256": (STRING, gate.pairs_sha256),
        f"{ARCH}.tool_version": (STRING, gate.tool_version),
    }
    if gate.tuned:
        kv[f"{ARCH}.tuned"] = (STRING, gate.tuned)
    for k in FIELDS:
        value = gate.model[k]
        kv[f"{ARCH}.model.{k}"] = (STRING, value) if isinstance(value, str) else (UINT32, int(value))
    if gate.model.get(LAYOUT_FIELD):
        kv[f"{ARCH}.model.{LAYOUT_FIELD}"] = (STRING, str(gate.model[LAYOUT_FIELD]))
    tensors = {DIRECTION_TENSOR: gate.direction.reshape(1, -1), CENTER_TENSOR: gate.center.reshape(1, -1)}
    return sidecar.write_fields(path, f"SADI gate (layer {gate.layer})", kv, tensors, "gate file")


def load_gate(path: Union[str, Path]) -> Gate:
    """Read a gate and check that its parts agree (BadInputError naming the file otherwise); its
    name is the file name without ``.sadi.gguf``."""
    kv, tensors = sidecar.read_fields(path, GATE)
    model = sidecar.model_fields(kv)

    def bad(what: str) -> BadInputError:
        return BadInputError(f"{path}: {what}; the file is damaged, rebuild it with build-gate")

    n_embd, n_layer = model["n_embd"], model["n_layer"]
    if not 1 <= n_embd < 1 << 31 or not 2 <= n_layer < 1 << 31:
        raise bad(f"sadi.model.n_embd is {n_embd} and sadi.model.n_layer {n_layer}")
    layer, threshold = kv[f"{ARCH}.layer"][1], kv[f"{ARCH}.threshold"][1]
    if layer >= n_layer - 1:
        raise bad(f"sadi.layer is {layer}; a gate of a {n_layer}-layer model reads a layer below {n_layer - 1}")
    if not math.isfinite(threshold) or abs(threshold) > 1:
        raise bad(f"sadi.threshold is {threshold}, not a cosine in [-1, 1]")
    for name in (DIRECTION_TENSOR, CENTER_TENSOR):
        t = tensors[name]
        if t.shape != (1, n_embd) or not np.isfinite(t).all():
            raise bad(f"tensor {name} has shape {t.shape} (the model's is (1, {n_embd})) or is not finite")
    if not np.any(tensors[DIRECTION_TENSOR]):
        raise bad(f"tensor {DIRECTION_TENSOR} is all zeros")
    get = lambda key: kv.get(f"{ARCH}.{key}", (STRING, ""))[1]  # noqa: E731
    return Gate(layer, tensors[DIRECTION_TENSOR][0].copy(), tensors[CENTER_TENSOR][0].copy(), threshold,
                name=gate_name(path), model=model, n_pairs=int(kv[f"{ARCH}.n_pairs"][1]), pairs_sha256=get("pairs_sha256"),
                tool_version=get("tool_version"), tuned=get("tuned"))


def gate_name(path: Union[str, Path]) -> str:
    name = Path(path).name
    return name[: -len(".sadi.gguf")] if name.endswith(".sadi.gguf") else Path(path).stem


def gate_fits(gate: Gate, hook: Any) -> str:
    """BadInputError (field ``gate``) when ``gate`` was built for another model; else a note on what
    differs but is accepted (another quantization of the same model), or ''."""
    if gate.model:
        result = fit(gate.model, hook_fingerprint(hook))
        if result.problem:
            raise BadInputError(f"the gate{' ' + repr(gate.name) if gate.name else ''} was made for another model "
                                f"({result.problem}); build one for this model with build-gate", field="gate")
        note = result.note.replace("mask", "gate")
    else:
        note = ""
    gate.check_shape(hook.shape)
    return note


def default_gate_path(model_path: Union[str, Path], pairs_path: Union[str, Path]) -> Path:
    """Beside the model: <model>.<pairs>.gate.sadi.gguf"""
    model_path, pairs_path = Path(model_path), Path(pairs_path)
    return model_path.with_name(f"{model_path.stem}.{pairs_path.stem}.gate.sadi.gguf")
