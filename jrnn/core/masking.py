"""Masking for batches of sequences of different lengths (time-major)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["reverse_within_lengths", "valid_steps"]


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
