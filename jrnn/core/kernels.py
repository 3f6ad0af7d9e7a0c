"""What the fused GPU kernels share (:mod:`jrnn.core.mosaic`, the one-block kernels behind
``method="pallas"``, and :mod:`jrnn.core.persistent`, ``method="persistent"``): why a cell
falls back to the scan (:class:`Fallback`, :class:`FallbackReason`, :func:`cell_reason`),
the padding of gate blocks, and :func:`compiled_for_gpu`.

Example:
  >>> import jrnn
  >>> from jrnn.core import kernels
  >>> kernels.cell_reason(jrnn.gru(8), lengths=True).kind
  <Fallback.LENGTHS: 'lengths'>
  >>> kernels.cell_reason(jrnn.lstm(8)) is None
  True
"""

from __future__ import annotations

import contextlib
import enum
from typing import Optional

import jax
import jax.numpy as jnp

from jrnn.core.cells import Cell
from jrnn.core.gates import ACTIVATIONS

Array = jax.Array

__all__ = ["Fallback", "FallbackReason", "cell_reason", "compiled_for_gpu", "off_gpu"]

# The kinds with a kernel here (jrnn's other cells -- mingru, minlstm, rglru, slstm, mlstm --
# have none: the scan, or method="associative", runs them).
_KERNEL_KINDS = ("linear", "elman", "lstm", "gru")
# The kinds whose kernel applies ``ACTIVATIONS[cell.activation]`` (the others' gates are fixed).
_ACTIVATED = ("elman", "linear")


class Fallback(enum.Enum):
    """Why a cell runs with the scan instead of a kernel (``FallbackReason.kind``)."""

    CELL_KIND = "cell kind"  # no kernel for this kind of cell
    PROJECTION = "projection"  # the LSTM with projections (proj_size)
    STEP_CHANGED = "step changed"  # e.g. remat: the step is no longer the cell's own
    ACTIVATION = "activation"  # not one of the named ACTIVATIONS the Elman kernel has
    LENGTHS = "lengths"  # variable-length sequences are not masked in the kernel
    ON_CHIP = "on-chip budget"  # W_h too large for a GPU's chip (interpret mode has no limit)
    UNAVAILABLE = "unavailable"  # this JAX lacks the Mosaic GPU API (or interpret mode) used


class FallbackReason(str):
    """A fallback's human-readable message (a ``str``, printed and compared as before)
    and its :class:`Fallback` ``kind``, which code branches on instead of the text.

    Example:
      >>> import jrnn
      >>> from jrnn.core import pallas
      >>> reason = pallas.fallback_reason(jrnn.gru(8), lengths=True)
      >>> reason.kind, str(reason)
      (<Fallback.LENGTHS: 'lengths'>, 'sequences with lengths are not masked in the kernel')
    """

    kind: Fallback

    def __new__(cls, kind: Fallback, message: str) -> "FallbackReason":
        self = super().__new__(cls, message)
        self.kind = Fallback(kind)
        return self

    def __reduce__(self):
        return FallbackReason, (self.kind, str(self))


def cell_reason(cell: Cell, *, lengths: bool = False) -> Optional[FallbackReason]:
    """Why ``cell`` has no kernel whatever its size (kind, projection, changed step,
    activation, lengths), or ``None``; :func:`jrnn.core.pallas.fallback_reason` adds the on-chip budget."""
    if cell.kind not in _KERNEL_KINDS:
        return FallbackReason(Fallback.CELL_KIND, f"no Pallas kernel for {cell.kind!r} cells")
    if cell.cell_size is not None:
        return FallbackReason(Fallback.PROJECTION,
                              "no Pallas kernel for the projected LSTM (proj_size)")
    if cell.sequence_step is not cell.step:
        return FallbackReason(Fallback.STEP_CHANGED, "the cell's step was changed (e.g. remat)")
    if cell.kind in _ACTIVATED and cell.activation not in ACTIVATIONS:
        what = "a callable" if cell.activation is None else repr(cell.activation)
        return FallbackReason(
            Fallback.ACTIVATION,
            f"the activation is {what}; the kernel has only the named activations "
            f"{', '.join(ACTIVATIONS)}")
    if lengths:
        return FallbackReason(Fallback.LENGTHS,
                              "sequences with lengths are not masked in the kernel")
    return None


# ---------------------------------------------------------------------------
# Padding: each gate block padded on its own.  Padded hidden units have zero weights and a
# zero start, so they stay zero for tanh/relu/identity (sigmoid units move, but feed
# nothing: their W_h rows are zero).


def _pad_gates(x: Array, G: int, H: int, Hp: int) -> Array:
    lead = x.shape[:-1]
    x = x.reshape(*lead, G, H)
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (0, Hp - H)])
    return x.reshape(*lead, G * Hp)


def _unpad_gates(x: Array, G: int, H: int, Hp: int) -> Array:
    lead = x.shape[:-1]
    return x.reshape(*lead, G, Hp)[..., :H].reshape(*lead, G * H)


def _pad_rows(x: Array, axis: int, n: int) -> Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - x.shape[axis])
    return jnp.pad(x, pad)


def _pad_state(x: Array, Hp: int, Bp: int, dtype=None) -> Array:
    """``[B, H]`` or ``[T, B, H]`` padded to batch ``Bp`` and width ``Hp``."""
    x = x if dtype is None else jnp.asarray(x, dtype)
    return _pad_rows(_pad_rows(x, x.ndim - 1, Hp), x.ndim - 2, Bp)


_FOR_GPU = {"on": False}


@contextlib.contextmanager
def compiled_for_gpu():
    """Within this block, kernels with ``interpret=None`` lower as Mosaic GPU kernels even
    on a CPU: for ``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` and
    ``jax.export`` of a model for a GPU from a machine without one."""
    old = _FOR_GPU["on"]
    _FOR_GPU["on"] = True
    try:
        yield
    finally:
        _FOR_GPU["on"] = old


def off_gpu() -> bool:
    """Whether kernels with ``interpret=None`` run in interpret mode here (no GPU, and not
    within :func:`compiled_for_gpu`)."""
    return not (_FOR_GPU["on"] or jax.default_backend() == "gpu")
