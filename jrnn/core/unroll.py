"""Unrolling a cell (or a stack of cells) over time.

:func:`unroll` is the one entry point for every cell and every way of
running it; *how* is the ``method`` argument:

* ``"scan"`` -- ``jax.lax.scan`` over the cell's ``step`` (with the cell's
  hand-written backward pass, :mod:`jrnn.core.backward`, when it has one and
  ``custom_vjp``), unrolled ``scan_unroll`` steps at a time;
* ``"associative"`` / ``"doubling"`` -- a *linear* recurrence in
  ``O(log T)`` depth (:mod:`jrnn.core.parallel`);
* ``"pallas"`` -- the fused GPU kernels of :mod:`jrnn.core.pallas` (time
  loop inside one Mosaic GPU kernel, float32 state, TF32 matmul operands on
  a GPU; with ``precision="bfloat16"``, bf16 operands);
* ``"persistent"`` -- the persistent multi-block kernels of
  :mod:`jrnn.core.persistent` (``W_h`` split over many thread blocks, a grid
  barrier per step: Elman and LSTM at larger ``H``; never yet run on a GPU);
* ``"wavefront"`` -- a stack of plain LSTM layers as one scan in which layer
  ``l`` handles time ``t - l`` (:mod:`jrnn.core.wavefront`, hand-written
  backward pass): the layers' per-step matmuls are independent;
* ``"cudnn"`` -- cuDNN's LSTM through ``jax.experimental.rnn``
  (:mod:`jrnn.core.cudnn`);
* ``"auto"`` (default) -- whatever :func:`jrnn.core.select.choose_method`
  picks for the cell, the shape and the backend.

:func:`bidirectional` runs PyTorch's per-layer bidirectional stack
(``torch.nn.LSTM(..., bidirectional=True)``) with the same machinery.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.core import cudnn, mosaic, pallas, persistent, wavefront
from jrnn.core.cells import Cell, sequence_for
from jrnn.core.gates import LSTMCarry
from jrnn.core.masking import dropout as drop
from jrnn.core.masking import reverse_within_lengths, valid_steps
from jrnn.core.parallel import associative_unroll, has_parallel_form, is_linear
from jrnn.core.select import METHODS, RECURRENCE_PRECISIONS, choose_method
from jrnn.core.validation import check_lengths, check_rate, check_sequence, positive_int

Array = jax.Array

__all__ = ["unroll", "bidirectional", "over_layers", "resolve_method", "kernel_fallback_reason"]


# The methods that run the fused GPU kernels (jrnn.core.mosaic, jrnn.core.persistent).
KERNEL_METHODS = ("pallas", "persistent")


def _check_precision(precision: str, method: str) -> str:
    """The recurrence's operand precision: bfloat16 only where a method implements it."""
    if precision not in RECURRENCE_PRECISIONS:
        raise ValueError(f"precision must be one of {list(RECURRENCE_PRECISIONS)}, "
                         f"got {precision!r}")
    if precision == "bfloat16" and method not in KERNEL_METHODS:
        raise ValueError(f"precision='bfloat16' is implemented by method='pallas' and "
                         f"'persistent' (the fused kernels) only, got method={method!r}")
    return precision


def _check_scan_unroll(scan_unroll):
    if scan_unroll is None or scan_unroll is True:
        return scan_unroll
    return positive_int("scan_unroll", scan_unroll)


def resolve_method(cell: Cell, method: str, scan_unroll, *, seq_len: int, batch: int):
    """``(method, scan_unroll)`` for one layer: ``"auto"`` and a missing factor decided.

    Example:
      >>> import jrnn
      >>> resolve_method(jrnn.lstm(8), "scan", 4, seq_len=10, batch=2)
      ('scan', 4)
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    choice = None
    if method == "auto" or scan_unroll is None:  # (only then: the shape may be symbolic, jax.export)
        choice = choose_method(cell.kind, seq_len=seq_len, batch=batch, hidden_size=cell.hidden_size)
    auto = method == "auto"
    if auto:
        method = choice.method
    if method == "wavefront":  # a schedule of a whole stack (wavefront_reason): one layer scans
        method = "scan"
    runs = has_parallel_form(cell) if method == "associative" else is_linear(cell)
    if auto and method in ("associative", "doubling") and not runs:
        method = "scan"  # e.g. a probed or remat'ed mLSTM: its step was replaced, its parallel form dropped
    if method in ("associative", "doubling") and not runs:
        raise ValueError(
            f"method={method!r} needs a linear recurrence (jrnn.linear, elman with 'identity', "
            f"jrnn.parallel.diagonal, jrnn.mingru, jrnn.minlstm, jrnn.rglru"
            + ("; 'associative' also runs jrnn.mlstm" if method == "associative" else "")
            + f"); a {cell.kind!r} cell is not linear in its state (its next state passes "
            "h_(t-1) through a nonlinearity): run it with method='scan'")
    return method, choice.scan_unroll if scan_unroll is None else scan_unroll


def _check_layer(cell: Cell, params, carry, input_size: int, batch: int, where: str):
    """The layer's params fit its input, and its carry is the cell's (a plain ``(h, c)`` tuple
    is taken for an LSTM); a mismatch is named here instead of deep inside XLA."""
    if not isinstance(params, dict) or "W" not in params:
        raise TypeError(f"params of {where} must be the cell's params dict (with 'W')")
    expects = params["W"].shape[0]
    if expects != input_size:
        raise ValueError(f"{where}'s W expects inputs of size {expects}, but it is fed {input_size}")
    # The cell's own params, as shapes only (nothing allocated): e.g. an LSTM's params
    # given to a GRU are named here instead of failing in JAX's broadcasting.  Extra
    # entries (the diagnostics' probes) are the caller's.
    want = jax.eval_shape(lambda: cell.init(jax.random.PRNGKey(0), input_size))
    need = {k: v.shape for k, v in sorted(want.items())} if isinstance(want, dict) else {}
    got = {k: np.shape(v) for k, v in sorted(params.items())}
    if any(got.get(k) != shape for k, shape in need.items()):
        raise ValueError(f"params of {where} are not this {cell.kind!r} cell's: they hold "
                         f"{got}, the cell needs {need}")
    if carry is None:
        return None
    if cell.kind == "lstm" and type(carry) is tuple and len(carry) == 2:
        carry = LSTMCarry(*carry)
    want = jax.eval_shape(lambda: cell.initial_carry((batch,), jnp.float32))
    want_leaves, want_tree = jax.tree_util.tree_flatten(want)
    leaves, tree = jax.tree_util.tree_flatten(carry)
    if tree != want_tree:
        raise TypeError(f"the carry of {where} must be shaped like cell.initial_carry(B) "
                        f"({type(want).__name__}), got {type(carry).__name__}")
    for got, exp in zip(leaves, want_leaves):
        if np.shape(got) != exp.shape:
            raise ValueError(f"the carry of {where} has shape {np.shape(got)}, expected "
                             f"{exp.shape} (batch {batch}, the cell's state size)")
    return carry


def kernel_fallback_reason(cell: Cell, method: str, *, lengths: bool = False,
                           custom_vjp: bool = True, traced: bool = False,
                           precision: str = "float32", batch: Optional[int] = None) -> Optional[str]:
    """Why ``method`` (a GPU kernel) would run ``cell`` with the scan instead, or ``None``.

    Example:
      >>> import jrnn
      >>> kernel_fallback_reason(jrnn.elman(64), "pallas") is None
      True
      >>> kernel_fallback_reason(jrnn.elman(64), "pallas", lengths=True)
      'sequences with lengths are not masked in the kernel'
    """
    if method in KERNEL_METHODS:
        if not custom_vjp:
            return "custom_vjp=False asks for autodiff through the scan"
        if cell.affine is not None or cell.parallel is not None:  # no W_h to fuse
            return pallas.FallbackReason(
                pallas.Fallback.CELL_KIND,
                f"no Pallas kernel for {cell.kind!r} cells (method='associative' runs them "
                "in parallel)")
        if method == "persistent":
            return mosaic.unavailable() or persistent.fallback_reason(
                cell, lengths=lengths, bf16=precision == "bfloat16",
                batch=persistent.BLOCK_B if batch is None else int(batch))
        return pallas.fallback_reason(cell, lengths=lengths, bf16=precision == "bfloat16")
    if method == "cudnn":
        return cudnn.fallback_reason(cell, lengths=lengths, traced=traced)
    return None


def wavefront_reason(cells, *, lengths: bool = False, reverse: bool = False,
                     dropout: bool = False, custom_vjp: bool = True) -> Optional[str]:
    """Why ``method="wavefront"`` would run ``cells`` layer by layer, or ``None``.

    The wavefront (:mod:`jrnn.core.wavefront`) runs a stack of at least two plain LSTM
    layers of one width, without lengths, reversal or dropout between layers, with its
    hand-written backward pass.

    Example:
      >>> import jrnn
      >>> wavefront_reason([jrnn.lstm(8), jrnn.lstm(8)]) is None
      True
      >>> wavefront_reason([jrnn.lstm(8), jrnn.gru(8)])
      'the wavefront runs stacks of plain LSTM layers (got lstm, gru)'
    """
    cells = list(cells) if not isinstance(cells, Cell) else [cells]
    if len(cells) < 2:
        return "a single layer has no wavefront (it is the scan)"
    plain = all(c.kind == "lstm" and c.cell_size is None and c.sequence_step is c.step
                for c in cells)
    if not plain:
        return ("the wavefront runs stacks of plain LSTM layers (got "
                + ", ".join(c.kind for c in cells) + ")")
    if len({c.hidden_size for c in cells}) > 1:
        return "the wavefront runs layers of one width"
    for flag, what in ((lengths, "sequences with lengths"), (reverse, "reverse"),
                       (dropout, "dropout between layers"),
                       (not custom_vjp, "custom_vjp=False (autodiff)")):
        if flag:
            return f"{what}: the wavefront has no such case"
    return None


def _kernel_or_scan(cell: Cell, method: str, lengths: bool, custom_vjp: bool, *, explicit: bool,
                    where: str, traced: bool = False, precision: str = "float32",
                    batch: Optional[int] = None) -> str:
    reason = kernel_fallback_reason(cell, method, lengths=lengths, custom_vjp=custom_vjp,
                                    traced=traced, precision=precision, batch=batch)
    if reason is None:
        return method
    if explicit:  # asked for by name: say that it was not used (auto falls back quietly)
        warnings.warn(f"method={method!r} runs {where} with the scan instead: {reason}",
                      RuntimeWarning, stacklevel=4)
    return "scan"


def _unroll_one(cell: Cell, params, xs: Array, carry, lengths: Optional[Array], reverse: bool,
                method: str, scan_unroll, custom_vjp: bool, precision: str = "float32"):
    if method in ("associative", "doubling"):
        return associative_unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse,
                                  method=method)
    T, B = xs.shape[0], xs.shape[1]
    if method == "cudnn":
        if carry is None:
            carry = cell.initial_carry((B,), xs.dtype)
        return cudnn.lstm_layer(params, xs, carry, reverse=reverse, lengths=lengths)
    # Hoisted out of the loop: one [T*B, D] x [D, G*H] matmul instead of T small ones.
    xs_proj = cell.project(params, xs)
    if carry is None:
        carry = cell.initial_carry((B,), xs_proj.dtype)
    else:
        # scan needs the carry in the step's own dtype (e.g. a float32 zero carry
        # fed to float64 params would otherwise fail deep inside XLA).
        carry = jax.tree_util.tree_map(lambda c: jnp.asarray(c, xs_proj.dtype), carry)

    if method == "pallas":
        run = pallas.sequence(cell, bf16=precision == "bfloat16")
        return run(params, xs_proj, carry, reverse=reverse)
    if method == "persistent":
        run = persistent.sequence(cell, bf16=precision == "bfloat16")
        dt = xs_proj.dtype  # the kernels compute in float32 (as pallas.sequence casts)
        f32 = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), t)
        final, hs = run(f32(params), f32(xs_proj), f32(carry), reverse=reverse)
        back = lambda t: jax.tree_util.tree_map(lambda a: jnp.asarray(a, dt), t)
        return back(final), back(hs)
    if lengths is None:
        seq = sequence_for(cell) if custom_vjp else None
        if seq is not None:
            # The same scan with a hand-written backward pass (jrnn.core.backward).
            return seq(params, xs_proj, carry, reverse=reverse, unroll=scan_unroll)
        # scan(reverse=True) walks T-1 .. 0 and stores outputs in place: no flips.
        return jax.lax.scan(
            lambda c, x: cell.step(params, c, x), carry, xs_proj, reverse=reverse,
            unroll=scan_unroll,
        )

    if reverse:
        xs_proj = reverse_within_lengths(xs_proj, lengths)
    valid = valid_steps(lengths, T)  # [T, B]

    def masked_step(c, inputs):
        x, ok = inputs
        new_c, h = cell.step(params, c, x)
        # Padded steps leave the carry as it was, so the final carry is the one
        # at each sequence's last valid step, and give zero outputs.  (A carry's
        # leaves are [B, ...]: the mLSTM's memory is [B, heads, d, d].)
        keep = lambda leaf: ok.reshape(ok.shape + (1,) * (leaf.ndim - 1))
        new_c = jax.tree_util.tree_map(lambda n, o: jnp.where(keep(n), n, o), new_c, c)
        return new_c, jnp.where(keep(h), h, jnp.zeros_like(h))

    carry, hs = jax.lax.scan(masked_step, carry, (xs_proj, valid), unroll=scan_unroll)
    if reverse:
        hs = reverse_within_lengths(hs, lengths)
    return carry, hs


def _prepare(xs, input_size: int, time_major: bool, lengths, dropout: float, key, layers: int):
    """Checked time-major inputs, lengths, dropout rate and one dropout key per layer."""
    xs = check_sequence(xs, input_size, time_major=time_major)
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)
    T, B, _ = xs.shape
    if lengths is not None:
        lengths = check_lengths(lengths, T, B)
    dropout = check_rate("dropout", dropout)
    layer_keys = jax.random.split(key, layers) if (key is not None and dropout > 0) else None
    return xs, lengths, dropout, layer_keys


def over_layers(run_layer: Callable, xs: Array, carries: Sequence) -> tuple[list, Array]:
    """The one loop over a stack of layers: layer ``l`` reads layer ``l - 1``'s outputs.

    ``run_layer(l, inputs, carry_l) -> (final_carry_l, outputs)``; returns the
    final carries (one per layer) and the last layer's outputs.  :func:`unroll`,
    :func:`bidirectional` and the language model's regularized recurrence
    each say what one layer does and leave the stacking to this function.

    Example:
      >>> over_layers(lambda l, xs, c: (c + l, xs * 2), 1.0, [10, 20])
      ([10, 21], 4.0)
    """
    finals, hs = [], xs
    for layer, carry in enumerate(carries):
        final, hs = run_layer(layer, hs, carry)
        finals.append(final)
    return finals, hs


def unroll(
    cell: Union[Cell, Sequence[Cell]],
    params: Union[dict, Sequence[dict]],
    xs: Array,
    carry: Any = None,
    *,
    lengths: Optional[Array] = None,
    reverse: bool = False,
    method: str = "auto",
    precision: str = "float32",
    scan_unroll: Union[int, bool, None] = None,
    dropout: float = 0.0,
    key: Optional[Array] = None,
    time_major: bool = True,
    custom_vjp: bool = True,
):
    """Run a cell, or a stack of cells, over a whole sequence.

    The input projection ``cell.project`` is computed once for all timesteps
    (one large matmul); only ``cell.step`` runs inside the loop.

    Args:
      cell: a :class:`~jrnn.core.cells.Cell`, or a list of cells for a stack
        whose layer ``l`` reads layer ``l-1``'s outputs.
      params: the cell's params dict, or a list of them (one per layer).
      xs: ``float[T, B, D]``, time-major (``[B, T, D]`` with ``time_major=False``,
        at the cost of two transposes).
      carry: initial carry (a list of them for a stack); ``None`` means zeros.
      lengths: optional ``int[B]`` with ``0 <= lengths <= T``.  Steps at or past
        ``lengths[b]`` leave the carry unchanged and output zeros, so the final
        carry is the one at each sequence's last valid step.
      reverse: run from the end of each sequence to its start; with ``lengths``
        each sequence is reversed within its own length.  Outputs stay aligned
        with the inputs.
      method: ``"scan"``, ``"associative"`` or ``"doubling"`` (linear cells
        only: ``jrnn.linear``, ``elman`` with ``"identity"``,
        ``jrnn.parallel.diagonal``; and ``"associative"`` for ``jrnn.mingru``,
        ``jrnn.minlstm``, ``jrnn.rglru``, and for ``jrnn.mlstm`` its quadratic
        parallel form), ``"pallas"``, ``"persistent"``, ``"cudnn"``,
        ``"wavefront"`` (a stack of plain LSTM layers as one wavefront scan,
        :mod:`jrnn.core.wavefront`; see the module doc), or ``"auto"``: the choice of
        :func:`jrnn.core.select.choose_method` for the cell, shape and backend.
      precision: the recurrence's matmul operands, ``"float32"`` or
        ``"bfloat16"`` (state and accumulation stay float32; implemented by
        ``method="pallas"`` only, so other methods refuse it).
      scan_unroll: ``lax.scan``'s unroll factor (a positive int, or ``True``
        for all steps); ``None`` takes the one ``"auto"`` would.
      dropout: rate of dropout applied to the outputs between stacked layers
        (not after the last one); only used when ``key`` is given.
      key: PRNG key for dropout.
      time_major: whether ``xs`` and the returned outputs are ``[T, B, ...]``.
      custom_vjp: use the cell's hand-written backward pass (``cell.sequence``)
        when it has one and there are no ``lengths``; ``False`` differentiates
        the scan with autodiff (needed for forward-mode ``jax.jvp`` /
        ``jax.jacfwd``).  The values are the same.

    Returns:
      ``(final_carry, outputs)``: the carry after the last (valid) step -- a list
      for a stack -- and ``outputs: float[T, B, H]`` of the last layer.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cells = [jrnn.lstm(8), jrnn.gru(8)]
      >>> keys = jax.random.split(jax.random.PRNGKey(0))
      >>> params = [cells[0].init(keys[0], 3), cells[1].init(keys[1], 8)]
      >>> xs = jnp.ones((6, 2, 3))
      >>> carries, hs = jrnn.unroll(cells, params, xs, lengths=jnp.array([6, 4]))
      >>> hs.shape, bool((hs[4:, 1] == 0).all())
      ((6, 2, 8), True)
    """
    scan_unroll = _check_scan_unroll(scan_unroll)
    precision = _check_precision(precision, method)
    stacked = not isinstance(cell, Cell)
    cells = list(cell) if stacked else [cell]
    if not cells or not all(isinstance(c, Cell) for c in cells):
        raise TypeError("cell must be a jrnn Cell or a non-empty list of Cells")
    params_list = list(params) if stacked else [params]
    if len(params_list) != len(cells):
        raise ValueError(f"got {len(cells)} cells but {len(params_list)} params")
    carries = [None] * len(cells) if carry is None else (list(carry) if stacked else [carry])
    if len(carries) != len(cells):
        raise ValueError(f"got {len(cells)} cells but {len(carries)} carries")

    xs, lengths, dropout, layer_keys = _prepare(
        xs, params_list[0]["W"].shape[0], time_major, lengths, dropout, key, len(cells))
    T, B, _ = xs.shape
    if method == "wavefront":
        why = wavefront_reason(cells, lengths=lengths is not None, reverse=reverse,
                               dropout=layer_keys is not None, custom_vjp=custom_vjp)
        if why is None:
            for i, (c, p, c0) in enumerate(zip(cells, params_list, carries)):
                carries[i] = _check_layer(c, p, c0, xs.shape[-1] if i == 0 else c.hidden_size, B,
                                          f"layer {i}")
            carries = [c.initial_carry((B,), xs.dtype) if c0 is None else c0
                       for c, c0 in zip(cells, carries)]
            run = wavefront.lstm_stack(cells[0].hidden_size, len(cells))
            finals, hs = run(params_list, cells[0].project(params_list[0], xs), carries,
                             unroll=1 if scan_unroll is None else scan_unroll,
                             stack_weights=False)
            if not time_major:
                hs = jnp.swapaxes(hs, 0, 1)
            return finals, hs
        warnings.warn(f"method='wavefront' runs the stack layer by layer instead: {why}",
                      RuntimeWarning, stacklevel=2)

    def layer(i, hs, c0):
        c, p = cells[i], params_list[i]
        if i > 0 and layer_keys is not None:
            hs = drop(layer_keys[i], dropout, hs)
        where = f"layer {i}" if stacked else "the cell"
        c0 = _check_layer(c, p, c0, hs.shape[-1], B, where)
        m, k = resolve_method(c, method, scan_unroll, seq_len=T, batch=B)
        m = _kernel_or_scan(c, m, lengths is not None, custom_vjp, explicit=method != "auto",
                            where=where, traced=isinstance(hs, jax.core.Tracer),
                            precision=precision, batch=B)
        return _unroll_one(c, p, hs, c0, lengths, reverse, m, k, custom_vjp, precision)

    finals, hs = over_layers(layer, xs, carries)
    if not time_major:
        hs = jnp.swapaxes(hs, 0, 1)
    return (finals if stacked else finals[0]), hs


def _pairs(name: str, value, n: Optional[int] = None) -> list:
    """``value`` as a list of ``(forward, backward)`` pairs (one per layer)."""
    out = list(value)
    if not out or not all(isinstance(v, (tuple, list)) and not isinstance(v, Cell) and len(v) == 2
                          for v in out):
        raise TypeError(f"{name} must be a non-empty list of (forward, backward) pairs, one per layer")
    if n is not None and len(out) != n:
        raise ValueError(f"got {n} layers of cells but {len(out)} of {name}")
    return [tuple(v) for v in out]


def bidirectional(
    cells: Sequence[tuple[Cell, Cell]],
    params: Sequence[tuple[dict, dict]],
    xs: Array,
    carry: Optional[Sequence[tuple[Any, Any]]] = None,
    *,
    lengths: Optional[Array] = None,
    method: str = "auto",
    precision: str = "float32",
    scan_unroll: Union[int, bool, None] = None,
    dropout: float = 0.0,
    key: Optional[Array] = None,
    time_major: bool = True,
    custom_vjp: bool = True,
):
    """A per-layer bidirectional stack, as ``torch.nn.LSTM/GRU/RNN(bidirectional=True)``.

    Layer ``l`` runs its forward cell over the sequence and its backward cell
    over the sequence reversed (within each sequence's length when
    ``lengths`` is given); its output is ``[forward outputs, backward
    outputs]`` concatenated on the feature axis, which is what layer ``l + 1``
    reads (so its input size is ``2 H``).  Dropout, when ``dropout > 0`` and a
    ``key`` is given, falls on the inputs of every layer but the first, as in
    PyTorch.  Each direction is one :func:`unroll` call: ``method``,
    ``scan_unroll`` and ``custom_vjp`` mean what they mean there.

    Args:
      cells: one ``(forward_cell, backward_cell)`` pair per layer.
      params: one ``(forward_params, backward_params)`` pair per layer; the
        first layer's ``W`` are ``[D, G*H]``, later layers' ``[2H, G*H]``.
      xs: ``float[T, B, D]`` (``[B, T, D]`` with ``time_major=False``).
      carry: one ``(forward_carry, backward_carry)`` pair per layer, or
        ``None`` for zeros.
      lengths: optional ``int[B]``; padded steps output zeros in both directions.

    Returns:
      ``(finals, outputs)``: ``finals`` is one ``(forward_carry,
      backward_carry)`` pair per layer -- flattened layer-major, these are
      PyTorch's ``h_n`` rows in order (layer 0 forward, layer 0 backward,
      layer 1 forward, ...); the backward carry is the one after the
      *first* step of each sequence.  ``outputs: float[T, B, H_fwd + H_bwd]``
      of the last layer.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cells = [(jrnn.gru(4), jrnn.gru(4))] * 2
      >>> ks = jax.random.split(jax.random.PRNGKey(0), 4)
      >>> params = [(cells[0][0].init(ks[0], 3), cells[0][1].init(ks[1], 3)),
      ...           (cells[1][0].init(ks[2], 8), cells[1][1].init(ks[3], 8))]
      >>> finals, hs = jrnn.bidirectional(cells, params, jnp.ones((5, 2, 3)), lengths=jnp.array([5, 3]))
      >>> hs.shape, len(finals), finals[1][1].shape, bool((hs[3:, 1] == 0).all())
      ((5, 2, 8), 2, (2, 4), True)
    """
    scan_unroll = _check_scan_unroll(scan_unroll)
    precision = _check_precision(precision, method)
    if isinstance(cells, Cell):
        raise TypeError("cells must be a list of (forward, backward) pairs, one per layer")
    cells = _pairs("cells", cells)
    if not all(isinstance(c, Cell) for pair in cells for c in pair):
        raise TypeError("cells must be a list of (forward, backward) pairs of jrnn Cells")
    params_list = _pairs("params", params, len(cells))
    carries = [(None, None)] * len(cells) if carry is None else _pairs("carry", carry, len(cells))

    xs, lengths, dropout, layer_keys = _prepare(
        xs, params_list[0][0]["W"].shape[0], time_major, lengths, dropout, key, len(cells))
    T, B, _ = xs.shape

    def layer(i, hs, c_pair):
        if i > 0 and layer_keys is not None:
            hs = drop(layer_keys[i], dropout, hs)
        outs, layer_finals = [], []
        for c, p, c0, reverse in zip(cells[i], params_list[i], c_pair, (False, True)):
            if p["W"].shape[0] != hs.shape[-1]:
                raise ValueError(
                    f"layer {i}: W reads {p['W'].shape[0]} features but its input has "
                    f"{hs.shape[-1]} (layers after the first read 2H: both directions)")
            direction = "backward" if reverse else "forward"
            c0 = _check_layer(c, p, c0, hs.shape[-1], B, f"layer {i} ({direction})")
            m, k = resolve_method(c, method, scan_unroll, seq_len=T, batch=B)
            m = _kernel_or_scan(c, m, lengths is not None, custom_vjp, explicit=method != "auto",
                                where=f"layer {i}", traced=isinstance(hs, jax.core.Tracer),
                                precision=precision, batch=B)
            final, out = _unroll_one(c, p, hs, c0, lengths, reverse, m, k, custom_vjp, precision)
            outs.append(out)
            layer_finals.append(final)
        return tuple(layer_finals), jnp.concatenate(outs, axis=-1)

    finals, hs = over_layers(layer, xs, carries)
    if not time_major:
        hs = jnp.swapaxes(hs, 0, 1)
    return finals, hs
