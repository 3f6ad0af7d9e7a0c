"""jax.grad of the summed sequence loss == hand-written BPTT, for every parameter."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import reference as ref
from tests.helpers import ELMAN_ACTS, KINDS, random_inputs, to_np

V = 11


def _lm(kind, act="tanh", layers=2, tie=False, E=5, H=6):
    # The activation is the Elman cell's; the other kinds refuse one.
    model = jrnn.rnn_lm(V, cell=kind, activation=act if kind == "elman" else None,
                        embed_size=E, hidden_size=H,
                        num_layers=layers, tie_embeddings=tie)
    return model, model.init(jax.random.PRNGKey(3), jnp.float64)


def _tokens(seed, B=3, T=7):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.randint(k1, (B, T), 0, V), jax.random.randint(k2, (B, T), 0, V)


CASES = [(k, "tanh") for k in KINDS] + [("elman", a) for a in ELMAN_ACTS if a != "tanh"]


@pytest.mark.parametrize("kind,act", CASES)
@pytest.mark.parametrize("layers", [1, 2])
def test_grad_equals_hand_written_bptt(kind, act, layers):
    model, params = _lm(kind, act, layers)
    inputs, targets = _tokens(layers)
    loss_fn = lambda p: jrnn.sequence_loss(model, p, inputs, targets)[0]
    loss, grads = jax.value_and_grad(loss_fn)(params)
    want_loss, want_losses = ref.lm_loss(kind, to_np(params), inputs, targets, activation=act)
    want_grads = ref.lm_grads(kind, to_np(params), inputs, targets, activation=act)
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-12)
    chex.assert_trees_all_close(grads, want_grads, atol=1e-10, rtol=1e-9)
    # the per-timestep losses too
    _, aux = jrnn.sequence_loss(model, params, inputs, targets)
    chex.assert_trees_all_close(aux.losses, want_losses, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
def test_grad_with_tied_embeddings(kind):
    model, params = _lm(kind, tie=True, E=6, H=6)
    assert "W" not in params["out"]
    inputs, targets = _tokens(5)
    grads = jax.grad(lambda p: jrnn.sequence_loss(model, p, inputs, targets)[0])(params)
    want = ref.lm_grads(kind, to_np(params), inputs, targets)
    chex.assert_trees_all_close(grads, want, atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("kind", KINDS)
def test_cell_vjp_equals_hand_written(kind):
    """The cell alone: vjp through unroll with random output cotangents."""
    cell = jrnn.make_cell(kind, 4)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    xs = random_inputs(1, 12, 2, 3)
    dhs = random_inputs(2, 12, 2, 4)
    _, vjp = jax.vjp(lambda p, x: jrnn.unroll(cell, p, x)[1], params, xs)
    g_params, g_xs = vjp(dhs)
    want_params, want_xs = ref.cell_backward(kind, params, xs, np.asarray(dhs))
    chex.assert_trees_all_close(g_params, want_params, atol=1e-11, rtol=1e-9)
    chex.assert_trees_all_close(g_xs, want_xs, atol=1e-11, rtol=1e-9)


def test_loss_is_sum_of_timestep_losses_and_batch_mean():
    model, params = _lm("lstm")
    inputs, targets = _tokens(9, B=4)
    total, aux = jrnn.sequence_loss(model, params, inputs, targets)
    mean, _ = jrnn.sequence_loss(model, params, inputs, targets, batch_mean=True)
    np.testing.assert_allclose(float(total), float(aux.losses.sum()), rtol=1e-13)
    np.testing.assert_allclose(float(mean), float(total) / 4, rtol=1e-13)
    assert int(aux.num_tokens) == 4 * 7


def test_masked_steps_add_nothing():
    model, params = _lm("gru")
    inputs, targets = _tokens(4)
    mask = jnp.arange(7)[None, :] < jnp.array([7, 3, 1])[:, None]
    loss, aux = jrnn.sequence_loss(model, params, inputs, targets, mask=mask)
    _, full = ref.lm_loss("gru", to_np(params), inputs, targets)
    np.testing.assert_allclose(float(loss), float((full * np.asarray(mask)).sum()), rtol=1e-12)
    assert int(aux.num_tokens) == 11
