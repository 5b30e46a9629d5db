"""The browser tests reuse the suite's helpers (the server launcher and the tiny model)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
