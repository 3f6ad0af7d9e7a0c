"""The 0.3 API from a JAX user's side: their own cell, model and optimizer through `fit`;
cells and models as values."""

import functools
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn.data import Corpus, Vocabulary
from jrnn.training import checkpoint as ckpt
from jrnn.training.fit import Callbacks, FitError, fit, load_for_inference

SENTENCES = ["john is driving a car", "mary is driving a truck", "john is feeding a cat",
             "mary is feeding a dog"]


def _corpus() -> Corpus:
    vocab = Vocabulary.build(SENTENCES)
    ids = lambda reps: np.asarray([i for s in SENTENCES * reps for i in vocab.encode(s)], np.int32)
    return Corpus(vocab, ids(20), ids(3), ids(3), "toy")


def leaky_cell(hidden_size: int, activation) -> jrnn.Cell:
    """Not one of jrnn's cells: h_t = 0.5 h_{t-1} + 0.5 act(W x_t + W_h h_{t-1} + b)."""

    def init(key, input_size, dtype=jnp.float32):
        k1, k2 = jax.random.split(key)
        s = hidden_size ** -0.5
        return {"W": jax.random.uniform(k1, (input_size, hidden_size), dtype, -s, s),
                "W_h": jax.random.uniform(k2, (hidden_size, hidden_size), dtype, -s, s),
                "b": jnp.zeros((hidden_size,), dtype)}

    def step(params, h, x_proj):
        h = 0.5 * h + 0.5 * activation(x_proj + h @ params["W_h"])
        return h, h

    return jrnn.Cell(
        kind="leaky", hidden_size=hidden_size, num_gates=1, init=init,
        initial_carry=lambda batch_shape=(), dtype=jnp.float32: jnp.zeros(
            (*((batch_shape,) if isinstance(batch_shape, int) else batch_shape), hidden_size),
            dtype),
        project=lambda params, xs: xs @ params["W"] + params["b"], step=step,
        hidden=lambda h: h)


def _user_model_and_optimizer(vocab_size):
    cell = leaky_cell(12, activation=lambda z: jnp.sin(z) * 0.8)
    model = jrnn.rnn_lm(vocab_size, cell=cell, embed_size=10, num_layers=1, dropout=0.1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-2, warmup_steps=10, decay_steps=200)
    return model, optax.adamw(schedule, weight_decay=1e-3)


def _leaves_equal(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_user_cell_model_and_optimizer_train_and_resume_bit_for_bit(tmp_path):
    corpus = _corpus()
    loop = jrnn.TrainConfig(epochs=2, batch_size=4, bptt=6, seed=3)
    model, opt = _user_model_and_optimizer(len(corpus.vocab))
    whole = fit(loop, corpus, str(tmp_path / "whole"), model=model, optimizer=opt)
    assert whole.complete and whole.test_ppl is not None
    assert whole.test_ppl < len(corpus.vocab)  # it learned something
    assert whole.history[0]["lr"] is None  # the schedule lives in the optimizer

    def interrupt_once(epoch, i, n, m, tok_s, fired=[]):
        if epoch == 0 and i == 5 and not fired:  # mid-epoch: carry and running sums saved
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    part_dir = str(tmp_path / "part")
    model, opt = _user_model_and_optimizer(len(corpus.vocab))  # built again, as a new process would
    part = fit(loop, corpus, part_dir, model=model, optimizer=opt,
               callbacks=Callbacks(on_window=interrupt_once))
    assert not part.complete
    meta, _ = ckpt.load_raw(os.path.join(part_dir, "last.ckpt"))
    assert (meta["epoch"], meta["window"]) == (0, 6) and meta["given"] == ["model", "optimizer"]

    with pytest.raises(FitError, match="model and optimizer came from Python"):
        fit(None, corpus, part_dir, resume=True)
    with pytest.raises(ckpt.CheckpointError, match="given in Python"):
        load_for_inference(os.path.join(part_dir, "last.ckpt"))

    done = fit(None, corpus, part_dir, model=model, optimizer=opt, resume=True)
    assert done.complete
    _leaves_equal(whole.state, done.state)  # params, adamw moments, schedule count, key
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")}
                       for r in h]
    assert strip(done.history) == strip(whole.history)
    assert done.test_ppl == whole.test_ppl


def test_fit_refuses_what_is_not_a_model_or_an_optimizer(tmp_path):
    corpus = _corpus()
    model, _ = _user_model_and_optimizer(len(corpus.vocab))
    with pytest.raises(FitError, match="optax.GradientTransformation"):
        fit(None, corpus, str(tmp_path / "a"), model=model, optimizer="adam")
    with pytest.raises(FitError, match="LanguageModel interface"):
        fit(None, corpus, str(tmp_path / "b"), model=object(), optimizer=optax.sgd(0.1))
    other = jrnn.rnn_lm(len(corpus.vocab) + 1, embed_size=4, hidden_size=4, num_layers=1)
    with pytest.raises(FitError, match="vocab_size"):
        fit(None, corpus, str(tmp_path / "c"), model=other, optimizer=optax.sgd(0.1))


def test_equal_cells_and_models_are_equal_values_and_compile_once():
    assert jrnn.lstm(8) == jrnn.lstm(hidden_size=8) and hash(jrnn.lstm(8)) == hash(jrnn.lstm(8))
    assert jrnn.lstm(8) != jrnn.lstm(8, forget_bias=1.0) and jrnn.gru(8) != jrnn.gru(9)
    assert jrnn.remat(jrnn.gru(3)) == jrnn.remat(jrnn.gru(3))
    assert jrnn.elman(4, activation=jnp.sin) == jrnn.elman(4, jnp.sin) != jrnn.elman(4)
    with pytest.raises(ValueError):
        jrnn.elman(True)
    model = lambda: jrnn.rnn_lm(20, cell=jrnn.gru(6), embed_size=5, num_layers=1)
    assert model() == model() and hash(model()) == hash(model())

    traces = []

    @functools.partial(jax.jit, static_argnums=0)
    def run(cell, params, xs):
        traces.append(cell)
        return jrnn.unroll(cell, params, xs)[1]

    params = jrnn.lstm(8).init(jax.random.PRNGKey(0), 3)
    xs = jnp.ones((4, 2, 3))
    first = run(jrnn.lstm(8), params, xs)
    second = run(jrnn.lstm(hidden_size=8), params, xs)
    assert len(traces) == 1  # the second, separately made cell found the first compilation
    np.testing.assert_array_equal(first, second)
    run(jrnn.lstm(8, forget_bias=1.0), params, xs)
    assert len(traces) == 2


def test_rnn_lm_takes_a_stack_of_cells():
    model = jrnn.rnn_lm(25, cell=[jrnn.lstm(8, proj_size=3), jrnn.gru(5)], embed_size=6)
    params = model.init(jax.random.PRNGKey(0))
    assert params["layers"][1]["W"].shape == (3, 15) and params["out"]["W"].shape == (5, 25)
    logits, carry = model.apply(params, jnp.zeros((2, 7), jnp.int32))
    assert logits.shape == (2, 7, 25) and carry[0].c.shape == (2, 8)
    with pytest.raises(ValueError, match="belongs to the cell"):
        jrnn.rnn_lm(25, cell=jrnn.lstm(4), hidden_size=4)
    with pytest.raises(ValueError, match="2 cells were given"):
        jrnn.rnn_lm(25, cell=[jrnn.lstm(4), jrnn.lstm(4)], num_layers=3)
    with pytest.raises(ValueError, match="a jrnn.Cell or a tuple of them"):
        jrnn.rnn_lm(25, cell=3)


def test_method_and_precision_are_separate_arguments():
    """0.2's method="pallas-bf16" is method="pallas", precision="bfloat16"; nothing else takes bf16."""
    from jrnn.core import pallas

    cell = jrnn.lstm(8)
    params = cell.init(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3))
    _, got = jrnn.unroll(cell, params, xs, method="pallas", precision="bfloat16")  # interpret mode
    _, want = pallas.sequence(cell, bf16=True)(params, cell.project(params, xs),
                                                cell.initial_carry((2,)))
    np.testing.assert_array_equal(got, want)
    _, f32 = jrnn.unroll(cell, params, xs, method="scan")
    assert 0 < float(jnp.max(jnp.abs(got - f32))) < 0.05  # bf16 operands: close, not equal
    with pytest.raises(ValueError, match="implemented by method='pallas'"):
        jrnn.unroll(cell, params, xs, method="scan", precision="bfloat16")
    with pytest.raises(ValueError, match="method must be one of"):
        jrnn.unroll(cell, params, xs, method="pallas-bf16")
    with pytest.raises(ValueError, match="recurrence_precision='bfloat16' is implemented"):
        jrnn.rnn_lm(20, recurrence_precision="bfloat16")
    model = jrnn.rnn_lm(20, embed_size=3, hidden_size=8, num_layers=1, method="pallas",
                        recurrence_precision="bfloat16")
    assert model.config.recurrence_precision == "bfloat16"


def test_params_of_another_cell_kind_are_named_before_jax_broadcasts():
    lstm_params = jrnn.lstm(8).init(jax.random.PRNGKey(0), 3)
    with pytest.raises(ValueError, match="not this 'gru' cell's: they hold .*'W': \\(3, 32\\)"):
        jrnn.unroll(jrnn.gru(8), lstm_params, jnp.ones((4, 2, 3)))
