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
(``jrnn.cells``, ``jrnn.fused``, ...) were removed in 0.3; ``CHANGELOG.md``
says where each of their names lives now.
"""

import importlib as _importlib

from jrnn.core.cells import CELL_KINDS, Cell, elman, gru, linear, lstm, make_cell, remat
from jrnn.core.gates import LSTMCarry
from jrnn.core.masking import reverse_within_lengths
from jrnn.core.unroll import bidirectional, unroll
from jrnn.models.lm import LanguageModel, ModelConfig, build_model, nnlm, rnn_lm
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

__version__ = "0.3.0"

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


# The training loop's names, loaded with it on first use: ``jrnn.fit`` is
# jrnn.training.fit.fit, ``jrnn.TrainConfig`` jrnn.training.config.TrainConfig.
_LAZY_NAMES = {
    "fit": "jrnn.training.fit",
    "Callbacks": "jrnn.training.fit",
    "FitResult": "jrnn.training.fit",
    "FitError": "jrnn.training.fit",
    "NonFiniteError": "jrnn.training.fit",
    "TrainConfig": "jrnn.training.config",
    "PRESETS": "jrnn.training.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        module = _importlib.import_module(_LAZY[name])
        globals()[name] = module
        return module
    if name in _LAZY_NAMES:
        value = getattr(_importlib.import_module(_LAZY_NAMES[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'jrnn' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY) | set(__all__))


__all__ = [
    "CELL_KINDS",
    "Callbacks",
    "Cell",
    "FitError",
    "FitResult",
    "NonFiniteError",
    "PRESETS",
    "TrainConfig",
    "fit",
    "LSTMCarry",
    "LanguageModel",
    "ModelConfig",
    "LossAux",
    "TrainState",
    "all_finite",
    "bidirectional",
    "build_model",
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
