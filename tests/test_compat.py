"""The 0.1 compatibility layer is gone (removed in 0.3), and protocols are typed fields."""

import json
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.analysis import diagnostics as dg
from jrnn.core import parallel

# The first release's module paths, removed in 0.3 (CHANGELOG.md says where their names are).
OLD_MODULES = ["jrnn.cells", "jrnn.fused", "jrnn.unrolling", "jrnn.lm", "jrnn.train", "jrnn.trainer",
               "jrnn.checkpoint", "jrnn.runtime", "jrnn.plots", "jrnn.flax", "jrnn.cli_tools"]
# Names of the first release's ``jrnn.*`` that moved, removed in 0.3.
OLD_NAMES = ["ACTIVATIONS", "auto_unroll", "fused", "keep_host_memory"]


def test_old_module_paths_are_gone():
    """No import hook is left: each 0.1 module path fails to import in a fresh process."""
    code = "\n".join([
        "import importlib, json, sys",
        "import jrnn",
        "out = {}",
        f"for old in {OLD_MODULES!r}:",
        "    try:",
        "        importlib.import_module(old)",
        "        out[old] = 'imported'",
        "    except ModuleNotFoundError:",
        "        out[old] = 'gone'",
        "print(json.dumps([out, [type(f).__name__ for f in sys.meta_path]]))",
    ])
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got, finders = json.loads(r.stdout.strip().splitlines()[-1])
    assert got == {old: "gone" for old in OLD_MODULES}
    assert "_OldPaths" not in finders


def test_research_modules_stay_attributes():
    from jrnn.analysis import diagnostics, tasks

    assert (jrnn.diagnostics, jrnn.tasks) == (diagnostics, tasks)


@pytest.mark.parametrize("name", OLD_NAMES)
def test_old_names_are_gone(name):
    with pytest.raises(AttributeError, match=name):
        getattr(jrnn, name)


def test_old_unroll_argument_is_gone():
    cell = jrnn.linear(3)
    params = cell.init(jax.random.PRNGKey(0), 2)
    with pytest.raises(TypeError, match="unroll"):
        jrnn.unroll(cell, params, jnp.ones((4, 2, 2)), unroll=1)
    with pytest.raises(TypeError, match="unroll"):
        jrnn.rnn_lm(11, embed_size=4, hidden_size=4, num_layers=1, unroll=2)


def test_old_interop_names_are_gone():
    import jrnn.interop

    for name in ("from_torch", "to_torch", "carry_from_torch", "carry_to_torch"):
        with pytest.raises(AttributeError, match=name):
            getattr(jrnn.interop, name)


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
