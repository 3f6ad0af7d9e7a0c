"""Scan forward == loop forward, for every cell, with lengths, reverse, stacks, unroll."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import reference as ref
from tests.helpers import ELMAN_ACTS, KINDS, make, random_inputs

CASES = [(k, "tanh") for k in KINDS] + [("elman", a) for a in ELMAN_ACTS if a != "tanh"]


def _final_h(cell, carry):
    return cell.hidden(carry)


@pytest.mark.parametrize("kind,act", CASES)
@pytest.mark.parametrize("unroll", [1, 3, True])
def test_unroll_matches_loop(kind, act, unroll):
    cell, _ = make(kind, 6, act)
    params = cell.init(jax.random.PRNGKey(0), 4, jnp.float64)
    xs = random_inputs(1, 9, 3, 4)
    carry, hs = jrnn.unroll(cell, params, xs, method="scan", scan_unroll=unroll)
    want_hs, want_h, want_c = ref.cell_forward(kind, params, xs, activation=act)
    chex.assert_trees_all_close(hs, want_hs, atol=1e-12, rtol=1e-12)
    chex.assert_trees_all_close(_final_h(cell, carry), want_h, atol=1e-12, rtol=1e-12)
    if kind == "lstm":
        chex.assert_trees_all_close(carry.c, want_c, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_lengths_and_reverse_match_loop(kind, reverse):
    cell, act = make(kind, 5)
    params = cell.init(jax.random.PRNGKey(2), 3, jnp.float64)
    xs = random_inputs(3, 8, 4, 3)
    lengths = jnp.array([8, 5, 0, 1])
    carry, hs = jrnn.unroll(cell, params, xs, lengths=lengths, reverse=reverse, scan_unroll=2)
    want_hs, want_h, want_c = ref.cell_forward(kind, params, xs, activation=act,
                                               lengths=lengths, reverse=reverse)
    chex.assert_trees_all_close(hs, want_hs, atol=1e-12)
    chex.assert_trees_all_close(_final_h(cell, carry), want_h, atol=1e-12)
    if kind == "lstm":
        chex.assert_trees_all_close(carry.c, want_c, atol=1e-12)
    # padded steps are exactly zero
    assert float(jnp.abs(hs[5:, 1]).max()) == 0.0 and float(jnp.abs(hs[:, 2]).max()) == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_reverse_without_lengths_matches_loop(kind):
    cell, act = make(kind, 4)
    params = cell.init(jax.random.PRNGKey(4), 2, jnp.float64)
    xs = random_inputs(5, 6, 2, 2)
    carry, hs = jrnn.unroll(cell, params, xs, reverse=True)
    want_hs, want_h, _ = ref.cell_forward(kind, params, xs, activation=act, reverse=True)
    chex.assert_trees_all_close(hs, want_hs, atol=1e-12)
    chex.assert_trees_all_close(_final_h(cell, carry), want_h, atol=1e-12)


def test_full_lengths_equal_no_lengths():
    cell = jrnn.lstm(5)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    xs = random_inputs(0, 7, 2, 3)
    for reverse in (False, True):
        a = jrnn.unroll(cell, params, xs, reverse=reverse)
        b = jrnn.unroll(cell, params, xs, lengths=jnp.array([7, 7]), reverse=reverse)
        chex.assert_trees_all_close(a, b, atol=1e-14)


def test_initial_carry_is_used():
    cell = jrnn.elman(4)
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    xs = random_inputs(1, 5, 3, 2)
    h0 = jax.random.normal(jax.random.PRNGKey(9), (3, 4), jnp.float64)
    _, hs = jrnn.unroll(cell, params, xs, h0)
    want, _, _ = ref.cell_forward("elman", params, xs, h0=h0)
    chex.assert_trees_all_close(hs, want, atol=1e-12)


def test_splitting_a_sequence_carries_state():
    """Two halves with the carry passed on == the whole sequence (truncated BPTT forward)."""
    cell = jrnn.gru(4)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    xs = random_inputs(2, 10, 2, 3)
    carry_all, hs_all = jrnn.unroll(cell, params, xs)
    c1, hs1 = jrnn.unroll(cell, params, xs[:4])
    c2, hs2 = jrnn.unroll(cell, params, xs[4:], c1)
    chex.assert_trees_all_close(jnp.concatenate([hs1, hs2]), hs_all, atol=1e-12)
    chex.assert_trees_all_close(c2, carry_all, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_stacked_layers_match_loop(kind):
    cells = [make(kind, 5)[0], make(kind, 3)[0]]
    keys = jax.random.split(jax.random.PRNGKey(7), 2)
    params = [cells[0].init(keys[0], 4, jnp.float64), cells[1].init(keys[1], 5, jnp.float64)]
    xs = random_inputs(8, 6, 2, 4)
    lengths = jnp.array([6, 3])
    carries, hs = jrnn.unroll(cells, params, xs, lengths=lengths, scan_unroll=4)
    h1, f1, _ = ref.cell_forward(kind, params[0], xs, lengths=lengths)
    h2, f2, _ = ref.cell_forward(kind, params[1], h1, lengths=lengths)
    chex.assert_trees_all_close(hs, h2, atol=1e-12)
    chex.assert_trees_all_close(cells[0].hidden(carries[0]), f1, atol=1e-12)
    chex.assert_trees_all_close(cells[1].hidden(carries[1]), f2, atol=1e-12)


def test_dropout_between_layers_only_with_key():
    cells = [jrnn.elman(6), jrnn.elman(6)]
    keys = jax.random.split(jax.random.PRNGKey(0))
    params = [cells[0].init(keys[0], 3, jnp.float64), cells[1].init(keys[1], 6, jnp.float64)]
    xs = random_inputs(1, 5, 2, 3)
    plain = jrnn.unroll(cells, params, xs)[1]
    no_key = jrnn.unroll(cells, params, xs, dropout=0.5)[1]
    chex.assert_trees_all_close(plain, no_key)
    dropped = jrnn.unroll(cells, params, xs, dropout=0.5, key=jax.random.PRNGKey(3))[1]
    assert not np.allclose(plain, dropped)
    # the first layer's input is never dropped: a 1-layer stack ignores dropout
    one = jrnn.unroll([cells[0]], [params[0]], xs, dropout=0.5, key=jax.random.PRNGKey(3))[1]
    chex.assert_trees_all_close(one, jrnn.unroll(cells[0], params[0], xs)[1])


def test_batch_major_matches_time_major():
    cell = jrnn.lstm(4)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    xs = random_inputs(1, 5, 2, 3)
    c_t, hs_t = jrnn.unroll(cell, params, xs)
    c_b, hs_b = jrnn.unroll(cell, params, jnp.swapaxes(xs, 0, 1), time_major=False)
    chex.assert_trees_all_close(jnp.swapaxes(hs_b, 0, 1), hs_t)
    chex.assert_trees_all_close(c_b, c_t)


def test_jit_vmap_compose():
    cell = jrnn.gru(3)
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    xs = random_inputs(1, 4, 5, 2)
    f = jax.jit(lambda p, x: jrnn.unroll(cell, p, x)[1])
    chex.assert_trees_all_close(f(params, xs), jrnn.unroll(cell, params, xs)[1])
    # vmap over a batch of parameter sets
    many = jax.vmap(lambda k: cell.init(k, 2, jnp.float64))(jax.random.split(jax.random.PRNGKey(1), 3))
    out = jax.vmap(lambda p: jrnn.unroll(cell, p, xs)[1])(many)
    assert out.shape == (3, 4, 5, 3)


def test_lstm_forget_bias_only_initializes():
    a = jrnn.lstm(3).init(jax.random.PRNGKey(0), 2)
    b = jrnn.lstm(3, forget_bias=1.0).init(jax.random.PRNGKey(0), 2)
    np.testing.assert_allclose(b["b"][3:6] - a["b"][3:6], 1.0, rtol=1e-6)
    np.testing.assert_array_equal(b["b"][:3], a["b"][:3])
    np.testing.assert_array_equal(b["b"][6:], a["b"][6:])


def test_param_shapes_follow_the_lecture():
    for kind, G in [("linear", 1), ("elman", 1), ("lstm", 4), ("gru", 3)]:
        p = jrnn.make_cell(kind, 7).init(jax.random.PRNGKey(0), 5)
        assert p["W"].shape == (5, G * 7) and p["W_h"].shape == (7, G * 7) and p["b"].shape == (G * 7,)
        assert ("b_h" in p) == (kind == "gru")


# ---- bad input --------------------------------------------------------------

def test_bad_cell_arguments():
    with pytest.raises(ValueError, match="unknown activation"):
        jrnn.elman(4, "swish-ish")
    with pytest.raises(ValueError, match="unknown cell kind"):
        jrnn.make_cell("transformer", 4)
    with pytest.raises(ValueError, match="hidden_size"):
        jrnn.lstm(0)
    with pytest.raises(ValueError, match="input_size"):
        jrnn.gru(3).init(jax.random.PRNGKey(0), -1)


def test_bad_unroll_inputs():
    cell = jrnn.elman(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jnp.ones((5, 2, 3))
    with pytest.raises(ValueError, match="rank 3"):
        jrnn.unroll(cell, params, jnp.ones((5, 3)))
    with pytest.raises(ValueError, match="feature size 4"):
        jrnn.unroll(cell, params, jnp.ones((5, 2, 4)))
    with pytest.raises(TypeError, match="floating point"):
        jrnn.unroll(cell, params, jnp.ones((5, 2, 3), jnp.int32))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T=5\]"):
        jrnn.unroll(cell, params, xs, lengths=jnp.array([6, 1]))
    with pytest.raises(ValueError, match=r"lengths must lie"):
        jrnn.unroll(cell, params, xs, lengths=jnp.array([-1, 1]))
    with pytest.raises(ValueError, match="shape"):
        jrnn.unroll(cell, params, xs, lengths=jnp.array([1, 1, 1]))
    with pytest.raises(TypeError, match="integers"):
        jrnn.unroll(cell, params, xs, lengths=jnp.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="2 cells but 1 params"):
        jrnn.unroll([cell, cell], [params], xs)


def test_lengths_closed_over_under_jit():
    cell = jrnn.elman(3)
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    xs = random_inputs(0, 4, 2, 2)
    L = jnp.array([4, 2])
    got = jax.jit(lambda p: jrnn.unroll(cell, p, xs, lengths=L)[1])(params)
    chex.assert_trees_all_close(got, jrnn.unroll(cell, params, xs, lengths=L)[1])
    model = jrnn.rnn_lm(5, cell="gru", embed_size=3, hidden_size=3, num_layers=1)
    mp = model.init(jax.random.PRNGKey(0), jnp.float64)
    toks = jnp.array([[0, 1, 2, 3]])
    lp = jax.jit(lambda p: jrnn.log_prob(model, p, toks, lengths=jnp.array([3])))(mp)
    chex.assert_trees_all_close(lp, jrnn.log_prob(model, mp, toks, lengths=jnp.array([3])))


def test_unroll_methods_agree_with_the_loop():
    """'auto', 'scan', remat and the parallel-in-time methods give the loop's result."""
    cell = jrnn.linear(3)
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    xs = random_inputs(1, 9, 2, 2)
    want, want_h, _ = ref.cell_forward("linear", params, xs)
    for method in ("auto", "scan", "associative", "doubling"):
        carry, hs = jrnn.unroll(cell, params, xs, method=method)
        chex.assert_trees_all_close(hs, want, atol=1e-10)
        chex.assert_trees_all_close(carry, want_h, atol=1e-10)
    lstm = jrnn.lstm(3)
    lp = lstm.init(jax.random.PRNGKey(1), 2, jnp.float64)
    loss = lambda c: lambda p: jnp.sum(jrnn.unroll(c, p, xs)[1] ** 2)
    chex.assert_trees_all_close(jax.grad(loss(jrnn.remat(lstm)))(lp), jax.grad(loss(lstm))(lp),
                                atol=1e-12)
    with pytest.raises(ValueError, match="method must be one of"):
        jrnn.unroll(cell, params, xs, method="sideways")
    with pytest.raises(ValueError, match="scan_unroll must be a positive int"):
        jrnn.unroll(cell, params, xs, scan_unroll=0)
    with pytest.raises(ValueError, match="needs a linear recurrence"):
        jrnn.unroll(lstm, lp, xs, method="associative")
