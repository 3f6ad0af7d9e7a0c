"""The names of jrnn's choices, importing nothing: the command line lists them in
``jrnn --help`` and checks its options against them before it loads JAX.

Each tuple is the key list of the table that holds the things themselves
(``jrnn.core.cells.CELL_FACTORIES``, ``jrnn.core.gates.ACTIVATIONS``,
``jrnn.training.loop.OPTIMIZERS``, ``jrnn.training.config.PRESETS``); each of
those modules calls :func:`agree` when it is imported, so a name added to a
table and not here (or the other way round) fails at once, naming both.

Example:
  >>> "lstm" in CELL_KINDS and "nnlm" in MODEL_KINDS and "nnlm" not in CELL_KINDS
  True
  >>> agree("ACTIVATIONS", {"identity": 0, "tanh": 0, "sigmoid": 0, "relu": 0})
  ('identity', 'tanh', 'sigmoid', 'relu')
"""

__all__ = ["CELL_KINDS", "MODEL_KINDS", "ACTIVATIONS", "OPTIMIZERS", "PRECISIONS", "PRESETS",
           "OPTION_ALIASES", "agree"]

# Recurrent cells (jrnn.core.cells.CELL_FACTORIES), in the order --help lists them.
CELL_KINDS = ("linear", "elman", "lstm", "gru", "mingru", "minlstm", "rglru", "slstm", "mlstm")
# What a language model's `cell` may name: a recurrent cell, or Bengio's fixed-window NNLM.
MODEL_KINDS = CELL_KINDS + ("nnlm",)
# The Elman cell's activations (jrnn.core.gates.ACTIVATIONS).
ACTIVATIONS = ("identity", "tanh", "sigmoid", "relu")
# The optimizers a TrainConfig names (jrnn.training.loop.OPTIMIZERS).
OPTIMIZERS = ("sgd", "adam", "adamw")
# The output layer's matmul operands (jrnn.core.select.output_matmul_dtype).
PRECISIONS = ("auto", "float32", "bfloat16")
# The named runs (jrnn.training.config.PRESETS).
PRESETS = ("zaremba-small", "zaremba-medium", "zaremba-large", "small-variational", "elman-ptb",
           "nnlm-ptb", "mingru-ptb", "minlstm-ptb", "rglru-ptb", "slstm-ptb", "mlstm-ptb")


# Older or shorter names of options: ``--layers`` is ``num_layers``, ``--tie`` is ``tie_embeddings``.
OPTION_ALIASES = {"layers": "num_layers", "tie": "tie_embeddings"}


def agree(what: str, table) -> tuple:
    """``tuple(table)`` (its keys), after checking that they are this module's ``what``.

    Raises:
      ImportError: the table and the list differ (a name added to one only).
    """
    listed, held = globals()[what], tuple(table)
    if held != listed:
        raise ImportError(f"jrnn.core.names.{what} lists {listed}, but its table holds {held}; "
                          "add the name to both")
    return held
