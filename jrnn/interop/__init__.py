"""The interop layer: jrnn's cells in other frameworks.

* :mod:`jrnn.interop.torch` -- weights and states to and from ``torch.nn.RNN`` /
  ``LSTM`` / ``GRU`` (PyTorch is imported only when a function needs it);
* :mod:`jrnn.interop.flax` -- Flax linen and NNX modules over jrnn's cells.

Neither is imported by ``import jrnn`` or by this package: import the one you
use.  ``jrnn.interop.from_torch`` (the first release's path) still works, with
a ``DeprecationWarning``.
"""

import importlib as _importlib

from jrnn import _compat

_TORCH_NAMES = ("from_torch", "to_torch", "carry_from_torch", "carry_to_torch")


def __getattr__(name: str):
    if name in ("torch", "flax"):  # the submodules, loaded on first use
        return _importlib.import_module(f"jrnn.interop.{name}")
    if name in _TORCH_NAMES:
        _compat.deprecated(f"jrnn.interop.{name} is deprecated; use jrnn.interop.torch.{name}")
        return getattr(_importlib.import_module("jrnn.interop.torch"), name)
    raise AttributeError(f"module 'jrnn.interop' has no attribute {name!r}")
