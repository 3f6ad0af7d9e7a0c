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
