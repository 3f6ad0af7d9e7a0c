"""Diagnostics: gradient flow, Jacobian products, decay and overflow, against closed forms."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn.analysis import diagnostics as dg
from tests.helpers import random_inputs


def _linear_params(seed, D, H, scale=0.6):
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    return {"W": jax.random.normal(k1, (D, H), jnp.float64),
            "W_h": scale * jax.random.normal(k2, (H, H), jnp.float64) / np.sqrt(H),
            "b": jnp.zeros(H, jnp.float64)}


def _mpow(A, k):
    return np.linalg.matrix_power(np.asarray(A), k)


def test_grad_flow_linear_cell_equals_closed_form():
    T, B, D, H = 7, 3, 2, 4
    params = _linear_params(0, D, H)
    xs = random_inputs(1, T, B, D)
    flow = dg.grad_flow(jrnn.linear(H), params, xs)
    Wh, W, ones = np.asarray(params["W_h"]), np.asarray(params["W"]), np.ones(H)
    # dL_{T-1}/dh_t = ones (W_h^T)^{T-1-t}: the same for every sequence.
    want_h = [np.linalg.norm(ones @ _mpow(Wh.T, T - 1 - t)) for t in range(T)]
    # dL/dx_t = (sum_{s>=t} ones (W_h^T)^{s-t}) W^T for the summed loss.
    want_x = [np.linalg.norm(sum(ones @ _mpow(Wh.T, s - t) for s in range(t, T)) @ W.T)
              for t in range(T)]
    chex.assert_shape(flow.hidden, (T,))
    np.testing.assert_allclose(flow.hidden, want_h, rtol=1e-12)
    np.testing.assert_allclose(flow.inputs, want_x, rtol=1e-12)


def test_grad_flow_custom_readout_sends_its_gradient_back():
    T, B, D, H = 5, 2, 3, 4
    params = _linear_params(2, D, H)
    u = jnp.arange(1.0, H + 1)
    flow = dg.grad_flow(jrnn.linear(H), params, random_inputs(3, T, B, D),
                        readout=lambda hs: hs @ u)
    want = [np.linalg.norm(np.asarray(u) @ _mpow(params["W_h"].T, T - 1 - t)) for t in range(T)]
    np.testing.assert_allclose(flow.hidden, want, rtol=1e-12)


def test_grad_flow_matches_restarting_the_unroll_from_h_t():
    """dL_T/dh_t by a second route, for the LSTM's (h, c) carry: rerun the tail from h_t."""
    kind = "lstm"
    T, B, D, H = 4, 2, 3, 5
    cell = jrnn.make_cell(kind, H)
    params = cell.init(jax.random.PRNGKey(4), D, jnp.float64)
    xs = random_inputs(5, T, B, D)
    flow = dg.grad_flow(cell, params, xs)
    for t in range(T - 1):
        carry_t, _ = jrnn.unroll(cell, params, xs[: t + 1])

        def last_loss(h):
            c = carry_t._replace(h=h) if kind == "lstm" else h
            final, _ = jrnn.unroll(cell, params, xs[t + 1 :], c)
            return jnp.sum(cell.hidden(final))

        g = jax.grad(last_loss)(cell.hidden(carry_t))
        np.testing.assert_allclose(flow.hidden[t], np.mean(np.linalg.norm(g, axis=-1)), rtol=1e-10)


def test_lm_forward_is_model_apply_and_lm_grad_flow_ends_at_the_softmax_gradient():
    V, T, B = 11, 6, 3
    model = jrnn.rnn_lm(V, cell="elman", embed_size=5, hidden_size=7, num_layers=2)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.randint(jax.random.PRNGKey(1), (B, T), 0, V)
    y = jax.random.randint(jax.random.PRNGKey(2), (B, T), 0, V)
    logits, _, _ = dg._lm_forward(model, params, x)
    np.testing.assert_array_equal(logits, model.apply(params, x)[0])
    flow = dg.lm_grad_flow(model, params, x, y)
    chex.assert_shape(flow.hidden, (2, T))
    chex.assert_shape(flow.inputs, (T,))
    # At the last step of the top layer, dCE/dh = (softmax - onehot) W_out^T.
    p = jax.nn.softmax(logits[:, -1])
    g = (p - jax.nn.one_hot(y[:, -1], V)) @ params["out"]["W"].T
    np.testing.assert_allclose(flow.hidden[1, -1], np.mean(np.linalg.norm(g, axis=-1)), rtol=1e-10)
    assert np.all(np.asarray(flow.hidden) > 0)


def test_lm_diagnostics_refuse_the_nnlm():
    model = jrnn.nnlm(10, context_size=2, embed_size=4, hidden_size=4)
    params = model.init(jax.random.PRNGKey(0))
    x = jnp.zeros((2, 3), jnp.int32)
    with pytest.raises(TypeError, match="rnn_lm"):
        dg.lm_grad_flow(model, params, x, x)


@pytest.mark.parametrize("kind", ["elman", "lstm"])
def test_jacobian_norms_exact_match_direct_jacobians(kind):
    T, B, D, H = 3, 2, 3, 4
    cell = jrnn.make_cell(kind, H)
    params = cell.init(jax.random.PRNGKey(6), D, jnp.float64)
    xs = random_inputs(7, T, B, D)
    jn = dg.jacobian_norms(cell, params, xs)
    chex.assert_shape(jn.norms, (T + 1,))
    np.testing.assert_array_equal(jn.distance, np.arange(T + 1))
    for k in range(1, T + 1):
        start = T - k
        carry0 = cell.initial_carry((B,), jnp.float64)
        c_start = jrnn.unroll(cell, params, xs[:start], carry0)[0] if start else carry0
        shapes = [x.shape[1:] for x in jax.tree_util.tree_leaves(c_start)]
        flat, unflat = dg._flat(c_start, shapes)

        def tail(s):
            final, _ = jrnn.unroll(cell, params, xs[start:], unflat(s))
            return dg._flat(final, shapes)[0]

        J = jax.jacobian(tail)(flat)  # [B, S, B, S]; sequences do not interact
        per_seq = [np.linalg.norm(J[b, :, b, :], 2) for b in range(B)]
        np.testing.assert_allclose(jn.norms[k], np.mean(per_seq), rtol=1e-10)
    np.testing.assert_allclose(jn.factor, jn.norms[1:] / jn.norms[:-1])


def test_jacobian_estimate_tracks_the_exact_norm():
    T, B, D, H = 30, 2, 3, 16
    cell = jrnn.elman(H, "tanh", init_scale=0.5)
    params = cell.init(jax.random.PRNGKey(8), D, jnp.float64)
    xs = random_inputs(9, T, B, D)
    exact = np.asarray(dg.jacobian_norms(cell, params, xs).norms)
    est = np.asarray(dg.jacobian_norms(cell, params, xs, method="estimate", num_probes=64).norms)
    ratio = est[1:] / exact[1:]
    # Frobenius estimate: above the spectral norm while several directions
    # survive, equal to it once one direction dominates the product.
    assert ratio[0] > 1.3 and np.all(ratio < 1.3 * np.sqrt(H)), ratio
    np.testing.assert_allclose(ratio[-10:], 1.0, atol=0.1)


def test_sigmoid_elman_decay_is_bounded_by_quarter_to_the_k_times_weight_norm():
    T, B, D, H = 12, 3, 2, 6
    cell = jrnn.elman(H, "sigmoid", init_scale=0.3)
    params = cell.init(jax.random.PRNGKey(10), D, jnp.float64)
    jn = dg.jacobian_norms(cell, params, random_inputs(11, T, B, D))
    bound = dg.elman_jacobian_bound(cell, params, jn.distance)
    w = np.linalg.norm(params["W_h"], 2)
    np.testing.assert_allclose(bound, (0.25 * w) ** np.arange(T + 1), rtol=1e-12)
    assert np.all(np.asarray(jn.norms) <= np.asarray(bound) * (1 + 1e-9))
    assert jn.norms[-1] < 1e-6  # small weights: it vanishes


def test_sigmoid_bound_is_tight_when_the_derivative_sits_at_its_maximum():
    # Orthogonal W_h with a tiny scale and no input: every pre-activation is
    # close to 0, where sigmoid' = 0.25, so the measured decay meets the bound.
    H, T = 4, 6
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(H, H)))
    params = {"W": jnp.zeros((1, H)), "W_h": jnp.asarray(1e-3 * Q), "b": jnp.zeros(H)}
    cell = jrnn.elman(H, "sigmoid")
    jn = dg.jacobian_norms(cell, params, jnp.zeros((T, 1, 1)))
    bound = dg.elman_jacobian_bound(cell, params, jn.distance)
    np.testing.assert_allclose(jn.norms, bound, rtol=1e-5)


def test_tanh_lstm_and_gru_bounds_and_errors():
    cell = jrnn.elman(3, "relu")
    params = cell.init(jax.random.PRNGKey(0), 2)
    w = np.linalg.norm(params["W_h"], 2)
    np.testing.assert_allclose(dg.elman_jacobian_bound(cell, params, jnp.array([3])), [w**3], rtol=1e-6)
    with pytest.raises(ValueError, match="linear and Elman"):
        dg.elman_jacobian_bound(jrnn.lstm(3), jrnn.lstm(3).init(jax.random.PRNGKey(0), 2), [1])


def test_input_sensitivity_linear_closed_form():
    T, B, D, H = 6, 2, 3, 4
    params = _linear_params(12, D, H, scale=1.3)
    sens = dg.input_sensitivity(jrnn.linear(H), params, random_inputs(13, T, B, D))
    W, Wh = np.asarray(params["W"]), np.asarray(params["W_h"])
    # h_T = sum_s x_s W W_h^{T-1-s}: dh_T/dx_{T-1-k} is (W W_h^k)^T.
    want = [np.linalg.norm(W @ _mpow(Wh, k), 2) for k in range(T)]
    np.testing.assert_allclose(sens, want, rtol=1e-10)


def test_probe_accuracy_reads_information_and_not_noise():
    key = jax.random.PRNGKey(0)
    labels = jax.random.randint(key, (600,), 0, 5)
    informative = jnp.concatenate([jax.nn.one_hot(labels, 5) * 1e-4,
                                   jax.random.normal(key, (600, 3))], axis=1)
    assert float(dg.probe_accuracy(informative, labels, 5)) == 1.0
    noise = jax.random.normal(jax.random.PRNGKey(1), (600, 8))
    assert float(dg.probe_accuracy(noise, labels, 5)) < 0.35
    with pytest.raises(TypeError):
        dg.probe_accuracy(noise, labels.astype(float), 5)
    with pytest.raises(ValueError, match="train_fraction"):
        dg.probe_accuracy(noise, labels, 5, train_fraction=1.0)


def test_information_decay_of_a_memoryless_cell():
    # W_h = 0: h_T sees x_T only, so the lag-0 token is recovered and older ones are not.
    V, H = 6, 8
    cell = jrnn.linear(H)
    params = cell.init(jax.random.PRNGKey(0), V, jnp.float64)
    params["W_h"] = jnp.zeros((H, H))
    curve = dg.information_decay(cell, params, jax.random.PRNGKey(1), seq_len=3, num_samples=240,
                                 vocab_size=V, sensitivity_samples=2)
    np.testing.assert_array_equal(curve.lags, np.arange(3))
    assert float(curve.probe_accuracy[0]) == 1.0
    assert np.all(np.asarray(curve.probe_accuracy[1:]) < 0.35)
    assert np.all(np.asarray(curve.chance) < 0.35)
    assert float(curve.sensitivity[0]) > 0 and np.all(np.asarray(curve.sensitivity[1:]) == 0)
    with pytest.raises(ValueError, match="lags"):
        dg.information_decay(cell, params, jax.random.PRNGKey(1), seq_len=4, lags=[4])


def test_lm_information_decay_shapes():
    V = 9
    model = jrnn.rnn_lm(V, cell="gru", embed_size=4, hidden_size=6, num_layers=1)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (24, 5), 0, V)
    curve = dg.lm_information_decay(model, params, tokens, [0, 2, 4], sensitivity_samples=2)
    for a in (curve.sensitivity, curve.probe_accuracy, curve.chance):
        chex.assert_shape(a, (3,))
    assert curve.sensitivity[0] > curve.sensitivity[2] > 0


def test_bad_inputs_raise_clear_errors():
    cell = jrnn.linear(3)
    params = cell.init(jax.random.PRNGKey(0), 2)
    with pytest.raises(TypeError, match="floating"):
        dg.grad_flow(cell, params, jnp.ones((3, 1, 2), jnp.int32))
    with pytest.raises(ValueError, match=r"\[T, B, D\]"):
        dg.grad_flow(cell, params, jnp.ones((3, 2)))
    with pytest.raises(ValueError, match="feature size"):
        dg.jacobian_norms(cell, params, jnp.ones((3, 1, 5)))
    with pytest.raises(ValueError, match="method"):
        dg.jacobian_norms(cell, params, jnp.ones((3, 1, 2)), method="svd")
    with pytest.raises(TypeError, match="Cell"):
        dg.input_sensitivity("tanh", params, jnp.ones((3, 1, 2)))
    with pytest.raises(ValueError, match="readout"):
        dg.grad_flow(cell, params, jnp.ones((3, 1, 2)), readout=lambda hs: hs)
    with pytest.raises(ValueError, match="unknown cell name"):
        dg.cell_by_name("vanilla", 3)


def test_injected_overflow_is_reported_at_the_right_step_and_parameter():
    # lr 0 keeps the params fixed; a linear cell with a large recurrent matrix
    # overflows float32 only on the long window fed at step 3.
    V, H = 7, 6
    model = jrnn.rnn_lm(V, cell="linear", embed_size=4, hidden_size=H, num_layers=1, init_scale=1.0)
    params = model.init(jax.random.PRNGKey(0), jnp.float32)
    params["layers"][0]["W_h"] = 3.0 * jnp.eye(H, dtype=jnp.float32)
    short = jnp.ones((2, 5), jnp.int32)
    long = jnp.ones((2, 120), jnp.int32)  # 3^120 > 3.4e38
    batches = [(short, short), (short, short), (short, short), (long, long), (short, short)]
    trace = dg.watch_training(dg.lm_loss_fn(model), params, optax.sgd(0.0), batches)
    assert trace.first_nonfinite is not None
    assert trace.first_nonfinite.step == 3
    assert "['layers'][0]['W_h']" in trace.first_nonfinite.parameters
    assert len(trace.loss) == 4 and trace.finite.tolist() == [True, True, True, False]
    assert "step 3" in str(trace.first_nonfinite)


def test_watch_training_names_only_the_broken_parameter():
    loss = lambda p, s: jnp.sum((s * p["a"]) ** 2) + jnp.sum(p["b"] ** 2)
    params = {"a": jnp.ones(2), "b": jnp.ones(3)}
    trace = dg.watch_training(loss, params, optax.sgd(0.01), [1.0, 1e200, 1.0],
                              stop_at_nonfinite=False)
    assert trace.first_nonfinite == dg.NonFinite(1, False, ("['a']",))
    assert len(trace.loss) == 3
    assert dg.nonfinite_leaves({"a": jnp.ones(2), "b": jnp.array([jnp.nan])}) == ["['b']"]


def test_clipping_keeps_the_pre_clip_norm_and_bounds_the_update():
    loss = lambda p, s: jnp.sum((s * p["w"]) ** 2)
    params = {"w": jnp.ones(4)}
    batches = [10.0] * 3
    free = dg.watch_training(loss, params, optax.sgd(0.1), batches)
    clipped = dg.watch_training(loss, params, optax.sgd(0.1), batches, clip_norm=1.0)
    np.testing.assert_allclose(free.grad_norm[0], clipped.grad_norm[0])
    np.testing.assert_allclose(free.grad_norm[0], 2 * 100 * 2.0)  # ||2 s^2 w|| with ||w|| = 2
    # Unclipped SGD at lr 0.1 with curvature 200 diverges; clipped, each step moves by 0.1.
    assert free.grad_norm[-1] > 100 * free.grad_norm[0]
    np.testing.assert_allclose(np.linalg.norm(clipped.params["w"] - params["w"]), 0.3, rtol=1e-6)
    with pytest.raises(ValueError, match="clip_norm"):
        dg.watch_training(loss, params, optax.sgd(0.1), batches, clip_norm=0.0)
