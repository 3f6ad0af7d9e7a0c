"""The long-range sweep at the published scale: the LRU task model, the gradient evidence,
the seed rule of the sweep, and their figures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.analysis import diagnostics, plots, tasks
from jrnn.cli.tools import format_sweep_table, tasks_main


def test_task_cells_and_the_lru_model():
    assert [tasks.task_cell(n, 4).kind for n in tasks.TASK_CELLS] == [
        "linear", "elman", "elman", "elman", "lstm", "gru", "diagonal"]
    with pytest.raises(ValueError, match="unknown cell name 'vanilla'"):
        tasks.task_cell("vanilla", 4)
    lru = tasks.task_cell("lru", 6)
    task = tasks.get_task("adding")
    params = tasks.init_task_model(lru, task, jax.random.PRNGKey(0))
    assert params["enc"]["W"].shape == (2, 6) and params["dec"]["W"].shape == (6, 6)
    assert params["cell"]["W"].shape == (6, 12)  # complex state: real and imaginary inputs
    # |lambda| starts on the long-range ring.
    radius = np.exp(-np.exp(np.asarray(params["cell"]["nu_log"])))
    assert radius.min() >= tasks.LRU_RING[0] - 1e-6 and radius.max() <= tasks.LRU_RING[1] + 1e-6
    batch = task.sample(jax.random.PRNGKey(1), 3, 20)
    assert tasks.task_outputs(lru, params, batch).shape == (3, 22, 1)
    # The gated and Elman cells keep the plain model: no extra layers.
    assert set(tasks.init_task_model(tasks.task_cell("gru", 4), task, jax.random.PRNGKey(0))) == {
        "cell", "out"}


def test_hidden_gradients_equal_grad_flow_on_a_last_step_loss():
    """On the fixed-length adding problem the loss sits on the last step, so the task's
    gradient evidence must equal diagnostics.grad_flow with that loss as the readout."""
    task = tasks.get_task("adding-sum")
    cell = tasks.task_cell("tanh", 5)
    params = tasks.init_task_model(cell, task, jax.random.PRNGKey(2))
    batch = task.sample(jax.random.PRNGKey(3), 4, 12)
    got = tasks.hidden_gradients(cell, params, task, batch)

    def readout(hs):  # [T, B, H] -> per-step losses, only the last one non-zero
        out = (hs @ params["out"]["W"] + params["out"]["b"])[..., 0]
        err = (out - batch.targets[None, :]) ** 2
        return err * (jnp.arange(hs.shape[0]) == hs.shape[0] - 1)[:, None]

    want = diagnostics.grad_flow(cell, params["cell"], jnp.swapaxes(batch.inputs, 0, 1), readout)
    np.testing.assert_allclose(got, want.hidden, rtol=1e-5, atol=1e-9)
    assert float(got[0]) < float(got[-1])  # the signal fades going back


def test_hidden_gradients_of_the_lru_stop_at_each_sequences_last_valid_step():
    task = tasks.get_task("adding")  # H&S lengths: T..1.1T, padded
    cell = tasks.task_cell("lru", 4)
    params = tasks.init_task_model(cell, task, jax.random.PRNGKey(0))
    batch = task.sample(jax.random.PRNGKey(7), 1, 40)
    n = int(batch.lengths[0])
    assert n < batch.inputs.shape[1]
    g = np.asarray(tasks.hidden_gradients(cell, params, task, batch))
    assert np.all(g[n:] == 0.0) and np.all(g[:n] > 0.0)
    # At the readout step dL/dh is the decoder's gradient there, written out by hand.
    encoded = jax.nn.gelu(batch.inputs @ params["enc"]["W"] + params["enc"]["b"])
    _, hs = jrnn.unroll(cell, params["cell"], encoded, time_major=False)
    h = hs[0, n - 1]

    def out(h):
        d = params["dec"]
        h = h + jax.nn.gelu(h @ d["W"] + d["b"])
        return (h @ params["out"]["W"] + params["out"]["b"])[0]

    want = jax.grad(lambda h: (out(h) - batch.targets[0]) ** 2)(h)
    np.testing.assert_allclose(g[n - 1], np.linalg.norm(want), rtol=1e-4)


def test_train_task_records_gradient_evidence_before_and_after():
    r = tasks.train_task(tasks.get_task("adding"), "lru", 10, steps=4, eval_every=2, eval_size=8,
                         batch_size=4, hidden_size=4, gradient_evidence=True)
    assert set(r.evidence) == {"untrained", "trained"}
    assert len(r.evidence["untrained"]) == len(r.evidence["trained"]) == 11
    assert r.evidence["untrained"] != r.evidence["trained"]


def _result(cell, length, seed, solved):
    return tasks.TaskResult("adding", cell, length, seed, 10, 1.0 if solved else 0.1, 0.15, 0.0, 0.04,
                            solved, 0.0, [(10, 0.1, 0.5)])


def test_sweep_stops_seeds_once_the_outcome_is_decided(monkeypatch):
    # Scripted outcomes: (cell, length, seed) -> solved.
    outcome = {("lstm", 100, 0): True, ("lstm", 100, 1): True, ("lstm", 500, 0): False,
               ("lstm", 500, 1): True, ("lstm", 500, 2): False,
               ("tanh", 100, 0): False, ("tanh", 100, 1): False}
    calls = []

    def fake(task, cell, length, *, seed, **kw):
        calls.append((cell, length, seed, kw["hidden_size"]))
        return _result(cell, length, seed, outcome[(cell, length, seed)])

    monkeypatch.setattr(tasks, "train_task", fake)
    results = tasks.sweep(tasks.get_task("adding"), ["lstm", "tanh"], [500, 100], seeds=[0, 1, 2],
                          need=2, per_cell={"tanh": {"hidden_size": 80}}, hidden_size=32)
    assert calls == [("lstm", 100, 0, 32), ("lstm", 100, 1, 32),  # 2 of 2: decided, no seed 2
                     ("lstm", 500, 0, 32), ("lstm", 500, 1, 32), ("lstm", 500, 2, 32),
                     ("tanh", 100, 0, 80), ("tanh", 100, 1, 80)]  # 2 failures: 2 of 3 impossible
    assert tasks.longest_solved(results, need=2) == {"lstm": 100, "tanh": None}
    assert tasks.longest_solved(results, need=1) == {"lstm": 500, "tanh": None}
    table = format_sweep_table(results, [100, 500], ["lstm", "tanh"], need=2)
    lstm_row = [line for line in table.splitlines() if line.strip().startswith("lstm")][0]
    assert lstm_row.count("*") == 1 and lstm_row.rstrip().endswith("100")
    with pytest.raises(ValueError, match="need=3"):
        tasks.sweep(tasks.get_task("adding"), ["lstm"], [100], seeds=[0, 1], need=3)
    with pytest.raises(ValueError, match="per_cell names cells that are not swept"):
        tasks.sweep(tasks.get_task("adding"), ["lstm"], [100], per_cell={"gru": {}})


def test_evidence_and_loss_figures(tmp_path):
    r = _result("lstm", 100, 0, True)._replace(
        history=[(250, 0.2, 0.1), (500, 0.1, 0.5)],
        evidence={"untrained": [1e-9, 1e-3, 1.0], "trained": [1e-2, 0.1, 1.0]})
    written = plots.loss_curves_figure([r], str(tmp_path / "loss.png"), baseline=0.17, batch_size=64)
    written += plots.task_gradients_figure([r], str(tmp_path / "grads.png"))
    for path in written:
        assert 0 < (tmp_path / path).stat().st_size < 200_000
    with pytest.raises(ValueError, match="gradient evidence"):
        plots.task_gradients_figure([_result("tanh", 10, 0, False)], str(tmp_path / "x.png"))


def test_tasks_cli_need_is_checked(capsys, tmp_path):
    assert tasks_main(["--seeds", "0,1", "--need", "3", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--need must be between 1 and the number of seeds (2)" in err[0]


def test_lru_outputs_from_the_parallel_scan_equal_the_sequential_unroll():
    task = tasks.get_task("adding")
    cell = tasks.task_cell("lru", 5)
    params = tasks.init_task_model(cell, task, jax.random.PRNGKey(4))
    batch = task.sample(jax.random.PRNGKey(5), 3, 30)  # padded, lengths differ
    encoded = jax.nn.gelu(batch.inputs @ params["enc"]["W"] + params["enc"]["b"])
    _, hs = jrnn.unroll(cell, params["cell"], encoded, lengths=batch.lengths, time_major=False)
    d = params["dec"]
    hs = hs + jax.nn.gelu(hs @ d["W"] + d["b"])
    want = hs @ params["out"]["W"] + params["out"]["b"]
    np.testing.assert_allclose(tasks.task_outputs(cell, params, batch), want, rtol=1e-4, atol=1e-5)


def test_copy_evidence_follows_only_the_recall_loss():
    """The copy task's gradient evidence is the gradient of the ten recalled symbols' loss: no
    step after the last recall has any, and the blanks' own losses add nothing."""
    task = tasks.get_task("copy")
    cell = tasks.task_cell("tanh", 6)
    params = tasks.init_task_model(cell, task, jax.random.PRNGKey(0))
    batch = task.sample(jax.random.PRNGKey(1), 4, 5)  # 25 steps, recall on the last ten
    g = np.asarray(tasks.hidden_gradients(cell, params, task, batch))
    out = tasks.task_outputs(cell, params, batch)
    # dL/dh at the last step is the readout's gradient of that step's cross-entropy (/ 10 symbols).
    logits = out[:, -1]
    p = jax.nn.softmax(logits)
    dlogits = (p - jax.nn.one_hot(batch.targets[:, -1], 10)) / 10
    want = np.mean(np.linalg.norm(np.asarray(dlogits @ params["out"]["W"].T), axis=-1))
    np.testing.assert_allclose(g[-1], want, rtol=1e-5)
    # With the blanks' losses it would be larger early on; here the early steps get only what
    # flows back from the recall.
    full = task._replace(recall_loss=None)
    g_full = np.asarray(tasks.hidden_gradients(cell, params, full, batch))
    assert np.all(g[:10] < g_full[:10])
