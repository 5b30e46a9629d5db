"""The sadi-cpp command line (commands arrive with the build-mask issue)."""

from __future__ import annotations

import typer

import sadi_cpp

app = typer.Typer(help="SADI activation steering for GGUF models in llama.cpp.", no_args_is_help=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sadi-cpp {sadi_cpp.__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """SADI activation steering for GGUF models in llama.cpp."""
