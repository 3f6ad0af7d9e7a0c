"""jrnn.interop.flax: a linen module and its NNX twin made from one key have equal parameters.

Each module draws one key for all its parameters -- linen: the first key it
draws from its ``"params"`` stream; NNX: ``rngs.params()`` -- and makes them
from it the same way.  The tests hand both the same key: the one a top-level
linen module draws (read off with a probe module), given to the NNX module
through an ``nnx.Rngs`` stand-in whose ``params`` stream returns it.
"""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jrnn
from jrnn.interop import flax as jf

B, T, D, H = 3, 6, 4, 5
LENGTHS = jnp.array([6, 2, 4])
SEED = 3


class _Probe(nn.Module):
    """A top-level linen module that returns the first key it draws from ``"params"``."""

    @nn.compact
    def __call__(self):
        return self.make_rng("params")


class _OneKey:
    """An ``nnx.Rngs`` stand-in whose ``params`` stream returns one fixed key."""

    def __init__(self, key):
        self.key = key

    def params(self):
        return self.key


def _layer_key(seed=SEED):
    """The key a top-level linen module made with ``init(PRNGKey(seed), ...)`` draws first."""
    return _Probe().init_with_output(jax.random.PRNGKey(seed))[0]


def _x(seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, T, D))


@pytest.mark.parametrize("kind", ["elman", "linear", "lstm", "gru"])
def test_linen_rnn_makes_all_params_with_one_cell_init(kind):
    """The regression: one cell.init per parameter (each with its own key) made a mix."""
    cell = jrnn.make_cell(kind, H)
    params = jf.RNN(cell).init(jax.random.PRNGKey(SEED), _x())["params"]
    chex.assert_trees_all_equal(dict(params), cell.init(_layer_key(), D))


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_linen_rnn_and_nnx_rnn_are_equal_from_one_key(kind):
    cell = jrnn.make_cell(kind, H)
    x = _x()
    linen = jf.RNN(cell, return_carry=True)
    variables = linen.init(jax.random.PRNGKey(SEED), x)
    twin = jf.NNXRNN(cell, D, rngs=_OneKey(_layer_key()), return_carry=True)
    chex.assert_trees_all_equal(dict(variables["params"]), twin.params)
    chex.assert_trees_all_equal(linen.apply(variables, x, seq_lengths=LENGTHS),
                                twin(x, seq_lengths=LENGTHS))


def test_linen_stack_and_nnx_stack_are_equal_from_one_key():
    cells = [jrnn.lstm(H), jrnn.gru(H + 1), jrnn.elman(2)]
    x = _x(1)
    linen = jf.Stack(cells, return_carry=True)
    variables = linen.init(jax.random.PRNGKey(SEED), x)
    twin = jf.NNXStack(cells, D, rngs=_OneKey(_layer_key()), return_carry=True)
    chex.assert_trees_all_equal(jf.layers_from_flax(variables["params"]), twin.params)
    # layer l's params are cells[l].init(split(key, L)[l], its input size)
    keys = jax.random.split(_layer_key(), len(cells))
    chex.assert_trees_all_equal(twin.params[1], cells[1].init(keys[1], H))
    chex.assert_trees_all_equal(linen.apply(variables, x, seq_lengths=LENGTHS),
                                twin(x, seq_lengths=LENGTHS))


def test_linen_and_nnx_bidirectional_stacks_are_equal_from_one_key():
    cells = [(jrnn.gru(H), jrnn.gru(H - 1)), (jrnn.lstm(3), jrnn.lstm(3))]
    x = _x(2)
    linen = jf.BidirectionalStack(cells, return_carry=True)
    variables = linen.init(jax.random.PRNGKey(SEED), x)
    twin = jf.NNXBidirectionalStack(cells, D, rngs=_OneKey(_layer_key()), return_carry=True)
    pairs = [(p["forward"], p["backward"]) for p in jf.layers_from_flax(variables["params"])]
    chex.assert_trees_all_equal(pairs, twin.params)
    chex.assert_trees_all_equal(linen.apply(variables, x, seq_lengths=LENGTHS),
                                twin(x, seq_lengths=LENGTHS))


def test_nnx_modules_draw_one_key_from_a_real_rngs():
    cells = [jrnn.gru(H), jrnn.gru(H)]
    key = nnx.Rngs(params=SEED).params()  # what a fresh Rngs(params=SEED) gives first
    layer = jf.NNXRNN(cells[0], D, rngs=nnx.Rngs(params=SEED))
    chex.assert_trees_all_equal(layer.params, cells[0].init(key, D))
    stack = jf.NNXStack(cells, D, rngs=nnx.Rngs(params=SEED))
    twin = jf.NNXStack(cells, D, rngs=_OneKey(key))
    chex.assert_trees_all_equal(stack.params, twin.params)
    assert not jnp.array_equal(stack.params[0]["W"], stack.params[1]["W"][:D])
