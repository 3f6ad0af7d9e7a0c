"""Small shared helpers for the tests."""

import jax
import jax.numpy as jnp
import numpy as np

import jrnn

KINDS = ["linear", "elman", "lstm", "gru"]
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
