"""The Flax per-layer bidirectional stacks (linen and NNX) equal jrnn.bidirectional exactly."""

import chex
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

import jrnn
from jrnn.interop import flax as jf

B, T, D = 3, 5, 4
CELLS = [(jrnn.lstm(5, proj_size=2), jrnn.lstm(5, proj_size=2)), (jrnn.gru(3), jrnn.gru(3))]
LENGTHS = jnp.array([5, 2, 4])


def test_linen_bidirectional_stack_equals_jrnn_bidirectional():
    x = jax.random.normal(jax.random.PRNGKey(0), (B, T, D))
    stack = jf.BidirectionalStack(CELLS, return_carry=True)
    variables = stack.init(jax.random.PRNGKey(1), x)
    v = variables["params"]
    assert v["layer_1"]["forward"]["W"].shape == (4, 9)  # layer 1 reads both directions: 2P
    params = [(v[f"layer_{l}"]["forward"], v[f"layer_{l}"]["backward"]) for l in range(2)]
    got = jax.jit(lambda v: stack.apply(v, x, seq_lengths=LENGTHS))(variables)
    want = jrnn.bidirectional(CELLS, params, x, lengths=LENGTHS, time_major=False, method="scan")
    chex.assert_trees_all_equal(got, want)
    # dropout between layers from the "dropout" stream, only when not deterministic
    drop = jf.BidirectionalStack(CELLS, dropout_rate=0.5)
    noisy = jax.jit(lambda v: drop.apply(v, x, deterministic=False,
                                         rngs={"dropout": jax.random.PRNGKey(2)}))(variables)
    want_plain = jax.jit(lambda v: drop.apply(v, x, deterministic=True))(variables)
    assert not jnp.allclose(noisy, want_plain)


def test_nnx_bidirectional_stack_equals_jrnn_bidirectional():
    x = jax.random.normal(jax.random.PRNGKey(3), (B, T, D))
    stack = jf.NNXBidirectionalStack(CELLS, D, rngs=nnx.Rngs(0), return_carry=True)
    assert len(stack.layers) == 4 and len(stack.params) == 2
    carry0 = jax.tree_util.tree_map(lambda a: a + 0.5, stack.initialize_carry(B))
    got = stack(x, initial_carry=carry0, seq_lengths=LENGTHS)
    want = jrnn.bidirectional(CELLS, stack.params, x, carry0, lengths=LENGTHS, time_major=False,
                              method="scan")
    chex.assert_trees_all_equal(got, want)
    with pytest.raises(TypeError, match="pairs"):
        jf.NNXBidirectionalStack([jrnn.gru(3)], D, rngs=nnx.Rngs(0))
