"""The persistent multi-block kernels (:mod:`jrnn.core.persistent`), checked on a CPU.

What JAX 0.10.2 (CPU-only jaxlib) allows here:

* **Lowering**: the persistent forward and backward kernels -- each block a slice of the
  hidden units, its slice of ``W_h`` resident, a global-semaphore grid barrier per step --
  lower for CUDA (``jax.export(..., platforms=["cuda"])``) to ``mosaic_gpu_v2`` custom
  calls holding the barrier's ``red.release.gpu`` signal and ``fence.acquire.gpu``.
  PTX compilation does not run; the kernels never ran on a GPU.
* **Values**: Mosaic GPU's interpret mode runs the grid's blocks one after the other and
  has no rule for global semaphores, so a grid barrier cannot run in it.  With several
  blocks a batch group the same per-block step code runs as one launch per step (the
  launch boundary is the barrier); with one block a group the persistent kernel itself
  runs (barrier left out).  Both against ``jrnn.unroll(..., method="scan")``.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export as jax_export

import jrnn
from jrnn.core import persistent
from jrnn.core.pallas import Fallback
from tests.helpers import assert_kernel_equals_scan, kernel_case, scan_layer


_setup = kernel_case


def _kernel_layer(cell, reverse, blocks, bf16=False):
    run = persistent.sequence(cell, bf16=bf16, interpret=True, blocks=blocks)
    return lambda p, x, c: run(p, cell.project(p, x), c, reverse=reverse)


# (kind, H, B, T, reverse, blocks): several blocks a batch group (per-step launches): Elman
# tanh H 128 over 2 blocks of 64 units (two 64-column chunks of h); LSTM H 32 (padded to
# 64) over 4 blocks of 16 units, reversed.  One block a group (the persistent kernel, its
# loop and prefetch): an LSTM with padded units and two batch groups (B 70).
CASES = [("elman", 128, 20, 2, False, 2), ("lstm", 32, 20, 2, True, 4),
         ("lstm", 40, 70, 3, False, 1)]


@pytest.mark.parametrize("kind,H,B,T,reverse,blocks", CASES)
def test_interpreted_kernels_equal_the_scan(kind, H, B, T, reverse, blocks):
    cell, params, xs, carry, w = _setup(kind, H, B, T)
    assert_kernel_equals_scan(_kernel_layer(cell, reverse, blocks), scan_layer(cell, reverse),
                              params, xs, carry, w)


def test_interpreted_bf16_operands_stay_close():
    cell, params, xs, carry, _ = _setup("elman", 64, 20, 2)
    _, low = _kernel_layer(cell, False, 2, bf16=True)(params, xs, carry)
    _, exact = scan_layer(cell, False)(params, xs, carry)
    err = float(jnp.max(jnp.abs(low - exact)))
    assert low.dtype == jnp.float32 and 0 < err < 3e-2  # bf16 operands: close, not equal


def _grad_fn(cell, bf16, reverse, B, T, blocks=None, D=5):
    run = persistent.sequence(cell, bf16=bf16, blocks=blocks)  # compiled in compiled_for_gpu

    def loss(params, xs, carry):
        _, hs = run(params, cell.project(params, xs), carry, reverse=reverse)
        return jnp.sum(jnp.sin(hs))

    params = cell.init(jax.random.PRNGKey(0), D, jnp.float32)
    args = (params, jnp.zeros((T, B, D), jnp.float32), cell.initial_carry((B,), jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), args


# The target shape (tanh B 64, H 256: 4 blocks of 64 units in float32/TF32) and a
# multi-block LSTM (H 128, 4 blocks of 32 units, bf16, reversed, two batch groups).
LOWERED = [("elman", 256, 64, False, False, None), ("lstm", 128, 70, True, True, 4)]


@pytest.mark.parametrize("kind,H,B,bf16,reverse,blocks", LOWERED)
def test_persistent_kernels_export_for_cuda(kind, H, B, bf16, reverse, blocks):
    cell = jrnn.make_cell(kind, H)
    assert persistent.supported(cell, bf16=bf16, batch=B)
    f, args = _grad_fn(cell, bf16, reverse, B, T=3, blocks=blocks)
    with persistent.compiled_for_gpu():
        exported = jax_export.export(f, platforms=["cuda"])(*args)
    module = exported.mlir_module()
    calls = re.findall(r"custom_call @(\w+)", module)
    assert calls.count("mosaic_gpu_v2") == 2  # the forward and the backward kernel
    assert not any("triton" in c for c in calls)
    # the grid barrier's semaphore signal and acquire are in the serialized kernels
    assert module.count("red.release.gpu") >= 1 and module.count("fence.acquire.gpu") >= 1


def test_budget_and_fallback_reasons():
    assert persistent.plan(jrnn.elman(256))[0] == 4
    assert persistent.plan(jrnn.elman(256), bf16=True)[0] == 2
    assert persistent.plan(jrnn.lstm(768), 16)[0] == 96
    assert persistent.plan(jrnn.lstm(768), 16, bf16=True)[0] == 48
    sizes = persistent.smem_bytes(jrnn.elman(256), 4)
    assert sizes["U"] == 64 and max(sizes["fwd"], sizes["bwd"]) <= persistent.SMEM_BYTES
    # too many blocks for one wave: the grid barrier would deadlock
    reason = persistent.fallback_reason(jrnn.lstm(768), batch=256)
    assert reason.kind is Fallback.ON_CHIP and "SMs" in reason
    reason = persistent.fallback_reason(jrnn.lstm(2048), batch=16)  # 256 x 8 units: 322 KiB
    assert reason.kind is Fallback.ON_CHIP and "322 KiB of shared memory" in reason
    assert persistent.fallback_reason(jrnn.gru(64)).kind is Fallback.CELL_KIND
    assert persistent.fallback_reason(jrnn.elman(8), lengths=True).kind is Fallback.LENGTHS
    with pytest.raises(ValueError, match="do not split"):
        persistent.sequence(jrnn.elman(256), blocks=3, interpret=True)
    cell = jrnn.elman(8)
    run = persistent.sequence(cell, interpret=True)
    with pytest.raises(TypeError, match="float32"):
        run(cell.init(jax.random.PRNGKey(0), 3), jnp.zeros((2, 2, 8), jnp.bfloat16),
            cell.initial_carry((2,)))


def test_no_steps_pass_the_carry_through():
    """T = 0: no kernel runs; the carry comes back unchanged and its gradient passes through."""
    for cell in (jrnn.elman(8), jrnn.lstm(8)):
        params = cell.init(jax.random.PRNGKey(0), 4)
        carry = jax.tree_util.tree_map(lambda a: a + 0.5, cell.initial_carry((3,)))
        final, hs = jrnn.unroll(cell, params, jnp.ones((0, 3, 4)), carry, method="persistent")
        assert hs.shape == (0, 3, 8)
        for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(carry)):
            np.testing.assert_array_equal(a, b)
        g = jax.grad(lambda c: sum(jnp.sum(l) for l in jax.tree_util.tree_leaves(
            jrnn.unroll(cell, params, jnp.ones((0, 3, 4)), c, method="persistent")[0])))(carry)
        for l in jax.tree_util.tree_leaves(g):
            np.testing.assert_array_equal(l, 1.0)
