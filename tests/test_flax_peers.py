"""jrnn's Flax modules against Flax's OWN cells, with weights converted between the layouts.

``tests/test_flax.py`` checks ``jrnn.interop.flax.RNN`` against ``jrnn.unroll``, which
it calls, so a difference from Flax's math could not show there.  Here
``jrnn.interop.flax.RNN(jrnn.lstm(H))`` runs against ``nn.RNN(nn.OptimizedLSTMCell(H))``
and ``jrnn.interop.flax.RNN(jrnn.gru(H))`` against ``nn.RNN(nn.GRUCell(H))`` (and the
NNX modules against ``nnx.RNN`` of NNX's cells), all in float32, on weights
drawn at random in Flax's parameter tree (biases included: Flax initializes
them to zero, which would hide a wrong bias mapping) and converted by the
helpers below into jrnn's layout.

What the conversion has to know about Flax 0.12 (``flax/linen/recurrent.py``,
``flax/nnx/nn/recurrent.py``):

* ``OptimizedLSTMCell`` (linen): one Dense per gate, ``ii, if, ig, io`` on the
  input *without* bias and ``hi, hf, hg, ho`` on h *with* bias; gates
  ``i, f = sigmoid, g = tanh, o = sigmoid`` as in jrnn's (i, f, g, o).  Its
  carry is ``(c, h)``; jrnn's is ``LSTMCarry(h, c)``.
* ``GRUCell`` (linen): ``ir, iz, in`` with bias, ``hr, hz`` without, ``hn``
  with; ``n = tanh(x W_in + b_in + r * (h W_hn + b_hn))`` and
  ``h' = (1 - z) * n + z * h``: jrnn's GRU with ``b_h = [0, 0, b_hn]``.
* NNX ``OptimizedLSTMCell``: ``dense_i`` (``[D, 4H]``, no bias) and ``dense_h``
  (``[H, 4H]`` with bias), split in (i, f, g, o) order.
* NNX ``GRUCell``: ``dense_i`` (``[D, 3H]`` with bias) and ``dense_h``
  (``[H, 3H]``, *no* bias at all, unlike linen's ``hn``): ``b_h = 0``.

Flax's outputs at padded steps (``t >= seq_lengths[b]``) are whatever its
cell computed there, jrnn's are zeros (a documented difference), so outputs
are compared at valid steps and jrnn's padding is checked to be zero.  Lengths
are >= 1: with a zero length Flax's carry would be read from index -1.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import jrnn
from jrnn.interop import flax as jf

B, T, D, H = 3, 7, 5, 6
LENGTHS = jnp.array([7, 4, 1])
EPS32 = float(np.finfo(np.float32).eps)
# Both sides compute in float32 in a different order (Flax adds the bias to
# the h product, splits per gate, ...).  rtol plus a few float32 ulps of each
# array's largest entry, for entries that cancel to near zero (see
# tests/test_float32.py for that reasoning).  Measured over 5 data seeds: at
# most 1.0 ulp beyond rtol for outputs, carries and d/dx, 2.0 for the
# parameter gradients.
RTOL, ULPS = 1e-5, 8


def assert_f32_close(got, want, *, rtol=RTOL, ulps=ULPS, name=""):
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    assert got_tree.num_leaves == want_tree.num_leaves, (name, got_tree, want_tree)
    for (path, g), w in zip(got_leaves, want_leaves):
        where = f"{name}{jax.tree_util.keystr(path)}"
        assert g.dtype == jnp.float32 and w.dtype == jnp.float32, (where, g.dtype, w.dtype)
        w = np.asarray(w, np.float64)
        atol = ulps * EPS32 * float(np.abs(w).max(initial=0.0))
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=rtol, atol=atol,
                                   err_msg=where)


# Test data from NumPy: jax.random would compile a kernel for every new shape.
def _normal(seed, shape, scale=1.0):
    rng = np.random.default_rng(seed)
    return jnp.asarray(scale * rng.standard_normal(shape), jnp.float32)


def _randomize(tree, seed, scale=0.5):
    """Every leaf (an array or a shape) drawn ~ N(0, scale^2): non-zero biases, random W_h."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef.unflatten([_normal((seed, i), x.shape, scale) for i, x in enumerate(leaves)])


# -- conversion: Flax's parameters -> jrnn's {W, W_h, b[, b_h]} ------------------


def lstm_from_linen(p):
    """``nn.OptimizedLSTMCell`` params (the ``cell`` entry of ``nn.RNN``) -> jrnn.lstm."""
    cat = lambda names: jnp.concatenate(names, axis=-1)
    return {
        "W": cat([p[f"i{g}"]["kernel"] for g in "ifgo"]),
        "W_h": cat([p[f"h{g}"]["kernel"] for g in "ifgo"]),
        "b": cat([p[f"h{g}"]["bias"] for g in "ifgo"]),  # Flax's input kernels have none
    }


def gru_from_linen(p):
    """``nn.GRUCell`` params -> jrnn.gru (``hr``/``hz`` have no bias, ``hn`` has)."""
    cat = lambda names: jnp.concatenate(names, axis=-1)
    zeros = jnp.zeros((H,), p["hn"]["bias"].dtype)
    return {
        "W": cat([p[f"i{g}"]["kernel"] for g in "rzn"]),
        "b": cat([p[f"i{g}"]["bias"] for g in "rzn"]),
        "W_h": cat([p[f"h{g}"]["kernel"] for g in "rzn"]),
        "b_h": cat([zeros, zeros, p["hn"]["bias"]]),
    }


def lstm_from_nnx(cell):
    return {"W": cell.dense_i.kernel[...], "W_h": cell.dense_h.kernel[...],
            "b": cell.dense_h.bias[...]}


def gru_from_nnx(cell):
    W_h = cell.dense_h.kernel[...]
    return {"W": cell.dense_i.kernel[...], "b": cell.dense_i.bias[...], "W_h": W_h,
            "b_h": jnp.zeros(W_h.shape[-1:], W_h.dtype)}  # NNX's dense_h has no bias


def carry_to_jrnn(kind, carry):
    return jrnn.LSTMCarry(h=carry[1], c=carry[0]) if kind == "lstm" else carry


def carry_to_flax(kind, carry):
    return (carry.c, carry.h) if kind == "lstm" else carry


PEERS = {
    "lstm": (jrnn.lstm, nn.OptimizedLSTMCell, lstm_from_linen, nnx.OptimizedLSTMCell, lstm_from_nnx),
    "gru": (jrnn.gru, nn.GRUCell, gru_from_linen, nnx.GRUCell, gru_from_nnx),
}


def _problem(kind, seed=0):
    """Batch-major inputs, a random start carry in Flax's order, loss weights, valid mask."""
    x = _normal(seed, (B, T, D))
    c0, h0 = _normal(seed + 1, (B, H), 0.5), _normal(seed + 2, (B, H), 0.5)
    carry = (c0, h0) if kind == "lstm" else h0
    w = _normal(seed + 3, (B, T, H))
    v = _normal(seed + 4, (B, H))
    return x, carry, w, v


def _summed_loss(carry, ys, w, v, mask):
    """Weighted sum of the valid outputs and of every final-carry leaf (Flax order)."""
    return jnp.sum(jnp.where(mask, ys * w, 0.0)) + sum(
        jnp.sum(c * v) for c in jax.tree_util.tree_leaves(carry))


def assert_loss_close(got, want, carry, ys, w, v, mask):
    """Both float32 scalars; the loss's terms have both signs, so the atol is
    ULPS ulps of their magnitude (the same loss of |terms|), as for arrays."""
    assert got.dtype == want.dtype == jnp.float32
    absolute = jax.tree_util.tree_map(jnp.abs, (carry, ys, w, v))
    scale = float(_summed_loss(*absolute, mask))
    np.testing.assert_allclose(float(got), float(want), rtol=RTOL, atol=ULPS * EPS32 * scale)


def _mask(lengths):
    if lengths is None:
        return jnp.ones((B, T, 1), bool)
    return (jnp.arange(T)[None, :] < lengths[:, None])[..., None]


# -- linen -------------------------------------------------------------------------


def _linen_params(module, x, seed):
    """Random params in ``module``'s own tree (shapes from an abstract init: nothing compiled)."""
    return _randomize(jax.eval_shape(module.init, jax.random.PRNGKey(0), x)["params"], seed)


# Each cell with and without seq_lengths; reverse (keep_order=True) once, with
# lengths, where Flax flips each sequence within its length.
@pytest.mark.parametrize("kind,lengths,reverse", [
    ("lstm", None, False), ("lstm", LENGTHS, True), ("gru", None, False), ("gru", LENGTHS, False),
], ids=["lstm-full", "lstm-lengths-reverse", "gru-full", "gru-lengths"])
def test_linen_rnn_matches_flax_cell(kind, lengths, reverse):
    make_cell, flax_cell, convert, _, _ = PEERS[kind]
    x, flax_carry, w, v = _problem(kind)
    mask = _mask(lengths)
    kw = dict(return_carry=True, reverse=reverse, keep_order=True)
    theirs = nn.RNN(flax_cell(H), **kw)
    ours = jf.RNN(make_cell(H), **kw)
    flax_params = _linen_params(theirs, x, seed=10)
    # The converted tree is exactly what jf.RNN creates for itself.
    shapes = lambda t: jax.tree_util.tree_map(lambda a: (a.shape, a.dtype), t)
    assert shapes(convert(flax_params["cell"])) == shapes(
        jax.eval_shape(ours.init, jax.random.PRNGKey(0), x)["params"])

    def flax_loss(params, x):
        carry, ys = theirs.apply({"params": params}, x, initial_carry=flax_carry,
                                 seq_lengths=lengths)
        return _summed_loss(carry, ys, w, v, mask), (carry, ys)

    def jrnn_loss(params, x):  # params in Flax's layout, converted on the way in
        carry, ys = ours.apply({"params": convert(params["cell"])}, x,
                               initial_carry=carry_to_jrnn(kind, flax_carry),
                               seq_lengths=lengths)
        carry = carry_to_flax(kind, carry)
        return _summed_loss(carry, ys, w, v, mask), (carry, ys)

    grad = lambda f: jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))
    (want_loss, (want_carry, want_ys)), want_grads = grad(flax_loss)(flax_params, x)
    (got_loss, (got_carry, got_ys)), got_grads = grad(jrnn_loss)(flax_params, x)

    assert got_ys.shape == want_ys.shape == (B, T, H)
    assert_f32_close(jnp.where(mask, got_ys, 0), jnp.where(mask, want_ys, 0), name="ys")
    assert not bool(jnp.any(jnp.where(mask, 0, got_ys)))  # jrnn's padding is zeros
    assert_f32_close(got_carry, want_carry, name="carry")
    assert_loss_close(got_loss, want_loss, want_carry, want_ys, w, v, mask)
    # d/dx and d/d(Flax's params): the latter through the conversion, so each
    # gate's block of W, W_h, b (and b_h) must carry its own gradient.
    assert_f32_close(got_grads, want_grads, name="grads")


def test_negative_control_a_dropped_flax_bias_is_caught():
    """The comparison can fail: converting the GRU without Flax's hn bias is reported."""
    x, _, _, _ = _problem("gru")
    theirs, ours = nn.RNN(nn.GRUCell(H)), jf.RNN(jrnn.gru(H))
    params = _linen_params(theirs, x, seed=10)["cell"]
    want = theirs.apply({"params": {"cell": params}}, x)
    apply = jax.jit(lambda p: ours.apply({"params": p}, x))
    assert_f32_close(apply(gru_from_linen(params)), want)
    wrong = dict(gru_from_linen(params), b_h=jnp.zeros((3 * H,), jnp.float32))
    with pytest.raises(AssertionError):
        assert_f32_close(apply(wrong), want)


# -- NNX ---------------------------------------------------------------------------


# NNXRNN runs the linen layer's code path (jrnn.interop.flax._run), so two cases cover
# its own parts: the parameter attributes and nnx.RNN's call conventions.
@pytest.mark.parametrize("kind,lengths", [("lstm", None), ("gru", LENGTHS)],
                         ids=["lstm-full", "gru-lengths"])
def test_nnx_rnn_matches_flax_cell(kind, lengths):
    make_cell, _, _, nnx_cell, convert = PEERS[kind]
    x, flax_carry, w, v = _problem(kind, seed=20)
    mask = _mask(lengths)
    # Both modules built abstractly (their own initializers would compile
    # kernels for nothing), then given the random weights.
    cell = nnx.eval_shape(lambda: nnx_cell(D, H, rngs=nnx.Rngs(0)))
    nnx.update(cell, _randomize(nnx.state(cell, nnx.Param), seed=30))
    theirs = nnx.RNN(cell, return_carry=True)
    ours = nnx.eval_shape(lambda: jf.NNXRNN(make_cell(H), D, rngs=nnx.Rngs(1), return_carry=True))
    converted = convert(cell)
    shapes = lambda t: {k: (a.shape, a.dtype) for k, a in t.items()}
    assert shapes(converted) == shapes({k: getattr(ours, k).get_value() for k in ours.param_names})
    nnx.update(ours, converted)
    assert all(bool(jnp.array_equal(ours.params[k], v)) for k, v in converted.items())

    def loss_of(carry_in, carry_out):
        # NNX modules cannot be closed over by jax transforms: nnx's own
        # transform takes the module as an argument (differentiating x only).
        def loss(module, x):
            carry, ys = module(x, initial_carry=carry_in, seq_lengths=lengths)
            carry = carry_out(carry)
            return _summed_loss(carry, ys, w, v, mask), (carry, ys)

        return nnx.value_and_grad(loss, argnums=1, has_aux=True)

    run = loss_of(flax_carry, lambda c: c)
    (want_loss, (want_carry, want_ys)), want_dx = run(theirs, x)
    run = loss_of(carry_to_jrnn(kind, flax_carry), lambda c: carry_to_flax(kind, c))
    (got_loss, (got_carry, got_ys)), got_dx = run(ours, x)

    assert_f32_close(jnp.where(mask, got_ys, 0), jnp.where(mask, want_ys, 0), name="ys")
    assert not bool(jnp.any(jnp.where(mask, 0, got_ys)))
    assert_f32_close(got_carry, want_carry, name="carry")
    assert_loss_close(got_loss, want_loss, want_carry, want_ys, w, v, mask)
    assert_f32_close(got_dx, want_dx, name="dx")
