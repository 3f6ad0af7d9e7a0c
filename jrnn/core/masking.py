"""Masking: batches of sequences of different lengths (time-major), and dropout masks."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["reverse_within_lengths", "valid_steps", "dropout"]


def reverse_within_lengths(xs: Array, lengths: Array) -> Array:
    """Reverse each sequence of time-major ``xs: [T, B, ...]`` within its length.

    Steps at or past ``lengths[b]`` (padding) stay where they are.  Applying it
    twice gives back ``xs``.

    Example:
      >>> import jax.numpy as jnp
      >>> xs = jnp.arange(4.0)[:, None].repeat(2, axis=1)  # [T=4, B=2]
      >>> reverse_within_lengths(xs, jnp.array([4, 2])).T.tolist()
      [[3.0, 2.0, 1.0, 0.0], [1.0, 0.0, 2.0, 3.0]]
    """
    T = xs.shape[0]
    t = jnp.arange(T)[:, None]  # [T, 1]
    src = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [T, B]
    src = src.reshape(src.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, src, axis=0)


def valid_steps(lengths: Array, T: int) -> Array:
    """``bool[T, B]``: whether step ``t`` of sequence ``b`` lies before ``lengths[b]``."""
    return jnp.arange(T)[:, None] < lengths[None, :]


def dropout(key, rate: float, x: Array, *, shared_axes: tuple = ()) -> Array:
    """Inverted dropout: each entry of ``x`` kept with probability ``1 - rate`` and scaled by
    ``1 / (1 - rate)``; ``x`` itself when ``key`` is ``None`` or ``rate`` is 0.

    ``shared_axes`` draw one mask for every position along those axes:
    ``shared_axes=(0,)`` on time-major ``x: [T, B, F]`` is locked (variational)
    dropout, one mask per sequence for all timesteps (Gal & Ghahramani 2016);
    ``shared_axes=(1,)`` on an embedding matrix ``[V, E]`` drops whole words.
    Every dropout in jrnn is this function.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> x = jnp.ones((3, 2, 4))
      >>> y = dropout(jax.random.PRNGKey(0), 0.5, x, shared_axes=(0,))
      >>> bool((y == y[0]).all()), sorted(set(y.ravel().tolist())) in ([0.0, 2.0], [2.0], [0.0])
      (True, True)
      >>> dropout(None, 0.5, x) is x
      True
    """
    if key is None or rate == 0.0:
        return x
    shape = tuple(1 if axis in shared_axes else n for axis, n in enumerate(x.shape))
    keep = jax.random.bernoulli(key, 1.0 - rate, shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
