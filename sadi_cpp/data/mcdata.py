"""Multiple-choice data: one JSON object per line, ``{"prompt": P, "choices": [C0, C1, ...], "label": i}``.

Choice ``i`` is scored as the continuation ``P + Ci`` (so a choice usually starts with a space,
e.g. ``" A"``); ``label`` is the 0-based index of the correct choice. Extra fields are kept
for the user and ignored. The same file serves build-mask (pairs: P+correct vs P+each wrong
choice) and eval/tune.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple, Union

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import atomic_path, missing_field, read_jsonl


MC_KEYS = ("prompt", "choices", "label")


@dataclass(frozen=True)
class MCItem:
    prompt: str
    choices: Tuple[str, ...]
    label: int
    where: str = ""

    def pairs(self) -> List[Tuple[str, str]]:
        """(prompt+correct, prompt+wrong) for every wrong choice."""
        right = self.prompt + self.choices[self.label]
        return [(right, self.prompt + c) for i, c in enumerate(self.choices) if i != self.label]


def is_mc(obj: object) -> bool:
    return isinstance(obj, dict) and "choices" in obj


def parse_mc(obj: object, where: str) -> MCItem:
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: an item must be a JSON object with 'prompt', 'choices' and 'label'")
    for key in MC_KEYS:
        if key not in obj:
            raise missing_field(obj, key, where, MC_KEYS, "'prompt', 'choices' and 'label'")
    prompt, choices, label = obj["prompt"], obj["choices"], obj["label"]
    if not isinstance(prompt, str) or not prompt:
        raise BadInputError(f"{where}: field 'prompt' must be a non-empty string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise BadInputError(f"{where}: field 'choices' must be a list of at least two non-empty strings")
    if len(set(choices)) != len(choices):
        raise BadInputError(f"{where}: field 'choices' repeats a choice")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise BadInputError(f"{where}: field 'label' must be an index into 'choices' (0..{len(choices) - 1}), got {label!r}")
    return MCItem(prompt, tuple(choices), label, where)


def read_mc(path: Union[str, Path], limit: Optional[int] = None) -> List[MCItem]:
    """The items of a multiple-choice JSONL file (the first ``limit`` when given); BadInputError
    naming the file and line on any problem."""
    if limit is not None and limit < 1:
        raise BadInputError(f"the item limit must be >= 1, got {limit}")
    items = [parse_mc(obj, where) for obj, where in read_jsonl(path, "data")]
    if not items:
        raise BadInputError(f"{path}: no items in the file (expected JSON lines with 'prompt', 'choices' and 'label')")
    return items[:limit]


def write_jsonl(rows: List[dict], path: Union[str, Path]) -> Path:
    """Write rows atomically (temporary file + rename)."""
    with atomic_path(path, "data file") as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return Path(path)
