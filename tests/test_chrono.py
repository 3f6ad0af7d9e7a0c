"""Chrono initialization of the LSTM's gates, and the adding task's readout at the last valid step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.analysis import tasks


def test_chrono_draws_forget_biases_log_uniform_and_input_biases_opposite():
    H, T_max = 512, 100
    plain = jrnn.lstm(H).init(jax.random.PRNGKey(0), 3)
    chrono = jrnn.lstm(H, chrono=T_max).init(jax.random.PRNGKey(0), 3)
    b_i, b_f, rest = chrono["b"][:H], chrono["b"][H:2 * H], chrono["b"][2 * H:]
    assert float(b_f.min()) >= 0.0 and float(b_f.max()) <= np.log(T_max - 1) + 1e-6
    np.testing.assert_allclose(b_i, -b_f)
    np.testing.assert_array_equal(rest, plain["b"][2 * H:])  # g and o untouched
    for k in ("W", "W_h"):
        np.testing.assert_array_equal(chrono[k], plain[k])
    # exp(b_f) is uniform on [1, T_max - 1]: its mean is T_max / 2, its quartiles evenly spaced.
    u = np.exp(np.asarray(b_f))
    assert abs(u.mean() - T_max / 2) < 5.0
    q = np.quantile(u, [0.25, 0.5, 0.75])
    np.testing.assert_allclose(q, [1 + 0.25 * 98, 1 + 0.5 * 98, 1 + 0.75 * 98], atol=8.0)
    # The memory time scale 1 / (1 - f) at the start: spread up to ~T_max, not ~1.4-3.7.
    f = jax.nn.sigmoid(b_f)
    assert float(jnp.max(1 / (1 - f))) > 0.5 * T_max


def test_chrono_arguments_are_checked():
    with pytest.raises(ValueError, match="chrono must be an int >= 3"):
        jrnn.lstm(4, chrono=2)
    with pytest.raises(ValueError, match="leave forget_bias at 0"):
        jrnn.lstm(4, chrono=10, forget_bias=1.0)
    with pytest.raises(ValueError, match="chrono initialization is for LSTM"):
        jrnn.make_cell("gru", 4, chrono=10)
    with pytest.raises(ValueError, match="lstm_init must be"):
        tasks.train_task(tasks.adding_task(), "lstm", 10, steps=1, lstm_init="zeros")


def test_adding_readout_is_the_last_valid_step():
    """hs97 sequences have different lengths: the prediction is read at lengths - 1,
    not at the padded end (hand-built outputs)."""
    batch = tasks.adding_problem(jax.random.PRNGKey(3), 4, 20)
    assert batch.lengths is not None and len(set(np.asarray(batch.lengths).tolist())) > 1
    T = batch.inputs.shape[1]
    # outputs[b, t, 0] = 1000 * b + t: the readout names the step it read.
    outputs = (1000.0 * jnp.arange(4)[:, None] + jnp.arange(T)[None, :])[..., None]
    got = np.asarray(tasks._last_output(outputs, batch))
    np.testing.assert_array_equal(got, 1000.0 * np.arange(4) + np.asarray(batch.lengths) - 1)
    # And the task's loss uses exactly that readout.
    task = tasks.adding_task()
    want = np.mean((got - np.asarray(batch.targets)) ** 2)
    np.testing.assert_allclose(float(task.loss(outputs, batch)), want, rtol=1e-6)
