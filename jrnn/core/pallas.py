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

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from jrnn.core import mosaic
from jrnn.core.cells import Cell
from jrnn.core.kernels import Fallback, FallbackReason, cell_reason, compiled_for_gpu

Array = jax.Array

__all__ = ["Fallback", "FallbackReason", "cell_reason", "supported", "fallback_reason", "sequence",
           "compiled_for_gpu"]


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
    return mosaic.unavailable() or mosaic.fallback_reason(cell, lengths=lengths, bf16=bf16)


def supported(cell: Cell, *, lengths: bool = False, bf16: bool = False) -> bool:
    """Whether :func:`sequence` runs ``cell`` in a kernel (see :func:`fallback_reason`)."""
    return fallback_reason(cell, lengths=lengths, bf16=bf16) is None


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
    missing = mosaic.unavailable()
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
