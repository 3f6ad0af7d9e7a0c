"""jrnn.interop.flax: linen and NNX modules == jrnn.unroll; jit, grad, remat, serialization, training."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, serialization

import jrnn
from jrnn.core.masking import reverse_within_lengths
from jrnn.interop import flax as jf

B, T, D, H = 3, 6, 4, 5
LENGTHS = jnp.array([6, 2, 4])


def _x(seed=0, dtype=jnp.float32):
    return jax.random.normal(jax.random.PRNGKey(seed), (B, T, D), dtype)


def _unroll(cell, params, x, **kw):
    """jrnn.unroll on batch-major x: what every module must reproduce."""
    return jrnn.unroll(cell, params, x, time_major=False, **kw)


def _random_carry(cell, seed=7):
    zeros = cell.initial_carry((B,), jnp.float32)
    leaves, tree = jax.tree_util.tree_flatten(zeros)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        tree, [jax.random.normal(k, l.shape, l.dtype) for k, l in zip(keys, leaves)]
    )


# -- linen ------------------------------------------------------------------


@pytest.mark.parametrize("kind,lengths,reverse", [
    ("linear", None, False), ("elman", LENGTHS, True), ("lstm", LENGTHS, True),
    ("gru", None, True), ("gru", LENGTHS, False),
])
def test_linen_rnn_equals_unroll(kind, lengths, reverse):
    cell = jrnn.make_cell(kind, H)
    layer = jf.RNN(cell, return_carry=True, keep_order=True)
    x = _x()
    variables = layer.init(jax.random.PRNGKey(1), x)
    assert set(variables["params"]) == set(cell.init(jax.random.PRNGKey(0), D))
    carry0 = _random_carry(cell)
    carry, ys = layer.apply(variables, x, initial_carry=carry0, seq_lengths=lengths,
                            reverse=reverse)
    want = _unroll(cell, variables["params"], x, carry=carry0, lengths=lengths, reverse=reverse)
    chex.assert_trees_all_equal((carry, ys), want)


def test_linen_rnn_time_major_and_keep_order():
    cell = jrnn.lstm(H)
    x = _x()
    variables = jf.RNN(cell).init(jax.random.PRNGKey(0), x)
    _, want = _unroll(cell, variables["params"], x, lengths=LENGTHS, reverse=True)
    # Flax's default keep_order=False: outputs in processing order.
    got = jf.RNN(cell, reverse=True).apply(variables, x, seq_lengths=LENGTHS)
    flipped = reverse_within_lengths(jnp.swapaxes(got, 0, 1), LENGTHS)
    chex.assert_trees_all_equal(jnp.swapaxes(flipped, 0, 1), want)
    got_tm = jf.RNN(cell, time_major=True).apply(variables, jnp.swapaxes(x, 0, 1))
    chex.assert_trees_all_equal(got_tm, jrnn.unroll(cell, variables["params"], jnp.swapaxes(x, 0, 1))[1])


@pytest.mark.parametrize("reverse,keep_order", [(False, False), (True, False), (True, True)])
def test_linen_rnn_follows_flax_nn_rnn_conventions(reverse, keep_order):
    """Same weights in Flax's own nn.RNN(SimpleCell) and in jrnn.flax.RNN(elman)."""
    x = _x(3)
    flax_rnn = nn.RNN(nn.SimpleCell(H), return_carry=True, reverse=reverse, keep_order=keep_order)
    fv = flax_rnn.init(jax.random.PRNGKey(0), x)
    c = fv["params"]["cell"]
    params = {"W": c["i"]["kernel"], "b": c["i"]["bias"], "W_h": c["h"]["kernel"]}
    lengths = LENGTHS
    want_carry, want = flax_rnn.apply(fv, x, seq_lengths=lengths)
    ours = jf.RNN(jrnn.elman(H), return_carry=True, reverse=reverse, keep_order=keep_order)
    carry, got = ours.apply({"params": params}, x, seq_lengths=lengths)
    # With keep_order=False a reversed layer's valid steps still come first: one mask fits all.
    valid = np.arange(T)[None] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(want)[valid], atol=1e-6)
    np.testing.assert_allclose(carry, want_carry, atol=1e-6)
    assert not np.asarray(got)[~valid].any()  # jrnn zeros the padded steps


def test_linen_stack_equals_unroll(lengths=LENGTHS):
    cells = [jrnn.lstm(H), jrnn.gru(H + 1)]
    stack = jf.Stack(cells, return_carry=True)
    x = _x(1)
    variables = stack.init(jax.random.PRNGKey(0), x)
    params = jf.layers_from_flax(variables["params"])
    assert [p["W"].shape[0] for p in params] == [D, H]
    carry0 = [_random_carry(c, seed=i) for i, c in enumerate(cells)]
    got = stack.apply(variables, x, initial_carry=carry0, seq_lengths=lengths)
    chex.assert_trees_all_equal(got, _unroll(cells, params, x, carry=carry0, lengths=lengths))
    # and jrnn params load into the module
    again = stack.apply({"params": jf.layers_to_flax(params)}, x, initial_carry=carry0,
                        seq_lengths=lengths)
    chex.assert_trees_all_equal(again, got)


def test_linen_stack_dropout_needs_rng_and_is_off_when_deterministic():
    cells = [jrnn.gru(H), jrnn.gru(H)]
    stack = jf.Stack(cells, dropout_rate=0.5)
    x = _x()
    variables = stack.init(jax.random.PRNGKey(0), x, deterministic=True)
    plain = _unroll(cells, jf.layers_from_flax(variables["params"]), x)[1]
    chex.assert_trees_all_equal(stack.apply(variables, x, deterministic=True), plain)
    dropped = stack.apply(variables, x, deterministic=False,
                          rngs={"dropout": jax.random.PRNGKey(1)})
    assert not np.allclose(dropped, plain)
    with pytest.raises(Exception, match="dropout"):
        stack.apply(variables, x, deterministic=False)


def test_linen_bidirectional_equals_two_unrolls(lengths=LENGTHS):
    fwd, bwd = jrnn.lstm(H), jrnn.gru(H - 1)
    bi = jf.Bidirectional(jf.RNN(fwd), jf.RNN(bwd), return_carry=True)
    x = _x(2)
    variables = bi.init(jax.random.PRNGKey(0), x)
    (cf, cb), ys = bi.apply(variables, x, seq_lengths=lengths)
    want_cf, want_f = _unroll(fwd, variables["params"]["forward_rnn"], x, lengths=lengths)
    want_cb, want_b = _unroll(bwd, variables["params"]["backward_rnn"], x, lengths=lengths,
                              reverse=True)
    assert ys.shape == (B, T, 2 * H - 1)
    chex.assert_trees_all_equal((cf, cb, ys), (want_cf, want_cb, jnp.concatenate([want_f, want_b], -1)))


def test_linen_bidirectional_of_stacks():
    cells = [jrnn.gru(H), jrnn.gru(H)]
    bi = jf.Bidirectional(jf.Stack(cells), jf.Stack(cells), merge_fn=lambda a, b: a + b)
    x = _x()
    variables = bi.init(jax.random.PRNGKey(0), x)
    ys = bi.apply(variables, x, seq_lengths=LENGTHS)
    p = variables["params"]
    f = _unroll(cells, jf.layers_from_flax(p["forward_rnn"]), x, lengths=LENGTHS)[1]
    b = _unroll(cells, jf.layers_from_flax(p["backward_rnn"]), x, lengths=LENGTHS, reverse=True)[1]
    chex.assert_trees_all_equal(ys, f + b)
    # nn.Bidirectional's other call arguments are accepted; `deterministic` reaches the stacks
    again = bi.apply(variables, x, seq_lengths=LENGTHS, reverse=True, keep_order=False,
                     init_key=jax.random.PRNGKey(3), deterministic=True)
    chex.assert_trees_all_equal(again, ys)


def test_linen_jit_grad_and_remat():
    cell = jrnn.lstm(H)
    x = _x(dtype=jnp.float64)
    layer = jf.RNN(cell, param_dtype=jnp.float64)
    variables = layer.init(jax.random.PRNGKey(0), x)
    assert variables["params"]["W"].dtype == jnp.float64

    def loss_module(params, module, lengths=LENGTHS):
        return jnp.sum(module.apply({"params": params}, x, seq_lengths=lengths) ** 2)

    def loss_unroll(params):
        return jnp.sum(_unroll(cell, params, x, lengths=LENGTHS)[1] ** 2)

    want = jax.grad(loss_unroll)(variables["params"])
    got = jax.jit(jax.grad(loss_module), static_argnums=1)(variables["params"], layer, LENGTHS)
    chex.assert_trees_all_close(got, want, atol=1e-12)
    # Flax's own lifted transforms: nn.jit and nn.remat (gradient checkpointing)
    remat_layer = nn.remat(jf.RNN)(cell, param_dtype=jnp.float64)
    chex.assert_trees_all_close(jax.grad(loss_module)(variables["params"], remat_layer), want,
                                atol=1e-12)
    jit_layer = nn.jit(jf.RNN)(cell, param_dtype=jnp.float64)
    chex.assert_trees_all_close(jit_layer.apply(variables, x), layer.apply(variables, x), atol=1e-12)


def test_linen_serialization_roundtrip():
    cells = [jrnn.lstm(H), jrnn.lstm(H)]
    stack = jf.Stack(cells)
    x = _x()
    variables = stack.init(jax.random.PRNGKey(0), x)
    blob = serialization.to_bytes(variables)
    template = stack.init(jax.random.PRNGKey(99), x)
    restored = serialization.from_bytes(template, blob)
    chex.assert_trees_all_equal(restored, variables)
    chex.assert_trees_all_equal(stack.apply(restored, x), stack.apply(variables, x))


def test_linen_model_with_dense_trains():
    """Dense -> jrnn LSTM layer -> Dense learns to output the running sign of sum(x)."""

    class Model(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.tanh(nn.Dense(8)(x))
            h = jf.RNN(jrnn.lstm(16, forget_bias=1.0))(h)
            return nn.Dense(1)(h)[..., 0]

    x = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 2), jnp.float32)
    y = (jnp.cumsum(x[..., 0], axis=1) > 0).astype(jnp.float32)
    model = Model()
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    opt = optax.adam(5e-2)
    opt_state = opt.init(params)

    def loss_fn(params):
        logits = model.apply({"params": params}, x)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y))

    @jax.jit
    def step(params, opt_state):
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    first = float(loss_fn(params))
    for _ in range(40):
        params, opt_state, loss = step(params, opt_state)
    assert float(loss) < 0.5 * first, (first, float(loss))
    assert set(params["RNN_0"]) == {"W", "W_h", "b"}


def test_linen_bad_inputs():
    layer = jf.RNN(jrnn.gru(H))
    with pytest.raises(ValueError, match="rank 3"):
        layer.init(jax.random.PRNGKey(0), jnp.ones((T, D)))
    with pytest.raises(TypeError, match="jrnn Cell"):
        jf.RNN("lstm").init(jax.random.PRNGKey(0), _x())
    with pytest.raises(TypeError, match="non-empty"):
        jf.Stack([]).init(jax.random.PRNGKey(0), _x())


# -- NNX --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["elman", "lstm"])
def test_nnx_rnn_equals_unroll(kind, lengths=LENGTHS):
    cell = jrnn.make_cell(kind, H)
    layer = jf.NNXRNN(cell, D, rngs=nnx.Rngs(0), return_carry=True)
    x = _x()
    state = nnx.state(layer, nnx.Param)
    assert set(nnx.to_pure_dict(state)) == set(cell.init(jax.random.PRNGKey(0), D))
    carry0 = _random_carry(cell)
    for reverse in (False, True):
        got = layer(x, initial_carry=carry0, seq_lengths=lengths, reverse=reverse, keep_order=True)
        want = _unroll(cell, layer.params, x, carry=carry0, lengths=lengths, reverse=reverse)
        chex.assert_trees_all_equal(got, want)


def test_nnx_rnn_and_linen_rnn_agree_on_the_same_weights():
    cell = jrnn.gru(H)
    nnx_layer = jf.NNXRNN(cell, D, rngs=nnx.Rngs(0), reverse=True)
    x = _x()
    linen_out = jf.RNN(cell, reverse=True).apply({"params": nnx_layer.params}, x, seq_lengths=LENGTHS)
    chex.assert_trees_all_equal(nnx_layer(x, seq_lengths=LENGTHS), linen_out)


def test_nnx_stack_and_bidirectional_equal_unroll():
    cells = [jrnn.lstm(H), jrnn.lstm(H)]
    rngs = nnx.Rngs(0)
    stack = jf.NNXStack(cells, D, rngs=rngs, return_carry=True)
    x = _x()
    chex.assert_trees_all_equal(stack(x, seq_lengths=LENGTHS),
                                _unroll(cells, stack.params, x, lengths=LENGTHS))
    bi = jf.NNXBidirectional(jf.NNXStack(cells, D, rngs=rngs), jf.NNXRNN(jrnn.gru(2), D, rngs=rngs))
    ys = bi(x, seq_lengths=LENGTHS)
    f = _unroll(cells, bi.forward_rnn.params, x, lengths=LENGTHS)[1]
    b = _unroll(jrnn.gru(2), bi.backward_rnn.params, x, lengths=LENGTHS, reverse=True)[1]
    chex.assert_trees_all_equal(ys, jnp.concatenate([f, b], -1))


def test_nnx_stack_dropout_follows_train_and_eval():
    cells = [jrnn.gru(H), jrnn.gru(H)]
    stack = jf.NNXStack(cells, D, rngs=nnx.Rngs(0), dropout_rate=0.5)
    x = _x()
    plain = _unroll(cells, stack.params, x)[1]
    chex.assert_trees_all_equal(stack(x), plain)  # no rngs: no dropout
    assert not np.allclose(stack(x, rngs=nnx.Rngs(dropout=1)), plain)
    stack.eval()
    chex.assert_trees_all_equal(stack(x, rngs=nnx.Rngs(dropout=1)), plain)
    with pytest.raises(ValueError, match="dropout_rate"):
        jf.NNXStack(cells, D, rngs=nnx.Rngs(0), dropout_rate=1.0)


def test_nnx_jit_grad_remat_and_serialization():
    cell = jrnn.lstm(H)
    x = _x(dtype=jnp.float64)
    layer = jf.NNXRNN(cell, D, rngs=nnx.Rngs(0), param_dtype=jnp.float64)

    def loss(module, lengths):
        return jnp.sum(module(x, seq_lengths=lengths) ** 2)

    want = jax.grad(lambda p: jnp.sum(_unroll(cell, p, x, lengths=LENGTHS)[1] ** 2))(layer.params)
    grads = nnx.jit(nnx.grad(loss))(layer, LENGTHS)
    chex.assert_trees_all_close(nnx.to_pure_dict(grads), want, atol=1e-12)
    remat_grads = nnx.grad(nnx.remat(loss))(layer, LENGTHS)
    chex.assert_trees_all_close(nnx.to_pure_dict(remat_grads), want, atol=1e-12)
    # checkpoint: split -> state dict -> bytes -> restore into a fresh module -> merge
    graphdef, state = nnx.split(layer)
    blob = serialization.to_bytes(nnx.to_pure_dict(state))
    fresh = jf.NNXRNN(cell, D, rngs=nnx.Rngs(42), param_dtype=jnp.float64)
    g2, s2 = nnx.split(fresh)
    pure = serialization.from_bytes(nnx.to_pure_dict(s2), blob)
    nnx.replace_by_pure_dict(s2, pure)
    restored = nnx.merge(g2, s2)
    chex.assert_trees_all_equal(restored(x), layer(x))


def test_nnx_model_with_linear_trains():
    class Model(nnx.Module):
        def __init__(self, rngs):
            self.inp = nnx.Linear(2, 8, rngs=rngs)
            self.rnn = jf.NNXRNN(jrnn.gru(16), 8, rngs=rngs)
            self.out = nnx.Linear(16, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(self.rnn(jnp.tanh(self.inp(x))))[..., 0]

    x = jax.random.normal(jax.random.PRNGKey(0), (16, 8, 2), jnp.float32)
    y = (jnp.cumsum(x[..., 0], axis=1) > 0).astype(jnp.float32)
    model = Model(nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(5e-2), wrt=nnx.Param)

    def loss_fn(model):
        return jnp.mean(optax.sigmoid_binary_cross_entropy(model(x), y))

    @nnx.jit
    def step(model, optimizer):
        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    first = float(loss_fn(model))
    for _ in range(40):
        loss = step(model, optimizer)
    assert float(loss) < 0.5 * first, (first, float(loss))


def test_initialize_carry_gives_the_cells_zeros():
    lstm, gru = jrnn.lstm(H), jrnn.gru(H)
    chex.assert_trees_all_equal(jf.RNN(lstm).initialize_carry(B), lstm.initial_carry((B,)))
    chex.assert_trees_all_equal(jf.Stack([lstm, gru]).initialize_carry(B),
                                [lstm.initial_carry((B,)), gru.initial_carry((B,))])
    layer = jf.NNXRNN(gru, D, rngs=nnx.Rngs(0))
    chex.assert_trees_all_equal(layer.initialize_carry(B), gru.initial_carry((B,)))


# -- method and custom_vjp reach jrnn.unroll -----------------------------------


def _tangent(tree, seed=11):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [jax.random.normal(k, leaf.shape, leaf.dtype) for k, leaf in zip(keys, leaves)])


@pytest.mark.parametrize("per_call", [False, True])
def test_linen_rnn_jvp_without_custom_vjp(per_call):
    """jax.jvp through the module == through jrnn.unroll(custom_vjp=False) == finite differences."""
    cell = jrnn.lstm(H)  # has a hand-written backward pass
    x = _x(dtype=jnp.float64)
    layer = jf.RNN(cell, param_dtype=jnp.float64, custom_vjp=per_call)
    params = layer.init(jax.random.PRNGKey(0), x)["params"]
    call = {"custom_vjp": False} if per_call else {}

    def f(p, x):
        return layer.apply({"params": p}, x, **call)

    primals, tangents = (params, x), (_tangent(params), _tangent(x, seed=12))
    got = jax.jvp(f, primals, tangents)
    want = jax.jvp(lambda p, x: _unroll(cell, p, x, custom_vjp=False)[1], primals, tangents)
    chex.assert_trees_all_close(got, want, atol=1e-12)
    eps = 1e-6
    shifted = [jax.tree_util.tree_map(lambda a, t, s=s: a + s * eps * t, primals, tangents)
               for s in (1, -1)]
    fd = (f(*shifted[0]) - f(*shifted[1])) / (2 * eps)
    np.testing.assert_allclose(got[1], fd, atol=1e-7)
    # the default (the cell's custom_vjp backward pass) is what forward mode cannot go through
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(lambda x: layer.apply({"params": params}, x, custom_vjp=True), (x,), (x,))


_CELLS, _PAIRS = [jrnn.lstm(H), jrnn.gru(H)], [(jrnn.gru(H), jrnn.lstm(H))] * 2


def _linen_stack(x, custom_vjp):
    """(the module as a function of x, jrnn's free function with custom_vjp=False)."""
    stack = jf.Stack(_CELLS, custom_vjp=custom_vjp)
    p = stack.init(jax.random.PRNGKey(0), x)
    return (lambda x: stack.apply(p, x),
            lambda x: _unroll(_CELLS, jf.layers_from_flax(p["params"]), x, custom_vjp=False)[1])


def _linen_bidirectional_stack(x, custom_vjp):
    stack = jf.BidirectionalStack(_PAIRS, custom_vjp=custom_vjp)
    p = stack.init(jax.random.PRNGKey(0), x)
    ps = [(q["forward"], q["backward"]) for q in jf.layers_from_flax(p["params"])]
    return (lambda x: stack.apply(p, x),
            lambda x: jrnn.bidirectional(_PAIRS, ps, x, time_major=False, custom_vjp=False)[1])


def _linen_bidirectional(x, custom_vjp):
    bi = jf.Bidirectional(jf.RNN(_CELLS[0]), jf.RNN(_CELLS[1]))
    p = bi.init(jax.random.PRNGKey(0), x)
    fwd, bwd = p["params"]["forward_rnn"], p["params"]["backward_rnn"]
    return (lambda x: bi.apply(p, x, custom_vjp=custom_vjp),  # passed on to both layers
            lambda x: jnp.concatenate(
                [_unroll(_CELLS[0], fwd, x, custom_vjp=False)[1],
                 _unroll(_CELLS[1], bwd, x, reverse=True, custom_vjp=False)[1]], -1))


def _nnx_rnn(x, custom_vjp):
    layer = jf.NNXRNN(_CELLS[0], D, rngs=nnx.Rngs(0), custom_vjp=custom_vjp)
    return layer, lambda x: _unroll(_CELLS[0], layer.params, x, custom_vjp=False)[1]


def _nnx_stack(x, custom_vjp):
    stack = jf.NNXStack(_CELLS, D, rngs=nnx.Rngs(0), custom_vjp=custom_vjp)
    return stack, lambda x: _unroll(_CELLS, stack.params, x, custom_vjp=False)[1]


def _nnx_bidirectional_stack(x, custom_vjp):
    stack = jf.NNXBidirectionalStack(_PAIRS, D, rngs=nnx.Rngs(0), custom_vjp=custom_vjp)
    return stack, lambda x: jrnn.bidirectional(_PAIRS, stack.params, x, time_major=False,
                                               custom_vjp=False)[1]


@pytest.mark.parametrize("build", [_linen_stack, _linen_bidirectional_stack, _linen_bidirectional,
                                   _nnx_rnn, _nnx_stack, _nnx_bidirectional_stack],
                         ids=lambda f: f.__name__.strip("_"))
def test_jvp_through_every_module_built_without_custom_vjp(build):
    x = _x()
    tx = _tangent(x)
    f, want = build(x, False)
    chex.assert_trees_all_close(jax.jvp(f, (x,), (tx,)), jax.jvp(want, (x,), (tx,)), atol=1e-5)
    f_default, _ = build(x, True)
    with pytest.raises(TypeError, match="custom_vjp"):
        jax.jvp(f_default, (x,), (tx,))


def test_nnx_custom_vjp_can_be_overridden_per_call():
    layer = jf.NNXStack([jrnn.gru(H), jrnn.lstm(H)], D, rngs=nnx.Rngs(0))
    x, tx = _x(), _tangent(_x())
    want = jax.jvp(lambda x: _unroll(list(layer.cells), layer.params, x, custom_vjp=False)[1],
                   (x,), (tx,))
    chex.assert_trees_all_close(jax.jvp(lambda x: layer(x, custom_vjp=False), (x,), (tx,)), want,
                                atol=1e-5)


def test_method_reaches_unroll():
    cell = jrnn.linear(H)
    x = _x()
    layer = jf.RNN(cell, method="associative", return_carry=True)
    variables = layer.init(jax.random.PRNGKey(0), x)
    want = _unroll(cell, variables["params"], x, lengths=LENGTHS, method="associative")
    chex.assert_trees_all_equal(layer.apply(variables, x, seq_lengths=LENGTHS), want)
    nnx_layer = jf.NNXRNN(cell, D, rngs=nnx.Rngs(0), method="associative", return_carry=True)
    want = _unroll(cell, nnx_layer.params, x, lengths=LENGTHS, method="associative")
    chex.assert_trees_all_equal(nnx_layer(x, seq_lengths=LENGTHS), want)
    # a method the cell cannot run is jrnn.unroll's error, from every module
    gru, key = jrnn.gru(H), jax.random.PRNGKey(0)
    for run in (lambda: jf.RNN(gru, method="associative").init(key, x),
                lambda: jf.Stack([gru, gru], method="associative").init(key, x),
                lambda: jf.BidirectionalStack([(gru, gru)], method="associative").init(key, x),
                lambda: jf.NNXRNN(gru, D, rngs=nnx.Rngs(0), method="associative")(x),
                lambda: jf.NNXStack([gru], D, rngs=nnx.Rngs(0), method="associative")(x),
                lambda: jf.NNXBidirectionalStack([(gru, gru)], D, rngs=nnx.Rngs(0),
                                                 method="associative")(x)):
        with pytest.raises(ValueError, match="linear recurrence"):
            run()
