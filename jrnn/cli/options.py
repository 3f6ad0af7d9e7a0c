"""What the command line's modules share and ``jrnn --help`` needs: the user-error type and
the spelling of options.  Imports nothing of JAX (the argument parser is built before JAX
loads)."""

from __future__ import annotations

__all__ = ["UserError", "flag"]


class UserError(Exception):
    """Bad input from the user: one line, exit code 2."""


def _fail(msg: str) -> None:
    raise UserError(msg)


def flag(field: str) -> str:
    """The command-line spelling of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
