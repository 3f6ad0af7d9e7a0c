"""jrnn: recurrent neural network language models in JAX.

Cells are NamedTuples of pure functions (``jrnn.lstm(200)``), ``jrnn.unroll``
runs any cell or stack of cells under ``jax.lax.scan``, ``jrnn.rnn_lm`` and
``jrnn.nnlm`` build language models, and ``jrnn.make_train_step`` compiles a
BPTT training step.  ``jrnn.reference`` holds the same math as NumPy loops
with a hand-written backward pass.
"""

from jrnn import diagnostics, distributed, fused, interop, parallel, reference, tasks
from jrnn.cells import (
    ACTIVATIONS,
    CELL_KINDS,
    Cell,
    LSTMCarry,
    elman,
    gru,
    linear,
    lstm,
    make_cell,
)
from jrnn.lm import (
    LanguageModel,
    LMConfig,
    LossAux,
    NNLMConfig,
    log_prob,
    next_token_log_probs,
    nnlm,
    rnn_lm,
    sequence_loss,
    token_log_probs,
)
from jrnn.train import (
    TrainState,
    all_finite,
    init_train_state,
    make_eval_step,
    make_train_epoch,
    make_train_step,
)
from jrnn.runtime import keep_host_memory
from jrnn.unrolling import auto_unroll, remat, reverse_within_lengths, unroll

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "CELL_KINDS",
    "Cell",
    "LSTMCarry",
    "LanguageModel",
    "LMConfig",
    "LossAux",
    "NNLMConfig",
    "TrainState",
    "all_finite",
    "diagnostics",
    "auto_unroll",
    "distributed",
    "elman",
    "fused",
    "gru",
    "init_train_state",
    "interop",
    "keep_host_memory",
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
