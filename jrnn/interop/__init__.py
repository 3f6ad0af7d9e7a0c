"""The interop layer: jrnn's cells in other frameworks.

* :mod:`jrnn.interop.torch` -- weights and states to and from ``torch.nn.RNN`` /
  ``LSTM`` / ``GRU`` (PyTorch is imported only when a function needs it);
* :mod:`jrnn.interop.flax` -- Flax linen and NNX modules over jrnn's cells.

Neither is imported by ``import jrnn`` or by this package: import the one you
use.  (The first release's ``jrnn.interop.from_torch`` is gone since 0.3: use
``jrnn.interop.torch.from_torch``.)
"""

import importlib as _importlib


def __getattr__(name: str):
    if name in ("torch", "flax"):  # the submodules, loaded on first use
        return _importlib.import_module(f"jrnn.interop.{name}")
    raise AttributeError(f"module 'jrnn.interop' has no attribute {name!r}")
