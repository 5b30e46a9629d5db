"""Contrastive pairs: reading and checking the JSONL file.

One JSON object per line, either
  {"prompt": P, "positive": A, "negative": B}   activations read at the last token of P+A and of P+B
  {"positive": A, "negative": B}                 two whole texts
  {"prompt": P, "choices": [...], "label": i}    a multiple-choice item (sadi_cpp.data.mcdata): one pair
                                                 P+correct vs P+wrong for each wrong choice
Empty lines are skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Union

from sadi_cpp.errors import BadInputError
from sadi_cpp.files import read_jsonl


@dataclass(frozen=True)
class Pair:
    positive: str  # the whole positive text (prompt + completion)
    negative: str
    where: str = ""  # "file:line", for messages


def parse_pair(obj: object, where: str) -> Pair:
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: a pair must be a JSON object with 'positive' and 'negative'")
    for key in ("positive", "negative"):
        if key not in obj:
            raise BadInputError(f"{where}: missing field '{key}' (each line needs 'positive' and 'negative', optionally 'prompt')")
        if not isinstance(obj[key], str) or not obj[key]:
            raise BadInputError(f"{where}: field '{key}' must be a non-empty string")
    prompt = obj.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadInputError(f"{where}: field 'prompt' must be a string")
    return Pair(prompt + obj["positive"], prompt + obj["negative"], where)


def parse_line(obj: object, where: str) -> List[Pair]:
    """The pairs of one line: one pair, or one per wrong choice of a multiple-choice item."""
    from sadi_cpp.data.mcdata import is_mc, parse_mc

    if is_mc(obj):
        return [Pair(pos, neg, where) for pos, neg in parse_mc(obj, where).pairs()]
    return [parse_pair(obj, where)]


def read_pairs(path: Union[str, Path]) -> List[Pair]:
    """All pairs of a JSONL file; BadInputError naming the file and line on any problem."""
    pairs: List[Pair] = []
    for obj, where in read_jsonl(path, "pairs"):
        pairs.extend(parse_line(obj, where))
    if not pairs:
        raise BadInputError(f"{path}: no pairs in the file (expected JSON lines with 'positive' and 'negative', or 'prompt', 'choices' and 'label')")
    return pairs


def first_lines(pairs: List[Pair], n_lines: int) -> List[Pair]:
    """The pairs that come from the first ``n_lines`` lines holding pairs (a multiple-choice line
    gives one pair per wrong choice)."""
    if n_lines < 1:
        raise BadInputError(f"the number of lines must be >= 1, got {n_lines}")
    kept, lines = [], []
    for pair in pairs:
        if pair.where not in lines:
            if len(lines) == n_lines:
                break
            lines.append(pair.where)
        kept.append(pair)
    return kept


def as_pairs(pairs: Iterable[Union[Pair, dict]]) -> Iterator[Pair]:
    for i, item in enumerate(pairs, 1):
        if isinstance(item, Pair):
            yield item
        else:
            yield from parse_line(item, f"pair {i}")


def file_sha256(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
