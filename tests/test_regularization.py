"""Regularization inside the recurrence: locked (variational) dropout, recurrent dropout,
DropConnect on W_h and embedding dropout -- masks, expectations, determinism, evaluation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn.cli import main
from jrnn.core.masking import dropout
from jrnn.models.lm import _recurrent_dropout


def _locked_dropout(key, rate, x):
    return dropout(key, rate, x, shared_axes=(0,))

V, B, T = 13, 3, 6
OPTIONS = dict(variational=True, recurrent_dropout=0.3, weight_dropout=0.4, embedding_dropout=0.2)


def _model(**kw):
    return jrnn.rnn_lm(V, embed_size=5, hidden_size=5, num_layers=2, dropout=0.3, **kw)


def _tokens(seed=0):
    return jax.random.randint(jax.random.PRNGKey(seed), (B, T), 0, V)


def test_locked_mask_is_constant_across_time_and_unbiased():
    x = jnp.ones((T, B, 7))
    y = _locked_dropout(jax.random.PRNGKey(0), 0.5, x)
    assert bool((y == y[:1]).all())  # the same mask at every timestep
    assert bool((y == 0).any()) and bool((y == 2.0).any())
    mean = jnp.mean(jax.vmap(lambda k: _locked_dropout(k, 0.5, x))(jax.random.split(jax.random.PRNGKey(1), 4000)), 0)
    np.testing.assert_allclose(np.asarray(mean), 1.0, atol=0.06)


def test_recurrent_mask_is_one_per_sequence():
    cell = jrnn.lstm(4)
    params = cell.init(jax.random.PRNGKey(0), 3)
    masked = _recurrent_dropout(cell, jax.random.PRNGKey(1), 0.5, 2, jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(2), (5, 2, 3))
    # W_h = 0 makes the state irrelevant: the mask must then change nothing.
    zero = {**params, "W_h": jnp.zeros_like(params["W_h"])}
    chex.assert_trees_all_close(jrnn.unroll(masked, zero, xs), jrnn.unroll(cell, zero, xs), atol=1e-6)
    assert not np.allclose(np.asarray(jrnn.unroll(masked, params, xs)[1]),
                           np.asarray(jrnn.unroll(cell, params, xs)[1]))
    assert masked.sequence_step is not masked.step  # visible fallback to autodiff
    with pytest.raises(ValueError, match="GRU"):
        jrnn.rnn_lm(V, cell="gru", recurrent_dropout=0.1)


def test_weight_dropout_mask_is_shared_by_the_batch():
    """DropConnect: one W_h mask per forward pass, so identical sequences stay identical."""
    model = jrnn.rnn_lm(V, embed_size=5, hidden_size=5, num_layers=1, weight_dropout=0.5)
    params = model.init(jax.random.PRNGKey(0))
    same = jnp.tile(_tokens()[:1], (B, 1))
    logits, _ = model.apply(params, same, key=jax.random.PRNGKey(3))
    chex.assert_trees_all_close(logits[0], logits[1], logits[2])
    plain, _ = model.apply(params, same)
    assert not np.allclose(np.asarray(logits), np.asarray(plain))


def test_options_are_deterministic_given_the_key_and_off_at_evaluation():
    model, plain = _model(**OPTIONS), _model()
    params = model.init(jax.random.PRNGKey(0))
    tokens = _tokens()
    a, _ = model.apply(params, tokens, key=jax.random.PRNGKey(7))
    b, _ = model.apply(params, tokens, key=jax.random.PRNGKey(7))
    c, _ = model.apply(params, tokens, key=jax.random.PRNGKey(8))
    chex.assert_trees_all_equal(a, b)
    assert not np.allclose(np.asarray(a), np.asarray(c))
    # No key: evaluation, exactly the unregularized model with the same params.
    chex.assert_trees_all_close(model.apply(params, tokens)[0], plain.apply(params, tokens)[0])


def test_expected_output_matches_the_undropped_model_for_a_linear_readout():
    """With dropout only on the embeddings (a linear path to the logits when W_h = 0 and the
    cell is linear), the average over keys is the undropped output."""
    model = jrnn.rnn_lm(V, cell="linear", embed_size=4, hidden_size=4, num_layers=1, dropout=0.5,
                        variational=True, embedding_dropout=0.3)
    params = model.init(jax.random.PRNGKey(0))
    params["layers"][0]["W_h"] = jnp.zeros_like(params["layers"][0]["W_h"])
    tokens = _tokens()
    want, _ = model.apply(params, tokens)
    keys = jax.random.split(jax.random.PRNGKey(5), 3000)
    got = jnp.mean(jax.vmap(lambda k: model.apply(params, tokens, key=k)[0])(keys), 0)
    # Output dropout (0.5) and embedding dropout (0.3) are independent and unbiased.
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=0.05)


def test_train_step_uses_the_key_and_learns():
    model = jrnn.rnn_lm(V, embed_size=8, hidden_size=8, num_layers=1, dropout=0.0,
                        weight_dropout=0.3)
    opt = optax.adam(0.05)
    state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
    step = jrnn.make_train_step(model, opt, clip_norm=5.0)
    x = jnp.tile(jnp.arange(8) % V, (2, 1))
    losses = []
    for _ in range(30):
        state, _, m = step(state, x, (x + 1) % V)
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.5 * losses[0] and all(np.isfinite(losses))


def test_cli_flags(tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "--out", out, "--epochs", "1", "--max-windows", "3", "--layers", "2",
                 "--embed-size", "8", "--hidden-size", "8", "--dropout", "0.2", "--variational",
                 "--recurrent-dropout", "0.2", "--weight-dropout", "0.3", "--embedding-dropout",
                 "0.1", "--quiet"]) == 0
    assert main(["train", "--out", str(tmp_path / "g"), "--cell", "gru", "--recurrent-dropout",
                 "0.2"]) == 2
    assert "--recurrent-dropout is for the LSTM" in capsys.readouterr().err
