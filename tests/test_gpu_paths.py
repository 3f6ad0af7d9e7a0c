"""The GPU paths, checked on a CPU: Pallas kernels (interpret mode), the cuDNN layout,
and every train-step variant lowered for the CUDA platform.

* The fused Pallas kernels (:mod:`jrnn.core.pallas`, Mosaic GPU) run in Mosaic
  GPU's interpret mode and must equal the loop reference (:mod:`jrnn.reference`,
  hand-written BPTT, float64) in values and gradients to float32 precision (the
  kernels compute in float32; float64 inputs are cast), at sizes that are not
  multiples of the kernel's 64-row and 64-unit tiles.  (``tests/test_mosaic.py``
  checks the kernels themselves: against the scan, in bf16, lowered for CUDA.)
* The cuDNN weight conversion (:mod:`jrnn.core.cudnn`) must give JAX's own
  reference of cuDNN's layout (``jax.experimental.rnn.lstm_ref``) the values
  of jrnn's LSTM.
* Every train step -- {Elman, LSTM, GRU} x {autodiff scan, hand-written
  backward, Pallas} x {one device, data-parallel mesh} -- lowers for CUDA
  from this CPU-only machine, the Pallas ones with their Mosaic GPU kernels (and
  no Triton kernel: JAX deprecates that lowering).
  (``method="cudnn"`` cannot be lowered here: JAX's cuDNN lowering asks the
  CUDA library for workspace sizes, which a CPU-only jaxlib does not have;
  that path is run on a GPU by benchmarks/gpu_check.sh.)
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import export as jax_export
from jax.experimental import rnn as jax_rnn

import jrnn
from jrnn import reference as ref
from jrnn.core import cudnn, pallas
from jrnn.core.gates import LSTMCarry
from jrnn.training import distributed

KINDS = [("elman", "tanh"), ("elman", "relu"), ("linear", None), ("lstm", None), ("gru", None)]


def _cell(kind, act, H):
    return jrnn.make_cell(kind, H, activation=act) if act else jrnn.make_cell(kind, H)


def _kernel_layer(cell, params, xs, reverse=False, bf16=False):
    """The kernel with the hoisted projection in front, from a zero carry."""
    run = pallas.sequence(cell, bf16=bf16)
    B = xs.shape[1]
    _, hs = run(params, cell.project(params, xs), cell.initial_carry((B,), xs.dtype),
                reverse=reverse)
    return hs


# Every activation of the Elman kernel, and the LSTM and GRU kernels, at B = 20, H = 40 with
# float64 inputs (cast to float32 and back); the three kernels also reversed in float32, the
# LSTM at H = 70 (two 64-unit column chunks; tests/test_mosaic.py runs the GRU at two).
CASES = ([(k, a, jnp.float64, False, 40) for k, a in KINDS]
         + [(k, a, jnp.float32, True, 70 if k == "lstm" else 40)
            for k, a in (("elman", "tanh"), ("lstm", None), ("gru", None))])


@pytest.mark.parametrize("kind,act,dtype,reverse,H", CASES)
def test_pallas_kernel_equals_loop_reference(kind, act, dtype, reverse, H):
    T, B, D = 5, 20, 7  # B and H are not multiples of the kernel's 64-row and 64-unit tiles
    cell = _cell(kind, act, H)
    params = jax.tree_util.tree_map(lambda x: x.astype(dtype),
                                    cell.init(jax.random.PRNGKey(0), D, jnp.float64))
    if "b" in params:  # non-zero biases, so the padded units would show if they leaked
        params["b"] = 0.1 * jax.random.normal(jax.random.PRNGKey(5), params["b"].shape, dtype)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), dtype)
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (T, B, H), jnp.float64))

    hs = _kernel_layer(cell, params, xs, reverse)
    grads = jax.grad(lambda p: jnp.sum(_kernel_layer(cell, p, xs, reverse) * w.astype(dtype)))(params)

    # The reference runs forward in time; reverse = the forward run of the flipped sequence.
    flip = (lambda a: a[::-1]) if reverse else (lambda a: a)
    act_name = act or "identity"
    want_hs, _, _ = ref.cell_forward(kind, params, flip(np.asarray(xs)), activation=act_name)
    want_grads, _ = ref.cell_backward(kind, params, flip(np.asarray(xs)), flip(w),
                                      activation=act_name)
    tol = dict(rtol=2e-4, atol=2e-4)  # float32 in the kernel, whatever the inputs
    assert hs.dtype == dtype  # ... and the results back in the inputs' dtype
    np.testing.assert_allclose(np.asarray(hs), flip(want_hs), **tol)
    assert set(grads) == set(want_grads)
    for name in grads:
        np.testing.assert_allclose(np.asarray(grads[name]), want_grads[name], **tol, err_msg=name)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_pallas_carry_gradients_equal_the_scan(kind):
    """A non-zero start state and the final state in the loss: dh0 (and dc0) from the kernel."""
    T, B, D, H = 4, 3, 5, 6
    cell = jrnn.make_cell(kind, H)
    params = cell.init(jax.random.PRNGKey(0), D, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), jnp.float64)
    carry = jax.tree_util.tree_map(lambda x: x + 0.3, cell.initial_carry((B,), jnp.float64))

    def loss(method, params, xs, carry):
        final, hs = jrnn.unroll(cell, params, xs, carry, method=method)
        return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(l * l) for l in jax.tree_util.tree_leaves(final))

    got = jax.grad(lambda *a: loss("pallas", *a), argnums=(0, 1, 2))(params, xs, carry)
    want = jax.grad(lambda *a: loss("scan", *a), argnums=(0, 1, 2))(params, xs, carry)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-5)


def test_pallas_bf16_matmuls_stay_close_to_float32():
    T, B, D, H = 6, 20, 7, 64
    cell = jrnn.lstm(H)
    params = cell.init(jax.random.PRNGKey(0), D, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), jnp.float32)
    exact = _kernel_layer(cell, params, xs)
    low = _kernel_layer(cell, params, xs, bf16=True)
    assert low.dtype == jnp.float32  # state and outputs stay float32
    err = float(jnp.max(jnp.abs(low - exact)))
    assert 0 < err < 2e-2  # bfloat16 has 8 bits of mantissa: different, but close


def test_pallas_falls_back_to_the_scan_and_says_so():
    xs = jnp.ones((4, 2, 3))
    big = jrnn.lstm(200)  # 256 x 1024 float32 W_h: over the shared-memory budget
    params = big.init(jax.random.PRNGKey(0), 3)
    assert "over the 220 KiB budget" in pallas.fallback_reason(big)
    with pytest.warns(RuntimeWarning, match="runs the cell with the scan instead: the forward "
                                            "kernel of a 256-unit"):
        _, hs = jrnn.unroll(big, params, xs, method="pallas")
    np.testing.assert_allclose(hs, jrnn.unroll(big, params, xs, method="scan")[1], rtol=1e-6)
    small = jrnn.gru(8)
    with pytest.warns(RuntimeWarning, match="lengths are not masked"):
        jrnn.unroll(small, small.init(jax.random.PRNGKey(0), 3), xs, method="pallas",
                    lengths=jnp.array([4, 2]))
    assert pallas.supported(jrnn.lstm(64)) and not pallas.supported(jrnn.lstm(65))
    assert pallas.supported(jrnn.elman(128)) and not pallas.supported(jrnn.elman(192))
    assert pallas.supported(jrnn.gru(64)) and not pallas.supported(jrnn.gru(128), bf16=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # auto never warns: on a CPU it picks the scan
        jrnn.unroll(small, small.init(jax.random.PRNGKey(0), 3), xs)


def test_cudnn_layout_gives_lstm_ref_jrnns_values():
    T, B, D, H = 7, 3, 5, 6
    cell = jrnn.lstm(H)
    params = cell.init(jax.random.PRNGKey(0), D)
    params["b"] = jax.random.normal(jax.random.PRNGKey(3), params["b"].shape)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D))
    carry = LSTMCarry(jnp.full((B, H), 0.1), jnp.full((B, H), -0.2))
    final, hs = jrnn.unroll(cell, params, xs, carry, method="scan")
    W_ih, W_hh, b_ih, b_hh = jax_rnn.unpack_lstm_weights(
        cudnn.to_cudnn_weights(params), D, H, num_layers=1, bidirectional=False)
    y, h, c = jax_rnn.lstm_ref(jnp.swapaxes(xs, 0, 1), carry.h[None], carry.c[None], W_ih, W_hh,
                               b_ih, b_hh, jnp.full((B,), T, jnp.int32), D, H, 1, 0.0, False)
    np.testing.assert_allclose(np.swapaxes(y, 0, 1), hs, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h[0], final.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(c[0], final.c, rtol=1e-5, atol=1e-6)
    assert cudnn.to_cudnn_weights(params).shape == (jax_rnn.get_num_params_in_lstm(D, H, 1, False),)
    back = cudnn.from_cudnn_weights(cudnn.to_cudnn_weights(params), D, H)
    for k in params:
        np.testing.assert_allclose(back[k], params[k])
    # Off a GPU, method="cudnn" names why and runs the scan.
    with pytest.warns(RuntimeWarning, match="cuDNN needs an NVIDIA GPU"):
        _, hs2 = jrnn.unroll(cell, params, xs, carry, method="cudnn")
    np.testing.assert_allclose(hs2, hs, rtol=1e-6)


def test_cudnn_is_refused_under_jit_with_the_reason():
    """On jax 0.11.2 / H100 the cuDNN binding returned wrong values under jit (jax#19177):
    a traced call names that and runs the scan."""
    cell = jrnn.lstm(4)
    assert "jax-ml/jax#19177" in cudnn.fallback_reason(cell, traced=True)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jnp.ones((5, 2, 3))
    with pytest.warns(RuntimeWarning, match="wrong values under jax.jit"):
        hs = jax.jit(lambda p, x: jrnn.unroll(cell, p, x, method="cudnn")[1])(params, xs)
    np.testing.assert_allclose(hs, jrnn.unroll(cell, params, xs, method="scan")[1], rtol=1e-6)


def test_cudnn_reverse_flips_within_lengths():
    x = jnp.arange(2 * 4, dtype=jnp.float32).reshape(2, 4, 1)
    got = cudnn._flip(x, jnp.array([4, 2]))[..., 0]
    np.testing.assert_array_equal(got, [[3, 2, 1, 0], [5, 4, 6, 7]])


def test_a_jax_that_cannot_run_the_kernels_runs_the_scan_and_says_why(monkeypatch):
    """jax 0.7.1 (the lower bound) has an older Mosaic GPU API and no interpret mode: there
    method="pallas" must run the scan with a warning (under a newer JAX: as if it had none)."""
    from jrnn.core import mosaic

    if mosaic.unavailable() is None:
        monkeypatch.setattr(mosaic, "InterpretGPUParams", None)
    cell = jrnn.gru(8)
    reason = pallas.fallback_reason(cell)
    assert reason.kind is pallas.Fallback.UNAVAILABLE and jax.__version__ in reason
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 3))
    with pytest.warns(RuntimeWarning, match="runs the cell with the scan instead: this JAX"):
        _, hs = jrnn.unroll(cell, params, xs, method="pallas")
    np.testing.assert_allclose(hs, jrnn.unroll(cell, params, xs, method="scan")[1], rtol=1e-12)
    with pytest.raises(ValueError, match="no Pallas kernel here: this JAX"):
        pallas.sequence(cell)


@pytest.mark.parametrize("kind", ["elman", "lstm"])
def test_persistent_method_equals_the_loop_reference(kind):
    """method="persistent" through jrnn.unroll: float64 inputs cast to the kernels' float32 and
    back, values and gradients equal to the loop reference (tests/test_persistent.py splits
    W_h over several blocks; here the method's own choice of blocks runs)."""
    T, B, D, H = 4, 20, 5, 40
    cell = _cell(kind, "tanh" if kind == "elman" else None, H)
    params = cell.init(jax.random.PRNGKey(0), D, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), jnp.float64)
    w = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (T, B, H), jnp.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback to the scan
        _, hs = jrnn.unroll(cell, params, xs, method="persistent")
        grads = jax.grad(lambda p: jnp.sum(jrnn.unroll(cell, p, xs, method="persistent")[1] * w))(
            params)
    assert hs.dtype == jnp.float64
    want_hs, _, _ = ref.cell_forward(kind, params, np.asarray(xs), activation="tanh")
    want_grads, _ = ref.cell_backward(kind, params, np.asarray(xs), w, activation="tanh")
    np.testing.assert_allclose(np.asarray(hs), want_hs, rtol=2e-4, atol=2e-4)
    for name in want_grads:
        np.testing.assert_allclose(np.asarray(grads[name]), want_grads[name], rtol=2e-4,
                                   atol=2e-4, err_msg=name)
    with pytest.warns(RuntimeWarning, match="method='persistent' runs the cell with the scan"):
        jrnn.unroll(jrnn.gru(8), jrnn.gru(8).init(jax.random.PRNGKey(0), D), xs[:, :, :D],
                    method="persistent")


# ---- the train steps lower for CUDA on this CPU ---------------------------------

VARIANTS = {  # name -> rnn_lm options
    "autodiff-scan": dict(method="scan", custom_vjp=False),
    "hand-written": dict(method="scan", custom_vjp=True),
    "pallas": dict(method="pallas"),
    "persistent": dict(method="persistent"),
}


def _step_and_args(kind, variant, mesh):
    model = jrnn.rnn_lm(40, cell=kind, embed_size=16, hidden_size=32, num_layers=1,
                        **VARIANTS[variant])
    opt = optax.sgd(0.5)
    state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
    x = jnp.zeros((16, 12), jnp.int32)
    if mesh:
        step = distributed.make_sharded_train_step(model, opt, mesh=distributed.make_mesh(),
                                                   clip_norm=5.0)
        return step.jitted, (state, x, x, None, None)
    return jax.jit(jrnn.make_train_step(model, opt, clip_norm=5.0, jit=False)), (state, x, x)


@pytest.mark.parametrize("mesh", [False, True], ids=["one-device", "mesh"])
@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_train_step_lowers_for_cuda(kind, variant, mesh):
    jitted, args = _step_and_args(kind, variant, mesh)
    with pallas.compiled_for_gpu():
        text = jitted.trace(*args).lower(lowering_platforms=("cuda",)).as_text()
    kernels = text.count("custom_call @mosaic_gpu")
    # One layer: a forward and a backward kernel; none without Pallas (the GRU has no
    # persistent kernel: the scan); never Triton.
    fused = variant == "pallas" or (variant == "persistent" and kind != "gru")
    assert kernels == (2 if fused else 0)
    assert "triton" not in text


def test_pallas_step_exports_for_cuda():
    jitted, args = _step_and_args("lstm", "pallas", mesh=False)
    with pallas.compiled_for_gpu():
        exported = jax_export.export(jitted, platforms=["cuda"])(*args)
    assert exported.platforms == ("cuda",)
    module = exported.mlir_module()
    assert module.count("custom_call @mosaic_gpu") == 2 and "triton" not in module
