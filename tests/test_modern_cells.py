"""minGRU, minLSTM (Feng et al. 2024) and RG-LRU (De et al. 2024): jrnn cells like the others.

Their gates read only x_t, so each is h_t = a_t * h_{t-1} + b_t: the sequential
step (``method="scan"``) and the parallel scan (``method="associative"``) must give
the loop reference's numbers (float64: ``conftest.py`` turns on x64), and their
gradients must equal finite differences of that NumPy loop.
"""

import os
import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jrnn
from jrnn import reference as ref
from jrnn.cli import main
from jrnn.core import parallel
from jrnn.core.unroll import resolve_method
from jrnn.models.config import ConfigError, ModelConfig
from jrnn.training import checkpoint as ckpt
from tests.helpers import assert_grad_matches_finite_differences, TINY_TRAIN, random_inputs, to_np

KINDS = ["mingru", "minlstm", "rglru"]
METHODS = ["scan", "associative"]
TOL = dict(atol=1e-10, rtol=1e-10)
SETTINGS = settings(max_examples=6, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _setup(kind, seed, T=8, B=4, D=3, H=5):
    cell = jrnn.make_cell(kind, H)
    params = cell.init(jax.random.PRNGKey(seed), D, jnp.float64)
    xs = random_inputs(seed + 1, T, B, D)
    h0 = random_inputs(seed + 2, 1, B, H)[0]
    return cell, params, xs, h0


# ---- values: scan and parallel scan against the NumPy loop ----------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_unroll_matches_loop_with_initial_carry(kind, method):
    cell, params, xs, h0 = _setup(kind, 0)
    carry, hs = jrnn.unroll(cell, params, xs, h0, method=method)
    want_hs, want_h, _ = ref.cell_forward(kind, to_np(params), xs, h0)
    chex.assert_trees_all_close((hs, carry), (want_hs, want_h), **TOL)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", KINDS)
def test_lengths_and_reverse_match_loop(kind, method, reverse):
    cell, params, xs, h0 = _setup(kind, 3)
    lengths = jnp.array([8, 5, 0, 1])
    carry, hs = jrnn.unroll(cell, params, xs, h0, lengths=lengths, reverse=reverse, method=method)
    want_hs, want_h, _ = ref.cell_forward(kind, to_np(params), xs, h0, lengths=lengths,
                                          reverse=reverse)
    chex.assert_trees_all_close((hs, carry), (want_hs, want_h), **TOL)
    assert float(jnp.abs(hs[5:, 1]).max()) == 0.0 and float(jnp.abs(hs[:, 2]).max()) == 0.0
    chex.assert_trees_all_close(carry[2], h0[2])  # length 0: the initial carry


@pytest.mark.parametrize("kind", KINDS)
def test_carried_state_over_windows_equals_one_long_run(kind):
    """Truncated BPTT's windows: the carry of one window starts the next (step and parallel)."""
    cell, params, xs, h0 = _setup(kind, 5, T=10)

    @jax.jit  # one compiled program instead of one per small op
    def windows(params, xs, h0):
        out = {}
        for method in METHODS:
            c1, a = jrnn.unroll(cell, params, xs[:4], h0, method=method)
            _, b = jrnn.unroll(cell, params, xs[4:], c1, method=method)
            out[method] = jnp.concatenate([a, b])
        return jrnn.unroll(cell, params, xs, h0, method="scan")[1], out

    whole, out = windows(params, xs, h0)
    for method in METHODS:
        chex.assert_trees_all_close(out[method], whole, **TOL)


def test_stack_of_mixed_cells_matches_layer_by_layer_loop():
    cells = [jrnn.mingru(5), jrnn.rglru(4), jrnn.minlstm(3)]
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    params = [c.init(k, d, jnp.float64) for c, k, d in zip(cells, keys, (2, 5, 4))]
    xs = random_inputs(1, 7, 2, 2)
    want = np.asarray(xs)
    for c, p in zip(cells, params):
        want, _, _ = ref.cell_forward(c.kind, to_np(p), want)
    for method in METHODS:
        _, hs = jax.jit(lambda p, x: jrnn.unroll(cells, p, x, method=method))(params, xs)
        chex.assert_trees_all_close(hs, want, **TOL)


# ---- gradients ----------------------------------------------------------------------------


def _loss_weights(T, B, H):
    w_hs = np.asarray(random_inputs(10, T, B, H))
    w_h = np.asarray(random_inputs(11, 1, B, H))[0]
    return w_hs, w_h


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_equal_finite_differences_of_the_loop(kind):
    """<grad L, v> from jax.grad through jrnn's scan equals the central difference of the
    NumPy loop's L along random directions v (params, inputs and initial carry together)."""
    cell, params, xs, h0 = _setup(kind, 7, T=6, B=3)
    lengths = jnp.array([6, 4, 2])
    w_hs, w_h = _loss_weights(6, 3, cell.hidden_size)

    def loss(args):
        p, x, c = args
        carry, hs = jrnn.unroll(cell, p, x, c, lengths=lengths, method="scan")
        return jnp.sum(hs * w_hs) + jnp.sum(carry * w_h)

    def loss_ref(args):
        p, x, c = args
        hs, h, _ = ref.cell_forward(kind, p, x, c, lengths=lengths)
        return np.sum(hs * w_hs) + np.sum(h * w_h)

    assert_grad_matches_finite_differences(loss, loss_ref, to_np((params, xs, h0)))


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_parallel_gradients_equal_scan_gradients(kind, reverse):
    cell, params, xs, h0 = _setup(kind, 9)
    lengths = jnp.array([8, 3, 0, 6])
    w_hs, w_h = _loss_weights(8, 4, cell.hidden_size)

    def loss(p, x, c, method, lengths):
        carry, hs = jrnn.unroll(cell, p, x, c, lengths=lengths, reverse=reverse, method=method)
        return jnp.sum(hs * w_hs) + jnp.sum(carry * w_h)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)
    for lens in (None, lengths):
        want = grads(params, xs, h0, "scan", lens)
        got = grads(params, xs, h0, "associative", lens)
        chex.assert_trees_all_close(got, want, atol=1e-9, rtol=1e-9)


def test_extreme_gates_stay_finite():
    """RG-LRU with r_t -> 0 (a_t -> 1, sqrt(1 - a_t^2) -> 0) and minLSTM with both gates
    underflowing: finite values and gradients (the bounded sqrt, the log-space ratio)."""
    xs = random_inputs(0, 5, 2, 3)
    for kind, name, value in (("rglru", "b_a", -1e4), ("minlstm", "b", -1e4)):
        cell = jrnn.make_cell(kind, 4)
        params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
        params = {**params, name: jnp.full_like(params[name], value)}
        if kind == "minlstm":  # f = i = sigmoid(-1e4) = 0 in float64: f' = i' = 1/2
            params["b"] = params["b"].at[8:].set(0.0)
        for method in METHODS:
            loss = lambda p: jnp.sum(jrnn.unroll(cell, p, xs, method=method)[1] ** 2)
            value_, grads = jax.jit(jax.value_and_grad(loss))(params)
            assert jnp.isfinite(value_) and jrnn.all_finite(grads), (kind, method)


# ---- properties ---------------------------------------------------------------------------


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(KINDS))
    T, B = draw(st.integers(1, 12)), draw(st.integers(1, 3))
    D, H = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    return kind, T, B, D, H, lengths, draw(st.booleans()), draw(st.integers(0, 2**16))


@SETTINGS
@given(cases())
def test_parallel_equals_sequential_and_lengths_equal_each_sequence_alone(case):
    kind, T, B, D, H, lengths, reverse, seed = case
    cell = jrnn.make_cell(kind, H)

    def run(seed):  # one compiled program per example
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(seed), 3)
        params = cell.init(k1, D, jnp.float64)
        xs = jax.random.normal(k2, (T, B, D), jnp.float64)
        h0 = jax.random.normal(k3, (B, H), jnp.float64)
        lens = jnp.array(lengths)
        out = {m: jrnn.unroll(cell, params, xs, h0, lengths=lens, reverse=reverse, method=m)
               for m in METHODS}
        full = {m: jrnn.unroll(cell, params, xs, h0, reverse=reverse, method=m) for m in METHODS}
        alone = [jrnn.unroll(cell, params, xs[:n, b:b + 1], h0[b:b + 1], reverse=reverse)
                 if n else None for b, n in enumerate(lengths)]
        return h0, out, full, alone

    h0, out, full, alone = jax.jit(run)(seed)
    chex.assert_trees_all_close(out["associative"], out["scan"], **TOL)
    chex.assert_trees_all_close(full["associative"], full["scan"], **TOL)
    carry, hs = out["associative"]
    for b, n in enumerate(lengths):
        if n == 0:
            chex.assert_trees_all_close(carry[b], h0[b])
        else:
            chex.assert_trees_all_close((carry[b], hs[:n, b]), (alone[b][0][0], alone[b][1][:, 0]),
                                        **TOL)
        assert float(jnp.abs(hs[n:, b]).max(initial=0.0)) == 0.0


# ---- cells as values, make_cell, dispatch ---------------------------------------------------


def test_cells_are_interned_values_made_by_name():
    for kind in KINDS:
        factory = getattr(jrnn, kind)
        assert kind in jrnn.CELL_KINDS
        assert factory(8) == factory(hidden_size=8) and hash(factory(8)) == hash(factory(8))
        assert jrnn.make_cell(kind, 8) is factory(8)
        assert factory(8) != factory(9) and factory(8) != factory(8, init_scale=0.1)
        assert factory(8).kind == kind and factory(8).affine is not None
        assert jrnn.remat(factory(8)).kind == kind and parallel.is_linear(jrnn.remat(factory(8)))
    assert jrnn.mingru(8) != jrnn.minlstm(8)
    with pytest.raises(ValueError, match="hidden_size"):
        jrnn.mingru(0)
    with pytest.raises(ValueError, match="proj_size"):
        jrnn.make_cell("minlstm", 8, proj_size=2)


def test_rglru_init_follows_the_paper():
    cell = jrnn.rglru(64)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
    a_c = np.asarray(jax.nn.sigmoid(params["Lambda"])) ** 8
    assert a_c.min() >= 0.9 - 1e-12 and a_c.max() <= 0.999 + 1e-12 and a_c.std() > 0.01
    small = jrnn.rglru(64, init_scale=0.01).init(jax.random.PRNGKey(0), 3, jnp.float64)
    assert float(jnp.abs(small["W"]).max()) <= 0.01
    chex.assert_trees_all_close(small["Lambda"], params["Lambda"])  # init_scale leaves it


def test_methods_refused_or_fallen_back_cleanly():
    cell = jrnn.minlstm(4)
    params = cell.init(jax.random.PRNGKey(0), 2)
    xs = jnp.ones((5, 1, 2))
    # auto: the sequential scan (the associative scan was measured no faster on a CPU).
    assert resolve_method(cell, "auto", None, seq_len=1024, batch=4)[0] == "scan"
    with pytest.raises(ValueError, match="doubling.*associative"):
        jrnn.unroll(cell, params, xs, method="doubling")
    with warnings.catch_warnings(record=True) as caught:  # no Pallas kernel: the scan instead
        warnings.simplefilter("always")
        _, hs = jrnn.unroll(cell, params, xs, method="pallas")
    assert any("no Pallas kernel for 'minlstm'" in str(w.message) for w in caught)
    chex.assert_trees_all_close(hs, jrnn.unroll(cell, params, xs, method="scan")[1])
    with pytest.raises(ValueError, match="not this 'minlstm' cell's"):
        jrnn.unroll(cell, jrnn.mingru(4).init(jax.random.PRNGKey(0), 2), xs)


def test_config_refuses_fields_that_do_not_apply():
    for kind in KINDS:
        assert ModelConfig(cell=kind, hidden_size=8).cell == kind
        for field, value in (("activation", "relu"), ("forget_bias", 1.0), ("proj_size", 4),
                             ("weight_dropout", 0.2)):
            with pytest.raises(ConfigError, match=f"{field} applies to .* not '{kind}'") as info:
                ModelConfig(cell=kind, hidden_size=8, **{field: value})
            assert "\n" not in str(info.value)
    assert ModelConfig(cell="lstm", weight_dropout=0.2).replace(cell="rglru").weight_dropout == 0.0
    for kind in KINDS:  # a mask on h_(t-1) would drop the linear state itself
        with pytest.raises(ConfigError, match=f"recurrent_dropout .* not '{kind}'.*memory itself"):
            ModelConfig(cell=kind, recurrent_dropout=0.2)


# ---- language models, Flax, the command line ---------------------------------------------------


@pytest.mark.parametrize("kind,method", [("mingru", "auto"), ("minlstm", "associative"),
                                         ("rglru", "auto"), ("slstm", "auto"), ("mlstm", "associative")])
def test_rnn_lm_trains_with_finite_decreasing_loss(kind, method):
    V = 12
    model = jrnn.rnn_lm(V, cell=kind, embed_size=8, hidden_size=8, num_layers=2, method=method)
    opt = optax.adam(0.03)
    state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
    step = jrnn.make_train_step(model, opt, clip_norm=5.0)
    x = jnp.arange(24).reshape(2, 12) % V
    losses = []
    for _ in range(8):
        state, _, m = step(state, x, (x + 1) % V)
        losses.append(float(m["loss"]))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0] - 0.5, losses


def test_flax_modules_take_the_new_cells():
    from jrnn.interop import flax as jf

    x = random_inputs(0, 2, 6, 3)  # [B, T, D]
    for cell in (jrnn.mingru(4), jrnn.rglru(4)):
        for method in METHODS:
            layer = jf.RNN(cell, method=method, param_dtype=jnp.float64)
            variables = layer.init(jax.random.PRNGKey(0), x)
            ys = layer.apply(variables, x)
            want, _, _ = ref.cell_forward(cell.kind, to_np(variables["params"]),
                                          np.swapaxes(np.asarray(x), 0, 1))
            chex.assert_trees_all_close(ys, np.swapaxes(want, 0, 1), **TOL)


@pytest.mark.parametrize("kind", ["mingru", "slstm"])
def test_cli_trains_a_new_cell_and_resumes_exactly(tmp_path, kind):
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    argv = ["train", "--cell", kind, "--layers", "1", *TINY_TRAIN]
    assert main([*argv, "--epochs", "2", "--out", whole]) == 0  # (in this process: one compile)
    assert main([*argv, "--out", part]) == 0  # 1 epoch
    assert main(["train", "--out", part, "--resume", "--epochs", "2", "--max-windows", "2",
                 "--quiet"]) == 0
    meta_w, raw_w = ckpt.load_raw(os.path.join(whole, "last.ckpt"))
    meta_p, raw_p = ckpt.load_raw(os.path.join(part, "last.ckpt"))
    assert meta_p["config"]["model"]["cell"] == kind and int(raw_p["step"]) == int(raw_w["step"])
    leaves_w, leaves_p = jax.tree_util.tree_leaves(raw_w), jax.tree_util.tree_leaves(raw_p)
    assert len(leaves_w) == len(leaves_p)
    for a, b in zip(leaves_w, leaves_p):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
