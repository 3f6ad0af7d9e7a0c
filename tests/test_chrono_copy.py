"""train_task's optimizer and chrono T_max choices, and the chrono copy study (benchmarks/chrono_copy.py)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jrnn.analysis import tasks
from tests.helpers import load_benchmark


def _study():
    return load_benchmark("chrono_copy")


def test_rmsprop_is_torchs_form_with_a_moving_average_of_0_9():
    """v = 0.9 v + 0.1 g^2 from 0, no bias correction, step lr g / (sqrt(v) + 1e-8)."""
    lr = 1e-3
    opt = tasks.task_optimizer("rmsprop", lr)
    p = jnp.array([0.5, -1.0, 2.0])
    state = opt.init(p)
    want_p, v = np.asarray(p, np.float64), np.zeros(3)
    for g in ([1.0, -2.0, 1e-6], [0.5, 0.0, -3.0], [-1.0, 4.0, 2e-7]):
        g = np.asarray(g)
        v = 0.9 * v + 0.1 * g**2
        want_p = want_p - lr * g / (np.sqrt(v) + 1e-8)
        u, state = opt.update(jnp.asarray(g), state, p)
        p = optax.apply_updates(p, u)
    # The first gradient of 1e-6 pins eps outside the square root: there it moves its weight by
    # about lr / sqrt(0.1) = 3e-3; with eps inside (optax's default) by 1e-5.
    np.testing.assert_allclose(np.asarray(p), want_p, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tasks.task_optimizer("sgd", lr)


def test_train_task_takes_the_optimizer_and_chrono_tmax(monkeypatch):
    seen = []
    task_cell = tasks.task_cell

    def spy(name, hidden_size, **kwargs):
        seen.append(kwargs)
        return task_cell(name, hidden_size, **kwargs)

    monkeypatch.setattr(tasks, "task_cell", spy)
    task = tasks.get_task("copy")
    kw = dict(steps=2, batch_size=4, hidden_size=4, eval_size=8, eval_every=2, stop_when_solved=False)
    r = tasks.train_task(task, "lstm", 6, optimizer="rmsprop", learning_rate=1e-3, clip_norm=None,
                         chrono_tmax=9, **kw)
    assert seen[-1] == {"lstm_init": "chrono", "longest": 9}
    assert r.steps == 2 and np.isfinite(r.loss)
    tasks.train_task(task, "lstm", 6, **kw)  # the default: the longest sequence, T + 20
    assert seen[-1] == {"lstm_init": "chrono", "longest": 26}
    with pytest.raises(ValueError, match="chrono_tmax is for an LSTM"):
        tasks.train_task(task, "lstm", 6, lstm_init="forget-bias", chrono_tmax=9, **kw)
    with pytest.raises(ValueError, match="chrono_tmax is for an LSTM"):
        tasks.train_task(task, "gru", 6, chrono_tmax=9, **kw)
    with pytest.raises(ValueError, match="chrono_tmax must be an int >= 3"):
        tasks.train_task(task, "lstm", 6, chrono_tmax=2, **kw)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        tasks.train_task(task, "lstm", 6, optimizer="sgd", **kw)


def test_chrono_tmax_reaches_the_forget_biases():
    """With T_max the forget biases lie in [0, log(T_max - 1)] and b_i = -b_f."""
    cell = tasks.task_cell("lstm", 256, longest=750)
    b = cell.init(jax.random.PRNGKey(0), tasks.COPY_CLASSES)["b"]
    b_i, b_f = np.asarray(b[:256]), np.asarray(b[256:512])
    assert b_f.min() >= 0 and b_f.max() <= np.log(749) + 1e-6 and b_f.max() > np.log(600)
    np.testing.assert_allclose(b_i, -b_f)


def test_each_row_changes_one_factor_toward_tallec_and_ollivier():
    study = _study()
    rows, jrnn, to = study.ROWS, study.ROWS["jrnn"], study.ROWS["full"]
    diff = lambda a, b: {k for k in a if a[k] != b[k]}
    assert diff(rows["size"], jrnn) == {"hidden_size"}
    assert diff(rows["optimizer"], jrnn) == {"optimizer", "learning_rate", "clip_norm"}
    assert diff(rows["tmax"], jrnn) == {"tmax"}
    assert diff(rows["standard"], jrnn) == {"lstm_init", "tmax"} and rows["standard"]["tmax"] is None
    assert diff(rows["full-standard"], to) == {"lstm_init", "tmax"}
    assert to == {"hidden_size": 128, "optimizer": "rmsprop", "learning_rate": 1e-3, "clip_norm": None,
                  "lstm_init": "chrono", "tmax": "3T/2"}
    assert study.chrono_tmax("3T/2", 500) == 750 and study.chrono_tmax("longest", 500) is None
    assert study.parse_steps("300", [100, 500]) == {100: 300, 500: 300}
    assert study.parse_steps("100:30,500:10", [100, 500]) == {100: 30, 500: 10}
    with pytest.raises(ValueError, match="no step budget"):
        study.parse_steps("100:30", [100, 500])


def test_smoke_run_writes_every_run(tmp_path, capsys):
    study = _study()
    assert study.main(["--smoke", "--only", "jrnn,full", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "full " in out and "no-memory" in out
    saved = json.loads((tmp_path / "chrono_copy.json").read_text())
    assert [r["row"] for r in saved["runs"]] == ["jrnn", "full"]
    jrnn_run, full_run = saved["runs"]
    assert jrnn_run["chrono_tmax"] == 30 and full_run["chrono_tmax"] == 15  # T + 20 and 3T/2 at T = 10
    assert full_run["optimizer"] == "rmsprop" and full_run["clip_norm"] is None
    for r in saved["runs"]:
        assert r["steps"] == 20 and r["sequences"] == 20 * saved["batch_size"]
        np.testing.assert_allclose(r["loss_ratio"], r["loss"] / r["baseline_loss"])
    assert saved["machine"]["vector_extensions"] is not None and "cpu" in saved["machine"]
    with pytest.raises(SystemExit):
        study.main(["--only", "nope"])
