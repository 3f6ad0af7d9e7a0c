"""The diagnostics and the long-range tasks take the newer cells (minGRU, minLSTM, RG-LRU,
sLSTM, mLSTM) by name: gradient flow measured through their carries, equal to what their
recurrence says, and a task run from the command line."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import diagnostics, tasks
from jrnn.cli.tools import tasks_main

NEW = diagnostics.MORE_CELL_NAMES


@pytest.mark.parametrize("name", NEW)
def test_grad_flow_and_jacobians_run_through_every_new_carry(name):
    H, T, B = 6, 9, 2
    cell = diagnostics.cell_by_name(name, H)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, 3), jnp.float64)
    flow = diagnostics.grad_flow(cell, params, xs)
    assert flow.hidden.shape == (T,) and np.all(np.isfinite(flow.hidden)) and np.all(np.isfinite(flow.inputs))
    np.testing.assert_allclose(flow.hidden[-1], np.sqrt(H), rtol=1e-12)  # dL/dh_{T-1} is all ones
    jac = diagnostics.jacobian_norms(cell, params, xs)
    assert np.all(np.isfinite(np.asarray(jax.tree_util.tree_leaves(jac)[0])))


def test_grad_flow_of_a_mingru_is_the_product_of_its_gates():
    """h_t = a_t h_{t-1} + b_t: dh_{T-1}/dh_t = prod_{s > t} diag(a_s), exactly."""
    H, T = 5, 8
    cell = jrnn.mingru(H)
    params = cell.init(jax.random.PRNGKey(2), 3, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(3), (T, 1, 3), jnp.float64)
    a, _ = cell.affine(params, cell.project(params, xs))
    a = np.asarray(a)[:, 0]  # [T, H]
    want = [np.linalg.norm(np.prod(a[t + 1:], axis=0)) for t in range(T)]
    np.testing.assert_allclose(diagnostics.grad_flow(cell, params, xs).hidden, want, rtol=1e-10)


def test_tasks_take_a_new_cell_by_name(tmp_path, capsys):
    assert tasks.task_cell("rglru", 4).kind == "rglru"
    assert tasks_main(["--task", "adding", "--cells", "mingru", "--lengths", "10", "--steps", "20",
                       "--eval-every", "20", "--eval-size", "64", "--batch-size", "16",
                       "--hidden-size", "8", "--quiet", "--out", str(tmp_path)]) == 0
    assert "mingru" in capsys.readouterr().out
