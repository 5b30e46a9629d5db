"""File helpers shared by the readers and writers: output checks, atomic writes, JSON lines."""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterator, Sequence, Tuple, Union

from sadi_cpp.errors import BadInputError


def check_output(path: Union[str, Path], what: str) -> Path:
    """Refuse, before any work, an output path that cannot take a new regular file: a missing
    folder, a directory, or anything that is not a regular file (a symlink, a FIFO, a device:
    replacing /dev/null with a mask is not what anyone means)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise BadInputError(f"{path.parent}: no such folder for the {what} {path.name}")
    if path.is_symlink():
        raise BadInputError(f"{path}: a symbolic link; give the {what} a plain file path (the link would be replaced)")
    if path.exists():
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise BadInputError(f"{path}: a folder; give the {what} a file name, e.g. {path / ('out' + (path.suffix or '.gguf'))}")
        if not stat.S_ISREG(mode):
            raise BadInputError(f"{path}: not a regular file (a device, FIFO or socket); give the {what} a plain file path")
    if not os.access(path.parent, os.W_OK):
        raise BadInputError(f"{path.parent}: no permission to write the {what} here")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: Union[str, Path], what: str) -> Iterator[str]:
    """Yield a temporary path beside ``path``; rename it over ``path`` when the block succeeds,
    delete it when the block fails, so that an interrupted write leaves no partial file. The file
    keeps the mode of the one it replaces, or gets the usual mode of a new file (0666 less umask)."""
    path = check_output(path, what)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# JSON nested deeper than this is refused (Python's parser would hit its recursion limit).
MAX_JSON_DEPTH = 64


def _depth_ok(line: str) -> bool:
    depth = deepest = 0
    in_string = escaped = False
    for ch in line:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest <= MAX_JSON_DEPTH


def read_text(path: Union[str, Path], what: str) -> Tuple[str, bytes]:
    """The UTF-8 text of a data file and its bytes; BadInputError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise BadInputError(f"{p}: no such {what} file")
    raw = p.read_bytes()
    try:
        return raw.decode("utf-8"), raw
    except UnicodeDecodeError as e:
        raise BadInputError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def jsonl_objects(text: str, path: Union[str, Path]) -> Iterator[Tuple[Any, str]]:
    """(object, "file:line") for every non-empty line of ``text``; BadInputError naming the line otherwise.

    Lines end at "\\n" only (a "\\r" before it is dropped): U+2028, U+0085 and the other
    characters ``str.splitlines`` also breaks at are valid inside JSON strings."""
    for i, line in enumerate(text.split("\n"), 1):
        line = line[:-1] if line.endswith("\r") else line
        if not line.strip():
            continue
        if ("[" in line or "{" in line) and line.count("[") + line.count("{") > MAX_JSON_DEPTH and not _depth_ok(line):
            raise BadInputError(f"{path}:{i}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
        try:
            yield json.loads(line), f"{path}:{i}"
        except json.JSONDecodeError as e:
            raise BadInputError(f"{path}:{i}: malformed JSON ({e.msg} at column {e.colno})") from None


def read_jsonl(path: Union[str, Path], what: str) -> Iterator[Tuple[Any, str]]:
    """(object, "file:line") for every non-empty line of a JSON-lines file."""
    text, _ = read_text(path, what)
    return jsonl_objects(text, Path(path))


def missing_field(obj: dict, key: str, where: str, known: Sequence[str], needs: str) -> BadInputError:
    """The error for a record that lacks ``key``, pointing at an unknown key that looks like a typo of it."""
    typos = difflib.get_close_matches(key, [k for k in obj if isinstance(k, str) and k not in known], n=1, cutoff=0.6)
    hint = f" ('{typos[0]}' is not a field: a typo of '{key}'?)" if typos else ""
    return BadInputError(f"{where}: missing field '{key}'{hint} (each line needs {needs})")
