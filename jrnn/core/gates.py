"""Gate math shared by the cells' steps and their hand-written backward passes.

One table holds each named activation together with its derivative, so the
forward step (:mod:`jrnn.core.cells`) and the backward loop
(:mod:`jrnn.core.backward`) cannot drift apart.  The LSTM and GRU updates
are written once here and called by both.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.core import names

Array = jax.Array

__all__ = [
    "Activation",
    "ACTIVATIONS",
    "LSTMCarry",
    "lstm_gates",
    "lstm_update",
    "gru_update",
]


class Activation(NamedTuple):
    """An elementwise activation and its derivative written from its *output* ``y = fn(z)``."""

    fn: Callable[[Array], Array]
    derivative: Callable[[Array], Array]
    max_derivative: float  # sup of fn': the per-step factor of the vanishing-gradient bound


ACTIVATIONS: dict[str, Activation] = {
    "identity": Activation(lambda z: z, lambda y: jnp.ones_like(y), 1.0),
    "tanh": Activation(jnp.tanh, lambda y: 1 - y * y, 1.0),
    "sigmoid": Activation(jax.nn.sigmoid, lambda y: y * (1 - y), 0.25),
    "relu": Activation(jax.nn.relu, lambda y: (y > 0).astype(y.dtype), 1.0),
}
names.agree("ACTIVATIONS", ACTIVATIONS)


class LSTMCarry(NamedTuple):
    """The LSTM's carry: hidden state ``h`` and memory cell ``c``, both ``[B, H]``."""

    h: Array
    c: Array


def _lstm_scale(hidden_size: int, dtype) -> Array:
    # 1/2 on the sigmoid blocks (i, f, o), 1 on the tanh block g.
    s = np.full(4 * hidden_size, 0.5)
    s[2 * hidden_size : 3 * hidden_size] = 1.0
    return jnp.asarray(s, dtype)


def lstm_gates(z: Array, hidden_size: int) -> Array:
    """All four LSTM gate activations of ``z: [..., 4H]`` in one pass: ``[..., 4H]``.

    ``sigmoid(x) = tanh(x / 2) / 2 + 1/2``, so one ``tanh`` over the whole
    pre-activation with a per-column scale gives (i, f, o) = sigmoid and
    g = tanh: one elementwise pass instead of four sliced ones (on a CPU the
    difference is measured in ``benchmarks/RESULTS.md``).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> z = jnp.linspace(-3.0, 3.0, 8)
      >>> a = lstm_gates(z, 2)
      >>> bool(jnp.allclose(a[:2], jax.nn.sigmoid(z[:2]), atol=1e-6)), bool(jnp.allclose(a[4:6], jnp.tanh(z[4:6])))
      (True, True)
    """
    s = _lstm_scale(hidden_size, z.dtype)
    return jnp.tanh(z * s) * s + (1 - s)


def lstm_update(z: Array, c: Array, hidden_size: int) -> tuple[Array, Array, Array]:
    """One LSTM step from its pre-activation ``z = x W + b + h W_h``: ``(h, c, gates)``.

    ``c_t = f * c_{t-1} + i * g`` and ``h_t = o * tanh(c_t)``; ``gates`` are
    the activations (i, f, g, o), which the hand-written backward pass keeps.
    """
    H = hidden_size
    a = lstm_gates(z, H)
    c = a[..., H : 2 * H] * c + a[..., :H] * a[..., 2 * H : 3 * H]
    return a[..., 3 * H :] * jnp.tanh(c), c, a


def gru_update(x_proj: Array, u: Array, h: Array, hidden_size: int) -> tuple:
    """One GRU step from ``x_proj = x W + b`` and ``u = h W_h + b_h``: ``(h, rz, n)``.

    ``r, z = sigmoid(x_proj[:2H] + u[:2H])``, ``n = tanh(x_proj[2H:] + r * u[2H:])``,
    ``h' = (1 - z) * n + z * h``; ``rz`` and ``n`` are kept by the backward pass.
    """
    H = hidden_size
    rz = jax.nn.sigmoid(x_proj[..., : 2 * H] + u[..., : 2 * H])  # r and z in one pass
    n = jnp.tanh(x_proj[..., 2 * H :] + rz[..., :H] * u[..., 2 * H :])
    return n + rz[..., H:] * (h - n), rz, n  # (1 - z) * n + z * h
