"""File helpers shared by the readers and writers: atomic writes and JSON-lines reading."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Tuple, Union

from sadi_cpp.errors import BadInputError


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], what: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds,
    delete it when the block fails, so that an interrupted write leaves no partial file."""
    path = Path(path)
    if not path.parent.is_dir():
        raise BadInputError(f"{path.parent}: no such folder for the {what}")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def read_jsonl(path: Union[str, Path], what: str) -> Iterator[Tuple[Any, str]]:
    """(object, "file:line") for every non-empty line; BadInputError naming the line otherwise."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such {what} file")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise BadInputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), f"{p}:{i}"
        except json.JSONDecodeError as e:
            raise BadInputError(f"{p}:{i}: malformed JSON ({e.msg} at column {e.colno})") from None
