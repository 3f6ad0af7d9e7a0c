"""Hand-written backward passes where autodiff through ``lax.scan`` is wasteful.

Two places dominate an RNN language model's train step, and in both the
gradient XLA derives is correct but slow on a CPU:

* **The recurrence.**  Differentiating ``lax.scan`` gives a backward loop that
  accumulates ``dW_h`` with one small ``[H, B] x [B, G*H]`` matmul per step and
  rebuilds each gate's cotangent from four slices.  :func:`lstm_sequence`,
  :func:`gru_sequence` and :func:`elman_sequence` run the same forward scan
  (keeping the gate activations) under a ``jax.custom_vjp`` whose backward
  loop carries only ``(dh, dc)``: per step, the gate cotangent ``dz_t`` in a
  few whole-array operations (for the LSTM, every factor of ``dz_t`` that
  does not depend on the flowing cotangents is built for all steps at once,
  before the loop) and ``dh_{t-1} = dz_t W_h^T``; after the loop
  ``dW_h = sum_t h_{t-1}^T dz_t`` is **one** ``[H, T*B] x [T*B, G*H]`` matmul
  (as cuDNN does) and ``dz`` itself is the cotangent of the hoisted input
  projection.  The formulas are those of :mod:`jrnn.reference`'s hand-written
  BPTT; tests hold both to ``jax.grad`` of the plain scan.
* **The softmax output layer.**  ``logits = h W + b`` over a 10k vocabulary is
  ``[B*T, V]`` -- 28 MB for a Zaremba-small window -- and autodiff keeps it,
  its softmax and its cotangent alive at once.  :func:`softmax_cross_entropy`
  walks the rows in chunks of about a million logits: per chunk the logits,
  the loss and, when a gradient is wanted, ``dlogits = softmax - onehot``,
  folded at once into ``dh``, ``dW`` and ``db``.  The [B*T, V] arrays never
  exist (the memory saved is measured in ``benchmarks/RESULTS.md``).  With
  bfloat16 operands on a CPU, ``dW = h^T dlogits`` reads a row-major copy of
  ``h^T`` (:func:`jrnn.core.select.transposed_copies`), the layout XLA's fast
  CPU matmuls take.

Both are used by default (``jrnn.rnn_lm(..., custom_vjp=True)``, ``jrnn.unroll(...,
custom_vjp=True)``).  A cell carries its whole-layer pass in its ``sequence``
field, tied to the ``step`` it was written for (``Cell.sequence_step``).  A
``custom_vjp`` function has no forward-mode rule: pass ``custom_vjp=False``
to use ``jax.jvp`` / ``jax.jacfwd`` through a model.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

from jrnn.core.gates import ACTIVATIONS, LSTMCarry, gru_update, lstm_update
from jrnn.core.select import cross_entropy_chunk_rows, transposed_copies
from jrnn.core.validation import positive_int

Array = jax.Array

__all__ = [
    "lstm_sequence",
    "gru_sequence",
    "elman_sequence",
    "softmax_cross_entropy",
]


# ---------------------------------------------------------------------------
# Shared pieces


def _prev(states: Array, first: Array, reverse: bool) -> Array:
    """The state *before* each step: ``[first, s_0, ..., s_{T-2}]`` (mirrored when ``reverse``)."""
    if states.shape[0] == 0:
        return states
    if reverse:
        return jnp.concatenate([states[1:], first[None]], axis=0)
    return jnp.concatenate([first[None], states[:-1]], axis=0)


def _weight_grad(h_prev: Array, dz: Array) -> Array:
    # sum_t h_{t-1}^T dz_t as a single [H, T*B] x [T*B, G*H] matmul.
    return jnp.einsum("tbh,tbg->hg", h_prev, dz)


@functools.lru_cache(maxsize=None, typed=True)  # typed: unroll=True != unroll=1
def _lstm_run(H: int, reverse: bool, unroll: int) -> Callable:
    def forward(W_h, xs, h0, c0):
        # The loop keeps c and the gates; h = o * tanh(c) is rebuilt for all
        # steps at once after it (one write per step fewer in the loop).
        def body(carry, x):
            h, c = carry
            h, c, a = lstm_update(x + h @ W_h, c, H)
            return (h, c), (c, a)

        final, (cs, acts) = jax.lax.scan(body, (h0, c0), xs, reverse=reverse, unroll=unroll)
        return final, (acts[..., 3 * H :] * jnp.tanh(cs), cs, acts)

    @jax.custom_vjp
    def run(W_h, xs, h0, c0):
        final, (hs, _, _) = forward(W_h, xs, h0, c0)
        return final, hs

    def run_fwd(W_h, xs, h0, c0):
        final, (hs, cs, acts) = forward(W_h, xs, h0, c0)
        return (final, hs), (W_h, hs, cs, acts, h0, c0)

    def run_bwd(res, cts):
        W_h, hs, cs, acts, h0, c0 = res
        (dh_T, dc_T), dhs = cts
        # Everything of dz_t that does not depend on the cotangents flowing
        # back, for all steps at once (vectorized over T), so the loop does only
        #   dc = dc_{t+1} + dh o (1 - tanh(c)^2),  dz = [dc, dc, dc, dh] * k,
        # with k = [g i(1-i), c_{t-1} f(1-f), i (1-g^2), tanh(c) o(1-o)].
        i, f, g, o = (acts[..., j * H : (j + 1) * H] for j in range(4))
        tc = jnp.tanh(cs)
        c_prev = _prev(cs, c0, reverse)
        k = jnp.concatenate(
            [g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], axis=-1)
        m = o * (1 - tc * tc)

        def body(carry, inp):
            dh_next, dc_next = carry
            k_t, m_t, f_t, dh_out = inp
            dh = dh_out + dh_next
            dc = dc_next + dh * m_t
            dz = jnp.concatenate([dc, dc, dc, dh], axis=-1) * k_t
            return (dz @ W_h.T, dc * f_t), dz

        (dh0, dc0), dzs = jax.lax.scan(
            body, (dh_T, dc_T), (k, m, f, dhs), reverse=not reverse, unroll=unroll,
        )
        return _weight_grad(_prev(hs, h0, reverse), dzs), dzs, dh0, dc0

    run.defvjp(run_fwd, run_bwd)
    return run


def lstm_sequence(hidden_size: int) -> Callable:
    """A whole LSTM layer with a hand-written backward pass.

    Returns ``run(params, xs_proj, carry, *, reverse=False, unroll=1) ->
    (carry, hs)`` with ``xs_proj: [T, B, 4H]`` (the hoisted ``x W + b``),
    ``carry = LSTMCarry(h, c)`` and ``hs: [T, B, H]``; the same values as
    ``lax.scan`` of :func:`jrnn.lstm`'s step.  Only ``params["W_h"]`` is read.
    """
    def run(params, xs_proj, carry, *, reverse: bool = False, unroll=1):
        fn = _lstm_run(hidden_size, bool(reverse), unroll)
        (h, c), hs = fn(params["W_h"], xs_proj, carry.h, carry.c)
        return LSTMCarry(h, c), hs

    return run


# ---------------------------------------------------------------------------
# GRU


@functools.lru_cache(maxsize=None, typed=True)  # typed: unroll=True != unroll=1
def _gru_run(H: int, reverse: bool, unroll: int) -> Callable:
    def forward(W_h, b_h, xs, h0):
        def body(h, x):
            u = h @ W_h + b_h
            h, rz, n = gru_update(x, u, h, H)
            return h, (h, rz, n, u[:, 2 * H :])

        return jax.lax.scan(body, h0, xs, reverse=reverse, unroll=unroll)

    @jax.custom_vjp
    def run(W_h, b_h, xs, h0):
        final, (hs, _, _, _) = forward(W_h, b_h, xs, h0)
        return final, hs

    def run_fwd(W_h, b_h, xs, h0):
        final, (hs, rzs, ns, uns) = forward(W_h, b_h, xs, h0)
        return (final, hs), (W_h, hs, rzs, ns, uns, h0)

    def run_bwd(res, cts):
        W_h, hs, rzs, ns, uns, h0 = res
        dh_T, dhs = cts

        def body(dh_next, inp):
            rz, n, u_n, h_prev, dh_out = inp
            dh = dh_out + dh_next
            r, z = rz[:, :H], rz[:, H:]
            dn = dh * (1 - z) * (1 - n * n)  # cotangent of n's pre-activation
            drz = jnp.concatenate([dn * u_n, dh * (h_prev - n)], axis=-1) * rz * (1 - rz)
            dx = jnp.concatenate([drz, dn], axis=-1)  # of x_proj
            du = jnp.concatenate([drz, dn * r], axis=-1)  # of u = h W_h + b_h
            return dh * z + du @ W_h.T, (dx, du)

        h_prev = _prev(hs, h0, reverse)
        dh0, (dxs, dus) = jax.lax.scan(
            body, dh_T, (rzs, ns, uns, h_prev, dhs), reverse=not reverse, unroll=unroll
        )
        return _weight_grad(h_prev, dus), jnp.sum(dus, axis=(0, 1)), dxs, dh0

    run.defvjp(run_fwd, run_bwd)
    return run


def gru_sequence(hidden_size: int) -> Callable:
    """A whole GRU layer with a hand-written backward pass (see :func:`lstm_sequence`).

    ``run(params, xs_proj [T, B, 3H], h [B, H], *, reverse, unroll) -> (h, hs)``;
    reads ``params["W_h"]`` and ``params["b_h"]``.
    """

    def run(params, xs_proj, carry, *, reverse: bool = False, unroll=1):
        fn = _gru_run(hidden_size, bool(reverse), unroll)
        return fn(params["W_h"], params["b_h"], xs_proj, carry)

    return run


# ---------------------------------------------------------------------------
# Elman / linear

@functools.lru_cache(maxsize=None, typed=True)  # typed: unroll=True != unroll=1
def _elman_run(act_name: str, reverse: bool, unroll: int) -> Callable:
    act, deriv = ACTIVATIONS[act_name].fn, ACTIVATIONS[act_name].derivative

    def forward(W_h, xs, h0):
        def body(h, x):
            h = act(x + h @ W_h)
            return h, h

        return jax.lax.scan(body, h0, xs, reverse=reverse, unroll=unroll)

    @jax.custom_vjp
    def run(W_h, xs, h0):
        return forward(W_h, xs, h0)

    def run_fwd(W_h, xs, h0):
        final, hs = forward(W_h, xs, h0)
        return (final, hs), (W_h, hs, h0)

    def run_bwd(res, cts):
        W_h, hs, h0 = res
        dh_T, dhs = cts

        def body(dh_next, inp):
            h, dh_out = inp
            dz = (dh_out + dh_next) * deriv(h)
            return dz @ W_h.T, dz

        dh0, dzs = jax.lax.scan(body, dh_T, (hs, dhs), reverse=not reverse, unroll=unroll)
        return _weight_grad(_prev(hs, h0, reverse), dzs), dzs, dh0

    run.defvjp(run_fwd, run_bwd)
    return run


def elman_sequence(activation: str) -> Optional[Callable]:
    """A whole Elman (or linear) layer with a hand-written backward pass.

    ``activation`` must be one of ``"identity"``, ``"tanh"``, ``"sigmoid"``,
    ``"relu"`` (their derivatives are written from the output); returns
    ``None`` for anything else, and the caller falls back to autodiff.
    """
    if activation not in ACTIVATIONS:
        return None

    def run(params, xs_proj, carry, *, reverse: bool = False, unroll=1):
        return _elman_run(activation, bool(reverse), unroll)(params["W_h"], xs_proj, carry)

    return run


# ---------------------------------------------------------------------------
# Output layer + cross-entropy


def _mm(a, b, operand_dtype):
    """``a @ b`` with operands cast to ``operand_dtype`` (None: as they are), accumulated in ``a``'s dtype."""
    if operand_dtype is None:
        return a @ b
    out = a.dtype
    return jnp.matmul(a.astype(operand_dtype), b.astype(operand_dtype), preferred_element_type=out)


def _chunk_losses(h, W, b, y, operand_dtype=None):
    """Cross-entropy of each row of ``h @ W + b`` against ``y``; also exp-shifted logits and their sums."""
    logits = _mm(h, W, operand_dtype) + b
    m = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
    e = jnp.exp(logits - m)
    s = jnp.sum(e, axis=-1, keepdims=True)
    picked = jnp.take_along_axis(logits, y[:, None], axis=-1)[:, 0]
    return (jnp.log(s) + m)[:, 0] - picked, e, s


def _pad_rows(x: Array, rows: int) -> Array:
    pad = rows - x.shape[0]
    if pad == 0:
        return x
    return jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))


def _split(h, y, w, chunk: int):
    N = h.shape[0]
    k = -(-N // chunk)
    rows = k * chunk
    return (
        _pad_rows(h, rows).reshape(k, chunk, h.shape[1]),
        _pad_rows(y, rows).reshape(k, chunk),
        _pad_rows(w, rows).reshape(k, chunk),
    )


def _ce_losses(h, W, b, y, chunk, operand_dtype=None):
    hc, yc, _ = _split(h, y, jnp.zeros(h.shape[:1], h.dtype), chunk)
    losses = jax.lax.map(lambda a: _chunk_losses(a[0], W, b, a[1], operand_dtype)[0], (hc, yc))
    return losses.reshape(-1)[: h.shape[0]]


def _weighted_sum(losses, w):
    # Rows of weight 0 add nothing, even if their loss is not finite.
    return jnp.sum(jnp.where(w != 0, losses * w, 0))


def _ce_value(h, W, b, y, w, chunk, operand_dtype):
    losses = _ce_losses(h, W, b, y, chunk, operand_dtype)
    return _weighted_sum(losses, w), losses


_ce = jax.custom_vjp(_ce_value, nondiff_argnums=(5, 6))


def _transposed_chunks(hc: Array) -> Array:
    """``hc: [k, n, H]`` -> ``[k, H, n]``, as a row-major copy where the matmul wants one.

    Each chunk's ``dW = h^T dlogits`` reads it.  A plain transpose is folded
    into that matmul, which XLA's CPU backend then runs in Eigen with
    bfloat16 operands upcast (:func:`jrnn.core.select.transposed_copies`);
    flattening behind an optimization barrier makes the transpose a real copy
    (280 kB for Zaremba-small) that the folding cannot see through.
    """
    k, n, H = hc.shape
    hcT = jnp.swapaxes(hc, 1, 2)
    if not transposed_copies(hc.dtype):
        return hcT
    return jax.lax.optimization_barrier(hcT.reshape(-1)).reshape(k, H, n)


def _ce_fwd(h, W, b, y, w, chunk, operand_dtype):
    h, W, b, y, w = h.value, W.value, b.value, y.value, w.value
    N, V = h.shape[0], W.shape[1]
    hc, yc, wc = _split(h, y, w, chunk)
    # Cast once, outside the loop over chunks (a no-op without an operand dtype).
    Wm = W if operand_dtype is None else W.astype(operand_dtype)
    hcT = _transposed_chunks(hc if operand_dtype is None else hc.astype(operand_dtype))

    def grads_of(hhT, dlogits):
        # dh contracts the minor axes of dlogits and W in place (dot_general); dW reads
        # hhT, a real transposed copy where _transposed_chunks makes one.
        d = dlogits if operand_dtype is None else dlogits.astype(operand_dtype)
        dh = jax.lax.dot_general(d, Wm, (((1,), (1,)), ((), ())), preferred_element_type=h.dtype)
        dW = jnp.matmul(hhT, d, preferred_element_type=h.dtype)
        return dh, dW

    def chunk(hh, hhT, yy, ww):
        loss, e, s = _chunk_losses(hh, Wm, b, yy, operand_dtype)
        dlogits = (e / s - jax.nn.one_hot(yy, V, dtype=e.dtype)) * ww[:, None]
        dlogits = jnp.where(ww[:, None] != 0, dlogits, 0)
        return (loss, *grads_of(hhT, dlogits), jnp.sum(dlogits, axis=0))

    def body(acc, a):
        loss, dh, dW, db = chunk(*a)
        return (acc[0] + dW, acc[1] + db), (loss, dh)

    # The first chunk starts the sums (no zero-filled [H, V] buffer to add to).
    loss0, dh0, dW, db = chunk(hc[0], hcT[0], yc[0], wc[0])
    (dW, db), (losses, dh) = jax.lax.scan(body, (dW, db), (hc[1:], hcT[1:], yc[1:], wc[1:]))
    losses = jnp.concatenate([loss0, losses.reshape(-1)])[:N]
    dh = jnp.concatenate([dh0, dh.reshape(-1, h.shape[1])])[:N]
    return (_weighted_sum(losses, w), losses), (h, W, b, y, w, losses, dh, dW, db)


def _ce_bwd(chunk, operand_dtype, res, cts):
    h, W, b, y, w, losses, dh, dW, db = res
    g, g_losses = cts
    g = jnp.zeros((), losses.dtype) if isinstance(g, SymbolicZero) else g
    grads = (g * dh, g * dW, g * db)
    if not isinstance(g_losses, SymbolicZero):
        # The per-row losses are differentiated too (not just the weighted
        # sum the forward pass prepared for): recompute their gradient.
        _, vjp = jax.vjp(lambda h, W, b: _ce_losses(h, W, b, y, chunk, operand_dtype), h, W, b)
        grads = tuple(a + c for a, c in zip(grads, vjp(g_losses)))
    return (*grads, None, g * losses)


_ce.defvjp(_ce_fwd, _ce_bwd, symbolic_zeros=True)


def softmax_cross_entropy(
    h: Array,
    W: Array,
    b: Array,
    targets: Array,
    weights: Array,
    *,
    chunk_rows: Optional[int] = None,
    matmul_dtype: Optional[str] = None,
) -> tuple[Array, Array]:
    """Output layer and cross-entropy without materializing the logits.

    Args:
      h: ``float[N, H]`` hidden states (one row per token).
      W, b: output layer ``[H, V]``, ``[V]``.
      targets: ``int[N]``, the token each row should predict.
      weights: ``float[N]``: each row's weight in the total (0 drops a row,
        ``1/B`` averages over a batch).
      chunk_rows: rows per chunk (default :func:`cross_entropy_chunk_rows`).
      matmul_dtype: ``None`` (the inputs' dtype) or ``"bfloat16"``: the three
        matmuls (logits, ``dh``, ``dW``) take bfloat16 operands and
        accumulate in the inputs' dtype; the softmax, the losses and the sums
        stay in it too.  Chosen per machine by
        :func:`jrnn.core.select.output_matmul_dtype`.

    Returns:
      ``(total, losses)``: ``sum(weights * losses)`` and ``losses: float[N]``,
      ``-log softmax(h W + b)[targets]``.  The gradient of ``total`` is
      computed chunk by chunk in the forward pass (``softmax - onehot`` folded
      into ``dh``, ``dW``, ``db`` at once) and only scaled in the backward
      pass; a gradient through ``losses`` recomputes the logits.

    Example:
      >>> import jax, jax.numpy as jnp, optax
      >>> h, W = jnp.ones((5, 3)), jnp.arange(12.0).reshape(3, 4) / 10
      >>> y, w = jnp.array([0, 1, 2, 3, 0]), jnp.ones(5)
      >>> total, losses = softmax_cross_entropy(h, W, jnp.zeros(4), y, w, chunk_rows=2)
      >>> bool(jnp.allclose(losses, optax.softmax_cross_entropy_with_integer_labels(h @ W, y)))
      True
    """
    h, W, b = jnp.asarray(h), jnp.asarray(W), jnp.asarray(b)
    targets, weights = jnp.asarray(targets), jnp.asarray(weights, h.dtype)
    if h.ndim != 2 or W.ndim != 2 or h.shape[1] != W.shape[0] or b.shape != (W.shape[1],):
        raise ValueError(
            f"expected h [N, H], W [H, V], b [V]; got {h.shape}, {W.shape}, {b.shape}"
        )
    if targets.shape != h.shape[:1] or weights.shape != h.shape[:1]:
        raise ValueError(
            f"targets and weights must have shape [N]={h.shape[:1]}, "
            f"got {targets.shape} and {weights.shape}"
        )
    N = h.shape[0]
    if N == 0:
        return jnp.zeros((), h.dtype), jnp.zeros((0,), h.dtype)
    chunk = cross_entropy_chunk_rows(N, W.shape[1]) if chunk_rows is None else positive_int(
        "chunk_rows", chunk_rows)
    if matmul_dtype not in (None, "float32", "bfloat16"):
        raise ValueError(f"matmul_dtype must be None, 'float32' or 'bfloat16', got {matmul_dtype!r}")
    operand = None if matmul_dtype in (None, "float32") or h.dtype == jnp.bfloat16 else matmul_dtype
    return _ce(h, W, b, targets, weights, min(chunk, N), operand)
