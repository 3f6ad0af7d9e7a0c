"""Test-session setup: float64 everywhere, so loop-reference comparisons can be tight."""

import jax

jax.config.update("jax_enable_x64", True)
