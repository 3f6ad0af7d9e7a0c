r"""Parallel-in-time unrolling of *linear* recurrences.

Without an activation, the lecture's recurrence

.. math::
    h_t = h_{t-1} A + b_t, \qquad b_t = W x_t + b

is an affine map of ``h_{t-1}``, and affine maps compose: doing
``(A_1, b_1)`` and then ``(A_2, b_2)`` is the single map
``(A_1 A_2, b_1 A_2 + b_2)`` (row vectors, ``h @ A``).  Composition is
associative, so ``jax.lax.associative_scan`` computes all ``T`` states in
``O(log T)`` sequential depth instead of the ``T`` steps of ``lax.scan``.
The states are exactly those of :func:`jrnn.unroll` in exact arithmetic; in
floating point the sums are taken in another order, so they agree to
rounding.

Three kinds of recurrence are covered:

* the dense linear cell (:func:`jrnn.linear`, ``A = W_h``: ``[H, H]``), with
  :func:`linear_associative`;
* a diagonal linear recurrence, real or complex, in the style of the Linear
  Recurrent Unit (Orvieto et al., 2023): :func:`diagonal` is a jrnn
  :class:`~jrnn.core.cells.Cell` with an ordinary sequential ``step``, and
  :func:`associative_unroll` runs it in parallel;
* the input-gated cells whose ``A_t`` is diagonal and changes with the input,
  ``h_t = a_t * h_{t-1} + b_t`` (:func:`jrnn.mingru`, :func:`jrnn.minlstm`,
  :func:`jrnn.rglru`): the cell's ``affine`` gives ``(a_t, b_t)`` for every
  step, and the scan combines them elementwise (``method="associative"``
  only: ``"doubling"`` needs the same ``A`` at every step).

The mLSTM (:func:`jrnn.mlstm`) is also updated by gates from the input
alone, but its state is a matrix per head: ``method="associative"`` runs
its own parallel form instead (``cell.parallel``, the xLSTM paper's
quadratic form, :func:`has_parallel_form`), with ``lengths`` and ``reverse``
handled here as for the other cells.

When the dense version stops paying
-----------------------------------
A combine of two dense elements multiplies two ``[H, H]`` matrices: ``H^3``
multiply-adds, on top of the ``B H^2`` of applying ``A`` to the batch of
states.  ``associative_scan`` does about ``2T`` combines, so it spends about
``2 T (H^3 + B H^2)`` where ``lax.scan`` spends ``T B H^2``: roughly
``2 (1 + H / B)`` times the arithmetic, and it keeps ``T`` matrices of
``H x H`` alive (``T H^2`` memory).  The saving is the ``T`` sequential
steps, each with a fixed cost of its own (a loop iteration, a kernel
launch), so it pays while ``H`` is small and ``T`` long, and stops paying
once the extra ``H^3`` arithmetic outweighs that per-step cost.  A CPU has
no parallel width to spend, so there the sequential scan is the right choice
at every H (``benchmarks/parallel_scan.py`` measures it; the figures are in
``benchmarks/RESULTS.md``); on accelerators the crossover is expected near
H ~ B.

Because the dense cell's ``A`` is the *same* ``W_h`` at every step, there is
a cheaper parallel form, ``method="doubling"``: after round ``k`` every
state holds the sum of its last ``2^k`` inputs, and one round adds
``h_{t-s} W_h^s`` for ``s = 2^k`` (prefix doubling with repeated squaring).
It costs ``log2 T`` squarings of ``W_h`` plus ``T B H^2 log2 T``, i.e. no
``T H^3`` term, and its memory is ``T B H``.

A diagonal ``A`` makes a combine ``O(H)`` (elementwise), which is why
diagonal recurrences (LRU, S4/S5, Mamba's scan) are the ones trained with
parallel scans.

Example:
  >>> import jax, jax.numpy as jnp, jrnn
  >>> from jrnn import parallel
  >>> cell = parallel.diagonal(4, complex_state=True)
  >>> params = cell.init(jax.random.PRNGKey(0), input_size=3)
  >>> xs = jnp.ones((16, 2, 3))
  >>> carry, hs = parallel.associative_unroll(cell, params, xs)
  >>> carry_seq, hs_seq = jrnn.unroll(cell, params, xs)
  >>> hs.shape, carry.shape, bool(jnp.allclose(hs, hs_seq, atol=1e-5))
  ((16, 2, 4), (2, 8), True)
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp

from jrnn.core.cells import Cell, linear
from jrnn.core.masking import reverse_within_lengths, valid_steps
from jrnn.core.validation import check_lengths, check_sequence, positive_int

Array = jax.Array

__all__ = [
    "diagonal",
    "linear_associative",
    "associative_unroll",
    "is_linear",
    "has_parallel_form",
    "METHODS",
]

METHODS = ("associative", "doubling")


def _is_dense_linear(cell: Cell) -> bool:
    return cell.kind == "linear" or (cell.kind == "elman" and cell.activation == "identity")


def is_linear(cell: Cell) -> bool:
    """Whether ``cell``'s recurrence is linear, so that a parallel scan can run it.

    True for :func:`jrnn.linear`, ``jrnn.elman(H, "identity")``,
    :func:`diagonal` and the cells with an ``affine`` form (:func:`jrnn.mingru`,
    :func:`jrnn.minlstm`, :func:`jrnn.rglru`), also when wrapped
    (:func:`jrnn.remat`).

    Example:
      >>> import jrnn
      >>> is_linear(jrnn.remat(jrnn.linear(3))), is_linear(jrnn.elman(3)), is_linear(jrnn.rglru(3))
      (True, False, True)
    """
    return _is_dense_linear(cell) or cell.kind == "diagonal" or cell.affine is not None


def has_parallel_form(cell: Cell) -> bool:
    """Whether ``method="associative"`` can run ``cell``: a linear recurrence
    (:func:`is_linear`) or a cell with its own parallel form (``cell.parallel``: :func:`jrnn.mlstm`).

    Example:
      >>> import jrnn
      >>> has_parallel_form(jrnn.mlstm(4)), is_linear(jrnn.mlstm(4)), has_parallel_form(jrnn.slstm(4))
      (True, False, False)
    """
    return is_linear(cell) or cell.parallel is not None


# --------------------------------------------------------------------------
# The diagonal (LRU-style) cell.


def _to_complex(carry: Array, H: int) -> Array:
    # The complex carry travels as real [..., 2H] = (Re h, Im h).
    return jax.lax.complex(carry[..., :H], carry[..., H:])


def _from_complex(z: Array) -> Array:
    return jnp.concatenate([jnp.real(z), jnp.imag(z)], axis=-1)


def _diag_coefficients(params: dict):
    """``(lam, gamma)``: the per-unit decay (complex when ``theta_log`` exists) and input gain."""
    magnitude = jnp.exp(-jnp.exp(params["nu_log"]))  # in (0, 1): stable by construction
    gamma = jnp.exp(params["gamma_log"])
    if "theta_log" not in params:
        return magnitude, gamma
    theta = jnp.exp(params["theta_log"])
    return jax.lax.complex(magnitude * jnp.cos(theta), magnitude * jnp.sin(theta)), gamma


def _diag_inputs(params: dict, x_proj: Array, H: int) -> Array:
    """``gamma * u_t``: the projected input as the recurrence adds it (complex: re, im halves)."""
    _, gamma = _diag_coefficients(params)
    if "theta_log" in params:
        x_proj = jax.lax.complex(x_proj[..., :H], x_proj[..., H:])
    return gamma * x_proj


def diagonal(
    hidden_size: int,
    *,
    complex_state: bool = False,
    r_min: float = 0.4,
    r_max: float = 0.99,
    max_phase: float = 2 * math.pi,
) -> Cell:
    r"""A diagonal linear recurrence (LRU-style), real or complex.

    .. math::
        h_t = \lambda \odot h_{t-1} + \gamma \odot (W x_t + b), \qquad
        \lambda = e^{-e^{\nu} + i e^{\theta}}, \quad \gamma = e^{g}

    elementwise over the ``H`` units.  ``|lambda| = exp(-exp(nu)) < 1`` for
    any ``nu``, so the recurrence is stable whatever gradient descent does.
    Real (``complex_state=False``): ``lambda`` is the magnitude alone and the
    carry is real ``[B, H]``.  Complex: ``W x_t + b`` has ``2H`` entries (real
    and imaginary parts), the state is complex and the output is its real
    part (LRU's readout ``Re(C h)`` with ``C = I``; the next layer or the
    output layer does the mixing).  The complex state is carried as a real
    array ``[B, 2H]`` holding ``(Re h, Im h)``, so masking, dtype casts,
    checkpointing and sharding treat it like any other carry.

    Params: ``W: [D, G*H]``, ``b: [G*H]`` (``G = 2`` when complex, else 1),
    ``nu_log``, ``gamma_log`` and (complex) ``theta_log``, each ``[H]``.  As in
    the LRU, ``|lambda|`` starts uniform on the ring ``[r_min, r_max]``, the
    phase uniform in ``[0, max_phase]``, and ``gamma = sqrt(1 - |lambda|^2)``
    so that a unit-variance input gives a state of roughly unit variance.

    The cell's ``step`` is sequential, so :func:`jrnn.unroll` runs it as any
    other cell; :func:`associative_unroll` computes the same states with a
    parallel scan (each combine is elementwise, ``O(H)``).

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> from jrnn import parallel
      >>> cell = parallel.diagonal(8)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=3)
      >>> sorted(params), cell.kind
      (['W', 'b', 'gamma_log', 'nu_log'], 'diagonal')
      >>> carry, hs = jrnn.unroll(cell, params, jnp.ones((5, 2, 3)))
      >>> hs.shape, carry.shape
      ((5, 2, 8), (2, 8))
    """
    positive_int("hidden_size", hidden_size)
    if not 0.0 <= r_min < r_max <= 1.0:
        raise ValueError(f"need 0 <= r_min < r_max <= 1, got r_min={r_min}, r_max={r_max}")
    if not max_phase > 0:
        raise ValueError(f"max_phase must be positive, got {max_phase}")
    H = hidden_size
    G = 2 if complex_state else 1

    def init(key: Array, input_size: int, dtype=jnp.float32) -> dict:
        positive_int("input_size", input_size)
        k_w, k_r, k_p = jax.random.split(key, 3)
        scale = 1.0 / math.sqrt(input_size)
        # |lambda|^2 uniform between r_min^2 and r_max^2: uniform on the ring's area.
        u = jax.random.uniform(k_r, (H,), dtype)
        radius_sq = u * (r_max**2 - r_min**2) + r_min**2
        nu = -0.5 * jnp.log(radius_sq)  # |lambda| = exp(-nu)
        params = {
            "W": jax.random.uniform(k_w, (input_size, G * H), dtype, -scale, scale),
            "b": jnp.zeros((G * H,), dtype),
            "nu_log": jnp.log(nu),
            "gamma_log": 0.5 * jnp.log1p(-radius_sq),
        }
        if complex_state:
            # A phase of exactly 0 would make theta_log = -inf: keep it off the edge.
            phase = jax.random.uniform(k_p, (H,), dtype, 1e-3, 1.0) * max_phase
            params["theta_log"] = jnp.log(phase)
        return params

    def initial_carry(batch_shape=(), dtype=jnp.float32) -> Array:
        if isinstance(batch_shape, int):
            batch_shape = (batch_shape,)
        return jnp.zeros((*batch_shape, G * H), dtype)

    def project(params: dict, xs: Array) -> Array:
        return xs @ params["W"] + params["b"]

    def hidden(carry: Array) -> Array:
        return carry[..., :H] if complex_state else carry

    def step(params: dict, carry: Array, x_proj: Array):
        lam, _ = _diag_coefficients(params)
        h = _to_complex(carry, H) if complex_state else carry
        h = lam * h + _diag_inputs(params, x_proj, H)
        if complex_state:
            return _from_complex(h), jnp.real(h)
        return h, h

    return Cell(
        kind="diagonal",
        hidden_size=H,
        num_gates=G,
        init=init,
        initial_carry=initial_carry,
        project=project,
        step=step,
        hidden=hidden,
    )


# --------------------------------------------------------------------------
# Scans over affine maps h -> h A + b.


def _dense_combine(first, second):
    # Apply `first`, then `second`: h (A1 A2) + (b1 A2 + b2).
    A1, b1 = first
    A2, b2 = second
    return A1 @ A2, b1 @ A2 + b2


def _diag_combine(first, second):
    a1, b1 = first
    a2, b2 = second
    return a1 * a2, a2 * b1 + b2


def _doubling(bs: Array, A: Array, apply, square, reverse: bool) -> Array:
    """All states of ``h_t = apply(h_{t-1}, A) + b_t`` from ``h = 0``, in ``ceil(log2 T)`` rounds.

    After the round with shift ``s`` each ``h_t`` is the sum of ``b_{t-j} A^j``
    for ``j < 2s`` (``b`` past the start being 0): adding ``h_{t-s} A^s`` to
    the sum of the last ``s`` terms gives the last ``2s``.
    """
    T = bs.shape[0]
    if reverse:
        bs = bs[::-1]
    h, power, shift = bs, A, 1
    while shift < T:
        h = h.at[shift:].add(apply(h[:-shift], power))
        power = square(power)
        shift *= 2
    return h[::-1] if reverse else h


# Jitted even when called eagerly: op by op, associative_scan's many small slices
# cost seconds of dispatch (9 s against 0.02 s jitted at T = 256 on a CPU).
# Under an outer jit these are simply inlined.
_associative_scan = jax.jit(jax.lax.associative_scan, static_argnums=(0,),
                            static_argnames=("reverse", "axis"))
_doubling_jit = jax.jit(_doubling, static_argnums=(2, 3, 4))


def _matmul(h, P):
    return h @ P


def _mul(h, p):
    return h * p


def _square_matmul(P):
    return P @ P


def _square_mul(p):
    return p * p


def _first_index(T: int, reverse: bool) -> int:
    return T - 1 if reverse else 0


def _scan_affine(cell: Cell, params: dict, xs_proj: Array, carry: Array, reverse: bool,
                 method: str) -> Array:
    """All carries ``[T, B, ...]`` of the cell's affine recurrence (no masking)."""
    T = xs_proj.shape[0]
    first = _first_index(T, reverse)
    if cell.affine is not None:
        # a_t, b_t: [T, B, H], from the input alone; fold h_0 in as for the diagonal cell.
        a, b = cell.affine(params, xs_proj)
        b = b.at[first].add(a[first] * carry)
        return _associative_scan(_diag_combine, (a, b), reverse=reverse)[1]
    if _is_dense_linear(cell):
        W_h = params["W_h"]
        bs = xs_proj
        # Fold the initial state into the first input: h_1 = h_0 W_h + b_1.
        bs = bs.at[first].add(carry @ W_h)
        if method == "doubling":
            return _doubling_jit(bs, W_h, _matmul, _square_matmul, reverse)
        As = jnp.broadcast_to(W_h, (T, *W_h.shape))  # [T, H, H], shared by the batch
        return _associative_scan(_dense_combine, (As, bs), reverse=reverse)[1]
    lam, _ = _diag_coefficients(params)
    H = cell.hidden_size
    complex_state = cell.num_gates == 2  # the complex diagonal cell projects to (re, im)
    h0 = _to_complex(carry, H) if complex_state else carry
    bs = _diag_inputs(params, xs_proj, H)
    bs = bs.at[first].add(lam * h0)
    if method == "doubling":
        states = _doubling_jit(bs, lam, _mul, _square_mul, reverse)
    else:
        lams = jnp.broadcast_to(lam, (T, 1, H))  # [T, 1, H], broadcast over B
        states = _associative_scan(_diag_combine, (lams, bs), reverse=reverse)[1]
    return _from_complex(states) if complex_state else states


def associative_unroll(
    cell: Cell,
    params: dict,
    xs: Array,
    carry: Optional[Array] = None,
    *,
    lengths: Optional[Array] = None,
    reverse: bool = False,
    method: str = "associative",
):
    """:func:`jrnn.unroll` for one linear cell, computed in parallel over time.

    Takes the arguments of :func:`jrnn.unroll` (one cell, time-major) and
    returns the same ``(final_carry, outputs)``.  ``cell`` must be linear:
    :func:`jrnn.linear` (or ``elman`` with ``"identity"``), :func:`diagonal`,
    or a cell with an ``affine`` form (:func:`jrnn.mingru`,
    :func:`jrnn.minlstm`, :func:`jrnn.rglru`; ``"associative"`` only); or
    have its own parallel form (:func:`jrnn.mlstm`; ``"associative"`` only:
    its quadratic form, not a scan).

    ``lengths`` needs no masking inside the scan: padding comes after each
    sequence's valid steps, and a state depends only on earlier inputs, so
    the states before ``lengths[b]`` are already right; outputs past it are
    set to zero and the final carry is read at ``lengths[b] - 1`` (the
    initial carry when the length is 0).

    Args:
      cell: a linear or diagonal cell.
      params: its params.
      xs: ``float[T, B, D]``.
      carry: initial carry (``None``: zeros).
      lengths: optional ``int[B]``, ``0 <= lengths <= T``.
      reverse: run from the end of each sequence to its start.
      method: ``"associative"`` (``jax.lax.associative_scan`` over the affine
        maps; dense cells pay ``H^3`` per combine) or ``"doubling"`` (prefix
        doubling with powers of the time-invariant ``A``:
        ``ceil(log2 T)`` rounds of ``T B H^2`` work plus a squaring).

    Returns:
      ``(final_carry, outputs: float[T, B, H])``.
    """
    if not isinstance(cell, Cell):
        raise TypeError("associative_unroll takes a single jrnn Cell (stacks: loop over layers)")
    if not has_parallel_form(cell):
        raise ValueError(
            "associative_unroll needs a linear recurrence (jrnn.linear, elman with "
            "'identity', parallel.diagonal, jrnn.mingru, jrnn.minlstm or jrnn.rglru) or "
            f"jrnn.mlstm's parallel form; got a {cell.kind!r} cell"
            + (f" with activation {cell.activation!r}" if cell.activation else "")
            + (", whose gates read h_(t-1): run it with method='scan'"
               if cell.kind == "slstm" else "")
        )
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(METHODS)}")
    if method == "doubling" and (cell.affine is not None or not is_linear(cell)):
        raise ValueError(f"method='doubling' needs the same A at every step, but a {cell.kind!r} "
                         "cell's gates depend on x_t; use method='associative'")
    xs = check_sequence(xs, params["W"].shape[0], what="the cell's W")
    T, B, _ = xs.shape
    if carry is None:
        carry = cell.initial_carry((B,), xs.dtype)
    if lengths is not None:
        lengths = check_lengths(lengths, T, B)
    if T == 0:
        return carry, jnp.zeros((0, B, cell.hidden_size), xs.dtype)

    xs_proj = cell.project(params, xs)
    if not is_linear(cell):
        return _own_parallel_form(cell, params, xs_proj, carry, lengths, reverse)
    if lengths is None:
        states = _scan_affine(cell, params, xs_proj, carry, reverse, method)
        final = states[0] if reverse else states[-1]
        return final, cell.hidden(states)

    # Reversed within lengths, each sequence runs forward from its own start.
    if reverse:
        xs_proj = reverse_within_lengths(xs_proj, lengths)
    states = _scan_affine(cell, params, xs_proj, carry, False, method)
    last = jnp.clip(lengths - 1, 0, T - 1)
    final = jnp.take_along_axis(states, last[None, :, None], axis=0)[0]
    final = jnp.where((lengths > 0)[:, None], final, carry)
    valid = valid_steps(lengths, T)[..., None]  # [T, B, 1]
    hs = jnp.where(valid, cell.hidden(states), 0).astype(xs.dtype)
    if reverse:
        hs = reverse_within_lengths(hs, lengths)
    return final, hs


def _own_parallel_form(cell: Cell, params: dict, xs_proj: Array, carry, lengths, reverse: bool):
    """``cell.parallel`` (forward in time), with ``lengths`` and ``reverse`` as for the scans.

    The form is causal, so padding after a sequence's valid steps changes none
    of them: ``cell.parallel`` reads each final carry after ``lengths[b]`` steps,
    and outputs past it are set to zero here.
    """
    T, B = xs_proj.shape[:2]
    ends = jnp.full((B,), T, jnp.int32) if lengths is None else lengths
    if reverse:  # each sequence runs forward from its own (reversed) start
        xs_proj = reverse_within_lengths(xs_proj, ends)
    final, hs = cell.parallel(params, xs_proj, carry, ends)
    if lengths is not None:
        hs = jnp.where(valid_steps(lengths, T)[..., None], hs, 0)
    if reverse:
        hs = reverse_within_lengths(hs, ends)
    return final, hs


def linear_associative(
    params: dict,
    xs: Array,
    h0: Optional[Array] = None,
    *,
    method: str = "associative",
):
    r"""All states of the dense linear recurrence ``h_t = x_t W + h_{t-1} W_h + b`` in parallel.

    The same ``(final_carry, hs)`` as ``jrnn.unroll(jrnn.linear(H), params, xs, h0)``,
    computed by ``jax.lax.associative_scan`` over the maps ``(W_h, x_t W + b)``
    (``method="associative"``, ``H^3`` work per combine) or by prefix
    doubling with powers of ``W_h`` (``method="doubling"``); see the module
    doc for when each pays.

    Args:
      params: :func:`jrnn.linear` params: ``W: [D, H]``, ``W_h: [H, H]``, ``b: [H]``.
      xs: ``float[T, B, D]``.
      h0: initial state ``[B, H]`` (``None``: zeros).
      method: ``"associative"`` or ``"doubling"``.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> cell = jrnn.linear(3, init_scale=0.3)
      >>> params = cell.init(jax.random.PRNGKey(0), input_size=2)
      >>> xs = jax.random.normal(jax.random.PRNGKey(1), (10, 4, 2))
      >>> from jrnn.core.parallel import linear_associative
      >>> h_T, hs = linear_associative(params, xs)
      >>> bool(jnp.allclose(hs, jrnn.unroll(cell, params, xs)[1], atol=1e-5))
      True
    """
    return associative_unroll(linear(params["W_h"].shape[0]), params, xs, h0, method=method)
