"""The Mosaic GPU kernels (:mod:`jrnn.core.mosaic`), checked on a CPU.

What JAX (0.10.2, CPU-only jaxlib) allows here:

* **Values**: Mosaic GPU's own interpret mode (``InterpretGPUParams``) runs the kernels
  -- TMA copies, barriers, wgmma, shared memory simulated on the CPU -- so forward
  values and gradients are compared with ``jrnn.unroll(..., method="scan")``.  The one
  difference from the GPU kernel: ``W_h`` is held untransposed in shared memory, as the
  interpreter cannot apply a transpose to a wgmma operand; and its wgmma is an exact
  float32 matmul (the GPU's float32 wgmma is TF32).
* **Lowering**: every kernel lowers for CUDA (``lowering_platforms=("cuda",)`` and
  ``jax.export``) to ``mosaic_gpu_v2`` custom calls: Pallas' and Mosaic GPU's lowering
  (wgmma shape/dtype/layout checks included) runs; PTX compilation does not.
"""

import re

import jax
import jax.numpy as jnp
import pytest
from jax import export as jax_export

import jrnn
from jrnn.core import mosaic
from jrnn.core.pallas import Fallback
from tests.helpers import assert_kernel_equals_scan, kernel_case, scan_layer


_setup = kernel_case


def _kernel_layer(cell, reverse, bf16=False):
    run = mosaic.sequence(cell, bf16=bf16, interpret=True)
    return lambda p, x, c: run(p, cell.project(p, x), c, reverse=reverse)


# (kind, activation, H, B, T, reverse): one padded chunk and block each, and a GRU with two
# 64-unit chunks (H = 70) and two 64-row batch blocks (B = 70), reversed.
CASES = [("elman", "tanh", 40, 20, 4, False), ("lstm", None, 40, 20, 3, True),
         ("gru", None, 70, 70, 3, True)]


@pytest.mark.parametrize("kind,act,H,B,T,reverse", CASES)
def test_interpreted_kernels_equal_the_scan(kind, act, H, B, T, reverse):
    cell, params, xs, carry, w = _setup(kind, H, B, T, act=act)
    assert_kernel_equals_scan(_kernel_layer(cell, reverse), scan_layer(cell, reverse), params,
                              xs, carry, w)


def test_interpreted_bf16_matmuls_stay_close_to_float32():
    cell, params, xs, carry, _ = _setup("elman", 40, 20, 4, act="tanh")
    _, low = _kernel_layer(cell, False, bf16=True)(params, xs, carry)
    _, exact = scan_layer(cell, False)(params, xs, carry)
    assert low.dtype == jnp.float32  # state and outputs stay float32
    err = float(jnp.max(jnp.abs(low - exact)))
    assert 0 < err < 3e-2  # bfloat16 operands: different, but close


# (kind, activation, H, bf16, reverse): every kernel family, both operand dtypes, both
# directions; Elman H = 100 has two 64-unit chunks (and one prefetch buffer in float32);
# the float32 LSTM at its largest size (H = 64: one prefetch buffer, dz one gate at a time).
LOWERED = [("elman", "tanh", 40, False, False), ("elman", "relu", 100, False, True),
           ("elman", "sigmoid", 100, True, False), ("gru", None, 40, False, True),
           ("gru", None, 64, True, False), ("lstm", None, 40, True, True),
           ("lstm", None, 64, False, False)]


def _grad_fn(cell, bf16, reverse, B, T, D=5):
    run = mosaic.sequence(cell, bf16=bf16)  # interpret=None: compiled within compiled_for_gpu

    def loss(params, xs, carry):
        _, hs = run(params, cell.project(params, xs), carry, reverse=reverse)
        return jnp.sum(jnp.sin(hs))

    params = cell.init(jax.random.PRNGKey(0), D, jnp.float32)
    args = (params, jnp.zeros((T, B, D), jnp.float32), cell.initial_carry((B,), jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2))), args


@pytest.mark.parametrize("kind,act,H,bf16,reverse", LOWERED)
def test_forward_and_backward_kernels_lower_for_cuda(kind, act, H, bf16, reverse):
    cell = jrnn.make_cell(kind, H, activation=act) if act else jrnn.make_cell(kind, H)
    assert mosaic.supported(cell, bf16=bf16)
    f, args = _grad_fn(cell, bf16, reverse, B=70, T=6)
    with mosaic.compiled_for_gpu():
        text = f.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    calls = re.findall(r"custom_call @(\w+)", text)
    assert calls.count("mosaic_gpu_v2") == 2  # the forward and the backward kernel
    assert not any("triton" in c for c in calls)


def test_gradient_exports_for_cuda():
    f, args = _grad_fn(jrnn.gru(40), False, False, B=20, T=4)
    with mosaic.compiled_for_gpu():
        exported = jax_export.export(f, platforms=["cuda"])(*args)
    assert exported.platforms == ("cuda",)
    module = exported.mlir_module()
    assert module.count("mosaic_gpu_v2") >= 2 and "triton" not in module


def test_budget_and_fallback_reasons():
    ok = {(kind, bf16): [H for H in (64, 128, 192) if mosaic.supported(jrnn.make_cell(kind, H),
                                                                      bf16=bf16)]
          for kind in ("elman", "gru", "lstm") for bf16 in (False, True)}
    assert ok == {("elman", False): [64, 128], ("elman", True): [64, 128],
                  ("gru", False): [64], ("gru", True): [64],
                  ("lstm", False): [64], ("lstm", True): [64]}
    sizes = mosaic.smem_bytes(jrnn.lstm(64))  # the float32 LSTM: 208 KiB backward
    assert (sizes["fwd"], sizes["bwd"]) == (176 * 1024, 208 * 1024)
    assert sizes["fwd_buffers"] == sizes["bwd_buffers"] == 1
    reason = mosaic.fallback_reason(jrnn.elman(192), bf16=True)  # the forward fits
    assert reason.kind is Fallback.ON_CHIP and "backward kernel" in reason
    assert "240 KiB" in reason
    assert mosaic.fallback_reason(jrnn.mingru(8)).kind is Fallback.CELL_KIND
    assert mosaic.fallback_reason(jrnn.gru(8), lengths=True).kind is Fallback.LENGTHS
    assert mosaic.fallback_reason(jrnn.elman(8, activation=jnp.sin)).kind is Fallback.ACTIVATION
    sizes = mosaic.smem_bytes(jrnn.elman(100))  # padded to 128: one prefetch buffer fits
    assert sizes["Hp"] == 128 and sizes["fwd_buffers"] == 1
    assert max(sizes["fwd"], sizes["bwd"]) <= mosaic.SMEM_BYTES
    with mosaic.compiled_for_gpu(), pytest.raises(ValueError, match="shared memory"):
        mosaic.sequence(jrnn.lstm(128))
    cell = jrnn.elman(8)
    run = mosaic.sequence(cell, interpret=True)
    with pytest.raises(TypeError, match="float32"):
        run(cell.init(jax.random.PRNGKey(0), 3), jnp.zeros((2, 2, 8), jnp.bfloat16),
            cell.initial_carry((2,)))
