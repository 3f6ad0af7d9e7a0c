"""Parallel-in-time linear recurrences: equal to the sequential scan and the loop reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jrnn
from jrnn.core import parallel
from jrnn import reference as ref
from tests.helpers import random_inputs, to_np

METHODS = list(parallel.METHODS)
TOL = dict(rtol=1e-10, atol=1e-10)


def _jit_once(f, *args):
    """``jax.jit(f)(*args)``: one compiled program (with XLA's usual optimizations, as users
    run it) instead of one compile per small op of a new shape."""
    return jax.jit(f)(*args)


def _diag_reference(params, xs, h0, complex_state):
    """The diagonal recurrence as a NumPy loop: h_t = lam * h_{t-1} + gamma * (x_t W + b)."""
    p = {k: np.asarray(v) for k, v in params.items()}
    H = p["nu_log"].shape[0]
    lam = np.exp(-np.exp(p["nu_log"]))
    if complex_state:
        lam = lam * np.exp(1j * np.exp(p["theta_log"]))
    gamma = np.exp(p["gamma_log"])
    h = np.asarray(h0)
    if complex_state:  # the carry holds (Re h, Im h)
        h = h[:, :H] + 1j * h[:, H:]
    hs = []
    for x in np.asarray(xs):
        u = x @ p["W"] + p["b"]
        if complex_state:
            u = u[:, :H] + 1j * u[:, H:]
        h = lam * h + gamma * u
        hs.append(np.real(h) if complex_state else h)
    final = np.concatenate([h.real, h.imag], axis=-1) if complex_state else h
    return np.stack(hs), final


@pytest.mark.parametrize("method", METHODS)
def test_linear_associative_equals_unroll_and_reference(method):
    T, B, D, H = 13, 3, 4, 5
    cell = jrnn.linear(H, init_scale=0.4)
    params = cell.init(jax.random.PRNGKey(0), D, jnp.float64)
    xs = random_inputs(1, T, B, D)
    h0 = random_inputs(2, 1, B, H)[0]
    h_T, hs = parallel.linear_associative(params, xs, h0, method=method)
    want_T, want_hs = jrnn.unroll(cell, params, xs, h0)
    chex.assert_trees_all_close((h_T, hs), (want_T, want_hs), **TOL)
    ref_hs, ref_T, _ = ref.cell_forward("linear", to_np(params), xs, h0)
    chex.assert_trees_all_close((h_T, hs), (ref_T, ref_hs), **TOL)


@pytest.mark.parametrize("method", METHODS)
def test_linear_associative_gradients_equal_scan(method):
    T, B, D, H = 9, 2, 3, 4
    cell = jrnn.linear(H, init_scale=0.4)
    params = cell.init(jax.random.PRNGKey(3), D, jnp.float64)
    xs = random_inputs(4, T, B, D)
    w = random_inputs(5, T, B, H)  # a random readout, so every state gets its own gradient

    def loss(unroll_fn, params, xs):
        _, hs = unroll_fn(params, xs)
        return jnp.sum(w * hs)

    par = jax.grad(lambda p, x: loss(lambda p, x: parallel.linear_associative(p, x, method=method), p, x),
                   argnums=(0, 1))(params, xs)
    seq = jax.grad(lambda p, x: loss(lambda p, x: jrnn.unroll(cell, p, x), p, x),
                   argnums=(0, 1))(params, xs)
    chex.assert_trees_all_close(par, seq, **TOL)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("complex_state", [False, True])
def test_diagonal_step_matches_loop_and_parallel_matches_scan(complex_state, method):
    T, B, D, H = 17, 2, 3, 6
    cell = parallel.diagonal(H, complex_state=complex_state)
    params = cell.init(jax.random.PRNGKey(6), D, jnp.float64)
    xs = random_inputs(7, T, B, D)
    h0 = random_inputs(8, 1, B, (2 if complex_state else 1) * H)[0]
    want_hs, want_T = _diag_reference(params, xs, h0, complex_state)
    seq_T, seq_hs = jrnn.unroll(cell, params, xs, h0)
    chex.assert_trees_all_close((seq_T, seq_hs), (want_T, want_hs), **TOL)
    par_T, par_hs = parallel.associative_unroll(cell, params, xs, h0, method=method)
    chex.assert_trees_all_close((par_T, par_hs), (want_T, want_hs), **TOL)
    assert par_T.dtype == jnp.float64
    chex.assert_shape(par_T, (B, (2 if complex_state else 1) * H))


def test_diagonal_init_is_stable_and_normalized():
    r_min, r_max = 0.5, 0.9
    cell = parallel.diagonal(64, complex_state=True, r_min=r_min, r_max=r_max)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    radius = np.exp(-np.exp(np.asarray(params["nu_log"])))
    assert np.all((radius >= r_min - 1e-12) & (radius <= r_max + 1e-12))
    np.testing.assert_allclose(np.exp(params["gamma_log"]), np.sqrt(1 - radius**2), rtol=1e-12)
    assert np.all(np.isfinite(params["theta_log"]))
    chex.assert_shape(params["W"], (3, 128))


@pytest.mark.parametrize("complex_state", [False, True])
def test_diagonal_gradients_equal_scan(complex_state):
    T, B, D, H = 11, 2, 3, 4
    cell = parallel.diagonal(H, complex_state=complex_state)
    params = cell.init(jax.random.PRNGKey(9), D, jnp.float64)
    xs = random_inputs(10, T, B, D)
    w = random_inputs(11, T, B, H)

    def loss(params, unroll_fn):
        carry, hs = unroll_fn(cell, params, xs)
        return jnp.sum(w * hs) + jnp.sum(carry**2)

    # Jitted: one compile for each gradient instead of one per small op.
    par = _jit_once(jax.grad(lambda p: loss(p, parallel.associative_unroll)), params)
    seq = _jit_once(jax.grad(lambda p: loss(p, jrnn.unroll)), params)
    chex.assert_trees_all_close(par, seq, **TOL)


@settings(max_examples=6, deadline=None, derandomize=True)
@given(
    kind=st.sampled_from(["linear", "diagonal[real]", "diagonal[complex]"]),
    method=st.sampled_from(METHODS),
    T=st.integers(1, 12),
    B=st.integers(1, 3),
    reverse=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lengths_and_reverse_match_masked_scan(kind, method, T, B, reverse, seed):
    H, D = 3, 2
    if kind == "linear":
        cell = jrnn.linear(H, init_scale=0.5)
    else:
        cell = parallel.diagonal(H, complex_state=kind.endswith("[complex]"))
    C = cell.initial_carry((B,)).shape[-1]

    # One compiled program per example (eagerly, every small op of a new shape compiles
    # on its own); the lengths stay concrete constants, as in an eager call.
    def inputs(seed):
        return (cell.init(jax.random.PRNGKey(seed), D, jnp.float64),
                jax.random.normal(jax.random.PRNGKey(seed + 1), (T, B, D), jnp.float64),
                jax.random.randint(jax.random.PRNGKey(seed + 2), (B,), 0, T + 1),
                jax.random.normal(jax.random.PRNGKey(seed + 3), (1, B, C), jnp.float64)[0])

    params, xs, lengths, h0 = _jit_once(inputs, seed)

    def both(params, xs, h0):
        want = jrnn.unroll(cell, params, xs, h0, lengths=lengths, reverse=reverse)
        got = parallel.associative_unroll(cell, params, xs, h0, lengths=lengths, reverse=reverse,
                                          method=method)
        return got, want

    got, want = _jit_once(both, params, xs, h0)
    chex.assert_trees_all_close(got, want, **TOL)


@pytest.mark.parametrize("reverse", [False, True])
def test_identity_elman_is_linear_and_reverse_without_lengths(reverse):
    cell = jrnn.elman(4, "identity", init_scale=0.4)
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    xs = random_inputs(1, 8, 2, 2)
    got = parallel.associative_unroll(cell, params, xs, reverse=reverse)
    chex.assert_trees_all_close(got, jrnn.unroll(cell, params, xs, reverse=reverse), **TOL)


def test_float32_agrees_with_scan_within_float32_tolerance():
    cell = parallel.diagonal(16, complex_state=True)
    params = cell.init(jax.random.PRNGKey(0), 8, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(1), (64, 4, 8), jnp.float32)
    got = parallel.associative_unroll(cell, params, xs)
    want = jrnn.unroll(cell, params, xs)
    assert got[1].dtype == jnp.float32 and got[0].dtype == jnp.float32
    chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-4)


def test_rejects_nonlinear_cells_and_bad_arguments():
    params = jrnn.lstm(3).init(jax.random.PRNGKey(0), 2)
    xs = jnp.ones((4, 1, 2))
    with pytest.raises(ValueError, match="linear recurrence"):
        parallel.associative_unroll(jrnn.lstm(3), params, xs)
    with pytest.raises(ValueError, match="linear recurrence"):
        parallel.associative_unroll(jrnn.elman(3), params, xs)
    lin = jrnn.linear(3)
    lp = lin.init(jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="method"):
        parallel.associative_unroll(lin, lp, xs, method="fft")
    with pytest.raises(ValueError, match="feature size"):
        parallel.associative_unroll(lin, lp, jnp.ones((4, 1, 5)))
    with pytest.raises(ValueError, match="r_min"):
        parallel.diagonal(3, r_min=0.9, r_max=0.5)
    with pytest.raises(TypeError):
        parallel.associative_unroll([lin], [lp], xs)


def test_zero_length_sequence():
    cell = parallel.diagonal(3)
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    carry, hs = parallel.associative_unroll(cell, params, jnp.ones((0, 2, 2)))
    chex.assert_shape(hs, (0, 2, 3))
    chex.assert_trees_all_close(carry, jnp.zeros((2, 3)))
