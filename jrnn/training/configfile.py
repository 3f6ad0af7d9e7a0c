"""A run's settings as a TOML file: what every run writes (``config.toml``) and what
``jrnn train --config FILE`` reads.

The file has up to four tables, for reading; the names inside them are the
run's option names (``jrnn train``'s flags with underscores: ``hidden_size``
for ``--hidden-size``; the model's and the training loop's are the fields of
:class:`jrnn.TrainConfig`)::

    [data]
    data = "ptb"
    level = "word"

    [model]
    cell = "lstm"
    num_layers = 2
    hidden_size = 200

    [train]
    optimizer = "sgd"
    lr = 1.0
    seed = 0

    [run]
    on_nonfinite = "stop"

A setting left out takes its default (or the preset's, with ``preset =
"zaremba-small"`` in any table); ``None`` values are written as comments,
since TOML has no null.  Floats are written with Python's shortest
round-trip repr, so a file read back gives the same numbers bit for bit.
Only :mod:`tomllib` (Python's own) is used, and nothing of JAX: the command
line reads a file before it loads JAX.

Example:
  >>> text = dumps({"model": {"cell": "lstm", "hidden_size": 200, "proj_size": None},
  ...               "train": {"lr": 0.1, "tie": False}})
  >>> print(text)
  [model]
  cell = "lstm"
  hidden_size = 200
  # proj_size: not set
  <BLANKLINE>
  [train]
  lr = 0.1
  tie = false
  <BLANKLINE>
  >>> loads(text, "run.toml")
  {'cell': 'lstm', 'hidden_size': 200, 'lr': 0.1, 'tie': False}
"""

from __future__ import annotations

import json
import math
import os
import stat
import tomllib
from typing import Any

from jrnn.data import NotARegularFile, read_file_bytes

__all__ = ["TABLES", "ConfigFileError", "dumps", "loads", "read"]

TABLES = ("data", "model", "train", "run")
MAX_BYTES = 1 << 20  # a settings file, not a data file


class ConfigFileError(ValueError):
    """A settings file that cannot be read, or that says something jrnn cannot do, in one line."""


def _value(name: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ConfigFileError(f"{name} = {v}: not a finite number")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string: JSON's escapes are TOML's
    raise ConfigFileError(f"{name} = {v!r}: only strings, numbers and booleans go in a settings file")


def dumps(tables: dict, header: str = "") -> str:
    """TOML text of ``{table: {name: value}}`` (tables in :data:`TABLES` order)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for table in [t for t in TABLES if t in tables] + [t for t in tables if t not in TABLES]:
        if lines:
            lines.append("")
        lines.append(f"[{table}]")
        for name, v in tables[table].items():
            lines.append(f"# {name}: not set" if v is None else f"{name} = {_value(name, v)}")
    return "\n".join(lines) + "\n"


def loads(text: str, path: str) -> dict:
    """The settings in ``text`` as one flat ``{name: value}`` dict.

    Raises:
      ConfigFileError: not TOML, a table jrnn does not know, a nested table
        or an array, or a name given twice (in two tables).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"{path}: not a TOML file ({e})") from None
    flat: dict = {}

    def put(name, v, where):
        if isinstance(v, (dict, list)):
            raise ConfigFileError(f"{path}: {where}{name} is a {'table' if isinstance(v, dict) else 'list'}; "
                                  "settings are strings, numbers or booleans")
        if not isinstance(v, (str, int, float, bool)):
            raise ConfigFileError(f"{path}: {where}{name} = {v!r}: a date or time is not a setting")
        if name in flat:
            raise ConfigFileError(f"{path}: {name} is given twice")
        flat[name] = v

    for key, v in doc.items():
        if isinstance(v, dict):
            if key not in TABLES:
                raise ConfigFileError(f"{path}: unknown table [{key}]; the tables are "
                                      + ", ".join(f"[{t}]" for t in TABLES))
            for name, inner in v.items():
                put(name, inner, f"[{key}] ")
        else:
            put(key, v, "")
    return flat


def read(path: str) -> dict:
    """:func:`loads` of the file at ``path``: a regular file of at most 1 MiB."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigFileError(f"{path}: not a regular file; --config takes a TOML file")
        if info.st_size > MAX_BYTES:
            raise ConfigFileError(f"{path}: larger than {MAX_BYTES >> 20} MiB; not a settings file")
        data = read_file_bytes(path)
    except (OSError, NotARegularFile) as e:
        raise ConfigFileError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigFileError(f"{path}: not UTF-8 text; not a settings file") from None
    return loads(text, path)
