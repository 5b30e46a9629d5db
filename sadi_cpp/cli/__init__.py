"""The sadi-cpp command line: parses, calls the library, prints. Exit codes: 0 ok, 2 bad input, 1 other.

``app`` lives in :mod:`sadi_cpp.cli.common`; each command module registers its commands on it.
"""

from sadi_cpp.cli import data, evaluation, gates, generation, masks, serve  # noqa: F401  (register their commands)
from sadi_cpp.cli.common import app

__all__ = ["app"]
