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

The public API is ``jrnn.*``.  Each name, and each research module
(``jrnn.diagnostics``, ``jrnn.tasks``, ``jrnn.parallel``,
``jrnn.distributed``, ``jrnn.interop``), is loaded when first used:
``import jrnn`` itself loads nothing of JAX.  The first release's module paths
(``jrnn.cells``, ``jrnn.fused``, ...) were removed in 0.3; ``CHANGELOG.md``
says where each of their names lives now.
"""

import importlib as _importlib

__version__ = "0.3.0"

# Every public name, by the module that defines it.  Nothing is imported until a
# name is first used (``jrnn.lstm`` loads jrnn.core.cells, and JAX with it), so
# ``import jrnn`` is cheap: the command line parses its arguments and answers
# ``jrnn --help`` without loading JAX.
_NAMES = {
    "jrnn.core.cells": ("CELL_KINDS", "Cell", "MLSTMCarry", "SLSTMCarry", "elman", "gru",
                        "linear", "lstm", "make_cell", "mingru", "minlstm", "mlstm", "remat",
                        "rglru", "slstm"),
    "jrnn.core.gates": ("LSTMCarry",),
    "jrnn.core.masking": ("reverse_within_lengths",),
    "jrnn.core.unroll": ("bidirectional", "unroll"),
    "jrnn.models.lm": ("LanguageModel", "ModelConfig", "build_model", "nnlm", "rnn_lm"),
    "jrnn.models.losses": ("LossAux", "log_prob", "next_token_log_probs", "sequence_loss",
                           "token_log_probs"),
    "jrnn.models.sampling": ("Scores", "sample", "score", "stream"),
    "jrnn.training.step": ("TrainState", "all_finite", "init_train_state", "make_eval_step",
                           "make_train_epoch", "make_train_step"),
    "jrnn.training.fit": ("fit", "Callbacks", "FitResult", "FitError", "NonFiniteError"),
    "jrnn.training.config": ("TrainConfig", "PRESETS"),
    "jrnn.training.tensorboard": ("TensorBoardWriter",),
}
_WHERE = {name: module for module, names in _NAMES.items() for name in names}

# Modules by a short name: ``jrnn.diagnostics`` is jrnn.analysis.diagnostics, and so on.
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


def __getattr__(name: str):
    if name in _LAZY:
        module = _importlib.import_module(_LAZY[name])
        globals()[name] = module
        return module
    if name in _WHERE:
        value = getattr(_importlib.import_module(_WHERE[name]), name)
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
    "SLSTMCarry",
    "TensorBoardWriter",
    "TrainConfig",
    "fit",
    "LSTMCarry",
    "LanguageModel",
    "MLSTMCarry",
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
    "mingru",
    "minlstm",
    "mlstm",
    "next_token_log_probs",
    "nnlm",
    "parallel",
    "reference",
    "remat",
    "reverse_within_lengths",
    "rglru",
    "rnn_lm",
    "Scores",
    "sample",
    "score",
    "sequence_loss",
    "slstm",
    "stream",
    "tasks",
    "token_log_probs",
    "unroll",
]
