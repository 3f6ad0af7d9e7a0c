"""What users run -- float32 with jrnn's hand-written backward passes -- against the float64 loop.

``conftest.py`` turns on ``jax_enable_x64``, so the other tests check jrnn in
float64.  Arrays made as float32 still compute in float32 under x64, so here
params, inputs, carries and loss weights are all float32, every result's dtype
is asserted to be float32 (a silent upcast would fail), and the numbers are
compared with :mod:`jrnn.reference` (NumPy float64 loops, hand-written BPTT)
run on the float64 copies of the very same float32 values.

Tolerance (see :func:`assert_f32_close`): ``|got - want| <= rtol * |want| +
ULPS * eps32 * max|want|`` per array.  Float32 rounding errors are relative to
the magnitude of the terms being summed, which the array's largest entry
bounds, not to each result: an entry that cancels to near zero keeps an
absolute error of a few float32 ulps of that scale, which no rtol can cover.
With rtol alone the gradients would need over 1e-3 (e.g. an LSTM bias
gradient that cancels to near zero).  Measured with these shapes and init over 5 data seeds,
every cell, both directions, both ``custom_vjp``: beyond ``rtol = 1e-5`` no
entry needed more than 1.0 ulp of its array's scale in the forward pass and
0.9 ulp in the gradients (0.8 for the language model); ULPS = 8 leaves an
8x margin, and the gradients hold at the forward's rtol of 1e-5, tighter
than 1e-4.  ``chex.assert_trees_all_close`` takes one atol per tree, hence
the small helper.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import reference as ref

B, T, D, H = 3, 7, 5, 6  # none a multiple of 8: no lucky tile-aligned shapes
INIT_SCALE = 0.5  # weights ~ U(-0.5, 0.5): pre-activations and states are O(1)
EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
ULPS = 8
RTOL = 1e-5

CELLS = [
    ("linear", "identity"),
    ("elman", "tanh"),
    ("elman", "sigmoid"),
    ("elman", "relu"),
    ("lstm", "tanh"),
    ("gru", "tanh"),
]


def assert_f32_close(got, want, *, rtol=RTOL, ulps=ULPS, name=""):
    """Every leaf of ``got`` is float32 and within ``rtol`` + ``ulps`` of its array's scale.

    ``want`` is the float64 reference with the same tree structure.
    """
    got_leaves, got_tree = jax.tree_util.tree_flatten_with_path(got)
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    assert got_tree.num_leaves == want_tree.num_leaves, (name, got_tree, want_tree)
    for (path, g), w in zip(got_leaves, want_leaves):
        where = f"{name}{jax.tree_util.keystr(path)}"
        assert g.dtype == jnp.float32, f"{where}: dtype {g.dtype}, expected float32"
        w = np.asarray(w, np.float64)
        assert g.shape == w.shape, (where, g.shape, w.shape)
        atol = ulps * EPS32 * float(np.abs(w).max(initial=0.0))
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=rtol, atol=atol,
                                   err_msg=where)


def _f32(seed, shape, scale=1.0):
    # Test data from NumPy: jax.random would compile a kernel for every new shape.
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _f64(tree):
    # Exact: every float32 is a float64.
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _cell(kind, act, seed=0):
    cell = jrnn.make_cell(kind, H, activation=act, init_scale=INIT_SCALE)
    params = cell.init(jax.random.PRNGKey(seed), D, jnp.float32)
    assert all(p.dtype == jnp.float32 for p in params.values())
    return cell, params


def _problem(kind, seed=0):
    """Inputs, a random start carry, and the fixed weights of the scalar loss."""
    xs = _f32(10 + seed, (T, B, D))
    w = _f32(20 + seed, (T, B, H))  # weighs every output h_t
    v = _f32(30 + seed, (B, H))  # weighs the final h
    u = _f32(40 + seed, (B, H))  # weighs the final c (LSTM)
    h0, c0 = _f32(50 + seed, (B, H), 0.5), _f32(60 + seed, (B, H), 0.5)
    carry = jrnn.LSTMCarry(h0, c0) if kind == "lstm" else h0
    return xs, w, v, u, carry


def _value_and_grads(cell, kind, reverse, custom_vjp):
    """Jitted: loss, (final carry, outputs) and d loss / d(params, xs, start carry).

    The loss is sum(hs * w) + sum(h_final * v) [+ sum(c_final * u)], all in
    float32; the weights are arguments, so one compilation serves both runs
    of a test.
    """

    def loss(params, xs, carry, w, v, u):
        final, hs = jrnn.unroll(cell, params, xs, carry, reverse=reverse, custom_vjp=custom_vjp)
        total = jnp.sum(hs * w) + jnp.sum(cell.hidden(final) * v)
        if kind == "lstm":
            total = total + jnp.sum(final.c * u)
        return total, (final, hs)

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))


def _ref_loss_terms(kind, act, p64, xs64, h0, c0, w, v, u, reverse):
    """The float64 loop's loss, as the array of the terms it sums."""
    hs, h, c = ref.cell_forward(kind, p64, xs64, h0, c0, activation=act, reverse=reverse)
    terms = [hs * w, h * v] + ([c * u] if kind == "lstm" else [])
    return np.concatenate([t.ravel() for t in terms])


def assert_loss_close(total, terms, *, rtol=RTOL, ulps=ULPS):
    """A float32 scalar loss vs the float64 sum of ``terms``.

    The terms have both signs, so the sum can cancel far below them: as for
    arrays, ``ulps`` float32 ulps of the terms' magnitude sum(|terms|) on top of rtol.
    """
    assert total.dtype == jnp.float32, total.dtype
    np.testing.assert_allclose(float(total), terms.sum(), rtol=rtol,
                               atol=ulps * EPS32 * np.abs(terms).sum())


def _ref_bptt(kind, act, p64, xs64, w, v, reverse):
    """Reference gradients of sum(hs * w) + sum(h_final * v) from a zero start.

    ``cell_backward`` has no ``reverse`` (nor a start carry).  With every
    sequence at full length, running in reverse is running forward over the
    time-flipped inputs, with the outputs flipped back: so the flipped inputs
    and flipped output cotangents go in, and the input gradients come out
    flipped.  The final h is the output of the last step processed (t = 0 in
    reverse), so its weight joins that step's output cotangent.
    """
    dhs = np.array(w, np.float64)
    dhs[0 if reverse else T - 1] += v
    if not reverse:
        return ref.cell_backward(kind, p64, xs64, dhs, activation=act)
    grads, dxs = ref.cell_backward(kind, p64, xs64[::-1], dhs[::-1], activation=act)
    return grads, dxs[::-1]


def _fd_carry_grad(kind, act, p64, xs64, h0, c0, w, v, u, reverse, eps=1e-6):
    """Central differences of the float64 loop forward w.r.t. the start carry.

    ``cell_backward`` starts from zeros and returns no carry gradient, so the
    start carry's gradient is checked against the reference's forward alone
    (error ~eps**2 + 1e-16/eps, far below float32's).
    """
    f = lambda h, c: _ref_loss_terms(kind, act, p64, xs64, h, c, w, v, u, reverse).sum()
    grads = []
    for which in ((0, 1) if kind == "lstm" else (0,)):
        g = np.zeros((B, H))
        for idx in itertools.product(range(B), range(H)):
            hc_plus = [h0.copy(), c0.copy()]
            hc_minus = [h0.copy(), c0.copy()]
            hc_plus[which][idx] += eps
            hc_minus[which][idx] -= eps
            g[idx] = (f(*hc_plus) - f(*hc_minus)) / (2 * eps)
        grads.append(g)
    return jrnn.LSTMCarry(*grads) if kind == "lstm" else grads[0]


# -- one cell under jrnn.unroll ------------------------------------------------


@pytest.mark.parametrize("kind,act", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("custom_vjp", [True, False])
def test_unroll_matches_reference(kind, act, reverse, custom_vjp):
    """Forward, final carry and every gradient of jrnn.unroll in float32 vs the float64 loop."""
    cell, params = _cell(kind, act)
    assert cell.sequence is not None  # every cell here has a hand-written backward pass
    xs, w, v, u, carry = _problem(kind)
    run = _value_and_grads(cell, kind, reverse, custom_vjp)
    p64, xs64, w64, v64, u64 = _f64(params), _f64(xs), _f64(w), _f64(v), _f64(u)

    # 1. From a zero start: outputs, final carry, d/d(params, xs) vs the hand-written BPTT.
    #    cell_backward takes output cotangents only, so no weight on the final c here.
    zero = cell.initial_carry((B,), jnp.float32)
    (total, (final, hs)), (g_params, g_xs, _) = run(params, xs, zero, w, v, jnp.zeros_like(u))
    want_hs, want_h, want_c = ref.cell_forward(kind, p64, xs64, activation=act, reverse=reverse)
    assert_f32_close(hs, want_hs, name="hs")
    assert_f32_close(cell.hidden(final), want_h, name="h_final")
    if kind == "lstm":
        assert_f32_close(final.c, want_c, name="c_final")
    zeros = np.zeros((B, H))
    assert_loss_close(total, _ref_loss_terms(kind, act, p64, xs64, zeros, zeros, w64, v64,
                                             0 * u64, reverse))
    want_grads, want_dxs = _ref_bptt(kind, act, p64, xs64, w64, v64, reverse)
    assert sorted(g_params) == sorted(want_grads)
    assert_f32_close(g_params, want_grads, name="d_params")
    assert_f32_close(g_xs, want_dxs, name="d_xs")

    # 2. From a random start carry, the LSTM's final c weighed too (a path the
    #    output cotangents of cell_backward cannot reach): the forward, and
    #    d/d(start carry) against finite differences of the loop forward.
    (total, (final, hs)), (_, _, g_carry) = run(params, xs, carry, w, v, u)
    h0, c0 = (_f64(carry.h), _f64(carry.c)) if kind == "lstm" else (_f64(carry), np.zeros((B, H)))
    want_hs, want_h, want_c = ref.cell_forward(kind, p64, xs64, h0, c0, activation=act,
                                               reverse=reverse)
    assert_f32_close(hs, want_hs, name="hs(carry)")
    assert_f32_close(cell.hidden(final), want_h, name="h_final(carry)")
    if kind == "lstm":
        assert_f32_close(final.c, want_c, name="c_final(carry)")
    ref_args = (kind, act, p64, xs64, h0, c0, w64, v64, u64, reverse)
    assert_loss_close(total, _ref_loss_terms(*ref_args))
    assert_f32_close(g_carry, _fd_carry_grad(*ref_args), name="d_carry")


def test_negative_control_a_perturbed_weight_is_caught():
    """The comparison can fail: one recurrent weight off by 1e-3 (relative) is reported."""
    kind, act = "gru", "tanh"
    cell, params = _cell(kind, act)
    xs, w, v, u, _ = _problem(kind)
    p64, xs64 = _f64(params), _f64(xs)
    want_hs, _, _ = ref.cell_forward(kind, p64, xs64, activation=act)
    want = _ref_bptt(kind, act, p64, xs64, _f64(w), _f64(v), reverse=False)
    run = _value_and_grads(cell, kind, False, True)
    zero = cell.initial_carry((B,), jnp.float32)

    (_, (_, hs)), grads = run(params, xs, zero, w, v, u)  # unperturbed: passes
    assert_f32_close(hs, want_hs)
    assert_f32_close(grads[:2], want)
    bad = dict(params, W_h=params["W_h"].at[2, 3].multiply(1 + 1e-3))
    (_, (_, hs)), grads = run(bad, xs, zero, w, v, u)
    with pytest.raises(AssertionError):
        assert_f32_close(hs, want_hs)
    with pytest.raises(AssertionError):
        assert_f32_close(grads[:2], want)
    with pytest.raises(AssertionError, match="dtype float64"):  # and an upcast is caught
        assert_f32_close(jnp.asarray(want_hs), want_hs)


# -- the language model ----------------------------------------------------------

V = 13


@pytest.mark.parametrize("kind,act,tie", [
    # The LM adds the embedding, the stack and the fused output layer around
    # the same recurrences; the linear and Elman cells are covered above.
    ("lstm", "tanh", False),
    ("gru", "tanh", False),
    ("lstm", "tanh", True),
])
def test_rnn_lm_loss_and_grads_match_reference(kind, act, tie):
    """rnn_lm's default path (custom_vjp: fused recurrence + chunked cross-entropy) in float32."""
    E = H if tie else D
    # The activation is the Elman cell's; the other kinds refuse one.
    model = jrnn.rnn_lm(V, cell=kind, activation=act if kind == "elman" else None,
                        embed_size=E, hidden_size=H,
                        num_layers=2, tie_embeddings=tie)
    assert model.config.custom_vjp  # the default users get
    params = model.init(jax.random.PRNGKey(3), jnp.float32)
    k_in, k_out = jax.random.split(jax.random.PRNGKey(4))
    inputs = jax.random.randint(k_in, (B, T), 0, V)
    targets = jax.random.randint(k_out, (B, T), 0, V)
    f = lambda p: jrnn.sequence_loss(model, p, inputs, targets)
    (loss, aux), grads = jax.jit(jax.value_and_grad(f, has_aux=True))(params)

    p64 = _f64(params)
    want_loss, want_losses = ref.lm_loss(kind, p64, inputs, targets, activation=act)
    want_grads = ref.lm_grads(kind, p64, inputs, targets, activation=act)
    assert loss.dtype == jnp.float32
    # A sum of 21 positive O(log V) terms: no cancellation, rtol alone (measured <= 1.5e-7).
    np.testing.assert_allclose(float(loss), want_loss, rtol=1e-6)
    assert_f32_close(aux.losses, want_losses, name="losses")
    # Same layout on both sides: {"embed", "layers": [cell params], "out": {"W", "b"}}
    # ("out" without "W" when tied; lm_grads then adds the output layer's share to embed).
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(want_grads)
    assert_f32_close(grads, want_grads, name="grads")

