"""One train-step core: ``make_update`` under ``make_train_step``, ``watch_training`` and ``train_task``."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn.analysis import diagnostics as dg
from jrnn.analysis import tasks
from jrnn.models.losses import sequence_loss
from jrnn.training import step as step_module
from jrnn.training.step import init_train_state, make_train_step, make_update

VOCAB = 11


def _model_and_batches():
    model = jrnn.rnn_lm(VOCAB, embed_size=6, hidden_size=6, num_layers=1)
    x = (jnp.arange(16).reshape(2, 8) * 3) % VOCAB
    return model, [(x, (x + k) % VOCAB) for k in (1, 2, 3)]


def _lm_loss(model):
    # make_train_step's objective: summed over time, averaged over the batch, no carry in.
    return lambda params, batch: sequence_loss(model, params, *batch, batch_mean=True)[0]


def _tree_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y), equal_nan=True)
               for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def _run_train_step(model, params, opt, batches, **kwargs):
    state = init_train_state(params, opt, jax.random.PRNGKey(1))
    step = make_train_step(model, opt, donate=False, **kwargs)
    metrics = []
    for x, y in batches:
        state, _, m = step(state, x, y)  # every window starts from the zero carry, as the loss does
        metrics.append(m)
    return state, metrics


def test_watch_training_clips_and_measures_like_make_train_step():
    model, batches = _model_and_batches()
    params = model.init(jax.random.PRNGKey(0))
    opt = optax.adam(0.1)
    state, metrics = _run_train_step(model, params, opt, batches, clip_norm=0.05)
    trace = dg.watch_training(_lm_loss(model), params, opt, batches, clip_norm=0.05)
    assert all(float(m["grad_norm"]) > 0.05 for m in metrics)  # the clipping acts on every step
    np.testing.assert_allclose(trace.grad_norm, [float(m["grad_norm"]) for m in metrics], rtol=1e-6)
    np.testing.assert_allclose(trace.loss, [float(m["loss"]) for m in metrics], rtol=1e-6)
    assert trace.finite.all() and trace.first_nonfinite is None
    for a, b in zip(jax.tree_util.tree_leaves(trace.params), jax.tree_util.tree_leaves(state.params)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_a_nonfinite_step_is_flagged_alike_and_skipped_by_the_core():
    model, batches = _model_and_batches()
    params = model.init(jax.random.PRNGKey(0))
    params["out"]["b"] = params["out"]["b"].at[0].set(jnp.nan)  # NaN logits: loss and gradients break
    opt = optax.sgd(0.1)
    state, (m,) = _run_train_step(model, params, opt, batches[:1], clip_norm=1.0, skip_nonfinite=True)
    assert not bool(m["finite"]) and bool(m["skipped"])
    assert _tree_equal(state.params, params)  # the update was dropped
    trace = dg.watch_training(_lm_loss(model), params, opt, batches[:1], clip_norm=1.0)
    names = step_module.leaf_names(params)
    assert trace.first_nonfinite.parameters == tuple(
        n for n, ok in zip(names, np.asarray(m["finite_leaves"])) if not ok)
    assert trace.first_nonfinite.loss_finite == bool(jnp.isfinite(m["loss"]))


def test_make_update_clips_skips_and_carries_aux():
    loss = lambda p, s: (jnp.sum((s * p["w"]) ** 2), s)
    opt = optax.sgd(1.0)
    update = jax.jit(make_update(loss, opt, clip_norm=1.0, skip_nonfinite=True, has_aux=True))
    params = {"w": jnp.ones(4)}
    new, _, aux, m = update(params, opt.init(params), 10.0)
    assert float(aux) == 10.0
    np.testing.assert_allclose(float(m["grad_norm"]), 400.0, rtol=1e-6)  # ||2 s^2 w|| before clipping
    np.testing.assert_allclose(np.linalg.norm(new["w"] - params["w"]), 1.0, rtol=1e-6)
    new, _, _, m = update(params, opt.init(params), 1e200)
    assert bool(m["skipped"]) and not bool(m["finite"]) and _tree_equal(new, params)
    with pytest.raises(ValueError, match="clip_norm"):
        make_update(loss, opt, clip_norm=-1.0)


def test_every_training_loop_builds_its_step_with_make_update(monkeypatch):
    calls = []

    def spy(loss_fn, optimizer, **kwargs):
        calls.append(kwargs["clip_norm"])
        return make_update(loss_fn, optimizer, **kwargs)

    for module in (step_module, dg, tasks):
        monkeypatch.setattr(module, "make_update", spy)
    model, batches = _model_and_batches()
    params = model.init(jax.random.PRNGKey(0))
    make_train_step(model, optax.sgd(0.1), clip_norm=2.0, jit=False)
    dg.watch_training(_lm_loss(model), params, optax.sgd(0.1), batches[:1], clip_norm=3.0)
    tasks.train_task(tasks.get_task("adding"), "tanh", 10, steps=2, eval_every=2, batch_size=4,
                     hidden_size=4, eval_size=8, clip_norm=4.0)
    assert calls == [2.0, 3.0, 4.0]
