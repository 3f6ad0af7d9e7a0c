"""jrnn.core.wavefront: a stack of LSTM layers run as a wavefront, with its hand-written backward.

Values and gradients (every layer's params, the hoisted input projection, the initial
carries) are held to ``jax.grad`` of the layer-by-layer scan (``jrnn.unroll(...,
custom_vjp=False)``) in float64, and to the NumPy loops of ``jrnn.reference``; the
jaxpr of each loop body is read to check that the layers' matmuls of one step are
independent of each other (what the wavefront is for).
"""

from __future__ import annotations

import jax
import jax.extend.core as jex
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import reference
from jrnn.core.wavefront import lstm_stack

H, B, D = 6, 3, 4


def _setup(L, T, seed=0, zero_carries=False):
    cells = [jrnn.lstm(H)] * L
    ks = jax.random.split(jax.random.PRNGKey(seed), 3 * L + 3)
    params = [cells[l].init(ks[l], D if l == 0 else H) for l in range(L)]
    # Non-zero biases, so db is tested with every gate's slice in play.
    params = [dict(p, b=0.3 * jax.random.normal(ks[2 * L + l], p["b"].shape, jnp.float64))
              for l, p in enumerate(params)]
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    xs = jax.random.normal(ks[3 * L], (T, B, D), jnp.float64)
    w = jax.random.normal(ks[3 * L + 1], (T, B, H), jnp.float64)
    if zero_carries:
        carries = [cells[0].initial_carry((B,), jnp.float64) for _ in range(L)]
    else:
        kc = jax.random.split(ks[3 * L + 2], 2 * L)
        carries = [jrnn.LSTMCarry(0.5 * jax.random.normal(kc[2 * l], (B, H), jnp.float64),
                                  jax.random.normal(kc[2 * l + 1], (B, H), jnp.float64))
                   for l in range(L)]
    return cells, params, xs, w, carries


def _loss(finals, hs, w):
    # The outputs and every final carry (h and c, each layer weighted differently).
    out = jnp.sum(hs * w)
    for l, f in enumerate(finals):
        out = out + jnp.sum(jnp.sin(f.h) * (l + 1)) + 0.5 * jnp.sum(f.c * f.c) / (l + 1)
    return out


def _max_diff(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    assert all(x.shape == y.shape for x, y in zip(la, lb))
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(la, lb))


@pytest.mark.parametrize("stack_weights", [True, False])
@pytest.mark.parametrize("L,T,unroll", [(2, 1, 1), (2, 5, 1), (3, 1, 1), (3, 5, 2)])
def test_equal_to_layer_by_layer_scan(L, T, unroll, stack_weights):
    cells, params, xs, w, carries = _setup(L, T, seed=10 * L + T)
    run = lstm_stack(H, L)

    @jax.jit
    def wavefront(params, xs_proj0, carries):
        return jax.value_and_grad(
            lambda p, x, c: _loss(*run(p, x, c, unroll=unroll, stack_weights=stack_weights), w),
            argnums=(0, 1, 2))(params, xs_proj0, carries)

    @jax.jit
    def layered(params, xs_proj0, carries):
        # jrnn.unroll's stack with layer 0's projection taken as given: feed layer 0 the
        # identity as W (and a zero b), so that its x W + b is xs_proj0 itself.
        def f(p, x, c):
            p0 = dict(p[0], W=jnp.eye(4 * H, dtype=x.dtype), b=jnp.zeros(4 * H, x.dtype))
            return _loss(*jrnn.unroll(cells, [p0, *p[1:]], x, c, method="scan",
                                      custom_vjp=False), w)

        return jax.value_and_grad(f, argnums=(0, 1, 2))(params, xs_proj0, carries)

    xs_proj0 = xs @ params[0]["W"] + params[0]["b"]
    (v, g), (v_ref, g_ref) = wavefront(params, xs_proj0, carries), layered(params, xs_proj0, carries)
    assert abs(float(v - v_ref)) < 1e-10
    # Layer 0's W and b are not read (its projection is given): zero there, as in the reference
    # (whose layer 0 is fed an identity W: drop those two entries before comparing).
    g_params, g_ref_params = g[0], g_ref[0]
    assert float(jnp.max(jnp.abs(g_params[0]["W"]))) == 0 and float(jnp.max(jnp.abs(g_params[0]["b"]))) == 0
    g_params = [{k: v for k, v in p.items() if l or k == "W_h"} for l, p in enumerate(g_params)]
    g_ref_params = [{k: v for k, v in p.items() if l or k == "W_h"} for l, p in enumerate(g_ref_params)]
    assert _max_diff(g_params, g_ref_params) < 1e-10
    assert _max_diff(g[1], g_ref[1]) < 1e-10  # xs_proj0
    assert _max_diff(g[2], g_ref[2]) < 1e-10  # initial carries (h and c of every layer)
    # Each part of the gradient is really exercised (not trivially zero on both sides).
    assert all(float(jnp.max(jnp.abs(a))) > 1e-3 for a in jax.tree.leaves((g_params, g[1], g[2])))


def test_values_and_hoisted_projection_grads_match_unroll():
    """With the projection inside the differentiated function, the gradients of layer 0's W
    and b and of the inputs are those of ``jrnn.unroll`` too (hand-written backward, default)."""
    L, T = 2, 5
    cells, params, xs, w, carries = _setup(L, T, seed=3)
    run = lstm_stack(H, L)

    def wavefront(p, x, c):
        finals, hs = run(p, x @ p[0]["W"] + p[0]["b"], c)
        return _loss(finals, hs, w), (finals, hs)

    def layered(p, x, c):
        finals, hs = jrnn.unroll(cells, p, x, c, method="scan")
        return _loss(finals, hs, w), (finals, hs)

    (v, out), g = jax.value_and_grad(wavefront, argnums=(0, 1, 2), has_aux=True)(params, xs, carries)
    (v_ref, out_ref), g_ref = jax.value_and_grad(layered, argnums=(0, 1, 2), has_aux=True)(params, xs, carries)
    assert _max_diff(out, out_ref) < 1e-12
    assert abs(float(v - v_ref)) < 1e-10
    assert _max_diff(g, g_ref) < 1e-10


def test_matches_numpy_reference():
    """Two layers from zero carries against jrnn.reference's loops (forward and hand-written BPTT)."""
    L, T = 2, 5
    _, params, xs, w, carries = _setup(L, T, seed=7, zero_carries=True)
    run = lstm_stack(H, L)

    def loss(p, x):
        _, hs = run(p, x @ p[0]["W"] + p[0]["b"], carries)
        return jnp.sum(hs * w), hs

    (_, hs), (g, dxs) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, xs)
    p_np = [{k: np.asarray(v) for k, v in p.items()} for p in params]
    hs0, _, _ = reference.cell_forward("lstm", p_np[0], np.asarray(xs))
    hs1, _, _ = reference.cell_forward("lstm", p_np[1], hs0)
    np.testing.assert_allclose(np.asarray(hs), hs1, rtol=0, atol=1e-12)
    g1, dx1 = reference.cell_backward("lstm", p_np[1], hs0, np.asarray(w))
    g0, dx0 = reference.cell_backward("lstm", p_np[0], np.asarray(xs), dx1)
    for got, want in zip(g, (g0, g1)):
        for k in ("W", "W_h", "b"):
            np.testing.assert_allclose(np.asarray(got[k]), want[k], rtol=0, atol=1e-10, err_msg=k)
    np.testing.assert_allclose(np.asarray(dxs), dx0, rtol=0, atol=1e-10)


def _scan_bodies(jaxpr):
    """Every ``scan`` body in ``jaxpr`` and its sub-jaxprs."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            out.append(eqn.params["jaxpr"].jaxpr)
        for sub in jex.jaxprs_in_params(eqn.params):
            out.extend(_scan_bodies(sub))
    return out


def _dots_and_their_dot_ancestors(jaxpr):
    """For each ``dot_general`` of ``jaxpr`` (no descent into sub-jaxprs), the dots it depends on."""
    anc: dict = {}  # var -> the dot equations it depends on
    dots = []
    for i, eqn in enumerate(jaxpr.eqns):
        deps = set()
        for v in eqn.invars:
            if isinstance(v, jex.Var):
                deps |= anc.get(v, set())
        if eqn.primitive.name == "dot_general":
            dots.append((i, frozenset(deps)))
            deps = deps | {i}
        for v in eqn.outvars:
            anc[v] = deps
    return dots


@pytest.mark.parametrize("stack_weights", [True, False])
@pytest.mark.parametrize("L", [2, 3])
def test_matmuls_of_a_step_are_independent(L, stack_weights):
    T = 4
    _, params, xs, w, carries = _setup(L, T)
    run = lstm_stack(H, L)
    xs_proj0 = xs @ params[0]["W"] + params[0]["b"]
    grad = jax.grad(lambda p, x, c: _loss(*run(p, x, c, stack_weights=stack_weights), w),
                    argnums=(0, 1, 2))
    bodies = _scan_bodies(jax.make_jaxpr(grad)(params, xs_proj0, carries).jaxpr)
    assert len(bodies) == 2  # the forward wavefront and the reversed one
    fwd, bwd = bodies
    per_step = {True: (L, L), False: (2 * L - 1, 2 * L - 1)}[stack_weights]
    for body, n in zip((fwd, bwd), per_step):
        dots = _dots_and_their_dot_ancestors(body)
        assert len(dots) == n
        assert all(not deps for _, deps in dots), "a matmul of the step waits for another"


def test_no_steps_passes_the_carries_through():
    _, params, _, _, carries = _setup(2, 1)
    finals, hs = lstm_stack(H, 2)(params, jnp.zeros((0, B, 4 * H)), carries)
    assert hs.shape == (0, B, H)
    assert _max_diff(finals, carries) == 0


def test_rejects_mismatched_stack():
    _, params, xs, _, carries = _setup(2, 3)
    with pytest.raises(ValueError, match="expected 3 params"):
        lstm_stack(H, 3)(params, jnp.zeros((3, B, 4 * H)), carries)
    with pytest.raises(ValueError, match=r"\[T, B, 4H\]"):
        lstm_stack(H, 2)(params, xs, carries)


def test_unroll_runs_a_stack_as_a_wavefront_and_says_when_it_cannot():
    """``jrnn.unroll(cells, ..., method="wavefront")``: the same values and gradients as the
    layer-by-layer scan; a stack it cannot run (another cell, lengths, one layer) runs layer
    by layer with a warning that says why."""
    import warnings

    cells = [jrnn.lstm(6)] * 3
    ks = jax.random.split(jax.random.PRNGKey(0), 3)
    params = [cells[0].init(ks[0], 4, jnp.float64)] + [
        c.init(k, 6, jnp.float64) for c, k in zip(cells[1:], ks[1:])]
    xs = jax.random.normal(jax.random.PRNGKey(1), (5, 3, 4), jnp.float64)

    def loss(method, p, x):
        finals, hs = jrnn.unroll(cells, p, x, method=method)
        return jnp.sum(jnp.sin(hs)) + sum(jnp.sum(l * l) for l in jax.tree_util.tree_leaves(finals))

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        got = jax.grad(lambda p, x: loss("wavefront", p, x), argnums=(0, 1))(params, xs)
    want = jax.grad(lambda p, x: loss("scan", p, x), argnums=(0, 1))(params, xs)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-10, atol=1e-12)
    mixed = [jrnn.lstm(6), jrnn.gru(6)]
    mp = [mixed[0].init(ks[0], 4, jnp.float64), mixed[1].init(ks[1], 6, jnp.float64)]
    with pytest.warns(RuntimeWarning, match="layer by layer instead: the wavefront runs stacks "
                                            "of plain LSTM layers"):
        _, hs = jrnn.unroll(mixed, mp, xs, method="wavefront")
    np.testing.assert_allclose(hs, jrnn.unroll(mixed, mp, xs, method="scan")[1], rtol=1e-12)
    with pytest.warns(RuntimeWarning, match="sequences with lengths"):
        jrnn.unroll(cells, params, xs, method="wavefront", lengths=jnp.array([5, 2, 4]))
    with pytest.warns(RuntimeWarning, match="a single layer has no wavefront"):
        _, one = jrnn.unroll(cells[0], params[0], xs, method="wavefront")
    np.testing.assert_allclose(one, jrnn.unroll(cells[0], params[0], xs, method="scan")[1])
