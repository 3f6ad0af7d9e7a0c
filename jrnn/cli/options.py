"""What the command line knows before it imports JAX: presets, defaults, the user-error type."""

from __future__ import annotations

PRESETS = {
    # Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization",
    # as in their released code: uniform init, SGD lr 1 then decay, loss summed over
    # time and averaged over the batch, batch 20, 35 BPTT steps.
    "zaremba-small": dict(cell="lstm", layers=2, embed_size=200, hidden_size=200, dropout=0.0,
                          init_scale=0.1, optimizer="sgd", lr=1.0, lr_decay=0.5, decay_start=4,
                          clip=5.0, epochs=13, batch_size=20, bptt=35),
    "zaremba-medium": dict(cell="lstm", layers=2, embed_size=650, hidden_size=650, dropout=0.5,
                           init_scale=0.05, optimizer="sgd", lr=1.0, lr_decay=0.8, decay_start=6,
                           clip=5.0, epochs=39, batch_size=20, bptt=35),
    "zaremba-large": dict(cell="lstm", layers=2, embed_size=1500, hidden_size=1500, dropout=0.65,
                          init_scale=0.04, optimizer="sgd", lr=1.0, lr_decay=1 / 1.15,
                          decay_start=14, clip=10.0, epochs=55, batch_size=20, bptt=35),
    # A vanilla tanh RNN LM in the spirit of Mikolov's RNNLM, for the comparison.
    # Dropout on the non-recurrent connections (Zaremba-style) and tied embeddings.
    "elman-ptb": dict(cell="elman", activation="tanh", layers=1, embed_size=300, hidden_size=300,
                      tie=True, dropout=0.3, init_scale=0.05, optimizer="adam", lr=2e-3,
                      lr_decay=0.5, decay_start=4, clip=5.0, epochs=8, batch_size=20, bptt=35),
    # The fixed-window feed-forward NNLM baseline (context of 4 words = a 5-gram model).
    "nnlm-ptb": dict(cell="nnlm", context_size=4, layers=1, embed_size=100, hidden_size=300,
                     dropout=0.3, init_scale=0.05, optimizer="adam", lr=1e-3, lr_decay=0.5,
                     decay_start=3, clip=5.0, epochs=5, batch_size=20, bptt=35),
}

# What `jrnn train` does with no options: the built-in corpus, a small LSTM.
DEFAULTS = dict(cell="lstm", activation="tanh", layers=1, embed_size=64, hidden_size=64,
                dropout=0.0, tie=False, init_scale=None, forget_bias=0.0, context_size=4,
                optimizer="adam", lr=0.01, lr_decay=1.0, decay_start=1, clip=5.0, epochs=3,
                batch_size=32, bptt=20, seed=0, unroll="auto", remat=False)


class UserError(Exception):
    """Bad input from the user: one line, exit code 2."""


def _fail(msg: str) -> None:
    raise UserError(msg)
