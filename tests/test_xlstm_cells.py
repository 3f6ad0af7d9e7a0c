"""sLSTM and mLSTM (Beck et al. 2024, "xLSTM"): jrnn cells like the others.

Both run with the sequential step; the mLSTM's gates read only x_t, so it also has the
paper's parallel (quadratic) form, ``method="associative"``.  Every form must give the
NumPy loop reference's numbers (float64: ``conftest.py`` turns on x64), with an initial
carry, lengths and reverse, and their gradients must equal finite differences of that loop.
"""

import warnings

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jrnn
from jrnn import reference as ref
from jrnn.core import pallas, parallel
from jrnn.core.unroll import resolve_method
from jrnn.models.config import ConfigError, ModelConfig
from tests.helpers import assert_grad_matches_finite_differences, random_inputs, to_np

KINDS = ["slstm", "mlstm"]
# (kind, method): the sLSTM's gates read h_(t-1), so it has the sequential scan only.
CASES = [("slstm", "scan"), ("mlstm", "scan"), ("mlstm", "associative")]
TOL = dict(atol=1e-10, rtol=1e-10)
SETTINGS = settings(max_examples=4, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
HEADS = 2


def _cell(kind, H=6, heads=HEADS):
    return jrnn.slstm(H, num_heads=heads) if kind == "slstm" else jrnn.mlstm(H, num_heads=heads)


def _random_carry(cell, seed, B, dtype=jnp.float64):
    """A random carry; the sLSTM's normaliser positive, as a live state's is (n >= 1 after a step)."""
    zeros = cell.initial_carry(B, dtype)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(zeros))
    leaves = [jax.random.normal(k, z.shape, dtype) for k, z in zip(keys, zeros)]
    carry = type(zeros)(*leaves)
    return carry._replace(n=1.0 + jnp.abs(carry.n)) if cell.kind == "slstm" else carry


def _setup(kind, seed, T=8, B=4, D=3, H=6):
    cell = _cell(kind, H)
    params = cell.init(jax.random.PRNGKey(seed), D, jnp.float64)
    xs = random_inputs(seed + 1, T, B, D)
    return cell, params, xs, _random_carry(cell, seed + 2, B)


def _loop(cell, params, xs, carry=None, **kwargs):
    """The NumPy reference for ``cell``: ``(hs, final carry as a tuple)``."""
    return ref.xlstm_forward(cell.kind, to_np(params), xs, None if carry is None else to_np(carry),
                             num_heads=HEADS, **kwargs)


# ---- values: the step and the parallel form against the NumPy loop -------------------------


@pytest.mark.parametrize("kind,method", CASES)
def test_unroll_matches_loop_with_initial_carry(kind, method):
    cell, params, xs, c0 = _setup(kind, 0)
    carry, hs = jax.jit(lambda p, x, c: jrnn.unroll(cell, p, x, c, method=method))(params, xs, c0)
    want_hs, want_carry = _loop(cell, params, xs, c0)
    chex.assert_trees_all_close((hs, tuple(carry)), (want_hs, want_carry), **TOL)
    assert type(carry) is type(cell.initial_carry(1))
    chex.assert_trees_all_close(cell.hidden(carry), want_hs[-1], **TOL)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("kind,method", CASES)
def test_lengths_and_reverse_match_loop(kind, method, reverse):
    cell, params, xs, c0 = _setup(kind, 3)
    lengths = jnp.array([8, 5, 0, 1])
    run = jax.jit(lambda p, x, c: jrnn.unroll(cell, p, x, c, lengths=lengths, reverse=reverse,
                                              method=method))
    carry, hs = run(params, xs, c0)
    want_hs, want_carry = _loop(cell, params, xs, c0, lengths=lengths, reverse=reverse)
    chex.assert_trees_all_close((hs, tuple(carry)), (want_hs, want_carry), **TOL)
    assert float(jnp.abs(hs[5:, 1]).max()) == 0.0 and float(jnp.abs(hs[:, 2]).max()) == 0.0
    chex.assert_trees_all_close(jax.tree_util.tree_map(lambda c: c[2], carry),
                                jax.tree_util.tree_map(lambda c: c[2], c0))  # length 0


def test_zero_carry_windows_and_a_stack_match_the_loop():
    """From the zero carry (the sLSTM's empty-state rule), as a stack [sLSTM, mLSTM] read
    layer by layer, and the mLSTM in two windows (truncated BPTT) by each method."""
    cells = [jrnn.slstm(6, num_heads=HEADS), jrnn.mlstm(4, num_heads=HEADS)]
    keys = jax.random.split(jax.random.PRNGKey(0), 2)
    params = [c.init(k, d, jnp.float64) for c, k, d in zip(cells, keys, (3, 6))]
    xs, xs6 = random_inputs(1, 9, 2, 3), random_inputs(2, 9, 2, 6)

    @jax.jit
    def run(params, xs, xs6):
        out = {}
        for method in ("scan", "associative"):
            c1, a = jrnn.unroll(cells[1], params[1], xs6[:4], method=method)
            _, b = jrnn.unroll(cells[1], params[1], xs6[4:], c1, method=method)
            out[method] = jnp.concatenate([a, b])
        return jrnn.unroll(cells, params, xs), out

    (finals, hs), windows = run(params, xs, xs6)
    want, carry0 = _loop(cells[0], params[0], xs)
    chex.assert_trees_all_close(tuple(finals[0]), carry0, **TOL)
    want, _ = _loop(cells[1], params[1], want)
    chex.assert_trees_all_close(hs, want, **TOL)
    whole, _ = _loop(cells[1], params[1], xs6)
    for method in windows:
        chex.assert_trees_all_close(windows[method], whole, **TOL)


# ---- gradients ----------------------------------------------------------------------------


def _weights_like(tree, seed):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    rng = np.random.default_rng(seed)
    return treedef.unflatten([rng.standard_normal(np.shape(x)) for x in leaves])


@pytest.mark.parametrize("kind,method", CASES)
def test_gradients_equal_finite_differences_of_the_loop(kind, method):
    """<grad L, v> from jax.grad through jrnn equals the central difference of the NumPy
    loop's L along random directions v (params, inputs and initial carry together)."""
    cell, params, xs, c0 = _setup(kind, 7, T=6, B=3)
    lengths = jnp.array([6, 4, 2])
    w_hs = np.asarray(random_inputs(10, 6, 3, cell.hidden_size))
    w_c = tuple(_weights_like(to_np(c0), 11))

    def loss(args):
        p, x, c = args
        carry, hs = jrnn.unroll(cell, p, x, c, lengths=lengths, method=method)
        return jnp.sum(hs * w_hs) + sum(jnp.sum(a * w) for a, w in zip(carry, w_c))

    def loss_ref(args):
        p, x, c = args
        hs, carry = ref.xlstm_forward(kind, p, x, c, num_heads=HEADS, lengths=lengths)
        return np.sum(hs * w_hs) + sum(np.sum(a * w) for a, w in zip(carry, w_c))

    assert_grad_matches_finite_differences(loss, loss_ref, to_np((params, xs, c0)))


@pytest.mark.parametrize("reverse", [False, True])
def test_mlstm_parallel_form_equals_recurrent_values_gradients_and_final_carry(reverse):
    cell, params, xs, c0 = _setup("mlstm", 9)
    w_hs = np.asarray(random_inputs(12, 8, 4, cell.hidden_size))
    w_c = _weights_like(to_np(c0), 13)

    def run(p, x, c, method, lengths):
        carry, hs = jrnn.unroll(cell, p, x, c, lengths=lengths, reverse=reverse, method=method)
        loss = jnp.sum(hs * w_hs) + sum(jnp.sum(a * w) for a, w in zip(carry, w_c))
        return loss, (carry, hs)

    grads = jax.jit(jax.value_and_grad(run, argnums=(0, 1, 2), has_aux=True), static_argnums=3)
    for lengths in (None, jnp.array([8, 3, 0, 6])):
        (_, want_out), want = grads(params, xs, c0, "scan", lengths)
        (_, got_out), got = grads(params, xs, c0, "associative", lengths)
        chex.assert_trees_all_close(got_out, want_out, **TOL)
        chex.assert_trees_all_close(got, want, atol=1e-9, rtol=1e-9)


def test_extreme_gate_preactivations_stay_finite():
    """Input and forget gates at +-1e4 (exp(1e4) overflows; the stabiliser keeps every exp
    <= 1), from the zero carry and from a live one: finite values and gradients, equal to
    the loop; and the mLSTM's long closed input gate in float32 (m_t -> -394: e^{-m_t}
    would overflow without the readout's rescaling)."""
    xs = random_inputs(0, 5, 2, 3)
    for kind, method in CASES:
        cell = _cell(kind)
        H, base = cell.hidden_size, cell.init(jax.random.PRNGKey(0), 3, jnp.float64)
        gate = {"slstm": (slice(0, H), slice(H, 2 * H)),  # i, f
                "mlstm": (slice(4 * H, 4 * H + HEADS), slice(4 * H + HEADS, None))}[kind]

        def loss(p, c0, cell=cell, method=method):
            hs = jrnn.unroll(cell, p, xs, c0, method=method)[1]
            return jnp.sum(hs**2), hs

        run = jax.jit(jax.value_and_grad(loss, has_aux=True))  # one compilation per cell
        for log_i in (-1e4, 1e4):
            for a_f in (-1e4, 1e4):
                params = {**base, "b": base["b"].at[gate[0]].set(log_i).at[gate[1]].set(a_f)}
                # The zero carry given explicitly: one compiled program for both carries.
                for c0 in (cell.initial_carry((2,), jnp.float64), _random_carry(cell, 1, 2)):
                    (value, hs), grads = run(params, c0)
                    assert jnp.isfinite(value) and jrnn.all_finite(grads), (kind, method, log_i, a_f)
                    chex.assert_trees_all_close(hs, _loop(cell, params, xs, c0)[0], atol=1e-9)
    cell = jrnn.mlstm(4)
    params = cell.init(jax.random.PRNGKey(0), 3, jnp.float32)
    # i = e^-1000, f = sigmoid(-1) at every step: m_t = t log sigmoid(-1), down to -394.
    params["W"] = params["W"].at[:, 16:].set(0.0)
    params["b"] = params["b"].at[16].set(-1000.0).at[17].set(-1.0)
    xs32 = jnp.ones((300, 2, 3), jnp.float32)
    for method in ("scan", "associative"):

        def loss(p, method=method):
            carry, hs = jrnn.unroll(cell, p, xs32, method=method)
            return jnp.sum(hs**2), carry

        (value, carry), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
        assert float(carry.m.max()) < -300 and jnp.isfinite(value) and jrnn.all_finite(grads)


# ---- properties ---------------------------------------------------------------------------


@st.composite
def cases(draw):
    kind = draw(st.sampled_from(KINDS))
    T, B = draw(st.integers(1, 10)), draw(st.integers(1, 3))
    heads, d, D = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(0, T), min_size=B, max_size=B))
    return kind, T, B, D, heads, d, lengths, draw(st.booleans()), draw(st.integers(0, 2**16))


@SETTINGS
@given(cases())
def test_every_form_equals_the_loop_for_any_shape_lengths_and_direction(case):
    kind, T, B, D, heads, d, lengths, reverse, seed = case
    cell = jrnn.slstm(heads * d, num_heads=heads) if kind == "slstm" else jrnn.mlstm(
        heads * d, num_heads=heads)
    methods = ["scan"] + (["associative"] if kind == "mlstm" else [])
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = cell.init(k1, D, jnp.float64)
    xs = jax.random.normal(k2, (T, B, D), jnp.float64)
    c0 = _random_carry(cell, seed + 1, B)
    lens = jnp.array(lengths)
    out = jax.jit(lambda p, x, c: {m: jrnn.unroll(cell, p, x, c, lengths=lens, reverse=reverse,
                                                 method=m) for m in methods})(params, xs, c0)
    want_hs, want_carry = ref.xlstm_forward(kind, to_np(params), xs, to_np(c0), num_heads=heads,
                                            lengths=lengths, reverse=reverse)
    for m in methods:
        carry, hs = out[m]
        chex.assert_trees_all_close((hs, tuple(carry)), (want_hs, want_carry), atol=1e-9, rtol=1e-9)


# ---- cells as values, make_cell, dispatch ---------------------------------------------------


def test_cells_are_interned_values_made_by_name():
    for kind in KINDS:
        factory = getattr(jrnn, kind)
        assert kind in jrnn.CELL_KINDS
        assert factory(8) == factory(hidden_size=8, num_heads=1) and hash(factory(8)) == hash(factory(8))
        assert jrnn.make_cell(kind, 8) is factory(8)
        assert factory(8) != factory(8, num_heads=2) and factory(8) != factory(8, init_scale=0.1)
        assert factory(8).kind == kind and factory(8).affine is None
        assert jrnn.remat(factory(8)).kind == kind
        with pytest.raises(ValueError, match="multiple of num_heads"):
            factory(6, num_heads=4)
        with pytest.raises(ValueError, match="hidden_size"):
            factory(0)
        with pytest.raises(ValueError, match="proj_size"):
            jrnn.make_cell(kind, 8, proj_size=2)
    assert jrnn.slstm(8).parallel is None and jrnn.mlstm(8).parallel is not None
    assert parallel.has_parallel_form(jrnn.remat(jrnn.mlstm(8)))
    assert not parallel.is_linear(jrnn.mlstm(8)) and not parallel.has_parallel_form(jrnn.slstm(8))
    assert jrnn.SLSTMCarry._fields == ("h", "c", "n", "m")
    assert jrnn.MLSTMCarry._fields == ("C", "n", "m", "h")
    # The init: forget biases linspace(3, 6), R block-diagonal by heads, init_scale bounds the rest.
    p = jrnn.slstm(8, num_heads=4, init_scale=0.01).init(jax.random.PRNGKey(0), 3, jnp.float64)
    assert p["R"].shape == (4, 2, 8) and float(jnp.abs(p["W"]).max()) <= 0.01
    chex.assert_trees_all_close(p["b"][8:16], jnp.linspace(3.0, 6.0, 8))
    p = jrnn.mlstm(8, num_heads=2).init(jax.random.PRNGKey(0), 3, jnp.float64)
    assert p["W"].shape == (3, 36)
    chex.assert_trees_all_close(p["b"][34:], jnp.array([3.0, 6.0]))


def test_methods_refused_or_fallen_back_cleanly():
    xs = jnp.ones((5, 1, 2))
    # auto: the sLSTM's scan; the mLSTM's parallel form (measured 7-18x faster on a CPU).
    assert resolve_method(_cell("slstm"), "auto", None, seq_len=1024, batch=4)[0] == "scan"
    assert resolve_method(_cell("mlstm"), "auto", None, seq_len=35, batch=4)[0] == "associative"
    cell = jrnn.slstm(4)
    params = cell.init(jax.random.PRNGKey(0), 2)
    for method in ("associative", "doubling"):
        with pytest.raises(ValueError, match="'slstm' cell is not linear in its state.*'scan'"):
            jrnn.unroll(cell, params, xs, method=method)
    with pytest.raises(ValueError, match="gates read h_\\(t-1\\): run it with method='scan'"):
        parallel.associative_unroll(cell, params, xs)
    m = jrnn.mlstm(4)
    mp = m.init(jax.random.PRNGKey(0), 2)
    with pytest.raises(ValueError, match="needs a linear recurrence"):
        jrnn.unroll(m, mp, xs, method="doubling")
    with pytest.raises(ValueError, match="doubling.*associative"):
        parallel.associative_unroll(m, mp, xs, method="doubling")
    for c, p in ((cell, params), (m, mp)):  # no kernel: the scan instead, and said so
        for method, says in (("pallas", f"no Pallas kernel for '{c.kind}'"),
                             ("cudnn", "plain LSTM only")):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                _, hs = jrnn.unroll(c, p, xs, method=method)
            assert any(says in str(w.message) for w in caught), (c.kind, method)
            chex.assert_trees_all_close(hs, jrnn.unroll(c, p, xs, method="scan")[1])
    # pallas.py's own check names the kinds with kernels, not every cell kind.
    for c in (jrnn.mingru(8), jrnn.slstm(8), jrnn.mlstm(8)):
        assert pallas.fallback_reason(c) == f"no Pallas kernel for {c.kind!r} cells"
        with pytest.raises(ValueError, match=f"no Pallas kernel for {c.kind!r} cells"):
            pallas.sequence(c)
    with pytest.raises(ValueError, match="not this 'slstm' cell's"):
        jrnn.unroll(cell, mp, xs)
    with pytest.raises(ValueError, match="carry of the cell has shape"):
        jrnn.unroll(m, mp, xs, jrnn.mlstm(8).initial_carry(1))


def test_config_refuses_fields_that_do_not_apply():
    for kind in KINDS:
        assert ModelConfig(cell=kind, hidden_size=8).cell == kind
        for field, value in (("activation", "relu"), ("forget_bias", 1.0), ("proj_size", 4),
                             ("weight_dropout", 0.2)):
            with pytest.raises(ConfigError, match=f"{field} applies to .* not '{kind}'") as info:
                ModelConfig(cell=kind, hidden_size=8, **{field: value})
            assert "\n" not in str(info.value)
    # A mask on h_(t-1) feeds the sLSTM's gates; the mLSTM never reads h_(t-1).
    assert ModelConfig(cell="slstm", recurrent_dropout=0.2).recurrent_dropout == 0.2
    with pytest.raises(ConfigError, match="recurrent_dropout .* not 'mlstm'"):
        ModelConfig(cell="mlstm", recurrent_dropout=0.2)
    with pytest.raises(ConfigError, match="recurrent_dropout .*mLSTM"):
        ModelConfig(cell=(jrnn.mlstm(8),), recurrent_dropout=0.2)


# ---- language models, Flax, the command line ---------------------------------------------------


def test_flax_modules_take_the_xlstm_cells():
    from jrnn.interop import flax as jf

    x = random_inputs(0, 2, 6, 3)  # [B, T, D]
    for (kind, method) in CASES:
        cell = _cell(kind, 4)
        layer = jf.RNN(cell, method=method, param_dtype=jnp.float64, return_carry=True)
        variables = layer.init(jax.random.PRNGKey(0), x)
        carry, ys = layer.apply(variables, x, seq_lengths=jnp.array([6, 4]))
        want, want_carry = _loop(cell, variables["params"], np.swapaxes(np.asarray(x), 0, 1),
                                 lengths=[6, 4])
        chex.assert_trees_all_close((ys, tuple(carry)), (np.swapaxes(want, 0, 1), want_carry), **TOL)
