"""The jitted train step: BPTT by jax.grad, pre-clip norm, finiteness, truncation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn import reference as ref
from tests.helpers import KINDS, to_np


def _setup(kind="lstm", V=12, lr=0.5, **kw):
    model = jrnn.rnn_lm(V, cell=kind, embed_size=8, hidden_size=16, num_layers=1, **kw)
    opt = optax.sgd(lr)
    state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
    return model, opt, state


@pytest.mark.parametrize("kind", KINDS)
def test_train_step_lowers_loss_on_learnable_sequence(kind):
    V = 12
    model, opt, state = _setup(kind, V, lr=0.1 if kind == "linear" else 1.0)
    step = jrnn.make_train_step(model, opt, clip_norm=5.0)
    seq = jnp.tile(jnp.arange(V), (4, 4))  # periodic: the next token is fully predictable
    x, y = seq[:, :-1], seq[:, 1:]
    losses = []
    for _ in range(60):
        state, _, m = step(state, x, y)
        losses.append(float(m["token_nll"]))
        assert bool(m["finite"])
    # The linear recurrence has no squashing and its loss spikes now and then
    # (the lecture's exploding case), so the last few steps are looked at together.
    assert min(losses[-10:]) < 0.3 * losses[0], losses[::10]
    assert int(state.step) == 60


def test_metrics_report_pre_clip_norm_and_update_is_clipped():
    V = 10
    model = jrnn.rnn_lm(V, cell="elman", embed_size=4, hidden_size=6, num_layers=1)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    x = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, V)
    y = jax.random.randint(jax.random.PRNGKey(2), (3, 5), 0, V)
    want = ref.lm_grads("elman", to_np(params), x, y)
    want_norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree_util.tree_leaves(want))) / 3  # batch mean
    opt = optax.sgd(1.0)
    state = jrnn.init_train_state(params, opt, jax.random.PRNGKey(0))
    step = jrnn.make_train_step(model, opt, clip_norm=0.01, donate=False)
    new, _, m = step(state, x, y)
    np.testing.assert_allclose(float(m["grad_norm"]), want_norm, rtol=1e-9)
    delta = jax.tree_util.tree_map(lambda a, b: a - b, new.params, params)
    np.testing.assert_allclose(float(optax.global_norm(delta)), 0.01, rtol=1e-9)
    np.testing.assert_allclose(float(m["loss"]), ref.lm_loss("elman", to_np(params), x, y)[0] / 3,
                               rtol=1e-12)


def test_nonfinite_is_reported_and_can_be_skipped():
    model, opt, state = _setup("elman")
    bad = jax.tree_util.tree_map(lambda a: a, state.params)
    bad["out"]["b"] = bad["out"]["b"].at[0].set(jnp.inf)
    x = jnp.zeros((2, 4), jnp.int32)
    state = state._replace(params=bad)
    step = jrnn.make_train_step(model, opt, skip_nonfinite=True, donate=False)
    new, _, m = step(state, x, x)
    assert not bool(m["finite"]) and bool(m["skipped"])
    chex.assert_trees_all_equal(new.params, state.params)


def test_truncated_bptt_carry_has_no_gradient_path_and_matches_full_forward():
    V = 12
    model, opt, state = _setup("gru", V)
    step = jrnn.make_train_step(model, opt, donate=False)
    seq = jax.random.randint(jax.random.PRNGKey(3), (2, 21), 0, V)
    # The carry after window 1 equals the forward carry at that point.
    _, carry, _ = step(state, seq[:, :10], seq[:, 1:11])
    _, want = model.apply(state.params, seq[:, :10])
    chex.assert_trees_all_close(carry, want, atol=1e-6)
    # Gradient w.r.t. the incoming carry of the next window is not part of BPTT:
    # differentiating through the step's returned carry gives zeros.
    def carry_out(p):
        return jnp.sum(step.__wrapped__(state._replace(params=p), seq[:, :10], seq[:, 1:11])[1][0])
    g = jax.grad(carry_out)(state.params)
    assert float(optax.global_norm(g)) == 0.0


def test_train_step_with_dropout_is_deterministic_in_state_key():
    model, opt, state = _setup("lstm", dropout=0.5)
    step = jrnn.make_train_step(model, opt, donate=False)
    x = jax.random.randint(jax.random.PRNGKey(3), (2, 6), 0, 12)
    a = step(state, x, x)[2]["loss"]
    b = step(state, x, x)[2]["loss"]
    c = step(state._replace(key=jax.random.PRNGKey(99)), x, x)[2]["loss"]
    assert float(a) == float(b) and float(a) != float(c)


def test_eval_step_perplexity_matches_reference():
    V = 12
    model = jrnn.rnn_lm(V, cell="lstm", embed_size=4, hidden_size=5, num_layers=2)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    seq = jax.random.randint(jax.random.PRNGKey(3), (2, 13), 0, V)
    ev = jrnn.make_eval_step(model)
    nll, n, _ = ev(params, seq[:, :-1], seq[:, 1:])
    want, _ = ref.lm_loss("lstm", to_np(params), seq[:, :-1], seq[:, 1:])
    np.testing.assert_allclose(float(nll), want, rtol=1e-12)
    assert int(n) == 24


def test_bad_clip_norm():
    model, opt, _ = _setup()
    with pytest.raises(ValueError, match="clip_norm"):
        jrnn.make_train_step(model, opt, clip_norm=0.0)


def test_fused_epoch_equals_window_by_window_loop():
    from jrnn.data import batchify, bptt_windows

    V = 12
    model = jrnn.rnn_lm(V, cell="lstm", embed_size=6, hidden_size=7, num_layers=2)
    opt = optax.sgd(0.3)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    ids = np.asarray(jax.random.randint(jax.random.PRNGKey(5), (4 * 31,), 0, V))
    wins = list(bptt_windows(batchify(ids, 4), 6))  # 30 steps per stream: 5 windows of 6
    xs = jnp.stack([w[0] for w in wins])
    ys = jnp.stack([w[1] for w in wins])
    seen = []
    epoch = jrnn.make_train_epoch(model, opt, clip_norm=1.0,
                                  on_progress=lambda i, m: seen.append(int(i)), progress_every=2)
    copy = lambda t: jax.tree_util.tree_map(jnp.array, t)  # the epoch donates its state
    state_a = jrnn.init_train_state(copy(params), opt, jax.random.PRNGKey(1))
    state_a, carry_a, ms = epoch(state_a, xs, ys)
    jax.block_until_ready(state_a)
    step = jrnn.make_train_step(model, opt, clip_norm=1.0, donate=False)
    state_b = jrnn.init_train_state(params, opt, jax.random.PRNGKey(1))
    carry_b, losses = None, []
    for x, y in wins:
        state_b, carry_b, m = step(state_b, x, y, carry_b)
        losses.append(float(m["loss"]))
    chex.assert_trees_all_close(state_a.params, state_b.params, atol=1e-10)
    chex.assert_trees_all_close(carry_a, carry_b, atol=1e-10)
    np.testing.assert_allclose(np.asarray(ms["loss"]), losses, rtol=1e-10)
    assert ms["grad_norm"].shape == (5,) and sorted(seen) == [1, 3]


def test_gradient_sums_of_squares_flag_nonfinite_leaves_real_and_complex():
    from jrnn.training.step import _sum_sq

    assert float(_sum_sq(jnp.array([3.0, 4.0]))) == 25.0
    assert float(_sum_sq(jnp.array([3.0 + 4.0j, 1.0j]))) == 26.0
    assert _sum_sq(jnp.array([3.0 + 4.0j, 1.0j])).dtype.kind == "f"  # a real scalar
    for bad in (jnp.nan, jnp.inf, -jnp.inf):
        assert not bool(jnp.isfinite(_sum_sq(jnp.array([1.0, bad]))))


def test_finite_flags_keep_large_finite_leaves_whose_squares_overflow():
    from jrnn.training.step import _norm_and_finite_flags

    big = jnp.full((4,), 1e30, jnp.float32)  # finite, but 1e60 overflows float32
    small = jnp.array([3.0, 4.0], jnp.float32)
    norm, flags = _norm_and_finite_flags([small, big])
    assert not bool(jnp.isfinite(norm))
    assert flags.tolist() == [True, True]
    norm, flags = _norm_and_finite_flags([small, big, jnp.array([1.0, jnp.nan], jnp.float32)])
    assert flags.tolist() == [True, True, False]
    norm, flags = _norm_and_finite_flags([small, jnp.array([0.0, 0.0])])
    assert float(norm) == 5.0 and flags.tolist() == [True, True]
