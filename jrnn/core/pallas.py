"""Fused recurrence kernels in Pallas: the whole time loop inside one GPU kernel
(``method="pallas"``).

On a GPU, ``lax.scan`` launches a few kernels per timestep, and each launch
costs microseconds that a small recurrent matmul does not.  The kernels run
the time loop *inside* one kernel, written for Pallas' **Mosaic GPU** lowering
(:mod:`jax.experimental.pallas.mosaic_gpu`; the kernels themselves are in
:mod:`jrnn.core.mosaic`).  JAX deprecates Pallas' Triton lowering (warning
``jax-pallas-triton``), which jrnn 0.2's kernels used; none is left:

* the input projection ``x W + b`` stays hoisted outside, one large matmul
  (as in :func:`jrnn.unroll`); the kernel reads its rows step by step;
* the recurrent weight ``W_h`` is loaded once, before the loop, and stays in
  shared memory for the whole sequence, so each step is one small matmul
  (wgmma) per gate block and the fused gate math;
* each block of the grid owns 64 batch rows (one warpgroup), so the batch is
  spread over the GPU's SMs; the state and the gate math are float32;
* the backward pass is a second kernel that walks the sequence the other way
  carrying ``dh`` (and ``dc``); it writes every step's gate cotangent ``dz``,
  from which ``dW_h = sum_t h_{t-1}^T dz_t`` and the input gradient are large
  matmuls outside the kernel (as :mod:`jrnn.core.backward` does for the scan).

**Precision.**  The kernels compute in float32: inputs of another dtype (e.g.
float64 on a CPU) are cast to float32 and the results back.  Hopper's wgmma
reads float32 operands as TF32; ``bf16=True`` feeds it bfloat16 operands
(``W_h`` and ``h``) with float32 accumulation and state, halving ``W_h``'s
shared-memory size.

**On-chip budget.**  ``W_h`` and each step's staged inputs must fit a block's
shared memory (:func:`jrnn.core.mosaic.smem_bytes` against
:data:`jrnn.core.mosaic.SMEM_BYTES`); a larger ``W_h`` (e.g. Zaremba-small's
200 x 800) falls back to the scan with the hand-written backward pass, and so
do sequences with ``lengths`` and Elman cells whose activation is not one of
the named :data:`ACTIVATIONS` (a callable such as ``jnp.sin``: the kernels
have each activation's derivative written from its output, and no other).
:func:`fallback_reason` says which (a :class:`FallbackReason`: the message,
with its :class:`Fallback` kind), and ``jrnn.unroll(..., method="pallas")``
reports the fallback instead of hiding it.

Off a GPU the same kernels run in Mosaic GPU's interpret mode (``interpret=None``
picks it), which is how the test-suite checks them against the loop reference
on a CPU; within :func:`compiled_for_gpu` they *lower* for CUDA on a CPU
(``jax.export(..., platforms=["cuda"])``), producing the Mosaic GPU kernel.

Example (interpret mode on a CPU):
  >>> import jax, jax.numpy as jnp, jrnn
  >>> from jrnn.core import pallas
  >>> cell = jrnn.gru(8)
  >>> params = cell.init(jax.random.PRNGKey(0), 3)
  >>> xs = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3))
  >>> run = pallas.sequence(cell)
  >>> _, hs = run(params, cell.project(params, xs), cell.initial_carry((2,)))
  >>> _, ref = jrnn.unroll(cell, params, xs, method="scan")
  >>> bool(jnp.allclose(hs, ref, atol=1e-5))
  True
"""

from __future__ import annotations

import contextlib
import enum
import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jrnn.core.cells import Cell
from jrnn.core.gates import ACTIVATIONS

Array = jax.Array

__all__ = ["Fallback", "FallbackReason", "supported", "fallback_reason", "sequence",
           "compiled_for_gpu"]

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
    activation, lengths), or ``None``; :func:`fallback_reason` adds the on-chip budget."""
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


def fallback_reason(cell: Cell, *, lengths: bool = False,
                    bf16: bool = False) -> Optional[FallbackReason]:
    """Why ``cell`` cannot run in a Pallas kernel, or ``None`` when it can.

    Example:
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn.core import pallas
      >>> pallas.fallback_reason(jrnn.elman(64)) is None
      True
      >>> pallas.fallback_reason(jrnn.lstm(200)).kind
      <Fallback.ON_CHIP: 'on-chip budget'>
      >>> pallas.fallback_reason(jrnn.elman(64, activation=jnp.sin)).kind
      <Fallback.ACTIVATION: 'activation'>
      >>> pallas.fallback_reason(jrnn.mingru(8))
      "no Pallas kernel for 'mingru' cells"
    """
    from jrnn.core import mosaic  # (the kernels import this module's helpers)

    return _unavailable(mosaic) or mosaic.fallback_reason(cell, lengths=lengths, bf16=bf16)


# The kernels are written against Mosaic GPU's API and its GPU interpret mode as of jax
# 0.10.2 (plgpu.kernel(out_type=..., grid_names=...)): jax 0.7.1 (jrnn's lower bound) has an
# older plgpu.kernel, jax 0.9.0 no interpret mode, and jax 0.10.0's plgpu.kernel takes
# out_shape and its interpreter fails on them ("Too many leaves for PyTreeDef"), so
# method="pallas" runs the scan under those.
_NEEDS = (0, 10, 2)


def _version(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def _unavailable(mosaic) -> Optional[FallbackReason]:
    """Why this JAX cannot run (or, off a GPU, interpret) the kernels, or ``None``."""
    if _version(jax.__version__) < _NEEDS:
        return FallbackReason(Fallback.UNAVAILABLE,
                              f"this JAX ({jax.__version__}) is older than the kernels' Mosaic "
                              f"GPU API (jax >= {'.'.join(map(str, _NEEDS))})")
    off_gpu = not (_FOR_GPU["on"] or jax.default_backend() == "gpu")
    if off_gpu and mosaic.InterpretGPUParams is None:
        return FallbackReason(Fallback.UNAVAILABLE,
                              f"this JAX ({jax.__version__}) has no Mosaic GPU interpret mode to "
                              "run the kernels off a GPU")
    return None


def supported(cell: Cell, *, lengths: bool = False, bf16: bool = False) -> bool:
    """Whether :func:`sequence` runs ``cell`` in a kernel (see :func:`fallback_reason`)."""
    return fallback_reason(cell, lengths=lengths, bf16=bf16) is None


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


def sequence(cell: Cell, *, bf16: bool = False, interpret=None) -> Callable:
    """A whole layer of ``cell`` as Pallas kernels (forward and backward).

    Returns ``run(params, xs_proj, carry, *, reverse=False, unroll=None) ->
    (carry, hs)``, the signature of :func:`jrnn.core.backward.lstm_sequence`:
    ``xs_proj: [T, B, G*H]`` is the hoisted ``cell.project(params, xs)``,
    ``hs: [T, B, H]``; values equal ``lax.scan`` of ``cell.step`` to float32
    (TF32 on a GPU) precision (``unroll`` is accepted and ignored).  The kernels
    compute in float32; other dtypes are cast to it and the results back.
    ``interpret=None`` runs compiled kernels on a GPU and interpret mode elsewhere.

    Raises:
      ValueError: the cell has no kernel here, or this JAX cannot run the kernels
        (:func:`fallback_reason` says why; interpret mode runs cells over the on-chip
        budget, a GPU's limit).
    """
    from jrnn.core import mosaic

    missing = _unavailable(mosaic)
    if missing is not None:
        raise ValueError(f"no Pallas kernel here: {missing}")
    kernel = mosaic.sequence(cell, bf16=bf16, interpret=interpret)

    def run(params, xs_proj, carry, *, reverse: bool = False, unroll=None):
        dt = xs_proj.dtype
        if jnp.dtype(dt) == jnp.float32:
            return kernel(params, xs_proj, carry, reverse=reverse, unroll=unroll)
        f32 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), t)
        final, hs = kernel(f32(params), f32(xs_proj), f32(carry), reverse=reverse, unroll=unroll)
        back = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), t)
        return back(final), back(hs)

    return run
