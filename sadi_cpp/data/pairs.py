"""Contrastive pairs: reading and checking them once, into a :class:`PairSet` that the rest of
sadi-cpp takes as it is.

One JSON object per line, either
  {"prompt": P, "positive": A, "negative": B}   activations read at the last token of P+A and of P+B
  {"positive": A, "negative": B}                 two whole texts
  {"prompt": P, "choices": [...], "label": i}    a multiple-choice item (sadi_cpp.data.mcdata): one pair
                                                 P+correct vs P+wrong for each wrong choice
A pair may add ``"special": true``: control-token text in it (``<start_of_turn>``, ...) is read as
the control tokens, as in a prompt rendered through a chat template (``sadi-cpp pairs`` writes it);
without it, such text is plain text. Empty lines are skipped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, List, Sequence, Tuple, Union, overload

from sadi_cpp.data.mcdata import is_mc, parse_mc
from sadi_cpp.errors import BadInputError
from sadi_cpp.files import jsonl_objects, missing_field, read_text

PAIR_KEYS = ("prompt", "positive", "negative")


@dataclass(frozen=True)
class Pair:
    positive: str  # the whole positive text (prompt + completion)
    negative: str
    where: str = ""  # "file:line", for messages
    special: bool = False  # control-token text is read as control tokens (a chat-rendered pair)


def parse_pair(obj: object, where: str) -> Pair:
    if not isinstance(obj, dict):
        raise BadInputError(f"{where}: a pair must be a JSON object with 'positive' and 'negative'")
    for key in ("positive", "negative"):
        if key not in obj:
            raise missing_field(obj, key, where, PAIR_KEYS, "'positive' and 'negative', optionally 'prompt'")
        if not isinstance(obj[key], str) or not obj[key]:
            raise BadInputError(f"{where}: field '{key}' must be a non-empty string")
    prompt = obj.get("prompt", "")
    if not isinstance(prompt, str):
        raise BadInputError(f"{where}: field 'prompt' must be a string")
    special = obj.get("special", False)
    if not isinstance(special, bool):
        raise BadInputError(f"{where}: field 'special' must be true or false")
    return Pair(prompt + obj["positive"], prompt + obj["negative"], where, special)


def parse_line(obj: object, where: str) -> List[Pair]:
    """The pairs of one line: one pair, or one per wrong choice of a multiple-choice item."""
    if is_mc(obj):
        return [Pair(pos, neg, where) for pos, neg in parse_mc(obj, where).pairs()]
    return [parse_pair(obj, where)]


@dataclass(frozen=True)
class PairSet(Sequence[Pair]):
    """Checked pairs, with the sha256 of the file they came from ('' for pairs given in code) and
    its name. A sequence of :class:`Pair`."""

    pairs: Tuple[Pair, ...]
    sha256: str
    source: str = ""

    @overload
    def __getitem__(self, i: int) -> Pair: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Pair]: ...

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        return self.pairs[i]

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self.pairs)

    def first_lines(self, n_lines: int) -> "PairSet":
        """The pairs from the first ``n_lines`` lines holding pairs (a multiple-choice line gives
        one pair per wrong choice). The hash stays the source's: it names where they came from."""
        if n_lines < 1:
            raise BadInputError(f"the number of lines must be >= 1, got {n_lines}", field="lines")
        kept: List[Pair] = []
        lines: List[str] = []
        for pair in self.pairs:
            if pair.where not in lines:
                if len(lines) == n_lines:
                    break
                lines.append(pair.where)
            kept.append(pair)
        return PairSet(tuple(kept), self.sha256, self.source)


def read_pairs(path: Union[str, Path]) -> PairSet:
    """All pairs of a JSONL file, read and hashed once; BadInputError naming the file and line on
    any problem."""
    text, raw = read_text(path, "pairs")
    pairs: List[Pair] = []
    for obj, where in jsonl_objects(text, Path(path)):
        pairs.extend(parse_line(obj, where))
    if not pairs:
        raise BadInputError(f"{path}: no pairs in the file (expected JSON lines with 'positive' and 'negative', or 'prompt', 'choices' and 'label')")
    return PairSet(tuple(pairs), hashlib.sha256(raw).hexdigest(), str(path))


PairsLike = Union[PairSet, str, Path, Iterable[Union[Pair, dict]]]


def pair_set(pairs: PairsLike) -> PairSet:
    """The one door for pairs given to a library function: a PairSet as it is, a path read with
    :func:`read_pairs`, or an iterable of Pair objects and pair/multiple-choice dicts checked here."""
    if isinstance(pairs, PairSet):
        return pairs
    if isinstance(pairs, (str, Path)):
        return read_pairs(pairs)
    out: List[Pair] = []
    for i, item in enumerate(pairs, 1):
        out.extend([item] if isinstance(item, Pair) else parse_line(item, f"pair {i}"))
    if not out:
        raise BadInputError("no pairs given", field="pairs")
    return PairSet(tuple(out), "", "")  # no file: nothing to name by hash


def file_sha256(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
