r"""Flax modules around jrnn cells: linen and NNX, parameters in jrnn's layout.

Import it on its own (``from jrnn.interop import flax as jf``); ``import jrnn`` does not load it.

Every module here runs :func:`jrnn.unroll` and nothing else, so a module and
the free function give the same numbers for the same weights.  The layers
take batch-major ``[B, T, D]`` inputs and the call arguments of Flax's own
``nn.RNN`` -- ``initial_carry``, ``seq_lengths``, ``return_carry``,
``time_major``, ``reverse``, ``keep_order`` -- with the same meaning, so a jrnn
layer drops in where an ``nn.RNN`` was.  The recurrence of a layer with cell
``cell`` is the cell's own,

.. math::
    (c_t, h_t) = \mathrm{step}(c_{t-1},\ x_t W + b), \qquad t = 1 \dots T

(for the lecture's linear cell, :math:`h_t = W x_t + W_h h_{t-1} + b`).

Parameters are stored exactly as the cell's ``init`` makes them:

* linen :class:`RNN`: ``variables["params"]`` *is* the cell's params dict
  (``W``, ``W_h``, ``b`` and, for the GRU, ``b_h``);
* linen :class:`Stack`: ``variables["params"]`` is ``{"layer_0": ..., "layer_1": ...}``;
  :func:`layers_from_flax` turns it into the list :func:`jrnn.unroll` takes;
* NNX :class:`NNXRNN` and :class:`NNXStack`: the ``params`` property returns
  the dict (or list of dicts), built from ``nnx.Param`` attributes with the
  same names;
* :class:`BidirectionalStack` / :class:`NNXBidirectionalStack` (PyTorch's
  per-layer bidirectional stack, :func:`jrnn.bidirectional`):
  ``{"layer_0": {"forward": ..., "backward": ...}, ...}`` in linen, and a
  list of ``(forward, backward)`` pairs from the NNX ``params`` property.

Differences from ``nn.RNN``: outputs at padded steps (``t >= seq_lengths[b]``)
are zeros, not whatever the cell computed there; the default initial carry is
always zeros (``init_key`` is accepted and unused); and the layer itself owns
the weights (no ``cell`` sub-module), which keeps the parameter dict flat.
As with ``nn.RNN``, the carry returned with ``seq_lengths`` is the one after
each sequence's last valid step.

How the recurrence runs is :func:`jrnn.unroll`'s choice, passed through:
``method`` (a module attribute, ``"scan"`` by default; not a call argument,
since linen's ``Module.apply`` owns that name) and ``custom_vjp`` (a module
attribute that a call may override).  ``custom_vjp=False`` differentiates the
scan with autodiff instead of the cell's hand-written backward pass, which is
what forward mode (``jax.jvp``, ``jax.jacfwd``) needs; the values are the same.

Initialization: every layer draws *one* key for all its parameters (linen:
the first key it draws from its ``"params"`` RNG stream; NNX: ``rngs.params()``)
and makes them from it the same way in both APIs -- ``cell.init(key, D)`` for
a layer, ``jax.random.split(key, L)`` for a stack's ``L`` layers (each split
again in two for a bidirectional layer).  So a linen and an NNX module whose
keys are equal have equal parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jrnn.core.cells import Cell
from jrnn.core.masking import reverse_within_lengths
from jrnn.core.unroll import bidirectional, unroll
from jrnn.core.validation import check_rate

Array = jax.Array

__all__ = [
    "RNN",
    "Stack",
    "Bidirectional",
    "NNXRNN",
    "NNXStack",
    "NNXBidirectional",
    "BidirectionalStack",
    "NNXBidirectionalStack",
    "layers_from_flax",
    "layers_to_flax",
]


def _concatenate(a: Array, b: Array) -> Array:
    return jnp.concatenate([a, b], axis=-1)


def _check_cell(cell) -> Cell:
    if not isinstance(cell, Cell):
        raise TypeError(f"expected a jrnn Cell (e.g. jrnn.lstm(8)), got {type(cell).__name__}")
    return cell


def _check_cells(cells) -> tuple:
    if isinstance(cells, Cell) or not cells:
        raise TypeError("cells must be a non-empty sequence of jrnn Cells")
    return tuple(_check_cell(c) for c in cells)


def _check_pairs(cells) -> tuple:
    if isinstance(cells, Cell) or not cells or not all(
            isinstance(p, (tuple, list)) and not isinstance(p, Cell) and len(p) == 2 for p in cells):
        raise TypeError("cells must be a non-empty sequence of (forward, backward) pairs of jrnn Cells")
    return tuple((_check_cell(f), _check_cell(b)) for f, b in cells)


def _check_inputs(inputs, time_major: bool) -> Array:
    inputs = jnp.asarray(inputs)
    if inputs.ndim != 3:
        layout = "[T, B, D]" if time_major else "[B, T, D]"
        raise ValueError(f"inputs must have rank 3 ({layout}), got shape {inputs.shape}")
    return inputs


def _per_call(module, **call) -> dict:
    """Each call argument, or the module's attribute of that name where the call passed ``None``.

    The one rule for every per-call override in this file (``time_major``,
    ``return_carry``, ``reverse``, ``keep_order``, ``custom_vjp``).

    Example:
      >>> from types import SimpleNamespace
      >>> module = SimpleNamespace(reverse=True, time_major=False)
      >>> _per_call(module, reverse=None, time_major=True)
      {'reverse': True, 'time_major': True}
    """
    return {name: getattr(module, name) if value is None else value for name, value in call.items()}


# -- initialization: one key per module, the same in linen and NNX ---------


def _stack_keys(cells: Sequence[Cell], key: Array, in_features: int) -> list:
    """``[(cell, key, input size)]``, one per layer of a stack.

    Layer ``l`` gets ``jax.random.split(key, L)[l]`` and reads ``in_features``
    (``l = 0``) or layer ``l - 1``'s ``hidden_size`` features.

    Example:
      >>> import jax, jrnn
      >>> [(c.hidden_size, d) for c, _, d in _stack_keys([jrnn.gru(4), jrnn.gru(2)],
      ...                                                jax.random.PRNGKey(0), 3)]
      [(4, 3), (2, 4)]
    """
    sizes = [in_features] + [c.hidden_size for c in cells[:-1]]
    return list(zip(cells, jax.random.split(key, len(cells)), sizes))


def _pair_keys(pairs: Sequence[tuple], key: Array, in_features: int) -> list:
    """``[((fwd, key, d), (bwd, key, d))]``, one pair per layer of a bidirectional stack.

    Layer ``l``'s key is ``jax.random.split(key, L)[l]``, split again into the
    forward and the backward key; layers after the first read both directions
    (``H_fwd + H_bwd`` features).

    Example:
      >>> import jax, jrnn
      >>> plan = _pair_keys([(jrnn.gru(4), jrnn.gru(3))] * 2, jax.random.PRNGKey(0), 5)
      >>> [[d for _, _, d in layer] for layer in plan]
      [[5, 5], [7, 7]]
    """
    plan, d = [], in_features
    for (cf, cb), k in zip(pairs, jax.random.split(key, len(pairs))):
        kf, kb = jax.random.split(k)
        plan.append(((cf, kf, d), (cb, kb, d)))
        d = cf.hidden_size + cb.hidden_size
    return plan


def _linen_params(module: nn.Module, names: Sequence[str], make: Callable[[Array], dict]) -> dict:
    """``{name: module.param(name, ...)}`` for ``names``, all made by ONE call ``make(key)``.

    ``key`` is the first parameter's key, i.e. the first one the module draws
    from its ``"params"`` stream; the other parameters' keys go unused.  (One
    ``cell.init`` per parameter, each with its own key, would give parameters
    that no single ``cell.init`` -- and so no NNX module -- makes.)
    """
    made = []

    def entry(key, name):
        if not made:
            made.append(make(key))
        return made[0][name]

    return {name: module.param(name, entry, name) for name in names}


class _OneKey:
    """Stands in for ``nnx.Rngs`` where a stack hands one of its layers that layer's key."""

    def __init__(self, key: Array):
        self._key = key

    def params(self) -> Array:
        return self._key


# -- running: layout -> jrnn.unroll / jrnn.bidirectional -> Flax's layout ----


def _run(cells, params, inputs, initial_carry, seq_lengths, *, time_major, return_carry, reverse,
         keep_order, method, custom_vjp, scan_unroll, dropout=0.0, key=None):
    """The one code path of every single-direction module: layout -> jrnn.unroll -> Flax's order.

    ``inputs: float[B, T, D]`` (``[T, B, D]`` with ``time_major``) ->
    ``outputs: float[B, T, H]``, or ``(carry, outputs)`` with ``return_carry``.
    """
    xs = inputs if time_major else jnp.swapaxes(inputs, 0, 1)  # [T, B, D]
    carry, hs = unroll(
        cells, params, xs, initial_carry, lengths=seq_lengths, reverse=reverse, method=method,
        scan_unroll=scan_unroll, dropout=dropout, key=key, custom_vjp=custom_vjp,
    )
    if reverse and not keep_order:
        # nn.RNN's default: a reversed layer returns its outputs in processing
        # order (each sequence flipped within its length, padding at the end).
        hs = jnp.flip(hs, 0) if seq_lengths is None else reverse_within_lengths(hs, seq_lengths)
    if not time_major:
        hs = jnp.swapaxes(hs, 0, 1)
    return (carry, hs) if return_carry else hs


def _run_pairs(cells, params, inputs, initial_carry, seq_lengths, *, time_major, return_carry,
               method, custom_vjp, scan_unroll, dropout, key):
    """The body of both bidirectional stacks: layout -> jrnn.bidirectional -> layout.

    ``inputs: float[B, T, D]`` (``[T, B, D]`` with ``time_major``) ->
    ``outputs: float[B, T, H_fwd + H_bwd]``, or ``(carries, outputs)``.
    """
    xs = inputs if time_major else jnp.swapaxes(inputs, 0, 1)
    carry, hs = bidirectional(
        list(cells), params, xs, initial_carry, lengths=seq_lengths, method=method,
        scan_unroll=scan_unroll, dropout=dropout, key=key, custom_vjp=custom_vjp,
    )
    hs = hs if time_major else jnp.swapaxes(hs, 0, 1)
    return (carry, hs) if return_carry else hs


def _run_bidirectional(module, inputs, initial_carry, seq_lengths, return_carry, time_major,
                       kwargs):
    """The body shared by the linen and NNX bidirectional wrappers."""
    o = _per_call(module, time_major=time_major, return_carry=return_carry)
    c_fwd, c_bwd = (None, None) if initial_carry is None else initial_carry
    carry_f, ys_f = module.forward_rnn(
        inputs, initial_carry=c_fwd, seq_lengths=seq_lengths, return_carry=True,
        time_major=o["time_major"], reverse=False, **kwargs,
    )
    carry_b, ys_b = module.backward_rnn(
        inputs, initial_carry=c_bwd, seq_lengths=seq_lengths, return_carry=True,
        time_major=o["time_major"], reverse=True, keep_order=True, **kwargs,
    )
    ys = module.merge_fn(ys_f, ys_b)
    return ((carry_f, carry_b), ys) if o["return_carry"] else ys


def _linen_dropout_key(module: nn.Module, layers: int, deterministic: Optional[bool]):
    """A key from the ``"dropout"`` stream if a stack of ``layers`` drops out now, else None."""
    if module.dropout_rate > 0.0 and layers > 1:
        if not nn.merge_param("deterministic", module.deterministic, deterministic):
            return module.make_rng("dropout")
    return None


def _nnx_dropout_key(module: nnx.Module, layers: int, rngs: Optional[nnx.Rngs]):
    """``rngs.dropout()`` if a stack of ``layers`` in train mode drops out this call, else None."""
    if module.dropout_rate > 0.0 and not module.deterministic and layers > 1 and rngs is not None:
        return rngs.dropout()
    return None


def layers_from_flax(params: dict) -> list:
    """A :class:`Stack`'s ``{"layer_0": p0, "layer_1": p1, ...}`` -> ``[p0, p1, ...]``.

    The list is what :func:`jrnn.unroll` takes for a stack of cells.

    Example:
      >>> from jrnn.interop import flax as jf
      >>> jf.layers_from_flax({"layer_1": "b", "layer_0": "a"})
      ['a', 'b']
    """
    names = sorted(params, key=lambda n: int(n.rsplit("_", 1)[-1]))
    if names != [f"layer_{i}" for i in range(len(names))]:
        raise ValueError(f"expected keys layer_0 .. layer_{len(names) - 1}, got {sorted(params)}")
    return [params[n] for n in names]


def layers_to_flax(params: Sequence[dict]) -> dict:
    """``[p0, p1, ...]`` (jrnn's stack params) -> a :class:`Stack`'s ``{"layer_0": p0, ...}``.

    Example:
      >>> from jrnn.interop import flax as jf
      >>> jf.layers_to_flax(["a", "b"])
      {'layer_0': 'a', 'layer_1': 'b'}
    """
    return {f"layer_{i}": p for i, p in enumerate(params)}


# ---------------------------------------------------------------------------
# linen
# ---------------------------------------------------------------------------


class RNN(nn.Module):
    r"""A linen recurrent layer running any jrnn cell, called like ``nn.RNN``.

    ``inputs: float[B, T, D]`` (``[T, B, D]`` with ``time_major``) ->
    ``outputs: float[B, T, H]``, or ``(carry, outputs)`` with ``return_carry``.
    The cell's recurrence runs under :func:`jrnn.unroll`; for an Elman cell

    .. math::
        h_t = \tanh(x_t W + h_{t-1} W_h + b).

    Parameters are created on first call by one ``cell.init(key, D)`` (so
    with the cell's own initialization; ``key`` is the first the module draws
    from its ``"params"`` stream) and live at the top of the module's
    ``params``: ``variables["params"]`` can be passed to
    ``jrnn.unroll(cell, ...)`` as is.

    Attributes:
      cell: a jrnn :class:`~jrnn.core.cells.Cell`, e.g. ``jrnn.lstm(64)``.
      time_major, return_carry, reverse, keep_order: as ``nn.RNN``; each can
        be overridden per call.  ``reverse=True`` reads each sequence from its
        last valid step back; with ``keep_order=False`` (Flax's default) the
        outputs come back in that reversed order, with ``keep_order=True``
        aligned with the inputs.
      unroll: ``lax.scan``'s unroll factor.
      param_dtype: dtype of the parameters.
      method: :func:`jrnn.unroll`'s ``method`` (``"scan"``, ``"associative"``,
        ``"auto"``, ...).
      custom_vjp: :func:`jrnn.unroll`'s ``custom_vjp``; ``False`` allows
        ``jax.jvp``.  A call's ``custom_vjp`` overrides it.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> from jrnn.interop import flax as jf
      >>> layer = jf.RNN(jrnn.lstm(8))
      >>> x = jnp.ones((2, 5, 3))                      # [B, T, D]
      >>> variables = layer.init(jax.random.PRNGKey(0), x)
      >>> sorted(variables["params"])
      ['W', 'W_h', 'b']
      >>> ys = layer.apply(variables, x, seq_lengths=jnp.array([5, 3]))
      >>> _, hs = jrnn.unroll(jrnn.lstm(8), variables["params"], x, time_major=False,
      ...                     lengths=jnp.array([5, 3]))
      >>> ys.shape, bool((ys == hs).all())
      ((2, 5, 8), True)
      >>> f = lambda x: layer.apply(variables, x, custom_vjp=False)   # forward mode
      >>> jax.jvp(f, (x,), (x,))[1].shape
      (2, 5, 8)
    """

    cell: Cell
    time_major: bool = False
    return_carry: bool = False
    reverse: bool = False
    keep_order: bool = False
    unroll: int = 1
    param_dtype: Any = jnp.float32
    method: str = "scan"
    custom_vjp: bool = True

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        init_key: Optional[Array] = None,
        seq_lengths: Optional[Array] = None,
        return_carry: Optional[bool] = None,
        time_major: Optional[bool] = None,
        reverse: Optional[bool] = None,
        keep_order: Optional[bool] = None,
        custom_vjp: Optional[bool] = None,
    ):
        del init_key  # nn.RNN's key for a random carry; jrnn's carries start at zeros
        cell = _check_cell(self.cell)
        o = _per_call(self, time_major=time_major, return_carry=return_carry, reverse=reverse,
                      keep_order=keep_order, custom_vjp=custom_vjp)
        inputs = _check_inputs(inputs, o["time_major"])
        D = inputs.shape[-1]
        # One self.param per entry of the cell's dict keeps jrnn's flat layout.
        names = jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), D, self.param_dtype))
        params = _linen_params(self, sorted(names), lambda key: cell.init(key, D, self.param_dtype))
        return _run(cell, params, inputs, initial_carry, seq_lengths, method=self.method,
                    scan_unroll=self.unroll, **o)

    def initialize_carry(self, batch_size: int, dtype=jnp.float32):
        """Zeros of the cell's carry for ``batch_size`` sequences."""
        return self.cell.initial_carry((batch_size,), dtype)


class Stack(nn.Module):
    r"""A linen stack of jrnn cells: layer ``l`` reads layer ``l-1``'s outputs.

    .. math::
        h^{(0)}_t = x_t, \qquad
        h^{(l)}_t = \mathrm{cell}_l\big(h^{(l)}_{t-1},\ \mathrm{dropout}(h^{(l-1)}_t)\big)

    It calls ``jrnn.unroll(cells, ...)`` once, so it matches the free
    function's stack, dropout between layers included (drawn from the
    ``"dropout"`` RNG stream when ``deterministic`` is False).  The carry is
    a list with one entry per layer; ``reverse`` reverses every layer.
    The other attributes are :class:`RNN`'s.

    Parameters: ``{"layer_0": cells[0]'s params, "layer_1": ...}``; see
    :func:`layers_from_flax` / :func:`layers_to_flax`.  Layer ``l``'s are
    ``cells[l].init(jax.random.split(key, L)[l], ...)`` for the module's one
    ``"params"`` key, as in :class:`NNXStack`.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> from jrnn.interop import flax as jf
      >>> stack = jf.Stack([jrnn.gru(6), jrnn.gru(4)], return_carry=True)
      >>> x = jnp.ones((2, 5, 3))
      >>> variables = stack.init(jax.random.PRNGKey(0), x)
      >>> carries, ys = stack.apply(variables, x)
      >>> ys.shape, [c.shape for c in carries]
      ((2, 5, 4), [(2, 6), (2, 4)])
    """

    cells: Sequence[Cell]
    dropout_rate: float = 0.0
    deterministic: Optional[bool] = None
    time_major: bool = False
    return_carry: bool = False
    reverse: bool = False
    keep_order: bool = False
    unroll: int = 1
    param_dtype: Any = jnp.float32
    method: str = "scan"
    custom_vjp: bool = True

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        init_key: Optional[Array] = None,
        seq_lengths: Optional[Array] = None,
        return_carry: Optional[bool] = None,
        time_major: Optional[bool] = None,
        reverse: Optional[bool] = None,
        keep_order: Optional[bool] = None,
        deterministic: Optional[bool] = None,
        custom_vjp: Optional[bool] = None,
    ):
        del init_key  # as in RNN
        cells = _check_cells(self.cells)
        o = _per_call(self, time_major=time_major, return_carry=return_carry, reverse=reverse,
                      keep_order=keep_order, custom_vjp=custom_vjp)
        inputs = _check_inputs(inputs, o["time_major"])

        def make(key):
            return layers_to_flax([c.init(k, d, self.param_dtype)
                                   for c, k, d in _stack_keys(cells, key, inputs.shape[-1])])

        names = [f"layer_{i}" for i in range(len(cells))]
        params = list(_linen_params(self, names, make).values())
        return _run(list(cells), params, inputs, initial_carry, seq_lengths, method=self.method,
                    scan_unroll=self.unroll, dropout=self.dropout_rate,
                    key=_linen_dropout_key(self, len(cells), deterministic), **o)

    def initialize_carry(self, batch_size: int, dtype=jnp.float32) -> list:
        """Zeros of every layer's carry, as a list."""
        return [c.initial_carry((batch_size,), dtype) for c in self.cells]


class Bidirectional(nn.Module):
    r"""Run one layer forward and another backward and merge their outputs.

    .. math::
        y_t = \mathrm{merge}(\overrightarrow{h}_t, \overleftarrow{h}_t)

    where the backward layer reads each sequence from its last valid step to
    its first (``reverse=True, keep_order=True``), so both outputs are aligned
    with the inputs; ``merge_fn`` concatenates by default.  Works with
    :class:`RNN`, :class:`Stack` or any module taking ``nn.RNN``'s call
    arguments; extra keyword arguments (e.g. ``deterministic`` for stacks,
    ``custom_vjp``) go to both.  The carry is ``(forward_carry, backward_carry)``.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> from jrnn.interop import flax as jf
      >>> bi = jf.Bidirectional(jf.RNN(jrnn.lstm(4)), jf.RNN(jrnn.lstm(4)))
      >>> x = jnp.ones((2, 5, 3))
      >>> variables = bi.init(jax.random.PRNGKey(0), x)
      >>> bi.apply(variables, x, seq_lengths=jnp.array([5, 2])).shape
      (2, 5, 8)
    """

    forward_rnn: nn.Module
    backward_rnn: nn.Module
    merge_fn: Callable[[Array, Array], Array] = _concatenate
    time_major: bool = False
    return_carry: bool = False

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        seq_lengths: Optional[Array] = None,
        return_carry: Optional[bool] = None,
        time_major: Optional[bool] = None,
        reverse: Optional[bool] = None,
        keep_order: Optional[bool] = None,
        **kwargs,
    ):
        del reverse, keep_order  # accepted as nn.Bidirectional does; the directions are fixed
        return _run_bidirectional(self, inputs, initial_carry, seq_lengths, return_carry,
                                  time_major, kwargs)


class BidirectionalStack(nn.Module):
    r"""A linen per-layer bidirectional stack, as ``torch.nn.LSTM(..., bidirectional=True)``.

    Layer ``l + 1`` reads ``[forward outputs, backward outputs]`` of layer
    ``l`` (so ``2 H`` features), unlike :class:`Bidirectional` over two
    :class:`Stack` s, whose directions never meet.  It calls
    :func:`jrnn.bidirectional` once (dropout between layers from the
    ``"dropout"`` RNG stream when ``deterministic`` is False).  The carry is
    a list of ``(forward_carry, backward_carry)`` pairs, one per layer.
    ``method`` and ``custom_vjp`` are :class:`RNN`'s.

    Parameters: ``{"layer_0": {"forward": ..., "backward": ...}, ...}``, made
    from the module's one ``"params"`` key as in :class:`NNXBidirectionalStack`.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> from jrnn.interop import flax as jf
      >>> stack = jf.BidirectionalStack([(jrnn.gru(4), jrnn.gru(4))] * 2, return_carry=True)
      >>> x = jnp.ones((2, 5, 3))
      >>> variables = stack.init(jax.random.PRNGKey(0), x)
      >>> carries, ys = stack.apply(variables, x, seq_lengths=jnp.array([5, 2]))
      >>> ys.shape, variables["params"]["layer_1"]["forward"]["W"].shape, len(carries)
      ((2, 5, 8), (8, 12), 2)
    """

    cells: Sequence[tuple]
    dropout_rate: float = 0.0
    deterministic: Optional[bool] = None
    time_major: bool = False
    return_carry: bool = False
    unroll: int = 1
    param_dtype: Any = jnp.float32
    method: str = "scan"
    custom_vjp: bool = True

    @nn.compact
    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        seq_lengths: Optional[Array] = None,
        return_carry: Optional[bool] = None,
        time_major: Optional[bool] = None,
        deterministic: Optional[bool] = None,
        custom_vjp: Optional[bool] = None,
    ):
        cells = _check_pairs(self.cells)
        o = _per_call(self, time_major=time_major, return_carry=return_carry, custom_vjp=custom_vjp)
        inputs = _check_inputs(inputs, o["time_major"])

        def make(key):
            dtype = self.param_dtype
            return layers_to_flax([
                {"forward": cf.init(kf, d, dtype), "backward": cb.init(kb, d, dtype)}
                for (cf, kf, d), (cb, kb, _) in _pair_keys(cells, key, inputs.shape[-1])])

        names = [f"layer_{i}" for i in range(len(cells))]
        params = [(p["forward"], p["backward"]) for p in _linen_params(self, names, make).values()]
        return _run_pairs(cells, params, inputs, initial_carry, seq_lengths, method=self.method,
                          scan_unroll=self.unroll, dropout=self.dropout_rate,
                          key=_linen_dropout_key(self, len(cells), deterministic), **o)


# ---------------------------------------------------------------------------
# NNX
# ---------------------------------------------------------------------------


class NNXRNN(nnx.Module):
    r"""An NNX recurrent layer running any jrnn cell, called like ``nnx.RNN``.

    The parameters are ``nnx.Param`` attributes named as in the cell's dict
    (``W``, ``W_h``, ``b``, ``b_h``), made by one ``cell.init`` with one key
    from ``rngs.params()`` (so equal to a linen :class:`RNN`'s made from the
    same key); :attr:`params` returns them as the plain dict
    :func:`jrnn.unroll` takes.  Shapes, call arguments, ``method``,
    ``custom_vjp`` and the recurrence
    (:math:`(c_t, h_t) = \mathrm{step}(c_{t-1}, x_t W + b)`) are those of the
    linen :class:`RNN`.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> from jrnn.interop import flax as jf
      >>> from flax import nnx
      >>> layer = jf.NNXRNN(jrnn.gru(8), 3, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 5, 3))
      >>> carry, ys = layer(x, return_carry=True)
      >>> _, hs = jrnn.unroll(jrnn.gru(8), layer.params, x, time_major=False)
      >>> ys.shape, bool((ys == hs).all())
      ((2, 5, 8), True)
      >>> jax.jvp(lambda x: layer(x, custom_vjp=False), (x,), (x,))[1].shape
      (2, 5, 8)
    """

    def __init__(
        self,
        cell: Cell,
        in_features: int,
        *,
        rngs: nnx.Rngs,
        param_dtype: Any = jnp.float32,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        method: str = "scan",
        custom_vjp: bool = True,
    ):
        self.cell = _check_cell(cell)
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.method = method
        self.custom_vjp = custom_vjp
        params = cell.init(rngs.params(), in_features, param_dtype)
        self.param_names = tuple(sorted(params))
        for name in self.param_names:
            setattr(self, name, nnx.Param(params[name]))

    @property
    def params(self) -> dict:
        """The cell's params dict, in jrnn's layout (current values)."""
        return {name: getattr(self, name)[...] for name in self.param_names}

    def initialize_carry(self, batch_size: int, dtype=jnp.float32):
        """Zeros of the cell's carry for ``batch_size`` sequences."""
        return self.cell.initial_carry((batch_size,), dtype)

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        seq_lengths: Optional[Array] = None,
        return_carry: Optional[bool] = None,
        time_major: Optional[bool] = None,
        reverse: Optional[bool] = None,
        keep_order: Optional[bool] = None,
        custom_vjp: Optional[bool] = None,
    ):
        o = _per_call(self, time_major=time_major, return_carry=return_carry, reverse=reverse,
                      keep_order=keep_order, custom_vjp=custom_vjp)
        inputs = _check_inputs(inputs, o["time_major"])
        return _run(self.cell, self.params, inputs, initial_carry, seq_lengths,
                    method=self.method, scan_unroll=self.unroll, **o)


class NNXStack(nnx.Module):
    r"""An NNX stack of jrnn cells (see the linen :class:`Stack` for the math).

    ``self.layers`` holds one :class:`NNXRNN` per cell and :attr:`params`
    returns the list of their dicts, the stack layout of :func:`jrnn.unroll`.
    One key from ``rngs.params()`` is split into the layers' keys, as the
    linen :class:`Stack` does with its key.  Dropout between layers (rate
    ``dropout_rate``) is drawn from ``rngs.dropout()`` when a call gets
    ``rngs`` and the module is not in ``eval()`` mode.

    Example:
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn.interop import flax as jf
      >>> from flax import nnx
      >>> stack = jf.NNXStack([jrnn.lstm(6), jrnn.lstm(4)], 3, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 5, 3))
      >>> _, hs = jrnn.unroll(list(stack.cells), stack.params, x, time_major=False)
      >>> bool((stack(x) == hs).all())
      True
    """

    def __init__(
        self,
        cells: Sequence[Cell],
        in_features: int,
        *,
        rngs: nnx.Rngs,
        dropout_rate: float = 0.0,
        param_dtype: Any = jnp.float32,
        time_major: bool = False,
        return_carry: bool = False,
        reverse: bool = False,
        keep_order: bool = False,
        unroll: int = 1,
        method: str = "scan",
        custom_vjp: bool = True,
    ):
        self.cells = _check_cells(cells)
        self.dropout_rate = check_rate("dropout_rate", dropout_rate)
        self.deterministic = False
        self.time_major = time_major
        self.return_carry = return_carry
        self.reverse = reverse
        self.keep_order = keep_order
        self.unroll = unroll
        self.method = method
        self.custom_vjp = custom_vjp
        self.layers = nnx.List([
            NNXRNN(c, d, rngs=_OneKey(k), param_dtype=param_dtype)
            for c, k, d in _stack_keys(self.cells, rngs.params(), in_features)
        ])

    @property
    def params(self) -> list:
        """One params dict per layer, in jrnn's layout."""
        return [layer.params for layer in self.layers]

    def initialize_carry(self, batch_size: int, dtype=jnp.float32) -> list:
        """Zeros of every layer's carry, as a list."""
        return [c.initial_carry((batch_size,), dtype) for c in self.cells]

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        seq_lengths: Optional[Array] = None,
        return_carry: Optional[bool] = None,
        time_major: Optional[bool] = None,
        reverse: Optional[bool] = None,
        keep_order: Optional[bool] = None,
        rngs: Optional[nnx.Rngs] = None,
        custom_vjp: Optional[bool] = None,
    ):
        o = _per_call(self, time_major=time_major, return_carry=return_carry, reverse=reverse,
                      keep_order=keep_order, custom_vjp=custom_vjp)
        inputs = _check_inputs(inputs, o["time_major"])
        return _run(list(self.cells), self.params, inputs, initial_carry, seq_lengths,
                    method=self.method, scan_unroll=self.unroll, dropout=self.dropout_rate,
                    key=_nnx_dropout_key(self, len(self.cells), rngs), **o)


class NNXBidirectional(nnx.Module):
    r"""NNX version of :class:`Bidirectional`: forward and backward layers, merged.

    .. math::
        y_t = \mathrm{merge}(\overrightarrow{h}_t, \overleftarrow{h}_t)

    Example:
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn.interop import flax as jf
      >>> from flax import nnx
      >>> rngs = nnx.Rngs(0)
      >>> bi = jf.NNXBidirectional(jf.NNXRNN(jrnn.gru(4), 3, rngs=rngs),
      ...                                 jf.NNXRNN(jrnn.gru(4), 3, rngs=rngs))
      >>> bi(jnp.ones((2, 5, 3))).shape
      (2, 5, 8)
    """

    def __init__(
        self,
        forward_rnn: nnx.Module,
        backward_rnn: nnx.Module,
        *,
        merge_fn: Callable[[Array, Array], Array] = _concatenate,
        time_major: bool = False,
        return_carry: bool = False,
    ):
        self.forward_rnn = forward_rnn
        self.backward_rnn = backward_rnn
        self.merge_fn = merge_fn
        self.time_major = time_major
        self.return_carry = return_carry

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        seq_lengths: Optional[Array] = None,
        return_carry: Optional[bool] = None,
        time_major: Optional[bool] = None,
        reverse: Optional[bool] = None,
        keep_order: Optional[bool] = None,
        **kwargs,
    ):
        del reverse, keep_order  # accepted as nn.Bidirectional does; the directions are fixed
        return _run_bidirectional(self, inputs, initial_carry, seq_lengths, return_carry,
                                  time_major, kwargs)


class NNXBidirectionalStack(nnx.Module):
    r"""NNX version of :class:`BidirectionalStack` (PyTorch's per-layer bidirectional stack).

    ``self.layers`` holds one :class:`NNXRNN` per direction and layer in
    PyTorch's order (layer 0 forward, layer 0 backward, layer 1 forward, ...);
    :attr:`params` returns them as the list of ``(forward, backward)`` pairs
    :func:`jrnn.bidirectional` takes.  Their keys come from one
    ``rngs.params()``, split as the linen :class:`BidirectionalStack` splits
    its key.  Dropout between layers is drawn from ``rngs.dropout()`` when a
    call gets ``rngs`` and the module is not in ``eval()`` mode.

    Example:
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn.interop import flax as jf
      >>> from flax import nnx
      >>> cells = [(jrnn.lstm(4), jrnn.lstm(4))] * 2
      >>> stack = jf.NNXBidirectionalStack(cells, 3, rngs=nnx.Rngs(0))
      >>> x = jnp.ones((2, 5, 3))
      >>> _, hs = jrnn.bidirectional(cells, stack.params, x, time_major=False)
      >>> bool((stack(x) == hs).all()), hs.shape
      (True, (2, 5, 8))
    """

    def __init__(
        self,
        cells: Sequence[tuple],
        in_features: int,
        *,
        rngs: nnx.Rngs,
        dropout_rate: float = 0.0,
        param_dtype: Any = jnp.float32,
        time_major: bool = False,
        return_carry: bool = False,
        unroll: int = 1,
        method: str = "scan",
        custom_vjp: bool = True,
    ):
        self.cells = _check_pairs(cells)
        self.dropout_rate = check_rate("dropout_rate", dropout_rate)
        self.deterministic = False
        self.time_major = time_major
        self.return_carry = return_carry
        self.unroll = unroll
        self.method = method
        self.custom_vjp = custom_vjp
        self.layers = nnx.List([
            NNXRNN(c, d, rngs=_OneKey(k), param_dtype=param_dtype)
            for pair in _pair_keys(self.cells, rngs.params(), in_features) for c, k, d in pair
        ])

    @property
    def params(self) -> list:
        """One ``(forward, backward)`` pair of params dicts per layer, in jrnn's layout."""
        ps = [layer.params for layer in self.layers]
        return [(ps[2 * i], ps[2 * i + 1]) for i in range(len(self.cells))]

    def initialize_carry(self, batch_size: int, dtype=jnp.float32) -> list:
        """Zeros of every layer's ``(forward, backward)`` carries."""
        return [(f.initial_carry((batch_size,), dtype), b.initial_carry((batch_size,), dtype))
                for f, b in self.cells]

    def __call__(
        self,
        inputs: Array,
        *,
        initial_carry: Any = None,
        seq_lengths: Optional[Array] = None,
        return_carry: Optional[bool] = None,
        time_major: Optional[bool] = None,
        rngs: Optional[nnx.Rngs] = None,
        custom_vjp: Optional[bool] = None,
    ):
        o = _per_call(self, time_major=time_major, return_carry=return_carry, custom_vjp=custom_vjp)
        inputs = _check_inputs(inputs, o["time_major"])
        return _run_pairs(self.cells, self.params, inputs, initial_carry, seq_lengths,
                          method=self.method, scan_unroll=self.unroll, dropout=self.dropout_rate,
                          key=_nnx_dropout_key(self, len(self.cells), rngs), **o)
