"""Small shared helpers for the tests."""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

import jrnn

KINDS = ["linear", "elman", "lstm", "gru"]
BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
ELMAN_ACTS = ["tanh", "sigmoid", "relu", "identity"]


def make(kind, hidden, activation="tanh"):
    """A cell by kind and the activation its reference needs."""
    return jrnn.make_cell(kind, hidden, activation=activation), activation


def to_np(tree):
    return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float64), tree)


def random_inputs(seed, T, B, D):
    return jax.random.normal(jax.random.PRNGKey(seed), (T, B, D), jnp.float64)


# A run that trains in seconds: the CLI options of the tests that need any checkpoint.
TINY_TRAIN = ["--hidden-size", "8", "--embed-size", "8", "--batch-size", "4", "--bptt", "5",
              "--epochs", "1", "--max-windows", "2", "--quiet"]


def subprocess_env(quick_compile: bool = True, **extra) -> dict:
    """The environment of a ``python -m jrnn`` subprocess: this checkout on ``PYTHONPATH``, one
    CPU device.  ``quick_compile``: XLA's backend optimizations off (compiling is most of a
    tiny run's time, and runs compared with each other compile alike) and every program in
    the session's persistent cache (conftest's directory), so a later run loads it."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=root)
    env.pop("JRNN_DATA", None)
    if quick_compile:
        env.update(XLA_FLAGS="--xla_backend_optimization_level=0",
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    env.update(extra)
    return env


def assert_grad_matches_finite_differences(loss, loss_ref, args, *, directions: int = 3,
                                           eps: float = 1e-6) -> None:
    """``jax.grad(loss)`` at ``args`` (a pytree of float64 NumPy arrays) against central
    differences of the NumPy ``loss_ref`` along random directions through every leaf at once."""
    grad = to_np(jax.jit(jax.grad(loss))(jax.tree_util.tree_map(jnp.asarray, args)))
    leaves, tree = jax.tree_util.tree_flatten(args)
    rng = np.random.default_rng(0)
    for _ in range(directions):
        v = [rng.standard_normal(np.shape(x)) for x in leaves]
        plus = tree.unflatten([x + eps * d for x, d in zip(leaves, v)])
        minus = tree.unflatten([x - eps * d for x, d in zip(leaves, v)])
        numeric = (loss_ref(plus) - loss_ref(minus)) / (2 * eps)
        analytic = sum(np.sum(g * d) for g, d in zip(jax.tree_util.tree_leaves(grad), v))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)


def kernel_case(kind, H, B, T, D=5, act=None):
    """A float32 layer for the GPU kernels' tests: ``(cell, params, xs, carry, w)`` with
    non-zero biases (padded units would show if they leaked), a non-zero start carry and
    output weights ``w``."""
    cell = jrnn.make_cell(kind, H, activation=act) if act else jrnn.make_cell(kind, H)
    params = cell.init(jax.random.PRNGKey(0), D, jnp.float32)
    for name in ("b", "b_h"):
        if name in params:
            params[name] = 0.1 * jax.random.normal(jax.random.PRNGKey(5), params[name].shape,
                                                   jnp.float32)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), jnp.float32)
    carry = jax.tree_util.tree_map(lambda c: c + 0.3, cell.initial_carry((B,), jnp.float32))
    w = jax.random.normal(jax.random.PRNGKey(2), (T, B, H), jnp.float32)
    return cell, params, xs, carry, w


def scan_layer(cell, reverse):
    """``layer(params, xs, carry) -> (final, hs)`` by ``jrnn.unroll``'s scan: the reference
    the kernels are compared with; ``reverse`` runs the flipped sequence and flips ``hs`` back."""
    def layer(p, x, c):
        final, hs = jrnn.unroll(cell, p, x[::-1] if reverse else x, c, method="scan")
        return final, (hs[::-1] if reverse else hs)
    return layer


def kernel_loss(layer, w):
    """``loss(params, xs, carry) -> (sum(hs * w) + |final|^2, (final, hs))`` of ``layer``."""
    def loss(params, xs, carry):
        final, hs = layer(params, xs, carry)
        return (jnp.sum(hs * w)
                + sum(jnp.sum(l * l) for l in jax.tree_util.tree_leaves(final))), (final, hs)
    return loss


def assert_kernel_equals_scan(kernel_layer, scan_layer, params, xs, carry, w, tol=2e-4):
    """A kernel layer and the scan: the outputs, the final carry and every gradient (params,
    xs, carry) of :func:`kernel_loss`, jitted, equal to ``tol`` (float32 in the kernels)."""
    grad, want_grad = (jax.jit(jax.value_and_grad(kernel_loss(layer, w), argnums=(0, 1, 2),
                                                  has_aux=True))
                       for layer in (kernel_layer, scan_layer))
    (_, (final, hs)), grads = grad(params, xs, carry)
    (_, (want_final, want_hs)), want_grads = want_grad(params, xs, carry)
    tol = dict(rtol=tol, atol=tol)
    np.testing.assert_allclose(np.asarray(hs), np.asarray(want_hs), **tol)
    for got, want in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(want_final)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)
    # d params (W_h, W_x, b, b_h), d xs, d carry: dz, dh0 (dc0) and dW_h from the kernels
    assert set(grads[0]) == set(want_grads[0])
    for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(want_grads)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), **tol)


def load_benchmark(name: str):
    """The script ``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
