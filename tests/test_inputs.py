"""Library inputs: carries as plain tuples, shape errors that name the argument and the layer,
and the checked mode that catches out-of-range ids and lengths inside jit."""

import chex
import jax
import jax.numpy as jnp
import pytest
from jax.experimental import checkify

import jrnn
from jrnn.core.validation import checked


def _lstm():
    cell = jrnn.lstm(4)
    return cell, cell.init(jax.random.PRNGKey(0), 3), jnp.ones((5, 2, 3))


def test_lstm_carry_may_be_a_plain_tuple():
    cell, params, xs = _lstm()
    h0, c0 = jnp.full((2, 4), 0.1), jnp.full((2, 4), -0.2)
    chex.assert_trees_all_close(jrnn.unroll(cell, params, xs, (h0, c0)),
                                jrnn.unroll(cell, params, xs, jrnn.LSTMCarry(h0, c0)))


@pytest.mark.parametrize("carry,error,message", [
    ((jnp.zeros((3, 4)), jnp.zeros((3, 4))), ValueError, "carry of the cell has shape (3, 4), expected (2, 4)"),
    ((jnp.zeros((2, 5)), jnp.zeros((2, 5))), ValueError, "carry of the cell has shape (2, 5)"),
    (jnp.zeros((2, 4)), TypeError, "shaped like cell.initial_carry(B) (LSTMCarry)"),
])
def test_wrong_carry_is_named(carry, error, message):
    cell, params, xs = _lstm()
    with pytest.raises(error) as info:
        jrnn.unroll(cell, params, xs, carry)
    assert message in str(info.value)


def test_stacked_layer_with_the_wrong_input_size_is_named():
    cells = [jrnn.lstm(4), jrnn.gru(5), jrnn.elman(2)]
    params = [cells[0].init(jax.random.PRNGKey(0), 3), cells[1].init(jax.random.PRNGKey(1), 4),
              cells[2].init(jax.random.PRNGKey(2), 7)]
    with pytest.raises(ValueError, match="layer 2's W expects inputs of size 7, but it is fed 5"):
        jrnn.unroll(cells, params, jnp.ones((5, 2, 3)))
    carries = [c.initial_carry((2,)) for c in cells]
    carries[1] = jnp.zeros((2, 4))
    params[2] = cells[2].init(jax.random.PRNGKey(2), 5)
    with pytest.raises(ValueError, match="carry of layer 1 has shape"):
        jrnn.unroll(cells, params, jnp.ones((5, 2, 3)), carries)


def test_checked_mode_catches_out_of_range_ids_and_lengths_inside_jit():
    model = jrnn.rnn_lm(10, embed_size=4, hidden_size=4, num_layers=1)
    params = model.init(jax.random.PRNGKey(0))
    score = lambda t, n: jrnn.log_prob(model, params, t, lengths=n)
    good, bad = jnp.array([[1, 2, 3]]), jnp.array([[1, 12, 3]])
    # Unchecked under jit nothing is raised: the gather fills the row with NaN (or clamps).
    jax.jit(score)(bad, jnp.array([3])).block_until_ready()
    f = jax.jit(checked(score))
    err, out = f(good, jnp.array([3]))
    err.throw()
    chex.assert_trees_all_close(out, score(good, jnp.array([3])))
    err, _ = f(bad, jnp.array([3]))
    with pytest.raises(checkify.JaxRuntimeError, match="tokens must be ids in"):
        err.throw()
    err, _ = f(good, jnp.array([4]))
    with pytest.raises(checkify.JaxRuntimeError, match="lengths must lie in"):
        err.throw()
