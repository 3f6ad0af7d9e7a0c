"""The Pallas kernel and a cell whose activation it cannot run (issue 23, wrong result 1).

``jrnn.elman(H, activation=jnp.sin)`` keeps the callable in its step and leaves
``cell.activation = None``: the Elman kernel only has the named activations of
:data:`jrnn.core.gates.ACTIVATIONS` (with their derivatives written from the
output), so ``method="pallas"`` must run such a cell with the scan and say why
-- not the kernel with some other activation.  On a CPU the kernel runs in
interpret mode, so this checks the same dispatch a GPU would take.
"""

import re
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn.core import pallas
from jrnn.core.gates import ACTIVATIONS


def _sin_cell_case():
    T, B, D, H = 5, 3, 4, 16
    cell = jrnn.elman(H, activation=jnp.sin)
    params = cell.init(jax.random.PRNGKey(0), D, jnp.float64)
    # Weights large enough that sin is far from the identity on these inputs.
    params = jax.tree_util.tree_map(lambda p: 3.0 * p, params)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), jnp.float64)
    w = jax.random.normal(jax.random.PRNGKey(2), (T, B, H), jnp.float64)
    return cell, params, xs, w


def _loss(cell, method, params, xs, w):
    final, hs = jrnn.unroll(cell, params, xs, method=method)
    return jnp.sum(hs * w) + jnp.sum(final * final)


def test_pallas_with_a_callable_activation_equals_the_scan_and_says_why():
    cell, params, xs, w = _sin_cell_case()
    assert cell.activation is None  # the callable has no name the kernel knows

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, hs = jrnn.unroll(cell, params, xs, method="pallas")
        got = jax.grad(lambda p, x: _loss(cell, "pallas", p, x, w), argnums=(0, 1))(params, xs)
    _, want = jrnn.unroll(cell, params, xs, method="scan")
    want_g = jax.grad(lambda p, x: _loss(cell, "scan", p, x, w), argnums=(0, 1))(params, xs)

    np.testing.assert_allclose(np.asarray(hs), np.asarray(want), rtol=1e-12, atol=1e-12)
    for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want_g)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(e), rtol=1e-12, atol=1e-12)
    # The fallback is reported, with its reason, for the forward and the gradient run.
    said = [str(c.message) for c in caught if issubclass(c.category, RuntimeWarning)]
    assert said and all(
        re.search(r"method='pallas' runs the cell with the scan instead: .*activation", m)
        for m in said), said


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_every_named_activation_runs_in_the_kernel(name):
    """The other side: each activation the kernel has runs there (no warning), equal to the scan."""
    T, B, D, H = 4, 3, 4, 6
    cell = jrnn.elman(H, activation=name)
    params = cell.init(jax.random.PRNGKey(0), D, jnp.float64)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), jnp.float64)
    w = jax.random.normal(jax.random.PRNGKey(2), (T, B, H), jnp.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback
        got = jax.grad(lambda p: _loss(cell, "pallas", p, xs, w))(params)
    want = jax.grad(lambda p: _loss(cell, "scan", p, xs, w))(params)
    for k in want:  # the kernels compute in float32: float32's tolerance, not float64's
        np.testing.assert_allclose(np.asarray(got[k]), np.asarray(want[k]), rtol=2e-5,
                                   atol=2e-5, err_msg=k)


def test_the_fallback_reason_names_the_activation_as_a_value():
    cell = jrnn.elman(16, activation=jnp.sin)
    reason = pallas.fallback_reason(cell)
    assert reason is not None and not pallas.supported(cell)
    assert reason.kind is pallas.Fallback.ACTIVATION
    assert "activation" in str(reason)
    # Not even interpret mode, which ignores the on-chip budget, runs it with another activation.
    with pytest.raises(ValueError, match="activation"):
        pallas.sequence(cell, interpret=True)
    # A named activation still runs in the kernel; an unknown name does not.
    assert pallas.fallback_reason(jrnn.elman(16, activation="relu")) is None
    renamed = jrnn.elman(16)._replace(activation="softsign")
    assert pallas.fallback_reason(renamed).kind is pallas.Fallback.ACTIVATION


def test_fallback_reasons_are_typed_and_keep_their_messages():
    big = jrnn.lstm(200)
    reason = pallas.fallback_reason(big)
    assert reason.kind is pallas.Fallback.ON_CHIP
    assert reason == ("the forward kernel of a 256-unit (padded) lstm needs 1472 KiB of shared "
                      "memory with float32 (TF32) operands, over the 220 KiB budget")
    # bf16 Elman at 192 units: the forward kernel fits, the backward does not
    backward = pallas.fallback_reason(jrnn.elman(192), bf16=True)
    assert backward.kind is pallas.Fallback.ON_CHIP and "backward kernel" in backward
    assert pallas.fallback_reason(jrnn.lstm(64)) is None
    assert pallas.fallback_reason(jrnn.gru(8), lengths=True).kind is pallas.Fallback.LENGTHS
    assert pallas.fallback_reason(jrnn.lstm(8, proj_size=3)).kind is pallas.Fallback.PROJECTION
    assert pallas.fallback_reason(jrnn.remat(jrnn.gru(8))).kind is pallas.Fallback.STEP_CHANGED
    # Interpret mode runs a cell over the on-chip budget (the budget is a GPU's) ...
    pallas.sequence(big, interpret=True)
    # ... but no other fallback.
    with pytest.raises(ValueError, match="proj_size"):
        pallas.sequence(jrnn.lstm(8, proj_size=3), interpret=True)
