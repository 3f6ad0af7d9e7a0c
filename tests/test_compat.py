"""The 0.1 API still works for one release (with DeprecationWarnings), and protocols are typed fields."""

import importlib
import json
import subprocess
import sys
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.analysis import diagnostics as dg
from jrnn.core import parallel

# Every name in jrnn.__all__ of the first release (0.1.0).
FIRST_RELEASE = [
    "ACTIVATIONS", "CELL_KINDS", "Cell", "LSTMCarry", "LanguageModel", "LMConfig", "LossAux",
    "NNLMConfig", "TrainState", "all_finite", "diagnostics", "auto_unroll", "distributed", "elman",
    "fused", "gru", "init_train_state", "interop", "keep_host_memory", "linear", "log_prob", "lstm",
    "make_cell", "make_eval_step", "make_train_epoch", "make_train_step", "next_token_log_probs",
    "nnlm", "parallel", "reference", "remat", "reverse_within_lengths", "rnn_lm", "sequence_loss",
    "tasks", "token_log_probs", "unroll",
]
DEPRECATED_NAMES = {"ACTIVATIONS", "auto_unroll", "fused", "keep_host_memory"}

# Old module -> (a name it held, the module that holds it now).
OLD_MODULES = {
    "jrnn.cells": ("make_cell", "jrnn.core.cells"),
    "jrnn.fused": ("lstm_sequence", "jrnn.core.backward"),
    "jrnn.unrolling": ("reverse_within_lengths", "jrnn.core.masking"),
    "jrnn.lm": ("sequence_loss", "jrnn.models.losses"),
    "jrnn.train": ("make_train_step", "jrnn.training.step"),
    "jrnn.trainer": ("evaluate", "jrnn.training.loop"),
    "jrnn.checkpoint": ("save", "jrnn.training.checkpoint"),
    "jrnn.runtime": ("keep_host_memory", "jrnn.training.runtime"),
    "jrnn.plots": ("sweep_figure", "jrnn.analysis.plots"),
    "jrnn.flax": ("RNN", "jrnn.interop.flax"),
    "jrnn.cli_tools": ("tasks_main", "jrnn.cli.tools"),
    "jrnn.diagnostics": ("grad_flow", "jrnn.analysis.diagnostics"),
    "jrnn.tasks": ("adding_problem", "jrnn.analysis.tasks"),
    "jrnn.parallel": ("diagonal", "jrnn.core.parallel"),
    "jrnn.distributed": ("make_mesh", "jrnn.training.distributed"),
}


@pytest.mark.parametrize("name", FIRST_RELEASE)
def test_every_first_release_name_still_imports_from_jrnn(name):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(jrnn, name)
    assert value is not None
    warned = [w for w in caught if issubclass(w.category, DeprecationWarning)]
    assert bool(warned) == (name in DEPRECATED_NAMES), [str(w.message) for w in warned]


def test_old_module_paths_import_with_a_warning():
    """Each 0.1 module path imports in a fresh process, warns, and gives the new objects."""
    lines = ["import json, warnings", "import jrnn", "out = {}"]
    for old, (name, new) in sorted(OLD_MODULES.items()):
        lines += [
            "with warnings.catch_warnings(record=True) as w:",
            "    warnings.simplefilter('always')",
            f"    from {old} import {name} as a",
            f"from {new} import {name} as b",
            f"out[{old!r}] = [a is b, [str(x.message) for x in w if x.category is DeprecationWarning]]",
        ]
    lines.append("print(json.dumps(out))")
    r = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True,
                       check=True)
    got = json.loads(r.stdout.strip().splitlines()[-1])
    for old, (name, new) in OLD_MODULES.items():
        same, messages = got[old]
        assert same, old
        assert any(old in m and new in m for m in messages), (old, messages)


def test_old_global_norm_and_activations():
    with pytest.warns(DeprecationWarning):
        train = importlib.import_module("jrnn.train")
    assert float(train.global_norm({"a": jnp.array([3.0, 4.0])})) == 5.0
    with pytest.warns(DeprecationWarning):
        acts = jrnn.ACTIVATIONS
    assert float(acts["sigmoid"](jnp.array(0.0))) == 0.5


def test_old_unroll_values_warn_and_agree():
    cell = jrnn.linear(3)
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (9, 2, 2), jnp.float64)
    for old, new in [(1, dict(method="scan", scan_unroll=1)), (True, dict(method="scan", scan_unroll=True)),
                     ("auto", dict(method="auto")), ("associative", dict(method="associative")),
                     ("doubling", dict(method="doubling"))]:
        with pytest.warns(DeprecationWarning, match="unroll= is deprecated"):
            got = jrnn.unroll(cell, params, xs, unroll=old)
        chex.assert_trees_all_close(got, jrnn.unroll(cell, params, xs, **new), atol=1e-12)
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="unroll must be"):
        jrnn.unroll(cell, params, xs, unroll="sideways")
    with pytest.warns(DeprecationWarning, match="rnn_lm"):
        model = jrnn.rnn_lm(11, embed_size=4, hidden_size=4, num_layers=1, unroll=2)
    assert (model.config.method, model.config.scan_unroll) == ("scan", 2)
    with pytest.warns(DeprecationWarning):
        assert jrnn.auto_unroll("cpu") == 1


def test_old_interop_names_warn():
    with pytest.warns(DeprecationWarning, match="jrnn.interop.torch.from_torch"):
        from_torch = jrnn.interop.from_torch
    from jrnn.interop import torch as jt

    assert from_torch is jt.from_torch


# ---- protocols are typed fields: wrappers keep a cell usable everywhere ----------------


def test_kind_and_activation_are_fields_that_wrappers_keep():
    for cell, kind, act in [(jrnn.linear(3), "linear", "identity"), (jrnn.elman(3, "relu"), "elman", "relu"),
                            (jrnn.lstm(3), "lstm", None), (jrnn.gru(3), "gru", None),
                            (parallel.diagonal(3), "diagonal", None)]:
        wrapped = jrnn.remat(cell)
        assert (wrapped.kind, wrapped.activation, wrapped.remat) == (kind, act, True)
        assert (cell.kind, cell.activation, cell.remat) == (kind, act, False)


def test_remat_linear_cell_runs_in_parallel_and_in_the_bound():
    cell = jrnn.remat(jrnn.linear(3))
    params = cell.init(jax.random.PRNGKey(0), 2, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (8, 2, 2), jnp.float64)
    chex.assert_trees_all_close(parallel.associative_unroll(cell, params, xs),
                                jrnn.unroll(jrnn.linear(3), params, xs), atol=1e-10)
    bound = dg.elman_jacobian_bound(jrnn.remat(jrnn.elman(3, "sigmoid")), params, jnp.arange(3))
    assert bound.shape == (3,)
    with pytest.raises(ValueError, match="'lstm' cell"):
        dg.elman_jacobian_bound(jrnn.lstm(3), params, jnp.arange(3))


def test_hand_written_pass_is_tied_to_its_step():
    cell = jrnn.gru(4)
    assert cell.sequence_step is cell.step
    from jrnn.core.cells import sequence_for

    assert sequence_for(cell) is cell.sequence
    assert sequence_for(jrnn.remat(cell)) is None
    assert sequence_for(cell._replace(step=lambda p, c, x: cell.step(p, c, x))) is None


def test_lm_parts_and_features_tie():
    model = jrnn.rnn_lm(13, embed_size=4, hidden_size=5, num_layers=2, cell="gru")
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    tokens = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert len(model.cells) == 2 and all(c.kind == "gru" for c in model.cells)
    assert model.features_for is model.apply
    hs, _ = model.recurrence(params, params["embed"][tokens.T])
    W, b = model.readout(params)
    logits, _ = model.apply(params, tokens)
    chex.assert_trees_all_close(jnp.swapaxes(hs, 0, 1) @ W + b, logits, atol=1e-12)
    # A model whose apply was replaced is scored through its own logits, not the stale features.
    doubled = model._replace(apply=lambda p, t, c=None, **kw: (2 * model.apply(p, t, c, **kw)[0],
                                                                model.apply(p, t, c, **kw)[1]))
    y = jnp.roll(tokens, -1, axis=1)
    loss, _ = jrnn.sequence_loss(model, params, tokens, y)
    loss2, _ = jrnn.sequence_loss(doubled, params, tokens, y)
    assert not np.isclose(float(loss), float(loss2))


def test_one_positive_int_check_everywhere():
    from jrnn.analysis import tasks

    for call in (lambda: jrnn.lstm(0), lambda: jrnn.rnn_lm(0), lambda: parallel.diagonal(-1),
                 lambda: jrnn.lstm(3).init(jax.random.PRNGKey(0), 0),
                 lambda: jrnn.unroll(jrnn.lstm(2), jrnn.lstm(2).init(jax.random.PRNGKey(0), 1),
                                     jnp.ones((2, 1, 1)), scan_unroll=-1),
                 lambda: dg.information_decay(jrnn.lstm(2), jrnn.lstm(2).init(jax.random.PRNGKey(0), 4),
                                              jax.random.PRNGKey(0), seq_len=0)):
        with pytest.raises(ValueError, match="must be a positive int"):
            call()
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        tasks.adding_problem(jax.random.PRNGKey(0), 0, 10)
