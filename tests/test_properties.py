"""Property tests: random shapes, lengths, seeds and cells against the loop reference."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

import jrnn
from jrnn import reference as ref
from tests.helpers import KINDS, to_np

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
# Whole language models, each example a fresh compile of a train-step gradient: fewer.
LM_SETTINGS = settings(SETTINGS, max_examples=8)


def _jit_once(f, *args):
    """``jax.jit(f)(*args)``: one compiled program (with XLA's usual optimizations, as users
    run it) instead of one compile per small op of a new shape."""
    return jax.jit(f)(*args)


@st.composite
def unroll_cases(draw):
    kind = draw(st.sampled_from(KINDS))
    act = draw(st.sampled_from(["tanh", "sigmoid", "relu"])) if kind == "elman" else "tanh"
    T = draw(st.integers(1, 9))
    B = draw(st.integers(1, 4))
    D = draw(st.integers(1, 5))
    H = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    return kind, act, T, B, D, H, lengths, draw(st.booleans()), draw(st.integers(0, 2**16))


@SETTINGS
@given(unroll_cases())
def test_unroll_matches_reference_for_random_cases(case):
    kind, act, T, B, D, H, lengths, reverse, seed = case
    cell = jrnn.make_cell(kind, H, activation=act)
    lengths = jnp.array(lengths)

    # One compiled program per example (eagerly, every small op of a new shape
    # compiles on its own: seconds per example for the same numbers).
    def run(seed):
        k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
        params = cell.init(k1, D, jnp.float64)
        xs = jax.random.normal(k2, (T, B, D), jnp.float64)
        return params, xs, jrnn.unroll(cell, params, xs, lengths=lengths, reverse=reverse)

    params, xs, (carry, hs) = _jit_once(run, seed)
    want_hs, want_h, _ = ref.cell_forward(kind, params, xs, activation=act, lengths=lengths,
                                          reverse=reverse)
    chex.assert_trees_all_close(hs, want_hs, atol=1e-10)
    chex.assert_trees_all_close(cell.hidden(carry), want_h, atol=1e-10)


@LM_SETTINGS
@given(
    kind=st.sampled_from(KINDS),
    B=st.integers(1, 3),
    T=st.integers(1, 8),
    V=st.integers(2, 9),
    H=st.integers(1, 5),
    layers=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_grad_matches_hand_written_bptt_for_random_cases(kind, B, T, V, H, layers, seed):
    model = jrnn.rnn_lm(V, cell=kind, embed_size=3, hidden_size=H, num_layers=layers)
    rng = np.random.default_rng(seed)  # (NumPy: no compile per shape)
    x, y = (jnp.asarray(rng.integers(0, V, (B, T))) for _ in range(2))

    # One compiled program per example (init and gradient), not one per small op.
    def run(key):
        params = model.init(key, jnp.float64)
        return params, jax.grad(lambda p: jrnn.sequence_loss(model, p, x, y)[0])(params)

    params, g = _jit_once(run, jax.random.PRNGKey(seed))
    chex.assert_trees_all_close(g, ref.lm_grads(kind, to_np(params), x, y), atol=1e-10, rtol=1e-8)


@SETTINGS
@given(lengths=st.lists(st.integers(0, 7), min_size=1, max_size=5))
def test_reverse_within_lengths_is_an_involution(lengths):
    T = 7
    xs = jnp.arange(T * len(lengths)).reshape(T, len(lengths))
    L = jnp.array(lengths)
    once = jrnn.reverse_within_lengths(xs, L)
    chex.assert_trees_all_equal(jrnn.reverse_within_lengths(once, L), xs)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(once[:n, b], xs[:n, b][::-1])
        np.testing.assert_array_equal(once[n:, b], xs[n:, b])
