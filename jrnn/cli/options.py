"""What the command line shares between its modules: presets, defaults, the user-error type."""

from __future__ import annotations

from jrnn.training.config import DEFAULT, PRESETS, TrainConfig

__all__ = ["PRESETS", "DEFAULT", "DEFAULTS", "TrainConfig", "UserError", "flag"]

# The defaults by option name (the model's fields included).
DEFAULTS = DEFAULT.flat()


class UserError(Exception):
    """Bad input from the user: one line, exit code 2."""


def _fail(msg: str) -> None:
    raise UserError(msg)


def flag(field: str) -> str:
    """The command-line spelling of a config field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")
