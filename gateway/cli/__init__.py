"""The ``mailgate`` command line (entry point :func:`gateway.cli.main.main`)."""

from gateway.cli.main import main

__all__ = ["main"]
