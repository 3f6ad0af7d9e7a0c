"""jrnn: recurrent neural network language models in JAX.

Cells are NamedTuples of pure functions (``jrnn.lstm(200)``), ``jrnn.unroll``
runs any cell or stack of cells, ``jrnn.rnn_lm`` and ``jrnn.nnlm`` build
language models, and ``jrnn.make_train_step`` compiles a BPTT training step.
``jrnn.reference`` holds the same math as NumPy loops with a hand-written
backward pass.

The package is built in layers; each imports only from the layers below it
(``tests/test_layers.py`` checks this on every CI run, with no import cycle
and no jrnn import hidden in a function body):

=============  =============================================================
``reference``  NumPy loops with hand-written BPTT; imports nothing of jrnn
``data``       corpora, vocabularies, batching; imports nothing of jrnn
``core``       cells, gate math, validation and masking, unroll, hand-written
               backward passes, parallel scans, the ``auto`` choice
``models``     RNN LM, NNLM, losses and scores                    (core)
``training``   steps, epoch loops, checkpoints, several devices   (models, data)
``analysis``   diagnostics, long-range tasks, plots               (training)
``interop``    PyTorch weights, Flax modules                      (core)
``cli``        the ``jrnn`` command line: parses and prints       (everything)
=============  =============================================================

The public API is ``jrnn.*``.  Research modules (``jrnn.diagnostics``,
``jrnn.tasks``, ``jrnn.parallel``, ``jrnn.distributed``, ``jrnn.interop``)
are loaded when first used.  The first release's module paths
(``jrnn.cells``, ``jrnn.fused``, ...) still import, with a
``DeprecationWarning``; see ``CHANGELOG.md``.
"""

import importlib as _importlib

from jrnn import _compat
from jrnn.core.cells import CELL_KINDS, Cell, elman, gru, linear, lstm, make_cell, remat
from jrnn.core.gates import ACTIVATIONS as _ACTIVATIONS
from jrnn.core.gates import LSTMCarry
from jrnn.core.masking import reverse_within_lengths
from jrnn.core.unroll import bidirectional, unroll
from jrnn.models.lm import LanguageModel, LMConfig, NNLMConfig, nnlm, rnn_lm
from jrnn.models.losses import (
    LossAux,
    log_prob,
    next_token_log_probs,
    sequence_loss,
    token_log_probs,
)
from jrnn.training.step import (
    TrainState,
    all_finite,
    init_train_state,
    make_eval_step,
    make_train_epoch,
    make_train_step,
)

__version__ = "0.2.0"

_compat.install()

# Loaded on first use: ``jrnn.diagnostics`` is jrnn.analysis.diagnostics, and so on.
_LAZY = {
    "reference": "jrnn.reference",
    "data": "jrnn.data",
    "core": "jrnn.core",
    "models": "jrnn.models",
    "training": "jrnn.training",
    "analysis": "jrnn.analysis",
    "interop": "jrnn.interop",
    "cli": "jrnn.cli",
    "diagnostics": "jrnn.analysis.diagnostics",
    "tasks": "jrnn.analysis.tasks",
    "parallel": "jrnn.core.parallel",
    "distributed": "jrnn.training.distributed",
}


def _old_activations():
    return {name: a.fn for name, a in _ACTIVATIONS.items()}


# Names of the first release that moved: (where they are now, how to get them).
_DEPRECATED = {
    "fused": ("jrnn.core.backward", lambda: _importlib.import_module("jrnn.core.backward")),
    "keep_host_memory": ("jrnn.training.runtime.keep_host_memory",
                         lambda: _importlib.import_module("jrnn.training.runtime").keep_host_memory),
    "auto_unroll": ("jrnn.core.select.choose_method",
                    lambda: _importlib.import_module("jrnn.core.unroll").auto_unroll),
    "ACTIVATIONS": ("jrnn.core.gates.ACTIVATIONS (entries are now (fn, derivative, max_derivative))",
                    _old_activations),
}


def __getattr__(name: str):
    if name in _LAZY:
        module = _importlib.import_module(_LAZY[name])
        globals()[name] = module
        return module
    if name in _DEPRECATED:
        where, get = _DEPRECATED[name]
        _compat.deprecated(f"jrnn.{name} is deprecated; use {where}")
        return get()
    if name in _compat._SHIMS:  # an old module path used as an attribute, e.g. jrnn.train
        return _importlib.import_module(f"jrnn.{name}")
    raise AttributeError(f"module 'jrnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(__all__))


__all__ = [
    "CELL_KINDS",
    "Cell",
    "LSTMCarry",
    "LanguageModel",
    "LMConfig",
    "LossAux",
    "NNLMConfig",
    "TrainState",
    "all_finite",
    "bidirectional",
    "diagnostics",
    "distributed",
    "elman",
    "gru",
    "init_train_state",
    "interop",
    "linear",
    "log_prob",
    "lstm",
    "make_cell",
    "make_eval_step",
    "make_train_epoch",
    "make_train_step",
    "next_token_log_probs",
    "nnlm",
    "parallel",
    "reference",
    "remat",
    "reverse_within_lengths",
    "rnn_lm",
    "sequence_loss",
    "tasks",
    "token_log_probs",
    "unroll",
]
