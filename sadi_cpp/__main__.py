"""``python -m sadi_cpp ...`` runs the command line, the same as ``sadi-cpp ...``."""

from sadi_cpp.cli import app

if __name__ == "__main__":
    app()
