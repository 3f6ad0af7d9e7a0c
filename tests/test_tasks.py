"""Task generators produce the stated statistics; metrics meet their baselines."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jrnn.analysis import tasks
from jrnn.cli.tools import diagnose_main, format_sweep_table, tasks_main


_adding_jit = jax.jit(tasks.adding_problem, static_argnums=(1, 2), static_argnames="variant")


def _adding(seed, B, T, variant="hs97"):
    b = _adding_jit(jax.random.PRNGKey(seed), B, T, variant=variant)
    return b, np.asarray(b.inputs[..., 0]), np.asarray(b.inputs[..., 1])


def test_adding_hs97_follows_hochreiter_schmidhuber():
    B, T = 3000, 40
    b, values, marker = _adding(0, B, T)
    lengths = np.asarray(b.lengths)
    chex.assert_shape(b.inputs, (B, T + T // 10, 2))
    assert lengths.min() == T and lengths.max() == T + T // 10
    pos = [np.flatnonzero(m == 1.0) for m in marker]
    assert all(len(p) == 2 for p in pos)  # exactly two marked pairs
    first, second = np.array([p[0] for p in pos]), np.array([p[1] for p in pos])
    assert first.min() == 0 and second.max() == T // 2 - 1
    assert np.all(np.minimum(first, second) < 10)  # one of the first ten pairs
    for i in range(B):
        ends = [t for t in (0, lengths[i] - 1) if t not in pos[i]]
        assert np.all(marker[i, ends] == -1.0)
        others = np.setdiff1d(np.arange(lengths[i]), np.concatenate([pos[i], ends]))
        assert np.all(marker[i, others] == 0.0)
        assert np.all(values[i, lengths[i]:] == 0) and np.all(marker[i, lengths[i]:] == 0)
    assert np.all(values[:, 0][marker[:, 0] == 1.0] == 0.0)  # X1 set to 0 when the first pair is marked
    x1x2 = (values * (marker == 1.0)).sum(1)
    np.testing.assert_allclose(b.targets, 0.5 + x1x2 / 4, rtol=1e-6)
    t = np.asarray(b.targets)
    assert t.min() >= 0 and t.max() <= 1
    assert abs(t.mean() - 0.5) < 0.01 and abs(values[:, 1:T].mean()) < 0.01
    assert abs(np.abs(values[:, 1:T]).max() - 1) < 1e-3


def test_adding_sum_variant_targets_in_0_2_with_one_marker_per_half():
    B, T = 2000, 30
    b, values, marker = _adding(1, B, T, "sum")
    assert b.lengths is None
    chex.assert_shape(b.inputs, (B, T, 2))
    np.testing.assert_array_equal(marker.sum(1), 2)
    np.testing.assert_array_equal(marker[:, : T // 2].sum(1), 1)
    t = np.asarray(b.targets)
    assert t.min() >= 0 and t.max() <= 2 and abs(t.mean() - 1) < 0.03
    np.testing.assert_allclose(t, (values * marker).sum(1), rtol=1e-6)


@settings(max_examples=5, deadline=None)
@given(T=st.integers(10, 60), B=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_adding_invariants_for_any_length(T, B, seed):
    b, values, marker = _adding(seed, B, T)
    np.testing.assert_array_equal((marker == 1.0).sum(1), 2)
    assert np.all((np.asarray(b.lengths) >= T) & (np.asarray(b.lengths) <= T + T // 10))
    t = np.asarray(b.targets)
    assert np.all((t >= 0) & (t <= 1))


def test_generators_are_seeded_and_jit_friendly():
    key = jax.random.PRNGKey(5)
    for sample, n in ((tasks.adding_problem, 20), (tasks.copy_memory, 7), (tasks.separable_verb, 4)):
        eager = sample(key, 3, n)
        jitted = jax.jit(sample, static_argnums=(1, 2))(key, 3, n)
        chex.assert_trees_all_equal(eager, jitted)
        other = sample(jax.random.PRNGKey(6), 3, n)
        assert not np.array_equal(eager.inputs, other.inputs)


def test_copy_memory_structure_and_no_memory_baseline():
    B, T = 50, 12
    b = tasks.copy_memory(jax.random.PRNGKey(0), B, T)
    x = np.asarray(b.inputs.argmax(-1))
    y = np.asarray(b.targets)
    chex.assert_shape(b.inputs, (B, T + 20, 10))
    assert np.all((x[:, :10] >= 1) & (x[:, :10] <= 8))
    assert np.all(x[:, 10 : T + 9] == 0) and np.all(x[:, T + 9] == 9) and np.all(x[:, T + 10 :] == 0)
    assert np.all(y[:, : T + 10] == 0)
    np.testing.assert_array_equal(y[:, -10:], x[:, :10])
    # Blanks for sure, then uniform over the eight symbols: the stated baseline.
    logits = np.full((B, T + 20, 10), -1e4)
    logits[:, : T + 10, 0] = 0.0
    logits[:, T + 10 :, 1:9] = 0.0
    task = tasks.copy_task()
    want = 10 * math.log(8) / (T + 20)
    np.testing.assert_allclose(task.loss(jnp.asarray(logits), b), want, rtol=1e-6)
    m = task.evaluate(jnp.asarray(logits), b)
    np.testing.assert_allclose(m["baseline_loss"], want)
    assert float(m["chance"]) == 1 / 8
    oracle = jax.nn.one_hot(b.targets, 10) * 10.0
    assert float(task.evaluate(oracle, b)["metric"]) == 1.0


def test_separable_verb_pairs_verb_and_particle_across_distractors():
    B, k = 400, 6
    s = np.asarray(tasks.separable_verb_tokens(jax.random.PRNGKey(0), B, k))
    vocab = tasks.SEPARABLE_VOCAB
    pairs = dict(tasks.SEPARABLE_PAIRS)
    chex.assert_shape(s, (B, k + 4))
    verbs = [vocab[i] for i in s[:, 2]]
    particles = [vocab[i] for i in s[:, k + 2]]
    assert all(pairs[v] == p for v, p in zip(verbs, particles))
    assert len(set(verbs)) == len(pairs)  # every verb occurs
    closed = set(pairs) | set(pairs.values())
    assert not any(vocab[i] in closed for i in s[:, 3 : k + 2].ravel())
    assert np.all(s[:, 0] == vocab.index("<s>")) and np.all(s[:, -1] == vocab.index("."))
    # An LM that puts the right particle first scores 1; one that ignores the verb, chance.
    b = tasks.separable_verb(jax.random.PRNGKey(0), B, k)
    task = tasks.agreement_task()
    oracle = jax.nn.one_hot(b.targets, len(vocab))
    assert float(task.evaluate(oracle, b)["metric"]) == 1.0
    fixed = jnp.zeros_like(oracle).at[..., vocab.index("an")].set(1.0)
    m = task.evaluate(fixed, b)
    assert abs(float(m["metric"]) - 1 / 8) < 0.05 and float(m["chance"]) == 1 / 8


def test_adding_metric_against_its_chance_baseline():
    task = tasks.adding_task()
    b = task.sample(jax.random.PRNGKey(0), 500, 20)
    out = jnp.zeros(b.inputs.shape[:2] + (1,))
    last = b.lengths - 1
    perfect = out.at[jnp.arange(500), last, 0].set(b.targets)
    assert float(task.evaluate(perfect, b)["metric"]) == 1.0
    const = out.at[jnp.arange(500), last, 0].set(0.5)
    m = task.evaluate(const, b)
    assert float(m["metric"]) == float(m["chance"]) and 0.05 < float(m["chance"]) < 0.3
    np.testing.assert_allclose(m["loss"], m["baseline_loss"], rtol=1e-6)


def test_training_beats_chance_on_a_short_adding_problem():
    r = tasks.train_task(tasks.get_task("adding"), "lstm", 10, steps=300, batch_size=32,
                         hidden_size=16, learning_rate=1e-2, eval_size=200, eval_every=150,
                         stop_when_solved=False)
    assert r.steps == 300 and len(r.history) == 2 and r.evidence is None
    assert r.loss < 0.3 * r.baseline_loss, r
    assert r.metric > r.chance + 0.2, r


def test_longest_solved_stops_at_the_first_failure():
    def res(cell, length, solved):
        return tasks.TaskResult("adding", cell, length, 0, 10, 1.0 if solved else 0.1, 0.15, 0.0,
                                0.04, solved, 0.0, [])

    results = [res("tanh", 10, True), res("tanh", 20, False), res("tanh", 50, True),
               res("lstm", 10, True), res("lstm", 20, True), res("gru", 10, False)]
    assert tasks.longest_solved(results) == {"tanh": 10, "lstm": 20, "gru": None}
    table = format_sweep_table(results, [10, 20, 50], ["tanh", "lstm", "gru"])
    assert "none" in table.splitlines()[-1] and "1.00*" in table


def test_bad_task_arguments():
    with pytest.raises(ValueError, match="length"):
        tasks.adding_problem(jax.random.PRNGKey(0), 2, 9)
    with pytest.raises(ValueError, match="variant"):
        tasks.adding_problem(jax.random.PRNGKey(0), 2, 20, variant="le")
    with pytest.raises(ValueError, match="unknown task"):
        tasks.get_task("parity")
    with pytest.raises(ValueError, match="distance"):
        tasks.separable_verb_tokens(jax.random.PRNGKey(0), 2, 0)


@pytest.mark.parametrize("main, argv, needle", [
    (tasks_main, ["--cells", "tanh,vanilla"], "unknown cell 'vanilla'"),
    (tasks_main, ["--task", "adding", "--lengths", "5"], "lengths >= 10"),
    (tasks_main, ["--steps", "0"], "--steps must be positive"),
    (tasks_main, ["--bogus"], "unrecognized arguments"),
    (diagnose_main, ["--length", "-3"], "--length must be positive"),
    (diagnose_main, ["--checkpoint", "/nonexistent/x.ckpt"], "no checkpoint"),
])
def test_cli_user_errors_are_one_line(main, argv, needle, capsys, tmp_path):
    assert main(argv + ["--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jrnn: error: ") and needle in err[0], err


def test_tasks_cli_runs_a_tiny_sweep(capsys, tmp_path):
    rc = tasks_main(["--task", "copy", "--cells", "tanh", "--lengths", "2", "--steps", "20",
                     "--hidden-size", "8", "--batch-size", "8", "--eval-size", "16", "--eval-every", "10",
                     "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "recall accuracy" in out and "tanh" in out
    assert (tmp_path / "tasks.json").exists() and (tmp_path / "sweep_copy.png").exists()


def test_diagnose_cli_writes_tables_and_plots(capsys, tmp_path):
    rc = diagnose_main(["--cells", "sigmoid,lstm", "--length", "6", "--hidden-size", "4",
                        "--batch-size", "2", "--decay-samples", "16", "--train-steps", "0",
                        "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "gradient flow" in out and "sigmoid" in out and "probe accuracy" in out
    for name in ("gradient_flow", "jacobian", "decay"):
        assert (tmp_path / f"{name}.png").stat().st_size < 200_000
    assert (tmp_path / "diagnose.json").exists()


def test_training_figure_marks_the_first_nonfinite_step(tmp_path):
    import optax

    from jrnn.analysis import diagnostics as dg
    from jrnn.analysis import plots

    loss = lambda p, s: jnp.sum((s * p["w"]) ** 2)
    traces = {name: dg.watch_training(loss, {"w": jnp.ones(2)}, optax.sgd(0.01), batches)
              for name, batches in (("blows up", [1.0, 2.0, 1e200]), ("fine", [1.0, 2.0, 3.0]))}
    assert traces["blows up"].first_nonfinite.step == 2 and traces["fine"].first_nonfinite is None
    written = plots.training_figure(traces, str(tmp_path / "t.png"), svg=True)
    assert [p.rsplit(".", 1)[1] for p in written] == ["png", "svg"]
    assert 0 < (tmp_path / "t.png").stat().st_size < 200_000
    with pytest.raises(ValueError, match="png"):
        plots.training_figure(traces, str(tmp_path / "t.jpg"))
