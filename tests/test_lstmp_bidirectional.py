"""LSTM with projections against its float64 loop reference, and jrnn.bidirectional
against two hand-composed jrnn.unroll passes per layer."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import reference as ref
from jrnn.core.cells import gate_size
from tests.helpers import random_inputs, to_np

T, B, D, H, P = 7, 3, 4, 6, 3
LENGTHS = jnp.array([7, 4, 1])


def _lstmp(seed=0):
    cell = jrnn.lstm(H, proj_size=P)
    return cell, cell.init(jax.random.PRNGKey(seed), D, jnp.float64)


def test_lstmp_shapes_and_fields():
    cell, params = _lstmp()
    assert (cell.kind, cell.hidden_size, cell.cell_size, gate_size(cell)) == ("lstm", P, H, H)
    assert cell.sequence is None  # no hand-written backward pass: unroll uses autodiff
    assert {k: v.shape for k, v in params.items()} == {
        "W": (D, 4 * H), "W_h": (P, 4 * H), "b": (4 * H,), "W_hr": (H, P)}
    carry = cell.initial_carry((B,))
    assert carry.h.shape == (B, P) and carry.c.shape == (B, H)
    # proj_size None / 0 is the plain LSTM, with its hand-written backward pass
    for plain in (jrnn.lstm(H), jrnn.lstm(H, proj_size=0), jrnn.make_cell("lstm", H)):
        assert plain.hidden_size == H and plain.cell_size is None and plain.sequence is not None
    assert jrnn.make_cell("lstm", H, proj_size=P).cell_size == H
    with pytest.raises(ValueError, match="proj_size"):
        jrnn.make_cell("gru", H, proj_size=P)
    with pytest.raises(ValueError, match="proj_size"):
        jrnn.lstm(H, proj_size=-1)


@pytest.mark.parametrize("reverse", [False, True])
def test_lstmp_unroll_matches_loop(reverse):
    cell, params = _lstmp(1)
    xs = random_inputs(1, T, B, D)
    h0 = random_inputs(2, 1, B, P)[0]
    c0 = random_inputs(3, 1, B, H)[0]
    for lengths in (None, LENGTHS):
        carry, hs = jrnn.unroll(cell, params, xs, jrnn.LSTMCarry(h0, c0), lengths=lengths,
                                reverse=reverse, method="scan")
        want_hs, want_h, want_c = ref.cell_forward("lstm", to_np(params), xs, h0, c0,
                                                   lengths=lengths, reverse=reverse)
        chex.assert_trees_all_close(hs, want_hs, atol=1e-12, rtol=1e-12)
        chex.assert_trees_all_close((carry.h, carry.c), (want_h, want_c), atol=1e-12, rtol=1e-12)


def test_lstmp_grad_equals_hand_written_bptt():
    """vjp through unroll with random output cotangents == the reference's BPTT."""
    cell, params = _lstmp(2)
    xs = random_inputs(4, T, B, D)
    dhs = random_inputs(5, T, B, P)
    _, vjp = jax.vjp(lambda p, x: jrnn.unroll(cell, p, x, method="scan")[1], params, xs)
    g_params, g_xs = vjp(dhs)
    want_params, want_xs = ref.cell_backward("lstm", params, xs, np.asarray(dhs))
    assert set(want_params) == {"W", "W_h", "b", "W_hr"}
    chex.assert_trees_all_close(g_params, want_params, atol=1e-11, rtol=1e-9)
    chex.assert_trees_all_close(g_xs, want_xs, atol=1e-11, rtol=1e-9)
    # jax.grad of a summed loss over a 2-layer LSTMP stack (layer 1 reads P features)
    cells = [cell, jrnn.lstm(5, proj_size=2)]
    stack = [params, cells[1].init(jax.random.PRNGKey(9), P, jnp.float64)]
    loss = lambda ps: jnp.sum(jrnn.unroll(cells, ps, xs)[1] ** 2)
    grads = jax.grad(loss)(stack)
    hs1, _, _ = ref.cell_forward("lstm", to_np(stack[0]), xs)
    hs2, _, _ = ref.cell_forward("lstm", to_np(stack[1]), hs1)
    g1, d_hs1 = ref.cell_backward("lstm", stack[1], hs1, 2 * hs2)
    g0, _ = ref.cell_backward("lstm", stack[0], xs, d_hs1)
    chex.assert_trees_all_close(grads, [g0, g1], atol=1e-10, rtol=1e-9)


def _pairs(kind, layers, *, proj_size=None, seed=0):
    make = (lambda: jrnn.lstm(H, proj_size=proj_size)) if kind == "lstm" else (
        lambda: jrnn.make_cell(kind, H))
    cells = [(make(), make()) for _ in range(layers)]
    keys = jax.random.split(jax.random.PRNGKey(seed), 2 * layers)
    out = cells[0][0].hidden_size
    params = [(f.init(keys[2 * l], D if l == 0 else 2 * out, jnp.float64),
               b.init(keys[2 * l + 1], D if l == 0 else 2 * out, jnp.float64))
              for l, (f, b) in enumerate(cells)]
    return cells, params


def _by_hand(cells, params, xs, lengths, carry=None):
    """Two jrnn.unroll passes per layer (forward, reverse=True), concatenated."""
    finals, hs = [], xs
    for l, ((cf, cb), (pf, pb)) in enumerate(zip(cells, params)):
        c0f, c0b = (None, None) if carry is None else carry[l]
        ff, hf = jrnn.unroll(cf, pf, hs, c0f, lengths=lengths, method="scan")
        fb, hb = jrnn.unroll(cb, pb, hs, c0b, lengths=lengths, reverse=True, method="scan")
        finals.append((ff, fb))
        hs = jnp.concatenate([hf, hb], -1)
    return finals, hs


@pytest.mark.parametrize("kind,layers,proj", [("gru", 3, None), ("elman", 1, None), ("lstm", 2, P)])
def test_bidirectional_equals_two_unrolls_per_layer(kind, layers, proj):
    cells, params = _pairs(kind, layers, proj_size=proj)
    xs = random_inputs(6, T, B, D)
    for lengths in ((None, LENGTHS) if layers < 3 else (LENGTHS,)):
        got = jax.jit(lambda p: jrnn.bidirectional(cells, p, xs, lengths=lengths, method="scan"))(params)
        want = jax.jit(lambda p: _by_hand(cells, p, xs, lengths))(params)
        chex.assert_trees_all_close(got, want, atol=1e-12, rtol=1e-12)
        out = cells[0][0].hidden_size
        assert got[1].shape == (T, B, 2 * out)
        if lengths is not None:  # padded outputs are zeros in both directions
            assert float(jnp.abs(got[1][4:, 1]).max()) == 0.0 and float(jnp.abs(got[1][1:, 2]).max()) == 0.0
    if kind != "lstm":
        return
    # gradients too, and batch-major inputs with an initial carry
    carry0 = jax.tree_util.tree_map(lambda x: x + 0.1, got[0])
    loss = lambda f: jax.jit(jax.grad(lambda ps: jnp.sum(f(ps)[1] ** 2)))
    g = loss(lambda ps: jrnn.bidirectional(cells, ps, xs, carry0, lengths=LENGTHS))(params)
    w = loss(lambda ps: _by_hand(cells, ps, xs, LENGTHS, carry0))(params)
    chex.assert_trees_all_close(g, w, atol=1e-12, rtol=1e-10)
    bm = jrnn.bidirectional(cells, params, jnp.swapaxes(xs, 0, 1), carry0, time_major=False)
    chex.assert_trees_all_close(jnp.swapaxes(bm[1], 0, 1), _by_hand(cells, params, xs, None, carry0)[1],
                                atol=1e-12, rtol=1e-12)


def test_bidirectional_dropout_between_layers_only_with_key():
    cells, params = _pairs("gru", 2)
    xs = random_inputs(7, T, B, D)
    plain = jrnn.bidirectional(cells, params, xs)
    no_key = jrnn.bidirectional(cells, params, xs, dropout=0.5)
    chex.assert_trees_all_close(plain, no_key, atol=0, rtol=0)
    key = jax.random.PRNGKey(3)
    dropped = jrnn.bidirectional(cells, params, xs, dropout=0.5, key=key)
    # by hand: the same mask as jrnn.unroll draws, on layer 0's concatenated outputs
    _, h0 = jrnn.bidirectional(cells[:1], params[:1], xs)
    keep = jax.random.bernoulli(jax.random.split(key, 2)[1], 0.5, h0.shape)
    _, want = jrnn.bidirectional(cells[1:], params[1:], jnp.where(keep, h0 / 0.5, 0))
    chex.assert_trees_all_close(dropped[1], want, atol=1e-12, rtol=1e-12)
    # layer 0 (its final carries) is not touched by dropout
    chex.assert_trees_all_close(dropped[0][0], plain[0][0], atol=0, rtol=0)


def test_bidirectional_errors():
    cells, params = _pairs("gru", 2)
    xs = random_inputs(8, T, B, D)
    with pytest.raises(TypeError, match="pairs"):
        jrnn.bidirectional(cells[0][0], params[0][0], xs)
    with pytest.raises(TypeError, match="pairs"):
        jrnn.bidirectional([c for c, _ in cells], params, xs)
    with pytest.raises(ValueError, match="layers"):
        jrnn.bidirectional(cells, params[:1], xs)
    bad = [params[0], (cells[1][0].init(jax.random.PRNGKey(0), H),) * 2]
    with pytest.raises(ValueError, match="2H"):
        jrnn.bidirectional(cells, bad, xs)
