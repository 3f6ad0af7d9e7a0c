"""Probes on the hidden state: how the analysis measures ``d loss / d h_t``.

``jax.grad`` gives the gradient of a loss with respect to a function's
inputs, but ``h_t`` is an intermediate of the scan.  A probe is a zero
perturbation ``eps_t`` added to the hidden state after each step: the loss
does not change, and ``d loss / d eps_t`` is exactly the total derivative
``d loss / d h_t`` (through the readout at ``t`` and through every later
step).  :func:`jrnn.diagnostics.grad_flow`, the language-model diagnostics
and :func:`jrnn.tasks.hidden_gradients` all measure gradients this way.

Example (a linear cell with ``W_h = 0.5 I``; the loss is the last ``h``):
  >>> import jax, jax.numpy as jnp, jrnn
  >>> from jrnn.analysis.probes import PROBE_KEY, probed
  >>> cell = jrnn.linear(2)
  >>> params = {"W": jnp.eye(2), "W_h": 0.5 * jnp.eye(2), "b": jnp.zeros(2)}
  >>> xs, eps = jnp.ones((3, 1, 2)), jnp.zeros((3, 1, 2))
  >>> loss = lambda e: jnp.sum(jrnn.unroll(probed(cell), {**params, PROBE_KEY: e}, xs)[1][-1])
  >>> jax.grad(loss)(eps)[:, 0, 0].tolist()
  [0.25, 0.5, 1.0]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.core.cells import Cell

__all__ = ["PROBE_KEY", "probed"]

Array = jax.Array

# The params key through which the probes ``eps: float[T, B, H]`` reach the scan.
PROBE_KEY = "__jrnn_probe_eps__"


def _add_to_hidden(carry, eps: Array):
    if "h" in getattr(carry, "_fields", ()):  # LSTMCarry, and the xLSTM cells' carries
        return carry._replace(h=carry.h + eps)
    if isinstance(carry, (jax.Array, np.ndarray)) or hasattr(carry, "shape"):
        extra = carry.shape[-1] - eps.shape[-1]
        if extra > 0:  # a complex diagonal carry (Re h, Im h): the hidden state is Re h
            eps = jnp.concatenate([eps, jnp.zeros(eps.shape[:-1] + (extra,), eps.dtype)], axis=-1)
        return carry + eps
    raise TypeError(
        f"cannot find the hidden state in a carry of type {type(carry).__name__}; "
        "grad_flow supports array carries and NamedTuple carries with an h field"
    )


def probed(cell: Cell) -> Cell:
    """``cell`` with a perturbation ``eps_t`` added to its hidden state after each step.

    The perturbations ``eps: float[T, B, H]`` ride in the params dict (under
    :data:`PROBE_KEY`) and into the scan appended to the projected inputs
    (the last ``H`` features), so the probed cell runs through
    :func:`jrnn.unroll`'s own scan.  With ``eps = 0`` the outputs are the
    cell's own, and ``d loss / d eps_t`` is ``d loss / d h_t``.
    """
    H = cell.hidden_size

    def project(params, xs):
        return jnp.concatenate([cell.project(params, xs), params[PROBE_KEY]], axis=-1)

    def step(params, carry, x):
        carry, _ = cell.step(params, carry, x[..., :-H])
        carry = _add_to_hidden(carry, x[..., -H:])
        return carry, cell.hidden(carry)

    # A new step: the cell's hand-written backward pass (tied to its own step)
    # no longer applies, and unroll differentiates this step with autodiff; the
    # parallel forms (which never call the step) are dropped for the same reason.
    return cell._replace(project=project, step=step, affine=None, parallel=None)
