r"""The vanilla RNN's problems, measured: gradient flow, Jacobian products, decay, overflow.

Every function here is pure JAX over a :class:`~jrnn.core.cells.Cell` and its
params (or over a trained :func:`jrnn.rnn_lm`), so it works for any cell
and can be ``jax.jit``-ed with the cell (and any callable) held static.
Time is indexed ``t = 0 .. T-1``; a *distance* or *lag* ``k`` counts steps
back from the last one.

* :func:`grad_flow` -- ``||dL_T/dh_t||`` (the last step's loss sent back to
  every earlier hidden state) and ``||dL/dx_t||`` (the summed loss sent back
  to every input), by ``jax.grad`` through :func:`jrnn.unroll`'s own scan.
* :func:`jacobian_norms` -- ``||ds_T/ds_{T-k}||_2`` against ``k``, with the
  per-step factor the product shrinks or grows by;
  :func:`elman_jacobian_bound` is the lecture's bound next to it:

  .. math::
      \frac{\partial h_t}{\partial h_{t-1}} = \mathrm{diag}(\sigma'(z_t))\, W_h^\top
      \quad\Rightarrow\quad
      \Big\|\frac{\partial h_T}{\partial h_{T-k}}\Big\|_2 \le
      \big(\max\sigma' \cdot \|W_h\|_2\big)^k,

  with ``max sigmoid' = 0.25`` and ``max tanh' = 1``.
* :func:`input_sensitivity` and :func:`information_decay` -- how much ``h_T``
  still depends on ``x_{T-1-k}``, and whether a linear probe can still read
  that old token back out of ``h_T``.
* :func:`watch_training` -- a training loop that records the loss and the
  pre-clip gradient norm and names the first step and parameter that went
  non-finite.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrnn.core.cells import Cell, make_cell
from jrnn.core.gates import ACTIVATIONS
from jrnn.core.unroll import unroll
from jrnn.core.validation import check_sequence, check_tokens, positive_int
from jrnn.analysis.probes import PROBE_KEY, probed
from jrnn.models.losses import sequence_loss
from jrnn.training.step import leaf_names, make_update

Array = jax.Array

__all__ = [
    "CELL_NAMES",
    "MORE_CELL_NAMES",
    "MAX_DERIVATIVE",
    "GradFlow",
    "JacobianNorms",
    "DecayCurve",
    "NonFinite",
    "TrainingTrace",
    "cell_by_name",
    "grad_flow",
    "lm_grad_flow",
    "jacobian_norms",
    "elman_jacobian_bound",
    "input_sensitivity",
    "probe_accuracy",
    "information_decay",
    "lm_information_decay",
    "nonfinite_leaves",
    "watch_training",
    "lm_loss_fn",
]

# The Elman cells go by their activation's name: every activation but the identity
# (the identity Elman cell is "linear").
_ELMAN_NAMES = tuple(name for name in ACTIVATIONS if name != "identity")

# The six recurrences the figures compare, by short name.
CELL_NAMES = ("linear",) + _ELMAN_NAMES + ("lstm", "gru")
# Cells diagnosed when named (not by default: the lecture's cells are the default set).
MORE_CELL_NAMES = ("mingru", "minlstm", "rglru", "slstm", "mlstm")

# The largest value of each activation's derivative: the per-step factor of the bound.
MAX_DERIVATIVE = {name: a.max_derivative for name, a in ACTIVATIONS.items()}


def cell_by_name(name: str, hidden_size: int, **kwargs) -> Cell:
    """One of :data:`CELL_NAMES` or :data:`MORE_CELL_NAMES` (``"tanh"`` is the tanh Elman cell,
    and so on).

    Example:
      >>> from jrnn import diagnostics
      >>> [(c.kind, c.activation) for c in map(lambda n: diagnostics.cell_by_name(n, 4), ("tanh", "lstm"))]
      [('elman', 'tanh'), ('lstm', None)]
    """
    if name in _ELMAN_NAMES:
        return make_cell("elman", hidden_size, activation=name, **kwargs)
    if name in ("linear", "lstm", "gru") + MORE_CELL_NAMES:
        return make_cell(name, hidden_size, **kwargs)
    raise ValueError(f"unknown cell name {name!r}; expected one of {list(CELL_NAMES + MORE_CELL_NAMES)}")


# ---- input checks ------------------------------------------------------------

def _check_cell(cell) -> None:
    if not isinstance(cell, Cell):
        raise TypeError(f"cell must be a jrnn Cell, got {type(cell).__name__}")


def _check_xs(xs, params) -> Array:
    if not isinstance(params, dict) or "W" not in params:
        raise TypeError("params must be a cell's params dict (with 'W', 'W_h', 'b')")
    xs = check_sequence(xs, params["W"].shape[0], what="W")
    if xs.shape[0] < 1 or xs.shape[1] < 1:
        raise ValueError(f"xs needs at least one timestep and one sequence, got shape {xs.shape}")
    return xs


def _mean_norm(g: Array) -> Array:
    """``g: [..., B, F]`` -> ``[...]``: each example's 2-norm, averaged over the batch."""
    return jnp.mean(jnp.linalg.norm(g, axis=-1), axis=-1)


# ---- gradient flow through time ----------------------------------------------

class GradFlow(NamedTuple):
    """What :func:`grad_flow` returns (norms averaged over the batch).

    ``hidden[..., t] = ||dL_T/dh_t||``: the loss at the last step sent back to
    the hidden state after step ``t`` (``t = T-1`` is the last step itself).
    ``inputs[t] = ||dL/dx_t||`` for the loss summed over all steps.
    """

    hidden: Array  # float[T] (float[L, T] for a stack of L layers)
    inputs: Array  # float[T]


def _default_readout(hs: Array) -> Array:
    # dL_t/dh_t is the all-ones vector: the gradient that flows back is W_h's
    # (transposed) action on ones, nothing else.
    return jnp.sum(hs, axis=-1)


def grad_flow(
    cell: Cell,
    params: dict,
    xs: Array,
    readout: Optional[Callable[[Array], Array]] = None,
    *,
    carry: Any = None,
) -> GradFlow:
    """Gradient norms through time, by ``jax.grad`` through the unroll's scan.

    Args:
      cell: any :class:`~jrnn.core.cells.Cell`.
      params: its params.
      xs: ``float[T, B, D]`` inputs.
      readout: ``hs: float[T, B, H] -> losses: float[T, B]``, one loss per step;
        default ``sum(h_t)`` (so ``dL_t/dh_t`` is all ones).
      carry: initial carry (default zeros).

    Returns:
      :class:`GradFlow` with ``hidden: float[T]`` (``||dL_{T-1}/dh_t||``) and
      ``inputs: float[T]`` (``||dL/dx_t||`` for ``L = sum_t L_t``), each the
      mean over the batch of per-sequence norms.

    Example (a linear cell with ``W_h = 0.5 I``: the gradient halves per step):
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn import diagnostics
      >>> cell = jrnn.linear(2)
      >>> params = {"W": jnp.eye(2), "W_h": 0.5 * jnp.eye(2), "b": jnp.zeros(2)}
      >>> flow = diagnostics.grad_flow(cell, params, jnp.ones((4, 1, 2)))
      >>> [round(float(v), 4) for v in flow.hidden / flow.hidden[-1]]
      [0.125, 0.25, 0.5, 1.0]
    """
    _check_cell(cell)
    xs = _check_xs(xs, params)
    readout = _default_readout if readout is None else readout
    T, B, _ = xs.shape
    probed_cell = probed(cell)
    eps0 = jnp.zeros((T, B, cell.hidden_size), xs.dtype)

    if carry is None:
        carry = cell.initial_carry((B,), xs.dtype)

    def flows(params, xs, carry):
        def losses(eps, xs):
            _, hs = unroll(probed_cell, {**params, PROBE_KEY: eps}, xs, carry)
            out = readout(hs)
            if out.shape != (T, B):
                raise ValueError(f"readout must return per-step losses [T, B]=({T}, {B}), got {out.shape}")
            return out

        g_h = jax.grad(lambda e: jnp.sum(losses(e, xs)[-1]))(eps0)
        g_x = jax.grad(lambda x: jnp.sum(losses(eps0, x)))(xs)
        return GradFlow(_mean_norm(g_h), _mean_norm(g_x))

    # One compiled graph: far quicker than running two backward passes op by op.
    return jax.jit(flows)(params, xs, carry)


def _lm_cells(model) -> tuple:
    if not model.cells or model.recurrence is None or model.readout is None:
        raise TypeError("this diagnostic needs an RNN language model (jrnn.rnn_lm), not "
                        f"{type(model.config).__name__}")
    return model.cells


def _lm_forward(model, params, tokens: Array, eps=None, xs=None):
    """The RNN LM's forward pass through its own parts, with optional probes ``eps[l]: [T, B, H]``.

    ``model.recurrence`` and ``model.readout`` are the pieces ``model.apply``
    runs (no dropout here), with the layers' cells swapped for probed ones when
    ``eps`` is given.  Returns ``(logits [B, T, V], hs [T, B, H] of the last
    layer, xs [T, B, E])``.
    """
    cells = _lm_cells(model)
    if xs is None:
        xs = params["embed"][jnp.asarray(tokens).T]
    if eps is not None:
        cells = [probed(c) for c in cells]
        params = {**params, "layers": [{**p, PROBE_KEY: e} for p, e in zip(params["layers"], eps)]}
    hs, _ = model.recurrence(params, xs, cells=cells)
    W_out, b_out = model.readout(params)
    logits = jnp.swapaxes(hs, 0, 1) @ W_out + b_out
    return logits, hs, xs


def _check_lm_tokens(model, inputs, targets):
    V = model.config.vocab_size
    inputs, targets = check_tokens(inputs, V, "inputs"), check_tokens(targets, V, "targets")
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} must have one shape")
    return inputs, targets


def lm_grad_flow(model, params, inputs: Array, targets: Array) -> GradFlow:
    """:func:`grad_flow` for a trained RNN LM, with its cross-entropy as the loss.

    Args:
      model: a :func:`jrnn.rnn_lm` model.
      params: its params.
      inputs, targets: ``int[B, T]`` (``targets[:, t]`` follows ``inputs[:, t]``).

    Returns:
      :class:`GradFlow` with ``hidden: float[L, T]`` -- ``||dL_{T-1}/h^l_t||``
      for each layer ``l``, where ``L_{T-1}`` is the cross-entropy of the last
      target -- and ``inputs: float[T]``, ``||dL/de_t||`` for the summed
      cross-entropy, where ``e_t`` is the embedding fed in at step ``t``.
    """
    cells = _lm_cells(model)  # an RNN LM, or a TypeError
    inputs, targets = _check_lm_tokens(model, inputs, targets)
    B, T = inputs.shape
    dtype = params["embed"].dtype
    # One probe per layer, as wide as that layer's hidden state h: the cell's
    # hidden_size (proj_size for an LSTM with projections), not config.hidden_size.
    eps0 = [jnp.zeros((T, B, cell.hidden_size), dtype) for cell in cells]

    def flows(params, inputs, targets):
        def losses(eps, xs):
            logits, _, _ = _lm_forward(model, params, inputs, eps, xs)
            return optax.softmax_cross_entropy_with_integer_labels(logits, targets)  # [B, T]

        xs0 = params["embed"][inputs.T]
        g_h = jax.grad(lambda e: jnp.sum(losses(e, xs0)[:, -1]))(eps0)
        g_x = jax.grad(lambda x: jnp.sum(losses(eps0, x)))(xs0)
        return GradFlow(jnp.stack([_mean_norm(g) for g in g_h]), _mean_norm(g_x))

    return jax.jit(flows)(params, inputs, targets)


# ---- Jacobian products ---------------------------------------------------------

class JacobianNorms(NamedTuple):
    """``||ds_T/ds_{T-k}||_2`` against the distance ``k = 0 .. T`` (mean over the batch).

    ``s`` is the whole carry flattened (``h``, and ``c`` for the LSTM);
    ``s_0`` is the initial carry and ``s_T`` the final one.  ``factor[k-1] =
    norms[k] / norms[k-1]`` is the step-by-step factor and ``rate`` the
    geometric mean factor ``norms[K] ** (1 / K)``, with ``K`` the largest
    distance whose norm has not underflowed to 0 (``K = T`` when none has).
    """

    distance: Array  # int[T+1]
    norms: Array  # float[T+1]
    factor: Array  # float[T]
    rate: Array  # float[]


def _flat(carry, shapes: list) -> tuple[Array, Callable]:
    """Concatenate a carry's leaves ``[..., *shape_i]`` (``shapes``: each leaf's shape for one
    sequence) into ``[..., S]``, and the inverse."""
    leaves, treedef = jax.tree_util.tree_flatten(carry)
    lead = leaves[0].shape[:leaves[0].ndim - len(shapes[0])]
    sizes = [int(np.prod(shape)) for shape in shapes]
    splits = list(np.cumsum(sizes)[:-1])

    def unflat(s):
        parts = jnp.split(s, splits, axis=-1)
        return jax.tree_util.tree_unflatten(
            treedef, [p.reshape(s.shape[:-1] + tuple(shape)) for p, shape in zip(parts, shapes)])

    return jnp.concatenate([x.reshape(lead + (-1,)) for x in leaves], axis=-1), unflat


def jacobian_norms(
    cell: Cell,
    params: dict,
    xs: Array,
    carry: Any = None,
    *,
    method: str = "exact",
    num_probes: int = 16,
    key: Optional[Array] = None,
) -> JacobianNorms:
    """How the Jacobian ``ds_T/ds_{T-k}`` of the carry shrinks or grows with ``k``.

    ``method="exact"`` forms every step's Jacobian ``J_t = ds_{t+1}/ds_t``
    (``[S, S]`` per sequence, ``S`` the carry size) with ``jax.jacfwd`` and
    takes the spectral norm of each running product ``J_{T-1} ... J_{T-k}``:
    O(T S^3) work, fine up to S of a few hundred.  ``method="estimate"``
    never forms a Jacobian: it pushes ``num_probes`` Gaussian vectors back
    through the steps with ``jax.vjp`` (``v <- v J_t``) and reports
    ``sqrt(mean ||v||^2)``, Hutchinson's estimate of the Frobenius norm of the
    product, at O(T S^2) per probe.  The Frobenius norm lies between the
    spectral norm and ``sqrt(S)`` times it, and meets the spectral norm once
    the product is dominated by one direction -- as it is after a few steps
    of decay or growth -- so the two methods give the same slope.

    Args:
      cell, params: the cell.
      xs: ``float[T, B, D]``; the Jacobians are taken along this trajectory.
      carry: initial carry (default zeros).
      method: ``"exact"`` or ``"estimate"``.
      num_probes: probe vectors for ``"estimate"``.
      key: PRNG key for the probes (default ``PRNGKey(0)``).

    Returns:
      :class:`JacobianNorms`.

    Example (``W_h = 0.5 I``: the norm halves per step):
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn import diagnostics
      >>> params = {"W": jnp.eye(2), "W_h": 0.5 * jnp.eye(2), "b": jnp.zeros(2)}
      >>> jn = diagnostics.jacobian_norms(jrnn.linear(2), params, jnp.ones((3, 1, 2)))
      >>> [float(v) for v in jn.norms], float(jn.rate)
      ([1.0, 0.5, 0.25, 0.125], 0.5)
    """
    _check_cell(cell)
    xs = _check_xs(xs, params)
    if method not in ("exact", "estimate"):
        raise ValueError(f"method must be 'exact' or 'estimate', got {method!r}")
    positive_int("num_probes", num_probes)
    T, B, _ = xs.shape
    if carry is None:
        carry = cell.initial_carry((B,), xs.dtype)
    key = jax.random.PRNGKey(0) if key is None else key

    def compute(params, xs, carry, key):
        xs_proj = cell.project(params, xs)

        def forward(c, x_proj):
            new, _ = cell.step(params, c, x_proj)
            return new, c

        _, before = jax.lax.scan(forward, carry, xs_proj)  # s_0 .. s_{T-1}, leaves [T, B, ...]
        # Each leaf's shape for one sequence: [H] for most cells, [heads, d, d] for the mLSTM's C.
        shapes = [x.shape[2:] for x in jax.tree_util.tree_leaves(before)]
        s_before, unflat = _flat(before, shapes)  # [T, B, S]
        S = s_before.shape[-1]

        def flat_step(s, x_proj):  # s: [..., S] -> [..., S]
            return _flat(cell.step(params, unflat(s), x_proj)[0], shapes)[0]

        if method == "exact":
            jac = jax.vmap(jax.vmap(jax.jacfwd(flat_step)))(s_before, xs_proj)  # [T, B, S, S]

            def back(P, J):  # P = ds_T/ds_{t+1} -> ds_T/ds_t
                P = P @ J
                return P, jnp.linalg.norm(P, ord=2, axis=(-2, -1))

            eye = jnp.broadcast_to(jnp.eye(S, dtype=xs.dtype), (B, S, S))
            _, norms = jax.lax.scan(back, eye, jac, reverse=True)  # norms[t] for distance T - t
            norms = norms[::-1]  # distance k = 1 .. T
        else:
            v0 = jax.random.normal(key, (B, num_probes, S), xs.dtype)

            def back(v, inputs):
                s_t, x_t = inputs
                _, vjp = jax.vjp(lambda s: flat_step(s, x_t), s_t)  # s_t: [B, S]
                v = jax.vmap(lambda u: vjp(u)[0], in_axes=1, out_axes=1)(v)
                return v, jnp.sqrt(jnp.mean(jnp.sum(jnp.square(v), axis=-1), axis=-1))

            _, norms = jax.lax.scan(back, v0, (s_before, xs_proj), reverse=True)
            norms = norms[::-1]  # distance k = 1 .. T
        norms = jnp.concatenate([jnp.ones((1, B), xs.dtype), norms], axis=0)  # [T+1, B], k = 0 .. T
        norms = jnp.mean(norms, axis=1)
        factor = norms[1:] / norms[:-1]
        # The geometric-mean factor up to the last distance that has not underflowed to 0.
        k = jnp.arange(T + 1)
        last = jnp.max(jnp.where((norms > 0) & jnp.isfinite(norms), k, 0))
        rate = jnp.where(last > 0, norms[last] ** (1.0 / jnp.maximum(last, 1)), jnp.nan)
        return JacobianNorms(k, norms, factor, rate)

    return jax.jit(compute)(params, xs, carry, key)


def elman_jacobian_bound(cell: Cell, params: dict, distances: Array) -> Array:
    """The bound ``(max sigma' * ||W_h||_2) ** k`` on ``||dh_T/dh_{T-k}||_2``.

    Each step multiplies by ``diag(sigma'(z)) W_h^T``, whose norm is at most
    ``max sigma' * ||W_h||_2`` (0.25 for the sigmoid, 1 for tanh, ReLU and the
    linear cell); the product of ``k`` steps is bounded by the ``k``-th power.

    Args:
      cell: a linear or Elman cell whose ``activation`` is one of
        :data:`MAX_DERIVATIVE` (also wrapped, e.g. :func:`jrnn.remat`).
      params: its params.
      distances: ``int[K]``.

    Returns:
      ``float[K]``.

    Example:
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn import diagnostics
      >>> params = {"W": jnp.eye(2), "W_h": 2.0 * jnp.eye(2), "b": jnp.zeros(2)}
      >>> bound = diagnostics.elman_jacobian_bound(jrnn.elman(2, "sigmoid"), params, jnp.arange(3))
      >>> [float(v) for v in bound]
      [1.0, 0.5, 0.25]
    """
    _check_cell(cell)
    act = cell.activation
    if cell.kind not in ("linear", "elman") or act not in MAX_DERIVATIVE:
        raise ValueError(
            f"the activation bound applies to linear and Elman cells with one of "
            f"{sorted(MAX_DERIVATIVE)}, not a {cell.kind!r} cell with activation {act!r}"
        )
    w_norm = jnp.linalg.norm(params["W_h"], ord=2)
    return (MAX_DERIVATIVE[act] * w_norm) ** jnp.asarray(distances, w_norm.dtype)


# ---- information decay -----------------------------------------------------------

def input_sensitivity(cell: Cell, params: dict, xs: Array, carry: Any = None) -> Array:
    """``||dh_T/dx_{T-1-k}||_2`` for lags ``k = 0 .. T-1``: ``float[T]``, mean over the batch.

    ``k = 0`` is the last input.  The Jacobian of the final hidden state with
    respect to every input comes from ``jax.jacrev`` through the unroll.

    Example (``W_h = 0.5 I``, ``W = I``):
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn import diagnostics
      >>> params = {"W": jnp.eye(2), "W_h": 0.5 * jnp.eye(2), "b": jnp.zeros(2)}
      >>> [float(v) for v in diagnostics.input_sensitivity(jrnn.linear(2), params, jnp.ones((3, 1, 2)))]
      [1.0, 0.5, 0.25]
    """
    _check_cell(cell)
    xs = _check_xs(xs, params)
    T, B, _ = xs.shape
    if carry is None:
        carry = cell.initial_carry((B,), xs.dtype)

    @jax.jit
    def sensitivity(params, xs, carry):
        def final_h(x, c):  # one sequence: x [T, D], c leaves [...]
            batched = jax.tree_util.tree_map(lambda a: a[None], c)
            final, _ = unroll(cell, params, x[:, None], batched)
            return cell.hidden(final)[0]

        jac = jax.vmap(jax.jacrev(final_h), in_axes=(1, 0))(xs, carry)  # [B, H, T, D]
        norms = jnp.linalg.norm(jnp.moveaxis(jac, 2, 1), ord=2, axis=(-2, -1))  # [B, T]
        return jnp.mean(norms, axis=0)[::-1]

    return sensitivity(params, xs, carry)


def probe_accuracy(
    features: Array,
    labels: Array,
    num_classes: int,
    *,
    train_fraction: float = 0.5,
    ridge: float = 1e-3,
) -> Array:
    """Held-out accuracy of a linear probe from ``features`` to ``labels``.

    The probe is ridge regression onto one-hot labels (closed form, so it is
    pure and jit-able): fitted on the first ``train_fraction`` of the rows,
    scored by argmax on the rest.  Features are standardized with the
    training rows' mean and spread first, so tiny but informative variations
    count as much as large ones.

    Args:
      features: ``float[N, F]``.
      labels: ``int[N]`` in ``[0, num_classes)``.
      num_classes: C.

    Returns:
      a scalar accuracy in [0, 1].

    Example:
      >>> import jax.numpy as jnp
      >>> from jrnn import diagnostics
      >>> labels = jnp.arange(40) % 4
      >>> float(diagnostics.probe_accuracy(jnp.eye(4)[labels], labels, 4))
      1.0
    """
    features = jnp.asarray(features)
    labels = jnp.asarray(labels)
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(f"features must be [N, F] and labels [N], got {features.shape} and {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    N = features.shape[0]
    n_train = int(round(N * train_fraction))
    if not 0 < n_train < N:
        raise ValueError(f"train_fraction {train_fraction} leaves no training or no test rows of {N}")
    X = features.astype(jnp.result_type(features.dtype, jnp.float32))
    Xtr, Xte = X[:n_train], X[n_train:]
    mu, sd = jnp.mean(Xtr, 0), jnp.std(Xtr, 0)
    sd = jnp.where(sd > 0, sd, 1.0)
    Xtr, Xte = (Xtr - mu) / sd, (Xte - mu) / sd
    Y = jax.nn.one_hot(labels[:n_train], num_classes, dtype=X.dtype)
    y_mean = jnp.mean(Y, 0)
    F = X.shape[1]
    W = jnp.linalg.solve(Xtr.T @ Xtr + ridge * n_train * jnp.eye(F, dtype=X.dtype), Xtr.T @ (Y - y_mean))
    pred = jnp.argmax(Xte @ W + y_mean, axis=-1)
    return jnp.mean(pred == labels[n_train:])


class DecayCurve(NamedTuple):
    """How much the final state still knows about the input ``k`` steps back."""

    lags: Array  # int[K]
    sensitivity: Array  # float[K]: ||dh_T/dx_{T-1-k}||_2
    probe_accuracy: Array  # float[K]: linear probe recovering token_{T-1-k} from h_T
    chance: Array  # float[K]: always guessing the most frequent training label


def _majority_accuracy(labels: Array, num_classes: int, train_fraction: float) -> Array:
    n_train = int(round(labels.shape[0] * train_fraction))
    top = jnp.argmax(jnp.bincount(labels[:n_train], length=num_classes))
    return jnp.mean(labels[n_train:] == top)


def _check_lags(lags, T: int) -> np.ndarray:
    lags = np.asarray(lags)
    if lags.ndim != 1 or not np.issubdtype(lags.dtype, np.integer) or lags.size == 0:
        raise ValueError(f"lags must be a non-empty 1-D sequence of ints, got {lags!r}")
    if lags.min() < 0 or lags.max() >= T:
        raise ValueError(f"lags must lie in [0, T-1={T - 1}], got values in [{lags.min()}, {lags.max()}]")
    return lags


def information_decay(
    cell: Cell,
    params: dict,
    key: Array,
    *,
    seq_len: int,
    lags: Optional[Sequence[int]] = None,
    num_samples: int = 1024,
    vocab_size: int = 8,
    sensitivity_samples: int = 16,
) -> DecayCurve:
    """Feed random token sequences and ask how well ``h_T`` remembers each old token.

    Tokens are uniform over ``vocab_size`` symbols, fed as one-hot vectors
    when the cell's input size equals ``vocab_size`` and through a fixed
    random embedding ``N(0, 1/D)`` otherwise.  For each lag ``k`` the curve
    holds the input sensitivity ``||dh_T/dx_{T-1-k}||`` (first
    ``sensitivity_samples`` sequences) and the held-out accuracy of a linear
    probe recovering ``token_{T-1-k}`` from ``h_T`` (chance: ``1/vocab_size``).

    Args:
      cell, params: the cell.
      key: PRNG key for the tokens (and the embedding).
      seq_len: T.
      lags: ``int[K]`` in ``[0, T-1]`` (default: all of them).
      num_samples: sequences; half fit the probe, half score it.

    Returns:
      :class:`DecayCurve`.
    """
    _check_cell(cell)
    positive_int("seq_len", seq_len)
    if num_samples < 4:
        raise ValueError(f"num_samples must be at least 4, got {num_samples}")
    lags = _check_lags(np.arange(seq_len) if lags is None else lags, seq_len)
    D = params["W"].shape[0]
    dtype = params["W"].dtype
    k_tok, k_emb = jax.random.split(key)
    tokens = jax.random.randint(k_tok, (num_samples, seq_len), 0, vocab_size)
    if D == vocab_size:
        table = jnp.eye(vocab_size, dtype=dtype)
    else:
        table = jax.random.normal(k_emb, (vocab_size, D), dtype) / math.sqrt(D)
    xs = table[tokens.T]  # [T, N, D]

    @jax.jit
    def probes(params, xs, tokens):
        final, _ = unroll(cell, params, xs)
        features = cell.hidden(final)
        labels = tokens[:, seq_len - 1 - lags].T  # [K, N]
        acc = jax.vmap(lambda y: probe_accuracy(features, y, vocab_size))(labels)
        chance = jax.vmap(lambda y: _majority_accuracy(y, vocab_size, 0.5))(labels)
        return acc, chance

    acc, chance = probes(params, xs, tokens)
    sens = input_sensitivity(cell, params, xs[:, :sensitivity_samples])[lags]
    return DecayCurve(jnp.asarray(lags), sens, acc, chance)


def lm_information_decay(model, params, tokens: Array, lags: Sequence[int], *,
                         sensitivity_samples: int = 16) -> DecayCurve:
    """:func:`information_decay` for a trained RNN LM on windows of real text.

    Args:
      model: a :func:`jrnn.rnn_lm` model.
      params: its params.
      tokens: ``int[N, T]`` windows (half fit the probe, half score it).
      lags: ``int[K]`` in ``[0, T-1]``.

    Returns:
      :class:`DecayCurve`: the sensitivity of the last layer's ``h_T`` to the
      embedding fed ``k`` steps back, and how well a linear probe on
      ``model.encode`` recovers that token (chance: the most frequent token).
    """
    _lm_cells(model)
    tokens, _ = _check_lm_tokens(model, tokens, tokens)
    N, T = tokens.shape
    if N < 4:
        raise ValueError(f"need at least 4 windows, got {N}")
    lags = _check_lags(lags, T)
    V = model.config.vocab_size

    @jax.jit
    def curve(params, tokens):
        features = model.encode(params, tokens)
        labels = tokens[:, T - 1 - lags].T
        acc = jax.vmap(lambda y: probe_accuracy(features, y, V))(labels)
        chance = jax.vmap(lambda y: _majority_accuracy(y, V, 0.5))(labels)

        def final_h(x):  # x: [T, E] embeddings of one window
            _, hs, _ = _lm_forward(model, params, None, xs=x[:, None])
            return hs[-1, 0]

        xs = params["embed"][tokens[:sensitivity_samples].T]  # [T, n, E]
        jac = jax.vmap(jax.jacrev(final_h), in_axes=1)(xs)  # [n, H, T, E]
        sens = jnp.mean(jnp.linalg.norm(jnp.moveaxis(jac, 2, 1), ord=2, axis=(-2, -1)), 0)[::-1]
        return DecayCurve(jnp.asarray(lags), sens[lags], acc, chance)

    return curve(params, tokens)


# ---- exploding gradients: finding the first non-finite value ------------------------

def _display_names(tree) -> list[str]:
    """:func:`jrnn.training.step.leaf_names`, with a bare-array tree's one leaf called ``<root>``."""
    return [name or "<root>" for name in leaf_names(tree)]


def nonfinite_leaves(tree) -> list[str]:
    """Names (key paths) of the leaves of ``tree`` holding a NaN or an infinity.

    Example:
      >>> import jax.numpy as jnp
      >>> from jrnn import diagnostics
      >>> diagnostics.nonfinite_leaves({"W": jnp.ones(2), "W_h": jnp.array([1.0, jnp.inf])})
      ["['W_h']"]
    """
    names = _display_names(tree)
    flags = [bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(tree)]
    return [n for n, ok in zip(names, flags) if not ok]


class NonFinite(NamedTuple):
    """The first step at which training produced a NaN or an infinity."""

    step: int  # 0-based index of the batch
    loss_finite: bool
    parameters: tuple  # names of the parameters whose gradient was not finite

    def __str__(self) -> str:
        what = [] if self.loss_finite else ["non-finite loss"]
        if self.parameters:
            what.append("non-finite gradient of " + ", ".join(self.parameters))
        return f"step {self.step}: " + "; ".join(what)


class TrainingTrace(NamedTuple):
    """What :func:`watch_training` records, one entry per step."""

    loss: np.ndarray  # float[S]
    grad_norm: np.ndarray  # float[S]: global gradient norm before clipping
    finite: np.ndarray  # bool[S]
    first_nonfinite: Optional[NonFinite]
    params: Any  # the params after the last step


def watch_training(
    loss_fn: Callable[[Any, Any], Array],
    params,
    optimizer: optax.GradientTransformation,
    batches: Iterable,
    *,
    clip_norm: Optional[float] = None,
    stop_at_nonfinite: bool = True,
    on_step: Optional[Callable[[int, float, float], None]] = None,
) -> TrainingTrace:
    """Train with ``optimizer`` and record the loss and the pre-clip gradient norm.

    Each step is the training core of ``fit`` (:func:`jrnn.training.step.make_update`,
    jitted): it returns the loss, the global gradient norm before clipping
    and one finiteness flag per parameter, so the first step with a NaN or
    infinity is reported with the names of the parameters whose gradients
    broke (and whether the loss itself did).  The update is applied as
    computed (no skipping), so a non-finite step leaves non-finite params.

    Args:
      loss_fn: ``(params, batch) -> scalar loss``, e.g. :func:`lm_loss_fn`.
      params: initial params.
      optimizer: an optax optimizer.
      batches: an iterable of batches, each passed to ``loss_fn``.
      clip_norm: clip the global gradient norm to this (``None``: no clipping).
      stop_at_nonfinite: stop after the first non-finite step.
      on_step: ``(step, loss, grad_norm)`` called after every step (progress).

    Returns:
      :class:`TrainingTrace`; step ``i`` is the ``i``-th batch (0-based).

    Example:
      >>> import jax.numpy as jnp, optax
      >>> from jrnn import diagnostics
      >>> loss = lambda p, scale: jnp.sum((scale * p["w"]) ** 2)
      >>> trace = diagnostics.watch_training(loss, {"w": jnp.ones(2)}, optax.sgd(0.01),
      ...                                    [1.0, 1.0, 1e200, 1.0])
      >>> print(trace.first_nonfinite)
      step 2: non-finite loss; non-finite gradient of ['w']
    """
    step = jax.jit(make_update(loss_fn, optimizer, clip_norm=clip_norm))
    names = _display_names(params)
    opt_state = optimizer.init(params)
    losses, norms, finite, first = [], [], [], None
    for i, batch in enumerate(batches):
        params, opt_state, _, m = step(params, opt_state, batch)
        loss, gnorm, leaf_ok = float(m["loss"]), float(m["grad_norm"]), np.asarray(m["finite_leaves"])
        ok = math.isfinite(loss) and bool(leaf_ok.all())
        losses.append(loss)
        norms.append(gnorm)
        finite.append(ok)
        if on_step is not None:
            on_step(i, loss, gnorm)
        if not ok and first is None:
            bad = tuple(n for n, good in zip(names, leaf_ok) if not good)
            first = NonFinite(i, math.isfinite(loss), bad)
            if stop_at_nonfinite:
                break
    return TrainingTrace(np.array(losses), np.array(norms), np.array(finite, bool), first, params)


def lm_loss_fn(model) -> Callable:
    """``(params, (inputs, targets)) -> loss`` for :func:`watch_training`: mean per-token cross-entropy."""
    def loss_fn(params, batch):
        inputs, targets = batch
        loss, aux = sequence_loss(model, params, inputs, targets)
        return loss / aux.num_tokens

    return loss_fn
