"""cuDNN's LSTM as a backend of :func:`jrnn.unroll` (``method="cudnn"``, NVIDIA GPUs).

``jax.experimental.rnn.lstm`` binds cuDNN's LSTM: float32, the standard
(non-persistent) algorithm, LSTM only, its own forward and backward.  It
takes the raw inputs (it does the input projection itself) and one flat
weight vector in cuDNN's canonical layout, for one layer and one direction::

    [W_ih (4H x I), W_hh (4H x H), b_ih (4H), b_hh (4H)]      gates i, f, g, o

jrnn's LSTM keeps ``W: [I, 4H]``, ``W_h: [H, 4H]`` and one bias ``b: [4H]``
with the same gate order, so the conversion is two transposes and
``b_ih = b, b_hh = 0`` (:func:`to_cudnn_weights`; :func:`from_cudnn_weights`
goes back, summing the two biases).  The conversion is checked on a CPU
against ``jax.experimental.rnn.lstm_ref``, JAX's own reference of the same
layout, in ``tests/test_gpu_paths.py``.

Example (the layout, on any machine):
  >>> import jax, jrnn
  >>> from jrnn.core import cudnn
  >>> p = jrnn.lstm(4).init(jax.random.PRNGKey(0), 3)
  >>> cudnn.to_cudnn_weights(p).shape    # 4H*I + 4H*H + 4H + 4H
  (144,)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import rnn as jax_rnn

from jrnn.core.cells import Cell
from jrnn.core.gates import LSTMCarry

Array = jax.Array

__all__ = ["to_cudnn_weights", "from_cudnn_weights", "available", "fallback_reason", "lstm_layer"]


def to_cudnn_weights(params: dict) -> Array:
    """jrnn LSTM params (``W: [I, 4H]``, ``W_h: [H, 4H]``, ``b: [4H]``) as cuDNN's flat vector."""
    W, W_h, b = params["W"], params["W_h"], params["b"]
    return jnp.concatenate([W.T.reshape(-1), W_h.T.reshape(-1), b, jnp.zeros_like(b)])


def from_cudnn_weights(weights: Array, input_size: int, hidden_size: int) -> dict:
    """cuDNN's flat vector of one unidirectional LSTM layer as jrnn params (biases summed)."""
    W_ih, W_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(
        weights, input_size, hidden_size, num_layers=1, bidirectional=False)
    return {"W": W_ih[0].T, "W_h": W_hh[0].T, "b": b_ih[0] + b_hh[0]}


# Measured on an H100 with jax 0.11.2 (benchmarks/cudnn_probe_jit.py): eagerly, and under
# jit when its input is a jit argument, jax.experimental.rnn.lstm agrees with jrnn's scan
# to 1e-7; under jit with its input computed in the same program (a transpose, even an
# elementwise op in front) it returns wrong values (max abs diff 0.33-0.45), as XLA hands
# the custom call another memory layout.  Reported upstream as jax-ml/jax#19177.
UNDER_JIT = ("jax.experimental.rnn.lstm returns wrong values under jax.jit when its input "
             "is computed in the same program (XLA passes cuDNN another layout; jax-ml/jax#19177, "
             "measured in benchmarks/cudnn_probe_jit.py)")


def fallback_reason(cell: Cell, *, lengths: bool = False, traced: bool = False) -> str | None:
    """Why ``method="cudnn"`` cannot run ``cell`` here, or ``None``.

    ``traced``: the inputs are tracers (inside ``jax.jit``/``grad``), where the
    cuDNN binding is not safe (:data:`UNDER_JIT`).
    """
    if cell.kind != "lstm" or cell.cell_size is not None:
        return "cuDNN is bound for the plain LSTM only (jax.experimental.rnn)"
    if cell.sequence_step is not cell.step:
        return "the cell's step was changed (e.g. remat)"
    if traced:
        return UNDER_JIT
    if jax.default_backend() != "gpu":
        return f"cuDNN needs an NVIDIA GPU; the backend is {jax.default_backend()!r}"
    return None


def available(cell: Cell) -> bool:
    return fallback_reason(cell) is None


def lstm_layer(params: dict, xs: Array, carry: LSTMCarry, *, reverse: bool = False,
               lengths: Array | None = None) -> tuple[LSTMCarry, Array]:
    """One LSTM layer through cuDNN: ``xs: [T, B, I]`` (time-major) -> ``(carry, hs: [T, B, H])``.

    ``reverse`` runs from the last step to the first (outputs stay aligned with
    the inputs); ``lengths: int[B]`` are passed to cuDNN as sequence lengths
    (with ``reverse``, each sequence is reversed within its length first).
    float32 only, as ``jax.experimental.rnn`` is.
    """
    T, B, I = xs.shape
    H = params["W_h"].shape[0]
    x = jnp.swapaxes(xs, 0, 1)  # cuDNN here is batch-major
    if reverse:
        x = _flip(x, lengths)
    seq = jnp.full((B,), T, jnp.int32) if lengths is None else jnp.asarray(lengths, jnp.int32)
    y, h, c = jax_rnn.lstm(
        x, carry.h[None], carry.c[None], to_cudnn_weights(params), seq, input_size=I,
        hidden_size=H, num_layers=1, dropout=0.0, bidirectional=False)
    if reverse:
        y = _flip(y, lengths)
    return LSTMCarry(h[0], c[0]), jnp.swapaxes(y, 0, 1)


def _flip(x: Array, lengths: Array | None) -> Array:
    """Reverse ``x: [B, T, ...]`` in time, within each sequence's length when given."""
    if lengths is None:
        return x[:, ::-1]
    T = x.shape[1]
    t = jnp.arange(T)[None, :]
    L = jnp.asarray(lengths)[:, None]
    idx = jnp.where(t < L, L - 1 - t, t)
    return jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
