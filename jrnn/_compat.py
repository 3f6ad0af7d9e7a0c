"""The first release's import paths, kept for one release with a DeprecationWarning.

``import jrnn.cells`` (and every other module of the 0.1 layout) still works:
an import hook installed by ``import jrnn`` makes a stand-in module whose
names are looked up in the modules that now hold them, and warns once.  No
files are left at the old paths, so the package's folders show only its
layers.  Remove this module in the release after 0.2.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import os
import sys
import warnings
from typing import Any, Callable, Mapping, Optional

_HERE = os.path.dirname(os.path.abspath(__file__))


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside jrnn's shims and Python's import machinery."""
    frame, level = sys._getframe(1), 1
    while frame is not None:
        name = frame.f_code.co_filename
        inside = name.startswith("<frozen importlib") or (
            os.path.dirname(os.path.abspath(name)) == _HERE
            and os.path.basename(name) in ("_compat.py", "__init__.py"))
        if not inside:
            return level
        frame, level = frame.f_back, level + 1
    return level


# Old module -> the modules that now hold its names.
_SHIMS: dict[str, tuple[str, ...]] = {
    "cells": ("jrnn.core.cells", "jrnn.core.gates"),
    "fused": ("jrnn.core.backward", "jrnn.core.gates", "jrnn.core.select"),
    "unrolling": ("jrnn.core.unroll", "jrnn.core.masking", "jrnn.core.cells"),
    "parallel": ("jrnn.core.parallel",),
    "lm": ("jrnn.models.lm", "jrnn.models.losses"),
    "train": ("jrnn.training.step",),
    "trainer": ("jrnn.training.loop",),
    "checkpoint": ("jrnn.training.checkpoint",),
    "distributed": ("jrnn.training.distributed",),
    "runtime": ("jrnn.training.runtime",),
    "diagnostics": ("jrnn.analysis.diagnostics",),
    "tasks": ("jrnn.analysis.tasks",),
    "plots": ("jrnn.analysis.plots",),
    "flax": ("jrnn.interop.flax",),
    "cli_tools": ("jrnn.cli.tools",),
}


def deprecated(message: str) -> None:
    """Warn once per call site that something of the first release's API moved."""
    warnings.warn(message, DeprecationWarning, stacklevel=_caller_stacklevel())


# Names an old module held that no new module holds under the same name.
_EXTRAS: dict[str, dict[str, Callable[[], Any]]] = {
    # global_norm was jrnn's own; optax's is the same function.
    "train": {"global_norm": lambda: importlib.import_module("optax").global_norm},
}


def moved(old: str, extras: Optional[Mapping[str, Callable[[], Any]]] = None) -> Callable:
    """Warn that module ``old`` moved and return its module ``__getattr__``."""
    short = old.rsplit(".", 1)[-1]
    targets = _SHIMS[short]
    deprecated(f"{old} is deprecated and will be removed in the next release; "
               f"import from {' / '.join(targets)}")
    modules = [importlib.import_module(t) for t in targets]
    extras = dict(extras or {})

    def __getattr__(name: str):
        if name in extras:
            return extras[name]()
        for module in modules:
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``jrnn.<old module>`` and fills it with :func:`moved`'s ``__getattr__``."""

    def find_spec(self, fullname, path=None, target=None):
        del path, target
        package, _, short = fullname.partition(".")
        if package == "jrnn" and short in _SHIMS:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        short = module.__name__.rsplit(".", 1)[-1]
        module.__doc__ = f"Deprecated import path: moved to {' / '.join(_SHIMS[short])}."
        module.__getattr__ = moved(module.__name__, _EXTRAS.get(short))


def install() -> None:
    """Put the finder of the old import paths on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
