"""Fused recurrence kernels in Pallas: the whole time loop inside one GPU kernel.

On a GPU, ``lax.scan`` launches a few kernels per timestep, and each launch
costs microseconds that a small recurrent matmul does not.  The kernels here
run the time loop *inside* one ``pallas_call`` (Triton on NVIDIA GPUs):

* the input projection ``x W + b`` stays hoisted outside, one large matmul
  (as in :func:`jrnn.unroll`); the kernel reads its rows step by step;
* the recurrent weight ``W_h`` is loaded once, before the loop, and stays on
  chip for the whole sequence (registers / shared memory), so each step is
  one small matmul per gate block and the fused gate math;
* each program of the grid owns a block of ``BLOCK_B`` batch rows, so the
  batch is spread over the GPU's cores; the state is float32 (or the input
  dtype, e.g. float64 on a CPU);
* the backward pass is a second kernel that walks the sequence the other way
  carrying ``dh`` (and ``dc``); it writes every step's gate cotangent ``dz``,
  from which ``dW_h = sum_t h_{t-1}^T dz_t`` and the input gradient are large
  matmuls outside the kernel (as :mod:`jrnn.core.backward` does for the scan).

**On-chip budget.**  ``W_h`` (padded to powers of two, as Triton's blocks
must be) has to fit in :data:`ON_CHIP_BYTES`, each gate block of it in
:data:`BLOCK_BYTES` (measured); a larger ``W_h`` (e.g.
Zaremba-small's 200 x 800 in float32) falls back to the scan with the
hand-written backward pass, and so do sequences with ``lengths`` and Elman
cells whose activation is not one of the named :data:`ACTIVATIONS` (a
callable such as ``jnp.sin``: the kernels have each activation's derivative
written from its output, and no other).  :func:`fallback_reason` says which
(a :class:`FallbackReason`: the message, with its :class:`Fallback` kind),
and ``jrnn.unroll(..., method="pallas")`` reports the fallback instead of
hiding it.

``bf16=True`` feeds the matmuls bfloat16 operands (``W_h`` and ``h``) with
float32 accumulation and float32 state, halving ``W_h``'s on-chip size.

Off a GPU the same kernels run in Pallas' interpret mode (``interpret=None``
picks it), which is how the test-suite checks them against the loop
reference on a CPU; ``interpret=False`` on a CPU still *lowers* them for
CUDA (``jax.export(..., platforms=["cuda"])``), producing the Triton kernel.

Example (interpret mode on a CPU):
  >>> import jax, jax.numpy as jnp, jrnn
  >>> from jrnn.core import pallas
  >>> cell = jrnn.gru(8)
  >>> params = cell.init(jax.random.PRNGKey(0), 3)
  >>> xs = jax.random.normal(jax.random.PRNGKey(1), (5, 2, 3))
  >>> run = pallas.sequence(cell)
  >>> _, hs = run(params, cell.project(params, xs), cell.initial_carry((2,)))
  >>> _, ref = jrnn.unroll(cell, params, xs, method="scan")
  >>> bool(jnp.allclose(hs, ref, atol=1e-5))
  True
"""

from __future__ import annotations

import contextlib
import enum
import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from jrnn.core.backward import _prev
from jrnn.core.cells import Cell, gate_size
from jrnn.core.gates import ACTIVATIONS, LSTMCarry

Array = jax.Array

__all__ = ["ON_CHIP_BYTES", "BLOCK_BYTES", "BLOCK_B", "Fallback", "FallbackReason", "supported",
           "fallback_reason", "sequence", "compiled_for_gpu"]

# W_h is held on chip for the whole sequence.  An H100/H200 SM has 228 KiB of shared
# memory and 256 KiB of registers; Triton stages a dot's operands through shared
# memory, so W_h gets at most 96 KiB and the rest is left to h, the gates and staging.
ON_CHIP_BYTES = 96 * 1024
# ... and each gate block of W_h (one dot operand) at most 32 KiB.  Measured on an H100
# (benchmarks/RESULTS.md, "GPU: one H100", second run): a tanh RNN with one 64 KiB block
# (H = 128, float32) took 88.3 ms per forward+backward (B64 T1024) against 3.1 ms with
# 32 KiB (bfloat16), while the LSTM's four 16 KiB blocks (H = 64, float32) ran at 10.2 ms.
BLOCK_BYTES = 32 * 1024
# Batch rows per program: Triton's dot needs at least 16 rows.
BLOCK_B = 16
# Warps per program (Triton): 4 x 32 threads share each step's small matmuls.
NUM_WARPS = 4

# The kinds with a kernel here (jrnn's other cells -- mingru, minlstm, rglru, slstm, mlstm --
# have none: the scan, or method="associative", runs them).
_KERNEL_KINDS = ("linear", "elman", "lstm", "gru")
# The kinds whose kernel applies ``ACTIVATIONS[cell.activation]`` (the others' gates are fixed).
_ACTIVATED = ("elman", "linear")


def _pow2(n: int, minimum: int = 16) -> int:
    return max(minimum, 1 << max(int(n) - 1, 0).bit_length())


class Fallback(enum.Enum):
    """Why a cell runs with the scan instead of a kernel (``FallbackReason.kind``)."""

    CELL_KIND = "cell kind"  # no kernel for this kind of cell
    PROJECTION = "projection"  # the LSTM with projections (proj_size)
    STEP_CHANGED = "step changed"  # e.g. remat: the step is no longer the cell's own
    ACTIVATION = "activation"  # not one of the named ACTIVATIONS the Elman kernel has
    LENGTHS = "lengths"  # variable-length sequences are not masked in the kernel
    ON_CHIP = "on-chip budget"  # W_h too large for a GPU's chip (interpret mode has no limit)


class FallbackReason(str):
    """A fallback's human-readable message (a ``str``, printed and compared as before)
    and its :class:`Fallback` ``kind``, which code branches on instead of the text.

    Example:
      >>> import jrnn
      >>> from jrnn.core import pallas
      >>> reason = pallas.fallback_reason(jrnn.gru(8), lengths=True)
      >>> reason.kind, str(reason)
      (<Fallback.LENGTHS: 'lengths'>, 'sequences with lengths are not masked in the kernel')
    """

    kind: Fallback

    def __new__(cls, kind: Fallback, message: str) -> "FallbackReason":
        self = super().__new__(cls, message)
        self.kind = Fallback(kind)
        return self

    def __reduce__(self):
        return FallbackReason, (self.kind, str(self))


def fallback_reason(cell: Cell, *, lengths: bool = False,
                    bf16: bool = False) -> Optional[FallbackReason]:
    """Why ``cell`` cannot run in a Pallas kernel, or ``None`` when it can.

    Example:
      >>> import jax.numpy as jnp, jrnn
      >>> from jrnn.core import pallas
      >>> pallas.fallback_reason(jrnn.elman(64)) is None
      True
      >>> pallas.fallback_reason(jrnn.lstm(200))
      'W_h of 256 x 1024 float32 (padded) is 1024 KiB, over the 96 KiB on-chip budget'
      >>> pallas.fallback_reason(jrnn.elman(64, activation=jnp.sin)).kind
      <Fallback.ACTIVATION: 'activation'>
      >>> pallas.fallback_reason(jrnn.mingru(8))
      "no Pallas kernel for 'mingru' cells"
    """
    if cell.kind not in _KERNEL_KINDS:
        return FallbackReason(Fallback.CELL_KIND, f"no Pallas kernel for {cell.kind!r} cells")
    if cell.cell_size is not None:
        return FallbackReason(Fallback.PROJECTION,
                              "no Pallas kernel for the projected LSTM (proj_size)")
    if cell.sequence_step is not cell.step:
        return FallbackReason(Fallback.STEP_CHANGED, "the cell's step was changed (e.g. remat)")
    if cell.kind in _ACTIVATED and cell.activation not in ACTIVATIONS:
        what = "a callable" if cell.activation is None else repr(cell.activation)
        return FallbackReason(
            Fallback.ACTIVATION,
            f"the activation is {what}; the kernel has only the named activations "
            f"{', '.join(ACTIVATIONS)}")
    if lengths:
        return FallbackReason(Fallback.LENGTHS,
                              "sequences with lengths are not masked in the kernel")
    Hp = _pow2(gate_size(cell))
    G = cell.num_gates
    block = Hp * Hp * (2 if bf16 else 4)
    dtype = "bfloat16" if bf16 else "float32"
    if G * block > ON_CHIP_BYTES:
        return FallbackReason(
            Fallback.ON_CHIP,
            f"W_h of {Hp} x {G * Hp} {dtype} (padded) is {G * block // 1024} KiB, over the "
            f"{ON_CHIP_BYTES // 1024} KiB on-chip budget")
    if block > BLOCK_BYTES:
        return FallbackReason(
            Fallback.ON_CHIP,
            f"each {Hp} x {Hp} {dtype} gate block of W_h is {block // 1024} KiB, over the "
            f"{BLOCK_BYTES // 1024} KiB per-block on-chip budget")
    return None


def supported(cell: Cell, *, lengths: bool = False, bf16: bool = False) -> bool:
    """Whether :func:`sequence` runs ``cell`` in a kernel (see :func:`fallback_reason`)."""
    return fallback_reason(cell, lengths=lengths, bf16=bf16) is None


# ---------------------------------------------------------------------------
# Padding: every block dimension a power of two, each gate block padded on its own.
# Padded hidden units have zero weights and a zero start, so they stay zero for
# tanh/relu/identity (sigmoid units move, but feed nothing: their W_h rows are zero).


def _pad_gates(x: Array, G: int, H: int, Hp: int) -> Array:
    lead = x.shape[:-1]
    x = x.reshape(*lead, G, H)
    x = jnp.pad(x, [(0, 0)] * len(lead) + [(0, 0), (0, Hp - H)])
    return x.reshape(*lead, G * Hp)


def _unpad_gates(x: Array, G: int, H: int, Hp: int) -> Array:
    lead = x.shape[:-1]
    return x.reshape(*lead, G, Hp)[..., :H].reshape(*lead, G * H)


def _pad_rows(x: Array, axis: int, n: int) -> Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n - x.shape[axis])
    return jnp.pad(x, pad)


def _padded_batch(B: int) -> int:
    return -(-B // BLOCK_B) * BLOCK_B


def _pad_state(x: Array, Hp: int, Bp: int, dtype=None) -> Array:
    """``[B, H]`` or ``[T, B, H]`` padded to batch ``Bp`` and width ``Hp``."""
    x = x if dtype is None else jnp.asarray(x, dtype)
    return _pad_rows(_pad_rows(x, x.ndim - 1, Hp), x.ndim - 2, Bp)


def _pad_weight(W_h: Array, G: int, H: int, Hp: int) -> Array:
    """``W_h: [H, G*H]`` padded to ``[Hp, G*Hp]``, each gate block on its own."""
    return _pad_rows(_pad_gates(W_h, G, H, Hp), 0, Hp)


def _dot(a, w, bf16: bool):
    if bf16:
        return jnp.dot(a.astype(jnp.bfloat16), w, preferred_element_type=jnp.float32)
    return jnp.dot(a, w, precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=a.dtype)


def _sigmoid(z):
    return 1.0 / (1.0 + jnp.exp(-z))


# ---------------------------------------------------------------------------
# Kernels.  Refs are blocks of one program: [T, BLOCK_B, ...] over its batch rows.
# Gate blocks are read and written as static column slices of the refs (Triton
# cannot slice values held in registers).


def _cols(k: int, Hp: int):
    return pl.ds(k * Hp, Hp)


def _lstm_fwd_kernel(xs_ref, w_ref, h0_ref, c0_ref, hs_ref, cs_ref, acts_ref, hT_ref, cT_ref,
                     *, T, Hp, reverse, bf16):
    ws = [w_ref[:, _cols(k, Hp)] for k in range(4)]
    if bf16:
        ws = [w.astype(jnp.bfloat16) for w in ws]

    def body(s, carry):
        h, c = carry
        t = T - 1 - s if reverse else s
        z = [xs_ref[t, :, _cols(k, Hp)] + _dot(h, ws[k], bf16).astype(h.dtype) for k in range(4)]
        i, f, o = _sigmoid(z[0]), _sigmoid(z[1]), _sigmoid(z[3])
        g = jnp.tanh(z[2])
        c = f * c + i * g
        h = o * jnp.tanh(c)
        for k, a in enumerate((i, f, g, o)):
            acts_ref[t, :, _cols(k, Hp)] = a
        hs_ref[t] = h
        cs_ref[t] = c
        return h, c

    h, c = jax.lax.fori_loop(0, T, body, (h0_ref[...], c0_ref[...]))
    hT_ref[...] = h
    cT_ref[...] = c


def _lstm_bwd_kernel(acts_ref, cs_ref, cprev_ref, dhs_ref, wt_ref, dhT_ref, dcT_ref,
                     dz_ref, dh0_ref, dc0_ref, *, T, Hp, reverse, bf16):
    # wt_ref is W_h^T, [4Hp, Hp]: dh_{t-1} = sum_k dz_k W_h[:, k]^T.
    wts = [wt_ref[_cols(k, Hp), :] for k in range(4)]
    if bf16:
        wts = [w.astype(jnp.bfloat16) for w in wts]

    def body(s, carry):
        dh_next, dc_next = carry
        t = s if reverse else T - 1 - s  # the opposite way to the forward pass
        i, f = acts_ref[t, :, _cols(0, Hp)], acts_ref[t, :, _cols(1, Hp)]
        g, o = acts_ref[t, :, _cols(2, Hp)], acts_ref[t, :, _cols(3, Hp)]
        c, c_prev = cs_ref[t], cprev_ref[t]
        dh = dhs_ref[t] + dh_next
        tc = jnp.tanh(c)
        dc = dc_next + dh * o * (1 - tc * tc)
        dzs = (dc * g * i * (1 - i), dc * c_prev * f * (1 - f), dc * i * (1 - g * g),
               dh * tc * o * (1 - o))
        dh_prev = None
        for k, dz in enumerate(dzs):
            dz_ref[t, :, _cols(k, Hp)] = dz
            part = _dot(dz, wts[k], bf16).astype(dz.dtype)
            dh_prev = part if dh_prev is None else dh_prev + part
        return dh_prev, dc * f

    dh, dc = jax.lax.fori_loop(0, T, body, (dhT_ref[...], dcT_ref[...]))
    dh0_ref[...] = dh
    dc0_ref[...] = dc


def _gru_fwd_kernel(xs_ref, w_ref, bh_ref, h0_ref, hs_ref, acts_ref, hT_ref, *, T, Hp, reverse,
                    bf16):
    # acts: (r, z, n, u_n) per step, u_n = h W_hn + b_hn (needed for dr).
    ws = [w_ref[:, _cols(k, Hp)] for k in range(3)]
    if bf16:
        ws = [w.astype(jnp.bfloat16) for w in ws]
    bs = [bh_ref[:, _cols(k, Hp)] for k in range(3)]

    def body(s, h):
        t = T - 1 - s if reverse else s
        u = [_dot(h, ws[k], bf16).astype(h.dtype) + bs[k] for k in range(3)]
        r = _sigmoid(xs_ref[t, :, _cols(0, Hp)] + u[0])
        z = _sigmoid(xs_ref[t, :, _cols(1, Hp)] + u[1])
        n = jnp.tanh(xs_ref[t, :, _cols(2, Hp)] + r * u[2])
        h = n + z * (h - n)
        for k, a in enumerate((r, z, n, u[2])):
            acts_ref[t, :, _cols(k, Hp)] = a
        hs_ref[t] = h
        return h

    hT_ref[...] = jax.lax.fori_loop(0, T, body, h0_ref[...])


def _gru_bwd_kernel(acts_ref, hprev_ref, dhs_ref, wt_ref, dhT_ref, dxs_ref, du_ref, dh0_ref,
                    *, T, Hp, reverse, bf16):
    # dxs: cotangent of the input projection [T, B, 3Hp]; du: of u = h W_h + b_h.
    wts = [wt_ref[_cols(k, Hp), :] for k in range(3)]
    if bf16:
        wts = [w.astype(jnp.bfloat16) for w in wts]

    def body(s, dh_next):
        t = s if reverse else T - 1 - s
        r, z = acts_ref[t, :, _cols(0, Hp)], acts_ref[t, :, _cols(1, Hp)]
        n, un = acts_ref[t, :, _cols(2, Hp)], acts_ref[t, :, _cols(3, Hp)]
        h_prev = hprev_ref[t]
        dh = dhs_ref[t] + dh_next
        dn = dh * (1 - z) * (1 - n * n)
        dz = dh * (h_prev - n) * z * (1 - z)
        dr = dn * un * r * (1 - r)
        du = (dr, dz, dn * r)
        for k, d in enumerate((dr, dz, dn)):
            dxs_ref[t, :, _cols(k, Hp)] = d
        dh_prev = dh * z
        for k, d in enumerate(du):
            du_ref[t, :, _cols(k, Hp)] = d
            dh_prev = dh_prev + _dot(d, wts[k], bf16).astype(d.dtype)
        return dh_prev

    dh0_ref[...] = jax.lax.fori_loop(0, T, body, dhT_ref[...])


def _elman_fwd_kernel(xs_ref, w_ref, h0_ref, hs_ref, hT_ref, *, T, reverse, act, bf16):
    w = w_ref[...]
    if bf16:
        w = w.astype(jnp.bfloat16)
    fn = ACTIVATIONS[act].fn

    def body(s, h):
        t = T - 1 - s if reverse else s
        h = fn(xs_ref[t] + _dot(h, w, bf16).astype(h.dtype))
        hs_ref[t] = h
        return h

    hT_ref[...] = jax.lax.fori_loop(0, T, body, h0_ref[...])


def _elman_bwd_kernel(hs_ref, dhs_ref, wt_ref, dhT_ref, dz_ref, dh0_ref, *, T, reverse, act,
                      bf16):
    wt = wt_ref[...]
    if bf16:
        wt = wt.astype(jnp.bfloat16)
    deriv = ACTIVATIONS[act].derivative

    def body(s, dh_next):
        t = s if reverse else T - 1 - s
        dz = (dhs_ref[t] + dh_next) * deriv(hs_ref[t])
        dz_ref[t] = dz
        return _dot(dz, wt, bf16).astype(dz.dtype)

    dh0_ref[...] = jax.lax.fori_loop(0, T, body, dhT_ref[...])


# ---------------------------------------------------------------------------
# pallas_call plumbing: every [T, B, X] operand is split over batch blocks,
# every [B, X] one too, and weights are whole in every program.


def _call(kernel, ins, outs, *, interpret: bool, name: str):
    """Run ``kernel`` over batch blocks.  ``ins``/``outs``: arrays / ShapeDtypeStructs whose
    batch axis is 1 for rank 3 ([T, B, X]) and 0 for rank 2 ([B, X]); weights are tagged
    ``("whole", array)``."""
    def spec(shape, whole):
        if whole:
            return pl.BlockSpec(shape, lambda b, n=len(shape): (0,) * n)
        if len(shape) == 3:
            return pl.BlockSpec((shape[0], BLOCK_B, shape[2]), lambda b: (0, b, 0))
        return pl.BlockSpec((BLOCK_B, shape[1]), lambda b: (b, 0))

    arrays, in_specs, batch = [], [], None
    for item in ins:
        whole = isinstance(item, tuple)
        x = item[1] if whole else item
        if not whole:
            batch = x.shape[1] if x.ndim == 3 else x.shape[0]
        arrays.append(x)
        in_specs.append(spec(x.shape, whole))
    out_specs = [spec(o.shape, False) for o in outs]
    # Triton, not Mosaic GPU: Mosaic stages whole blocks (all T steps) in shared memory;
    # Triton reads each step's rows from global memory and keeps only W_h on chip.
    params = None if interpret else pltriton.CompilerParams(num_warps=NUM_WARPS, num_stages=1)
    return pl.pallas_call(
        kernel, out_shape=list(outs), grid=(batch // BLOCK_B,), in_specs=in_specs,
        out_specs=out_specs, interpret=interpret, name=name, compiler_params=params,
    )(*arrays)


_FOR_GPU = {"on": False}


@contextlib.contextmanager
def compiled_for_gpu():
    """Within this block, kernels with ``interpret=None`` lower as Triton kernels even on a
    CPU: for ``jax.jit(f).trace(...).lower(lowering_platforms=("cuda",))`` and
    ``jax.export`` of a model for a GPU from a machine without one."""
    old = _FOR_GPU["on"]
    _FOR_GPU["on"] = True
    try:
        yield
    finally:
        _FOR_GPU["on"] = old


def _interpret(interpret: Optional[bool]) -> bool:
    if interpret is not None:
        return bool(interpret)
    return not (_FOR_GPU["on"] or jax.default_backend() == "gpu")


def _sds(shape, dtype):
    return jax.ShapeDtypeStruct(shape, dtype)


@functools.lru_cache(maxsize=None)
def _lstm_run(H: int, reverse: bool, bf16: bool, interpret: bool) -> Callable:
    Hp = _pow2(H)

    def padded(W_h, xs, h0, c0):
        T, B = xs.shape[:2]
        Bp = _padded_batch(B)
        dt = xs.dtype
        w = _pad_weight(W_h, 4, H, Hp)
        xp = _pad_rows(_pad_gates(xs, 4, H, Hp), 1, Bp)
        hp = _pad_state(h0, Hp, Bp)
        cp = _pad_state(c0, Hp, Bp)
        return T, B, Bp, dt, w, xp, hp, cp

    def forward(W_h, xs, h0, c0):
        T, B, Bp, dt, w, xp, hp, cp = padded(W_h, xs, h0, c0)
        kern = functools.partial(_lstm_fwd_kernel, T=T, Hp=Hp, reverse=reverse, bf16=bf16)
        hs, cs, acts, hT, cT = _call(
            kern, [xp, ("whole", w), hp, cp],
            [_sds((T, Bp, Hp), dt), _sds((T, Bp, Hp), dt), _sds((T, Bp, 4 * Hp), dt),
             _sds((Bp, Hp), dt), _sds((Bp, Hp), dt)], interpret=interpret, name="jrnn_lstm_fwd")
        return (hT, cT), hs, cs, acts, (B, Bp)

    @jax.custom_vjp
    def run(W_h, xs, h0, c0):
        (hT, cT), hs, _, _, (B, _) = forward(W_h, xs, h0, c0)
        return (hT[:B, :H], cT[:B, :H]), hs[:, :B, :H]

    def run_fwd(W_h, xs, h0, c0):
        (hT, cT), hs, cs, acts, (B, Bp) = forward(W_h, xs, h0, c0)
        out = ((hT[:B, :H], cT[:B, :H]), hs[:, :B, :H])
        return out, (W_h, hs, cs, acts, h0, c0)

    def run_bwd(res, cts):
        W_h, hs, cs, acts, h0, c0 = res
        (dhT, dcT), dhs = cts
        T, Bp = hs.shape[:2]
        B = h0.shape[0]
        dt = hs.dtype
        hp0 = _pad_state(h0, Hp, Bp)
        cp0 = _pad_state(c0, Hp, Bp)
        wt = _pad_weight(W_h, 4, H, Hp).T
        dhs_p = _pad_state(dhs, Hp, Bp, dt)
        kern = functools.partial(_lstm_bwd_kernel, T=T, Hp=Hp, reverse=reverse, bf16=bf16)
        dz, dh0, dc0 = _call(
            kern, [acts, cs, _prev(cs, cp0, reverse), dhs_p, ("whole", wt),
                   _pad_state(dhT, Hp, Bp, dt), _pad_state(dcT, Hp, Bp, dt)],
            [_sds((T, Bp, 4 * Hp), dt), _sds((Bp, Hp), dt), _sds((Bp, Hp), dt)],
            interpret=interpret, name="jrnn_lstm_bwd")
        dz = _unpad_gates(dz[:, :B], 4, H, Hp)
        h_prev = _prev(hs, hp0, reverse)[:, :B, :H]
        dW_h = jnp.einsum("tbh,tbg->hg", h_prev, dz)
        return dW_h, dz, dh0[:B, :H], dc0[:B, :H]

    run.defvjp(run_fwd, run_bwd)
    return run


@functools.lru_cache(maxsize=None)
def _gru_run(H: int, reverse: bool, bf16: bool, interpret: bool) -> Callable:
    Hp = _pow2(H)

    def forward(W_h, b_h, xs, h0):
        T, B = xs.shape[:2]
        Bp = _padded_batch(B)
        dt = xs.dtype
        w = _pad_weight(W_h, 3, H, Hp)
        bh = _pad_gates(b_h, 3, H, Hp)[None]
        xp = _pad_rows(_pad_gates(xs, 3, H, Hp), 1, Bp)
        hp = _pad_state(h0, Hp, Bp)
        kern = functools.partial(_gru_fwd_kernel, T=T, Hp=Hp, reverse=reverse, bf16=bf16)
        hs, acts, hT = _call(
            kern, [xp, ("whole", w), ("whole", bh), hp],
            [_sds((T, Bp, Hp), dt), _sds((T, Bp, 4 * Hp), dt), _sds((Bp, Hp), dt)],
            interpret=interpret, name="jrnn_gru_fwd")
        return hT, hs, acts, hp

    @jax.custom_vjp
    def run(W_h, b_h, xs, h0):
        hT, hs, _, _ = forward(W_h, b_h, xs, h0)
        B = h0.shape[0]
        return hT[:B, :H], hs[:, :B, :H]

    def run_fwd(W_h, b_h, xs, h0):
        hT, hs, acts, hp = forward(W_h, b_h, xs, h0)
        B = h0.shape[0]
        return (hT[:B, :H], hs[:, :B, :H]), (W_h, hs, acts, hp, h0)

    def run_bwd(res, cts):
        W_h, hs, acts, hp0, h0 = res
        B = h0.shape[0]
        dhT, dhs = cts
        T, Bp = hs.shape[:2]
        dt = hs.dtype
        wt = _pad_weight(W_h, 3, H, Hp).T
        h_prev = _prev(hs, hp0, reverse)
        dhs_p = _pad_state(dhs, Hp, Bp, dt)
        dhT_p = _pad_state(dhT, Hp, Bp, dt)
        kern = functools.partial(_gru_bwd_kernel, T=T, Hp=Hp, reverse=reverse, bf16=bf16)
        dxs, du, dh0 = _call(
            kern, [acts, h_prev, dhs_p, ("whole", wt), dhT_p],
            [_sds((T, Bp, 3 * Hp), dt), _sds((T, Bp, 3 * Hp), dt), _sds((Bp, Hp), dt)],
            interpret=interpret, name="jrnn_gru_bwd")
        du = _unpad_gates(du[:, :B], 3, H, Hp)
        dW_h = jnp.einsum("tbh,tbg->hg", h_prev[:, :B, :H], du)
        return dW_h, du.sum(axis=(0, 1)), _unpad_gates(dxs[:, :B], 3, H, Hp), dh0[:B, :H]

    run.defvjp(run_fwd, run_bwd)
    return run


@functools.lru_cache(maxsize=None)
def _elman_run(H: int, act: str, reverse: bool, bf16: bool, interpret: bool) -> Callable:
    Hp = _pow2(H)

    def forward(W_h, xs, h0):
        T, B = xs.shape[:2]
        Bp = _padded_batch(B)
        dt = xs.dtype
        w = _pad_weight(W_h, 1, H, Hp)
        xp = _pad_state(xs, Hp, Bp)
        hp = _pad_state(h0, Hp, Bp)
        kern = functools.partial(_elman_fwd_kernel, T=T, reverse=reverse, act=act, bf16=bf16)
        hs, hT = _call(kern, [xp, ("whole", w), hp], [_sds((T, Bp, Hp), dt), _sds((Bp, Hp), dt)],
                       interpret=interpret, name="jrnn_elman_fwd")
        return hT, hs, hp

    @jax.custom_vjp
    def run(W_h, xs, h0):
        hT, hs, _ = forward(W_h, xs, h0)
        B = h0.shape[0]
        return hT[:B, :H], hs[:, :B, :H]

    def run_fwd(W_h, xs, h0):
        hT, hs, hp = forward(W_h, xs, h0)
        B = h0.shape[0]
        return (hT[:B, :H], hs[:, :B, :H]), (W_h, hs, hp, h0)

    def run_bwd(res, cts):
        W_h, hs, hp0, h0 = res
        B = h0.shape[0]
        dhT, dhs = cts
        T, Bp = hs.shape[:2]
        dt = hs.dtype
        wt = _pad_weight(W_h, 1, H, Hp).T
        dhs_p = _pad_state(dhs, Hp, Bp, dt)
        dhT_p = _pad_state(dhT, Hp, Bp, dt)
        kern = functools.partial(_elman_bwd_kernel, T=T, reverse=reverse, act=act, bf16=bf16)
        dz, dh0 = _call(kern, [hs, dhs_p, ("whole", wt), dhT_p],
                        [_sds((T, Bp, Hp), dt), _sds((Bp, Hp), dt)],
                        interpret=interpret, name="jrnn_elman_bwd")
        dz = dz[:, :B, :H]
        h_prev = _prev(hs, hp0, reverse)[:, :B, :H]
        return jnp.einsum("tbh,tbg->hg", h_prev, dz), dz, dh0[:B, :H]

    run.defvjp(run_fwd, run_bwd)
    return run


def sequence(cell: Cell, *, bf16: bool = False, interpret: Optional[bool] = None) -> Callable:
    """A whole layer of ``cell`` as Pallas kernels (forward and backward).

    Returns ``run(params, xs_proj, carry, *, reverse=False, unroll=None) ->
    (carry, hs)``, the signature of :func:`jrnn.core.backward.lstm_sequence`:
    ``xs_proj: [T, B, G*H]`` is the hoisted ``cell.project(params, xs)``,
    ``hs: [T, B, H]``; values equal ``lax.scan`` of ``cell.step``
    (``unroll`` is accepted and ignored).  ``interpret=None`` runs compiled
    kernels on a GPU and interpret mode elsewhere.

    Raises:
      ValueError: the cell has no kernel here (:func:`fallback_reason` says why;
        interpret mode runs cells over the on-chip budget, a GPU's limit).
    """
    reason = fallback_reason(cell, bf16=bf16)
    if reason is not None and not (_interpret(interpret) and reason.kind is Fallback.ON_CHIP):
        raise ValueError(f"no Pallas kernel for this cell: {reason}")
    H = gate_size(cell)

    def run(params, xs_proj, carry, *, reverse: bool = False, unroll=None):
        del unroll  # the loop is inside the kernel
        mode = _interpret(interpret)
        dt = xs_proj.dtype  # one dtype in the kernel: the state's is the inputs'
        carry = jax.tree_util.tree_map(lambda c: jnp.asarray(c, dt), carry)
        params = {k: jnp.asarray(v, dt) for k, v in params.items()}
        if cell.kind == "lstm":
            fn = _lstm_run(H, bool(reverse), bf16, mode)
            (h, c), hs = fn(params["W_h"], xs_proj, carry.h, carry.c)
            return LSTMCarry(h, c), hs
        if cell.kind == "gru":
            fn = _gru_run(H, bool(reverse), bf16, mode)
            return fn(params["W_h"], params["b_h"], xs_proj, carry)
        # A named activation, checked by fallback_reason: never a stand-in for a callable.
        fn = _elman_run(H, cell.activation, bool(reverse), bf16, mode)
        return fn(params["W_h"], xs_proj, carry)

    return run
