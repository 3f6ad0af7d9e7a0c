"""jrnn.core.backward: the hand-written backward passes equal autodiff and the loop reference."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn import reference as ref
from jrnn.core import backward as fused
from jrnn.core.cells import sequence_for
from tests.helpers import random_inputs, to_np


def _jit_once(f, *args):
    """``jax.jit(f)(*args)``: one compiled program (with XLA's usual optimizations, as users
    run it) instead of one compile per small op of a new shape."""
    return jax.jit(f)(*args)


CELLS = [
    ("linear", "tanh"),
    ("elman", "tanh"),
    ("elman", "sigmoid"),
    ("elman", "relu"),
    ("lstm", "tanh"),
    ("gru", "tanh"),
]


def _stack(kind, act, layers, D=3, H=5):
    cells = [jrnn.make_cell(kind, H, activation=act) for _ in range(layers)]
    keys = jax.random.split(jax.random.PRNGKey(7), layers)
    params = [c.init(k, D if i == 0 else H, jnp.float64) for i, (c, k) in enumerate(zip(cells, keys))]
    return cells, params


def _random_carry(cells, B, seed):
    # A non-zero start state, so the carry's own gradient is exercised.
    carry = [c.initial_carry((B,), jnp.float64) for c in cells]
    leaves, tree = jax.tree_util.tree_flatten(carry)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)]
    )


@pytest.mark.parametrize("kind,act", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("unroll", [1, 3, True])
def test_sequence_equals_autodiff_scan(kind, act, reverse, unroll):
    T, B = 6, 2
    cells, params = _stack(kind, act, layers=2)
    assert all(sequence_for(c) is not None for c in cells)
    xs = random_inputs(1, T, B, 3)
    carry = _random_carry(cells, B, 2)
    w = random_inputs(3, T, B, 5)

    def objective(custom):
        def f(params, xs, carry):
            final, hs = jrnn.unroll(cells, params, xs, carry, reverse=reverse, scan_unroll=unroll,
                                    custom_vjp=custom)
            # Every output: the sequence, the final h and (LSTM) the final c.
            return jnp.sum(hs * w) + sum(jnp.sum(jnp.sin(x)) for x in jax.tree_util.tree_leaves(final))
        return f

    want, want_grads = jax.value_and_grad(objective(False), argnums=(0, 1, 2))(params, xs, carry)
    got, got_grads = jax.jit(jax.value_and_grad(objective(True), argnums=(0, 1, 2)))(params, xs, carry)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
    chex.assert_trees_all_close(got_grads, want_grads, atol=1e-11, rtol=1e-10)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_sequence_gradient_equals_hand_written_reference(kind):
    # The reference's own BPTT (jrnn.reference), not autodiff, on sum(hs * w).
    T, B = 5, 3
    cells, params = _stack(kind, "tanh", layers=1)
    xs = random_inputs(4, T, B, 3)
    w = np.asarray(random_inputs(5, T, B, 5))
    f = lambda p, xs: jnp.sum(jrnn.unroll(cells[0], p, xs)[1] * w)
    got = jax.grad(f, argnums=(0, 1))(params[0], xs)
    want_grads, want_dxs = ref.cell_backward(kind, to_np(params[0]), np.asarray(xs), w)
    chex.assert_trees_all_close(got, (want_grads, want_dxs), atol=1e-10, rtol=1e-9)


def test_replaced_step_falls_back_to_autodiff():
    cell = jrnn.lstm(4)
    assert sequence_for(cell) is not None
    assert sequence_for(jrnn.remat(cell)) is None  # its step is jax.checkpoint(step)
    doubled = cell._replace(step=lambda p, c, x: cell.step(p, c, 2 * x))
    assert sequence_for(doubled) is None
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    xs = random_inputs(0, 4, 2, 3)
    _, hs = jrnn.unroll(doubled, params, xs)
    _, want = jax.lax.scan(lambda c, x: doubled.step(params, c, x),
                           cell.initial_carry((2,), jnp.float64), cell.project(params, xs))
    chex.assert_trees_all_close(hs, want)
    # A custom activation has no written derivative: autodiff.
    assert sequence_for(jrnn.elman(4, activation=jnp.sin)) is None


def test_forward_mode_needs_custom_vjp_off():
    cell = jrnn.gru(4)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    xs = random_inputs(0, 4, 2, 3)
    f = lambda custom: (lambda xs: jrnn.unroll(cell, params, xs, custom_vjp=custom)[1])
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f(True), (xs,), (xs,))
    out, tangent = jax.jvp(f(False), (xs,), (xs,))
    assert tangent.shape == out.shape


# ---- output layer + cross-entropy ------------------------------------------


def _ce_problem(N=37, H=5, V=11, seed=0):
    rng = np.random.default_rng(seed)
    h = jnp.asarray(rng.standard_normal((N, H)))
    W = jnp.asarray(rng.standard_normal((H, V)))
    b = jnp.asarray(rng.standard_normal(V))
    y = jnp.asarray(rng.integers(0, V, N))
    w = jnp.asarray(rng.random(N)).at[::4].set(0.0)  # some rows weigh nothing
    return h, W, b, y, w


def _ce_plain(h, W, b, y, w):
    losses = optax.softmax_cross_entropy_with_integer_labels(h @ W + b, y)
    return jnp.sum(losses * w), losses


@pytest.mark.parametrize("chunk_rows", [1, 5, 10, 37, 100, None])
def test_cross_entropy_equals_optax(chunk_rows):
    h, W, b, y, w = _ce_problem()
    fused_ce = lambda h, W, b, w: fused.softmax_cross_entropy(h, W, b, y, w, chunk_rows=chunk_rows)
    plain = lambda h, W, b, w: _ce_plain(h, W, b, y, w)
    (got, got_losses), got_grads = jax.jit(
        jax.value_and_grad(fused_ce, argnums=(0, 1, 2, 3), has_aux=True))(h, W, b, w)
    (want, want_losses), want_grads = jax.value_and_grad(
        plain, argnums=(0, 1, 2, 3), has_aux=True)(h, W, b, w)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-12)
    chex.assert_trees_all_close(got_grads, want_grads, atol=1e-12, rtol=1e-10)
    # Differentiating the per-row losses too (the recomputing branch).
    obj = lambda f: (lambda *a: f(*a)[0] + jnp.sum(f(*a)[1] ** 2))
    chex.assert_trees_all_close(
        jax.jit(jax.grad(obj(fused_ce), argnums=(0, 1, 2, 3)))(h, W, b, w),
        jax.grad(obj(plain), argnums=(0, 1, 2, 3))(h, W, b, w), atol=1e-11, rtol=1e-10)


def test_cross_entropy_zero_weight_rows_cannot_poison_the_total():
    h, W, b, y, w = _ce_problem()
    h = h.at[0].set(jnp.nan)  # w[0] == 0
    total, losses = fused.softmax_cross_entropy(h, W, b, y, w, chunk_rows=8)
    assert bool(jnp.isnan(losses[0])) and bool(jnp.isfinite(total))
    # (Its gradient is NaN as with autodiff: NaN * 0 inside h^T @ dlogits.)
    dh = jax.grad(lambda h: fused.softmax_cross_entropy(h, W, b, y, w, chunk_rows=8)[0])(h)
    assert bool(jnp.all(dh[0] == 0)) and bool(jnp.all(jnp.isfinite(dh[1:])))


def test_cross_entropy_rejects_bad_shapes():
    h, W, b, y, w = _ce_problem()
    with pytest.raises(ValueError, match="h \\[N, H\\]"):
        fused.softmax_cross_entropy(h, W.T, b, y, w)
    with pytest.raises(ValueError, match="targets and weights"):
        fused.softmax_cross_entropy(h, W, b, y[:-1], w)
    with pytest.raises(ValueError, match="chunk_rows"):
        fused.softmax_cross_entropy(h, W, b, y, w, chunk_rows=-2)


def test_chunk_rows_cover_all_rows_evenly():
    for n in (1, 7, 700, 701, 8192):
        rows = fused.cross_entropy_chunk_rows(n, 10_000, backend="cpu")
        chunks = -(-n // rows)
        assert rows * 10_000 <= 1_500_000 or rows == 1
        assert rows * chunks - n < chunks  # padding below one row per chunk
    assert fused.cross_entropy_chunk_rows(700, 10_000, backend="gpu") == 700


# ---- the language models -----------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
@pytest.mark.parametrize("tie", [False, True])
def test_lm_loss_and_grads_equal_autodiff(kind, tie):
    V = 13
    inputs = jax.random.randint(jax.random.PRNGKey(1), (3, 9), 0, V)
    targets = jax.random.randint(jax.random.PRNGKey(2), (3, 9), 0, V)
    mask = jnp.arange(9)[None, :] < jnp.array([[9], [4], [7]])
    key = jax.random.PRNGKey(5)
    results = []
    for custom in (True, False):
        model = jrnn.rnn_lm(V, cell=kind, embed_size=6, hidden_size=6, num_layers=2,
                            tie_embeddings=tie, dropout=0.3, custom_vjp=custom)
        params = model.init(jax.random.PRNGKey(3), jnp.float64)
        carry = model.initial_carry(3, jnp.float64)
        f = lambda p: jrnn.sequence_loss(model, p, inputs, targets, carry, mask=mask,
                                         batch_mean=True, key=key)
        # One compiled program per model, not one per small op.
        results.append(_jit_once(jax.value_and_grad(f, has_aux=True), params))
    (got, got_aux), got_grads = results[0]
    (want, want_aux), want_grads = results[1]
    np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
    np.testing.assert_allclose(got_aux.losses, want_aux.losses, rtol=1e-12, atol=1e-14)
    assert not bool(jnp.any(got_aux.losses[~mask]))
    chex.assert_trees_all_close(got_aux.carry, want_aux.carry, atol=1e-13)
    chex.assert_trees_all_close(got_grads, want_grads, atol=1e-11, rtol=1e-10)


def test_nnlm_loss_uses_the_fused_output_layer():
    V = 17
    model = jrnn.nnlm(V, context_size=3, embed_size=4, hidden_size=8)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, V)
    y = jax.random.randint(jax.random.PRNGKey(2), (2, 6), 0, V)
    # Both sides jitted: one compile each, not one per small op.
    got, got_grads = _jit_once(jax.value_and_grad(lambda p: jrnn.sequence_loss(model, p, x, y)[0]),
                             params)

    def plain(p):
        logits, _ = model.apply(p, x)
        return jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    want, want_grads = _jit_once(jax.value_and_grad(plain), params)
    np.testing.assert_allclose(float(got), float(want), rtol=1e-12)
    chex.assert_trees_all_close(got_grads, want_grads, atol=1e-12, rtol=1e-10)


def test_replaced_apply_is_scored_through_its_logits():
    V = 9
    model = jrnn.rnn_lm(V, embed_size=4, hidden_size=4, num_layers=1)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    x = jnp.zeros((1, 3), jnp.int32)
    uniform = model._replace(apply=lambda p, t, c=None, **kw: (jnp.zeros(t.shape + (V,)), c))
    loss, _ = jrnn.sequence_loss(uniform, params, x, x)
    np.testing.assert_allclose(float(loss), 3 * np.log(V), rtol=1e-12)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="chunk sizes are the CPU's")
def test_fused_train_step_needs_less_scratch_memory():
    V, B, T = 30_000, 8, 25  # 200 rows: 4 chunks of 50 on a CPU
    temps = {}
    for custom in (True, False):
        model = jrnn.rnn_lm(V, embed_size=32, hidden_size=32, num_layers=1, custom_vjp=custom)
        opt = optax.sgd(0.1)
        state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
        step = jrnn.make_train_step(model, opt, clip_norm=5.0, jit=False)
        x = jnp.zeros((B, T), jnp.int32)
        compiled = jax.jit(step).lower(state, x, x, model.initial_carry(B)).compile()
        temps[custom] = compiled.memory_analysis().temp_size_in_bytes
    # Autodiff keeps [B*T, V] logits and their cotangent (2 x 24 MB here);
    # the fused loss holds one 50-row chunk at a time.
    assert temps[True] < 0.5 * temps[False], temps


def test_keep_host_memory_in_a_fresh_process():
    code = ("import platform; from jrnn.training.runtime import keep_host_memory; "
            "print(keep_host_memory(), platform.libc_ver()[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    applied, libc = out.stdout.split()
    assert applied == ("True" if libc == "glibc" else "False")


@pytest.mark.parametrize("kind", ["lstm", "gru", "elman"])
@pytest.mark.parametrize("T", [0, 1])
def test_sequence_handles_empty_and_single_step(kind, T):
    cells, params = _stack(kind, "tanh", layers=1)
    xs = random_inputs(0, T, 2, 3)
    carry = _random_carry(cells, 2, 1)[0]

    def f(custom):
        def g(p, xs, c):
            final, hs = jrnn.unroll(cells[0], p, xs, c, custom_vjp=custom)
            return jnp.sum(hs) + sum(jnp.sum(x) for x in jax.tree_util.tree_leaves(final))
        return jax.grad(g, argnums=(0, 1, 2))

    chex.assert_trees_all_close(f(True)(params[0], xs, carry), f(False)(params[0], xs, carry),
                                atol=1e-12)
