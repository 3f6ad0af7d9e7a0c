"""Scores per stream from a given carry: does a fresh start lead a model into a state it keeps?

Evaluation (``jrnn eval``, the validation perplexity of ``jrnn train``) cuts a
text into streams and runs each from the zero carry.  A layer whose gates
read ``h_{t-1}`` can, from that carry and a particular first word, settle into
a state its recurrent weights hold whatever the words (the sLSTM after one
epoch of ``slstm-ptb``: ``benchmarks/RESULTS.md``).  These functions take any
jrnn language model (``model.features`` is used) and its parameters:

* :func:`stream_scores`: per stream, the mean loss and how much the top
  layer's ``h_t`` still varies over time, from the zero carry or another;
* :func:`warm_carry` / :func:`tile_carry`: a carry left by some text, for
  every stream;
* :func:`first_word_locks`: which first words, put before a continuation,
  make the zero carry score it above a threshold.

``benchmarks/fresh_start.py`` runs them on a checkpoint.

Example:
  >>> import jax, numpy as np, jrnn
  >>> from jrnn.analysis.streams import stream_scores
  >>> model = jrnn.rnn_lm(vocab_size=7, cell="gru", embed_size=4, hidden_size=4, num_layers=1)
  >>> params = model.init(jax.random.PRNGKey(0))
  >>> s = stream_scores(model, params, np.arange(42).reshape(2, 21) % 7, bptt=5)
  >>> s["nll"].shape, s["h_std"].shape, s["tokens"]
  ((2,), (2,), 20)
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.data import bptt_windows

__all__ = ["stream_scores", "warm_carry", "tile_carry", "first_word_locks"]


def tile_carry(carry, batch_size: int):
    """A batch-1 carry repeated for ``batch_size`` rows."""
    return jax.tree_util.tree_map(lambda a: jnp.repeat(a, batch_size, axis=0), carry)


def _window(model, params, carry, x, y):
    """One window: ``(carry, nll summed over time [B], h summed [B, H], h^2 summed [B, H])``.

    The output layer runs in float32 here, as evaluation's (jrnn.make_eval_step)."""
    h, (W, b), carry = model.features(params, x, carry)
    logits = h.astype(jnp.float32) @ W.astype(jnp.float32) + b.astype(jnp.float32)
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[..., None], -1)[..., 0]
    return carry, jnp.sum(nll, 1), jnp.sum(h, 1), jnp.sum(h * h, 1)


_JITTED: dict = {}  # id(model) -> (model, jitted window): one compilation per model and shape


def _jitted_window(model):
    hit = _JITTED.get(id(model))
    if hit is None or hit[0] is not model:
        hit = _JITTED[id(model)] = (model, jax.jit(functools.partial(_window, model)))
    return hit[1]


def stream_scores(model, params, streams: np.ndarray, *, bptt: int = 35, carry=None) -> dict:
    """Per stream of ``streams: int[B, N]``: mean loss (nats a token) and the top layer's variation.

    Runs the streams window by window as evaluation does, from ``carry``
    (default: the zero carry).  Returns ``{"nll": float[B], "h_std": float[B],
    "tokens": N - 1}``; ``h_std`` is the standard deviation of the top layer's
    ``h_t`` over steps, averaged over units.
    """
    window = _jitted_window(model)
    B = streams.shape[0]
    carry = model.initial_carry(B) if carry is None else carry
    total = np.zeros(B)
    s1 = s2 = 0.0
    count = 0
    for x, y in bptt_windows(streams, bptt):
        carry, nll, h1, h2 = window(params, carry, jnp.asarray(x), jnp.asarray(y))
        total += np.asarray(nll, np.float64)
        s1 = s1 + np.asarray(h1, np.float64)
        s2 = s2 + np.asarray(h2, np.float64)
        count += x.shape[1]
    var = np.maximum(s2 / count - (s1 / count) ** 2, 0.0)
    return {"nll": total / count, "h_std": np.sqrt(var).mean(-1), "tokens": count}


def warm_carry(model, params, ids: np.ndarray, warmup: int):
    """The carry after ``ids[:warmup]`` (one row), from the zero carry."""
    if warmup < 1:
        return model.initial_carry(1)
    _, carry = model.apply(params, jnp.asarray(ids[:warmup], jnp.int32)[None],
                           model.initial_carry(1))
    return carry


def first_word_locks(model, params, continuation: np.ndarray, words, *, threshold: float,
                     bptt: int = 35, rows: int = 100) -> list:
    """The first words after which the zero carry scores ``continuation`` above ``threshold``.

    Each word is put before ``continuation`` and the row is scored from the
    zero carry, ``rows`` words at a time.  Returns ``[(word_id, nll)]`` for
    the words above ``threshold`` (nats a token over the row's predictions).
    """
    words = np.asarray(words, np.int32)
    locked = []
    for start in range(0, len(words), rows):
        chunk = words[start : start + rows]
        batch = np.concatenate([chunk[:, None], np.broadcast_to(continuation, (len(chunk),
                                                                                len(continuation)))], 1)
        nll = stream_scores(model, params, batch, bptt=bptt)["nll"]
        locked += [(int(w), float(v)) for w, v in zip(chunk, nll) if v > threshold]
    return locked
