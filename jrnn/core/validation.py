"""Checks at jrnn's public boundary: one place for every rule about user input.

Every public function that takes sizes, token ids, lengths or a sequence of
inputs checks them here, so the rules (and the messages) are the same
wherever a value enters: a clear ``ValueError`` / ``TypeError`` naming the
argument instead of a shape error from deep inside XLA.

Values that are concrete (NumPy arrays, lists, JAX arrays -- also JAX arrays
closed over under ``jit``) have their *range* checked on a host copy.  A value
that is traced under ``jit`` can only have its dtype and shape checked: its
range is the caller's promise, and an out-of-range token id raises nothing
(JAX's gather clamps the index or fills the result with NaN).  :func:`checked` is the checked mode for that case:
it wraps a function with ``jax.experimental.checkify`` so that the same range
checks run inside ``jit`` and come back as an error to ``throw()``.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

Array = jax.Array

__all__ = [
    "ConfigError",
    "config_int",
    "config_number",
    "positive_int",
    "is_concrete",
    "check_tokens",
    "check_lengths",
    "check_sequence",
    "check_rate",
    "check_clip_norm",
    "checked",
]

_MODE = threading.local()  # .depth > 0 while a function wrapped by `checked` is traced


@contextlib.contextmanager
def _checking():
    _MODE.depth = getattr(_MODE, "depth", 0) + 1
    try:
        yield
    finally:
        _MODE.depth -= 1


def _in_checked_mode() -> bool:
    return getattr(_MODE, "depth", 0) > 0


def checked(fn: Callable) -> Callable:
    """``fn`` with jrnn's range checks (token ids, lengths) active inside ``jit``.

    Returns ``checked_fn(*args) -> (error, out)`` as ``checkify.checkify``
    does; ``error.throw()`` raises if an id or a length was out of range.
    Without it, a traced out-of-range id raises nothing (JAX's gather clamps
    it or fills with NaN).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = jax.jit(checked(lambda t: check_tokens(t, 5).sum()))
      >>> err, out = f(jnp.array([[1, 7]]))
      >>> err.get()
      'tokens must be ids in [0, vocab_size=5) (checked inside jit)...'
    """

    def traced(*args, **kwargs):
        with _checking():
            return fn(*args, **kwargs)

    return checkify.checkify(traced, errors=checkify.user_checks)


class ConfigError(ValueError):
    """An option of a model or a training run out of range; the message starts with its name."""


def config_int(name: str, value, minimum: int = 1) -> int:
    """:func:`positive_int` for a configuration field: a :class:`ConfigError`."""
    try:
        return positive_int(name, value, minimum)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def config_number(name: str, v, *, low=None, low_open=True, high=None, high_open=False,
                  what="") -> float:
    """``v`` if it is a finite number within the bounds (open or closed), else a
    :class:`ConfigError` naming ``name``; ``what`` is added to the message.

    Example:
      >>> config_number("lr", float("nan"))
      Traceback (most recent call last):
      ...
      jrnn.core.validation.ConfigError: lr must be a finite number, got nan
    """
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number{what}, got {v!r}")
    if low is not None and (v <= low if low_open else v < low):
        raise ConfigError(f"{name} must be {'>' if low_open else '>='} {low}{what}, got {v!r}")
    if high is not None and (v >= high if high_open else v > high):
        raise ConfigError(f"{name} must be {'<' if high_open else '<='} {high}{what}, got {v!r}")
    return v


def positive_int(name: str, value, minimum: int = 1) -> int:
    """``value`` if it is an ``int`` (not a bool) ``>= minimum``, else a ``ValueError`` naming ``name``.

    Example:
      >>> positive_int("hidden_size", 4)
      4
      >>> positive_int("hidden_size", 0)
      Traceback (most recent call last):
      ...
      ValueError: hidden_size must be a positive int, got 0
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        what = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def check_rate(name: str, value: float) -> float:
    """A dropout-style rate in ``[0, 1)``.

    Example:
      >>> check_rate("dropout", 1.0)
      Traceback (most recent call last):
      ...
      ValueError: dropout must be in [0, 1), got 1.0
    """
    value = float(value)
    if not 0.0 <= value < 1.0:  # also False for NaN
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_clip_norm(value) -> Optional[float]:
    """A gradient-clipping threshold: ``None`` (no clipping) or a positive finite number.

    Example:
      >>> check_clip_norm(float("nan"))
      Traceback (most recent call last):
      ...
      ValueError: clip_norm must be positive and finite, or None; got nan
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)) \
            or not (value > 0 and np.isfinite(value)):
        raise ValueError(f"clip_norm must be positive and finite, or None; got {value!r}")
    return float(value)


def is_concrete(x) -> bool:
    """Whether ``x`` holds values now (not a tracer inside ``jit``/``grad``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


def _host_range(x) -> Optional[tuple[int, int]]:
    if not is_concrete(x):
        return None
    host = np.asarray(x)
    if host.size == 0:
        return None
    return int(host.min()), int(host.max())


def check_tokens(tokens, vocab_size: int, name: str = "tokens") -> Array:
    """Token ids ``int[B, T]`` in ``[0, vocab_size)``, as a JAX array.

    Example:
      >>> check_tokens([[1, 2, 3]], 4).shape
      (1, 3)
      >>> check_tokens([[1, 5]], 4, "inputs")
      Traceback (most recent call last):
      ...
      ValueError: inputs must be ids in [0, vocab_size=4), got values in [1, 5]
    """
    rng = _host_range(tokens)
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"{name} must have shape [B, T], got shape {tokens.shape}")
    if rng is not None and (rng[0] < 0 or rng[1] >= vocab_size):
        raise ValueError(
            f"{name} must be ids in [0, vocab_size={vocab_size}), got values in [{rng[0]}, {rng[1]}]"
        )
    if rng is None and _in_checked_mode() and not is_concrete(tokens):
        checkify.check(jnp.all((tokens >= 0) & (tokens < vocab_size)),
                       f"{name} must be ids in [0, vocab_size={vocab_size}) (checked inside jit)")
    return tokens


def check_lengths(lengths, T: int, B: int, *, min_length: int = 0) -> Array:
    """Sequence lengths ``int[B]`` with ``min_length <= lengths <= T``, as a JAX array.

    ``min_length=1`` where a sequence must hold at least one token (scoring).

    Example:
      >>> check_lengths([3, 0], T=3, B=2).tolist()
      [3, 0]
      >>> check_lengths([4, 1], T=3, B=2)
      Traceback (most recent call last):
      ...
      ValueError: lengths must lie in [0, T=3], got values in [1, 4]
    """
    rng = _host_range(lengths)
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape [B]=({B},), got {lengths.shape}")
    if rng is not None and (rng[0] < min_length or rng[1] > T):
        raise ValueError(
            f"lengths must lie in [{min_length}, T={T}], got values in [{rng[0]}, {rng[1]}]"
        )
    if rng is None and _in_checked_mode() and not is_concrete(lengths):
        checkify.check(jnp.all((lengths >= min_length) & (lengths <= T)),
                       f"lengths must lie in [{min_length}, T={T}] (checked inside jit)")
    return lengths


def check_sequence(xs, input_size: Optional[int] = None, *, time_major: bool = True,
                   what: str = "the first cell") -> Array:
    """Inputs ``float[T, B, D]`` (``[B, T, D]`` when not ``time_major``), as a JAX array.

    ``input_size``, when given, is the ``D`` that ``what`` expects.

    Example:
      >>> check_sequence(np.zeros((2, 3)))
      Traceback (most recent call last):
      ...
      ValueError: xs must have rank 3 ([T, B, D]), got shape (2, 3)
    """
    xs = jnp.asarray(xs)
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must be floating point, got dtype {xs.dtype}")
    if xs.ndim != 3:
        layout = "[T, B, D]" if time_major else "[B, T, D]"
        raise ValueError(f"xs must have rank 3 ({layout}), got shape {xs.shape}")
    if input_size is not None and xs.shape[2] != input_size:
        raise ValueError(f"xs has feature size {xs.shape[2]} but {what} expects {input_size}")
    return xs
