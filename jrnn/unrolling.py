"""Unrolling a cell (or a stack of cells) over time with ``jax.lax.scan``."""

from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.cells import Cell, sequence_for

Array = jax.Array

__all__ = ["unroll", "reverse_within_lengths", "auto_unroll", "remat"]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_lengths(lengths, T: int, B: int) -> Array:
    concrete = _is_concrete(lengths)
    if concrete:  # a host copy: works for numpy, lists and arrays closed over under jit
        host = np.asarray(lengths)
    lengths = jnp.asarray(lengths)
    if not jnp.issubdtype(lengths.dtype, jnp.integer):
        raise TypeError(f"lengths must be integers, got dtype {lengths.dtype}")
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape [B]=({B},), got {lengths.shape}")
    if concrete and B:
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi > T:
            raise ValueError(
                f"lengths must lie in [0, T={T}], got values in [{lo}, {hi}]"
            )
    return lengths


def auto_unroll(backend: Optional[str] = None) -> int:
    """The ``lax.scan`` unroll factor jrnn picks for a backend.

    CPU: 1.  On the 2-core development machine no factor won reliably for the
    Zaremba-small step (within the +-15 % spread of a loaded machine) while
    compile time grew from 2.3 s (1) to 9.8 s (16); with the hand-written
    backward passes (jrnn.fused) 2, 4 and 8 were 3-7 % slower than 1 for that
    step and within 3 % for a T = 4096 LSTM; see benchmarks/RESULTS.md.
    GPU/TPU: 8, the factor of the issue's H200 measurements (the recurrence is
    latency-bound there, and unrolling lets XLA fuse across steps); not
    re-measured in this repository yet.
    """
    backend = backend or jax.default_backend()
    return 1 if backend == "cpu" else 8


def remat(cell: Cell) -> Cell:
    """The same cell with its step under ``jax.checkpoint`` (rematerialization).

    The backward pass recomputes each step's gates from the saved carry instead
    of keeping them: about ``T * B * G * H`` fewer floats held for long
    sequences, for one more forward step each.  Results are unchanged.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.remat(jrnn.lstm(4))
      >>> params = cell.init(jax.random.PRNGKey(0), 2)
      >>> jrnn.unroll(cell, params, jnp.ones((3, 1, 2)))[1].shape
      (3, 1, 4)
    """
    return cell._replace(kind=cell.kind + "[remat]", step=jax.checkpoint(cell.step))


def reverse_within_lengths(xs: Array, lengths: Array) -> Array:
    """Reverse each sequence of time-major ``xs: [T, B, ...]`` within its length.

    Steps at or past ``lengths[b]`` (padding) stay where they are.  Applying it
    twice gives back ``xs``.
    """
    T = xs.shape[0]
    t = jnp.arange(T)[:, None]  # [T, 1]
    src = jnp.where(t < lengths[None, :], lengths[None, :] - 1 - t, t)  # [T, B]
    src = src.reshape(src.shape + (1,) * (xs.ndim - 2))
    return jnp.take_along_axis(xs, src, axis=0)


def _unroll_one(
    cell: Cell,
    params,
    xs: Array,
    carry,
    lengths: Optional[Array],
    reverse: bool,
    unroll: Union[int, bool],
    custom_vjp: bool = True,
):
    if isinstance(unroll, str):
        # Parallel-in-time evaluation of a linear recurrence (jrnn.parallel).
        from jrnn.parallel import associative_unroll

        return associative_unroll(cell, params, xs, carry, lengths=lengths, reverse=reverse,
                                  method=unroll)
    T, B = xs.shape[0], xs.shape[1]
    # Hoisted out of the loop: one [T*B, D] x [D, G*H] matmul instead of T small ones.
    xs_proj = cell.project(params, xs)
    if carry is None:
        carry = cell.initial_carry((B,), xs_proj.dtype)
    else:
        # scan needs the carry in the step's own dtype (e.g. a float32 zero carry
        # fed to float64 params would otherwise fail deep inside XLA).
        carry = jax.tree_util.tree_map(lambda c: jnp.asarray(c, xs_proj.dtype), carry)

    if lengths is None:
        seq = sequence_for(cell) if custom_vjp else None
        if seq is not None:
            # The same scan with a hand-written backward pass (jrnn.fused).
            return seq(params, xs_proj, carry, reverse=reverse, unroll=unroll)
        # scan(reverse=True) walks T-1 .. 0 and stores outputs in place: no flips.
        return jax.lax.scan(
            lambda c, x: cell.step(params, c, x), carry, xs_proj, reverse=reverse, unroll=unroll
        )

    if reverse:
        xs_proj = reverse_within_lengths(xs_proj, lengths)
    valid = jnp.arange(T)[:, None] < lengths[None, :]  # [T, B]

    def masked_step(c, inputs):
        x, ok = inputs
        new_c, h = cell.step(params, c, x)
        keep = ok[:, None]
        # Padded steps leave the carry as it was, so the final carry is the one
        # at each sequence's last valid step, and give zero outputs.
        new_c = jax.tree_util.tree_map(lambda n, o: jnp.where(keep, n, o), new_c, c)
        return new_c, jnp.where(keep, h, jnp.zeros_like(h))

    carry, hs = jax.lax.scan(masked_step, carry, (xs_proj, valid), unroll=unroll)
    if reverse:
        hs = reverse_within_lengths(hs, lengths)
    return carry, hs


def unroll(
    cell: Union[Cell, Sequence[Cell]],
    params: Union[dict, Sequence[dict]],
    xs: Array,
    carry: Any = None,
    *,
    lengths: Optional[Array] = None,
    reverse: bool = False,
    unroll: Union[int, bool, str] = 1,
    dropout: float = 0.0,
    key: Optional[Array] = None,
    time_major: bool = True,
    custom_vjp: bool = True,
):
    """Run a cell, or a stack of cells, over a whole sequence.

    The input projection ``cell.project`` is computed once for all timesteps
    (one large matmul); only ``cell.step`` runs inside ``jax.lax.scan``.

    Args:
      cell: a :class:`~jrnn.cells.Cell`, or a list of cells for a stack whose
        layer ``l`` reads layer ``l-1``'s outputs.
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
      unroll: ``lax.scan``'s unroll factor (an int, ``True`` for all steps, or
        ``"auto"``: 1 on CPU, 8 on GPU/TPU -- see :func:`auto_unroll`), or
        ``"associative"`` / ``"doubling"`` to compute a *linear* recurrence
        (``jrnn.linear``, ``elman`` with ``"identity"``, ``jrnn.parallel.diagonal``)
        in O(log T) depth with ``jax.lax.associative_scan`` (see :mod:`jrnn.parallel`).
      dropout: rate of dropout applied to the outputs between stacked layers
        (not after the last one); only used when ``key`` is given.
      key: PRNG key for dropout.
      time_major: whether ``xs`` and the returned outputs are ``[T, B, ...]``.
      custom_vjp: use the cell's hand-written backward pass (``cell.sequence``,
        :mod:`jrnn.fused`) when it has one and there are no ``lengths``;
        ``False`` differentiates the scan with autodiff (needed for
        forward-mode ``jax.jvp`` / ``jax.jacfwd``).  The values are the same.

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
    if unroll == "auto":
        unroll = auto_unroll()
    if isinstance(unroll, str) and unroll not in ("associative", "doubling"):
        raise ValueError(
            f"unroll must be an int, True, 'auto', 'associative' or 'doubling', got {unroll!r}"
        )
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

    xs = jnp.asarray(xs)
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs must be floating point, got dtype {xs.dtype}")
    if xs.ndim != 3:
        raise ValueError(
            f"xs must have rank 3 ({'[T, B, D]' if time_major else '[B, T, D]'}), got shape {xs.shape}"
        )
    if not time_major:
        xs = jnp.swapaxes(xs, 0, 1)
    T, B, D = xs.shape
    expected_d = params_list[0]["W"].shape[0]
    if D != expected_d:
        raise ValueError(f"xs has feature size {D} but the first cell's W expects {expected_d}")
    if lengths is not None:
        lengths = _check_lengths(lengths, T, B)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    layer_keys = (
        jax.random.split(key, len(cells)) if (key is not None and dropout > 0) else None
    )

    finals = []
    hs = xs
    for layer, (c, p, c0) in enumerate(zip(cells, params_list, carries)):
        if layer > 0 and layer_keys is not None:
            keep = jax.random.bernoulli(layer_keys[layer], 1.0 - dropout, hs.shape)
            hs = jnp.where(keep, hs / (1.0 - dropout), 0).astype(hs.dtype)
        final, hs = _unroll_one(c, p, hs, c0, lengths, reverse, unroll, custom_vjp)
        finals.append(final)
    if not time_major:
        hs = jnp.swapaxes(hs, 0, 1)
    return (finals if stacked else finals[0]), hs
