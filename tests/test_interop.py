"""PyTorch weight exchange: converted models agree with torch in outputs, states and gradients."""

import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    "torch",
    reason="PyTorch is optional: pip install torch==2.13.0 (CPU build) to run the interop tests",
)

import jrnn  # noqa: E402
from jrnn.interop import torch as interop  # noqa: E402

torch.set_num_threads(1)
TOL = dict(atol=2e-5, rtol=2e-4)  # float32 on both sides
T, B, D, H = 5, 3, 4, 6


def _module(kind, layers, *, batch_first=False, bias=True, seed=0):
    torch.manual_seed(seed)
    if kind == "lstm":
        return torch.nn.LSTM(D, H, num_layers=layers, batch_first=batch_first, bias=bias)
    if kind == "gru":
        return torch.nn.GRU(D, H, num_layers=layers, batch_first=batch_first, bias=bias)
    return torch.nn.RNN(D, H, num_layers=layers, nonlinearity=kind, batch_first=batch_first,
                        bias=bias)


def _state(kind, layers, seed=1):
    g = torch.Generator().manual_seed(seed)
    h0 = torch.randn(layers, B, H, generator=g)
    return (h0, torch.randn(layers, B, H, generator=g)) if kind == "lstm" else h0


def _np(t):
    return t.detach().numpy()


def _jnp(t):
    return jnp.asarray(_np(t))


KINDS = ["tanh", "relu", "lstm", "gru"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("batch_first", [False, True])
def test_outputs_and_final_states_agree(kind, layers, batch_first):
    module = _module(kind, layers, batch_first=batch_first)
    cells, params = interop.from_torch(module)
    assert len(cells) == len(params) == layers
    x = torch.randn(B, T, D) if batch_first else torch.randn(T, B, D)
    state = _state(kind, layers)
    ys, state_n = module(x, state)

    carry0 = interop.carry_from_torch(state, cells)
    carries, hs = jrnn.unroll(cells, params, _jnp(x), carry0, time_major=not batch_first)
    assert hs.dtype == jnp.float32
    chex.assert_trees_all_close(hs, _np(ys), **TOL)
    got = interop.carry_to_torch(carries)
    if kind == "lstm":
        chex.assert_trees_all_close((_np(got[0]), _np(got[1])), (_np(state_n[0]), _np(state_n[1])), **TOL)
    else:
        chex.assert_trees_all_close(_np(got), _np(state_n), **TOL)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layers", [1, 2])
def test_gradients_of_summed_loss_agree(kind, layers):
    """d/dparams and d/dx of sum(outputs) + sum(final states), in torch and in jrnn."""
    module = _module(kind, layers, seed=2)
    cells, params = interop.from_torch(module)
    x = torch.randn(T, B, D, requires_grad=True)
    ys, state_n = module(x)
    loss = ys.sum() + (state_n[0].sum() + state_n[1].sum() if kind == "lstm" else state_n.sum())
    loss.backward()

    def jax_loss(params, xs):
        carries, hs = jrnn.unroll(cells, params, xs)
        return jnp.sum(hs) + sum(jnp.sum(leaf) for leaf in jax.tree_util.tree_leaves(carries))

    value, (g_params, g_x) = jax.value_and_grad(jax_loss, argnums=(0, 1))(params, _jnp(x))
    np.testing.assert_allclose(float(value), float(loss.detach()), rtol=1e-5)
    chex.assert_trees_all_close(g_x, _np(x.grad), **TOL)
    for l, g in enumerate(g_params):
        grad = lambda name: _np(module.get_parameter(name).grad)
        chex.assert_trees_all_close(g["W"], grad(f"weight_ih_l{l}").T, **TOL)
        chex.assert_trees_all_close(g["W_h"], grad(f"weight_hh_l{l}").T, **TOL)
        if kind == "gru":
            chex.assert_trees_all_close(g["b"], grad(f"bias_ih_l{l}"), **TOL)
            chex.assert_trees_all_close(g["b_h"], grad(f"bias_hh_l{l}"), **TOL)
        else:  # jrnn's b = bias_ih + bias_hh, so both get its gradient
            chex.assert_trees_all_close(g["b"], grad(f"bias_ih_l{l}"), **TOL)
            chex.assert_trees_all_close(g["b"], grad(f"bias_hh_l{l}"), **TOL)


@pytest.mark.parametrize("kind", ["elman", "lstm", "gru"])
def test_to_torch_runs_jrnn_params(kind):
    cells = [jrnn.make_cell(kind, H, activation="relu") for _ in range(3)]
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = [c.init(k, D if i == 0 else H) for i, (c, k) in enumerate(zip(cells, keys))]
    module = interop.to_torch(params, cells, batch_first=True)
    assert module.num_layers == 3 and module.batch_first
    xs = jax.random.normal(jax.random.PRNGKey(1), (B, T, D), jnp.float32)
    ys, _ = module(torch.tensor(np.asarray(xs)))
    _, hs = jrnn.unroll(cells, params, xs, time_major=False)
    chex.assert_trees_all_close(hs, _np(ys), **TOL)
    # and back: bias_hh is 0 for RNN/LSTM, so the round trip is exact
    _, back = interop.from_torch(module)
    chex.assert_trees_all_close(back, params, atol=0, rtol=0)


def test_single_cell_to_torch_and_bias_free_module():
    cell = jrnn.gru(H)
    params = cell.init(jax.random.PRNGKey(3), D)
    module = interop.to_torch(params, cell)
    assert isinstance(module, torch.nn.GRU) and module.num_layers == 1
    no_bias = _module("lstm", 2, bias=False)
    cells, params = interop.from_torch(no_bias)
    assert all(float(jnp.abs(p["b"]).max()) == 0.0 for p in params)
    x = torch.randn(T, B, D)
    _, hs = jrnn.unroll(cells, params, _jnp(x))
    chex.assert_trees_all_close(hs, _np(no_bias(x)[0]), **TOL)


def test_dtype_argument():
    cells, params = interop.from_torch(_module("gru", 1), dtype=jnp.float64)
    assert params[0]["W"].dtype == jnp.float64
    module = interop.to_torch(params, cells, dtype=torch.float64)
    assert module.weight_ih_l0.dtype == torch.float64


def test_errors_are_clear():
    with pytest.raises(TypeError, match="torch.nn.RNN"):
        interop.from_torch(torch.nn.Linear(3, 4))
    # bidirectional and proj_size convert now (tests/test_interop_bidirectional.py)
    assert interop.from_torch(torch.nn.LSTM(3, 4, proj_size=2))[0][0].cell_size == 4
    lin = jrnn.linear(4)
    with pytest.raises(ValueError, match="no module"):
        interop.to_torch(lin.init(jax.random.PRNGKey(0), 3), lin)
    cells = [jrnn.lstm(4), jrnn.gru(4)]
    params = [cells[0].init(jax.random.PRNGKey(0), 3), cells[1].init(jax.random.PRNGKey(1), 4)]
    with pytest.raises(ValueError, match="one cell kind"):
        interop.to_torch(params, cells)
    with pytest.raises(ValueError, match="expected W"):
        interop.to_torch([params[0], params[0]], [cells[0], cells[0]])


def test_importing_jrnn_does_not_import_torch():
    code = "import sys, jrnn, jrnn.interop, jrnn.interop.flax; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(_repo_root()))


def _repo_root():
    import pathlib

    return pathlib.Path(jrnn.__file__).resolve().parents[1]
