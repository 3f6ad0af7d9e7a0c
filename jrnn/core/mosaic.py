"""Fused recurrence kernels for Pallas' Mosaic GPU lowering (Hopper): the whole time loop
inside one kernel; ``method="pallas"`` runs them through :func:`jrnn.core.pallas.sequence`.

JAX deprecates Pallas' Triton lowering (warning ``jax-pallas-triton``); Mosaic GPU
(:mod:`jax.experimental.pallas.mosaic_gpu`) is the supported path.  This module has the
same three recurrences -- Elman (every named activation, ``linear`` included), LSTM and
GRU -- forward and backward, with the contract of :func:`jrnn.core.pallas.sequence`.

**Design** (one CTA = one warpgroup of 128 threads per block of :data:`BLOCK_B` = 64
batch rows; the grid spreads the batch over the SMs):

* the input projection ``x W + b`` stays hoisted outside the kernel (one large matmul);
* ``W_h`` is copied once (TMA) into shared memory and stays there for all T steps;
* each step is ``G`` :func:`plgpu.wgmma` per column chunk of :data:`CHUNK` = 64 hidden
  units (``[64, Hp] x [Hp, 64]``, float32 accumulation), followed by the fused gate
  math on that chunk; the new ``h`` goes to a second shared-memory buffer (the matmul
  operand of the next step, ping-pong), the per-step outputs go straight from
  registers to global memory; the next step's rows of the projected input are
  prefetched by TMA while the current step computes (two buffers where they fit, else
  one, refilled as soon as the step has read it);
* the backward kernel walks the sequence the other way: it computes every gate
  cotangent ``dz_t`` of a step (written out, and kept in shared memory as the matmul
  operand), then ``dh_{t-1} = sum_k dz_k W_k^T`` with ``W_h`` resident; ``dW_h`` is one
  large matmul outside (``sum_t h_{t-1}^T dz_t``), as in :mod:`jrnn.core.pallas`.
  The LSTM's backward goes one gate at a time through a single ``[64, Hp]`` operand
  buffer (``dz_o``, wgmma, wait; then ``dz_i``, ``dz_g``, ``dz_f``, each added into ``dh``),
  and recomputes ``c_t = f c_{t-1} + i g`` from the staged gate activations instead of
  staging ``c_t``; its forward kernel loads ``c_0`` into the state buffer once ``h_0``
  has left it (no buffer of its own).

**Matmul precision.**  ``bf16=True`` feeds wgmma bfloat16 operands (``W_h`` and ``h``).
With ``bf16=False`` the operands are float32, which Hopper's wgmma (and Mosaic GPU's
lowering of it) reads as **TF32** (10-bit mantissa) -- there is no full-float32 wgmma,
unlike Triton's ``dot(..., precision=HIGHEST)`` in jrnn 0.2's Triton kernels.  Float32
operands also require ``W_h`` in shared memory in K-major order (Mosaic GPU: "Only f16
WGMMA supports transposes"), so the kernels keep each gate block of ``W_h`` transposed
in shared memory and hand wgmma a transposed view (:func:`plgpu.transpose_ref`).  State,
gate math and outputs are float32; other input dtypes (e.g. float64) are refused.

**On-chip budget** (:func:`smem_bytes`; ``Hp`` = H rounded up to a multiple of 64
(wgmma K tile with the 128-byte swizzle, and :data:`CHUNK`), ``b`` = 2 with ``bf16``, else
4; ``nbuf`` = 2 prefetch buffers when that fits, else 1):

* forward: ``G Hp^2 b`` (W_h) + ``2 * 64 Hp b`` (h operand, ping-pong)
  + ``nbuf * 64 G Hp * 4`` (projected inputs) + ``64 Hp * 4`` (float32 state: c or h)
  (+ ``64 Hp * 4`` for the GRU's ``b_hn``);
* backward: ``G Hp^2 b`` + ``m * 64 Hp b`` (dz operand: m = G, the LSTM's m = 1)
  + ``nbuf * 64 Hp * 4 * n`` (per-step inputs: n = 2 Elman (h, dh); 6 GRU (r, z, n,
  u_n, h_{t-1}, dh); 6 LSTM (i, f, g, o, c_{t-1}, dh)) + ``64 Hp * 4`` (dh) (+ the same
  for the LSTM's dc).

Both must fit :data:`SMEM_BYTES`; registers hold ``G`` accumulators of ``[64, 64]`` float32
(32 registers a thread each) whatever H is.  What fits (H up to; KiB at that size,
forward / backward, prefetch buffers in brackets):

==========  ===============================  ===============================
cell        float32 (TF32) operands          bfloat16 operands
==========  ===============================  ===============================
Elman       128: 192 [1] / 192 [1]           128: 160 [2] / 208 [2]
GRU         64: 208 [2] / 208 [1]            64: 168 [2] / 160 [1]
LSTM        64: 176 [1] / 208 [1]            64: 192 [2] / 168 [1]
==========  ===============================  ===============================

The next size (Hp + 64) is over the budget in every case: ``W_h`` alone is most of it
(float32 GRU 192 KiB, LSTM 256 KiB at ``Hp = 128``), and where it is not (bfloat16 GRU
and LSTM at 128: 96 / 128 KiB) a whole step's staged inputs (``64 G Hp * 4`` forward,
``64 * 6 Hp * 4`` backward) are; the bfloat16 Elman at 192 fits forward (216 KiB) but not
backward (240 KiB).  (jrnn 0.2's Triton kernels took Elman 64 / 128, GRU 64 / 128,
LSTM 64 / 64: only the bfloat16 GRU at ``64 < H <= 128`` is lost.)
The limit is an estimate from H100's 227 KiB of shared memory per block, not a
measurement, and nothing here has been timed.

**What is checked on a CPU** (``tests/test_mosaic.py``):

* *lowering*: every kernel (forward and backward, float32 and bf16, reversed) lowers for
  CUDA from this CPU-only machine (``jax.jit(f).trace(...).lower(lowering_platforms=
  ("cuda",))`` and ``jax.export``), giving ``mosaic_gpu_v2`` custom calls and no Triton
  call.  That runs Pallas' Mosaic GPU lowering and Mosaic GPU's own (wgmma shape, layout
  and dtype checks included) down to a serialized Mosaic GPU module; the PTX/SASS
  compilation happens only on a GPU and is *not* checked here.
* *values*: the kernels run in Mosaic GPU's **GPU interpret mode** (``interpret=True``
  here means :class:`InterpretGPUParams`, which simulates shared memory, TMA copies,
  barriers and wgmma on a CPU), and must equal ``jrnn.unroll(..., method="scan")`` in
  values and gradients.  One difference from the GPU kernel: jax 0.10.2's interpreter
  cannot apply a transpose to a wgmma operand (``AttributeError: 'TransposeTransform'
  object has no attribute 'indices'``), so in interpret mode ``W_h`` is held in shared
  memory untransposed (``[K, N]``) and passed to wgmma as is; the rest of the kernel --
  copies, barriers, loops, gate math, outputs -- is the same code.  The interpreter's
  wgmma is an exact float32 ``np.matmul``, so TF32 rounding is not reproduced.
* never run here: the compiled kernels on a GPU (timing, TF32 error, the budget).

Example (GPU interpret mode on a CPU):
  >>> import jax, jax.numpy as jnp, jrnn
  >>> from jrnn.core import mosaic
  >>> cell = jrnn.elman(8)
  >>> params = cell.init(jax.random.PRNGKey(0), 3, jnp.float32)
  >>> xs = jax.random.normal(jax.random.PRNGKey(1), (4, 2, 3), jnp.float32)
  >>> run = mosaic.sequence(cell, interpret=True)
  >>> _, hs = run(params, cell.project(params, xs), cell.initial_carry((2,), jnp.float32))
  >>> _, ref = jrnn.unroll(cell, params, xs, method="scan")
  >>> bool(jnp.allclose(hs, ref, atol=1e-5))
  True
"""

from __future__ import annotations

import functools
import re
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jrnn.core.backward import _prev
from jrnn.core.cells import Cell, gate_size
from jrnn.core.gates import ACTIVATIONS, LSTMCarry
from jrnn.core.kernels import (Fallback, FallbackReason, _pad_gates, _pad_rows, _pad_state,
                               _unpad_gates, cell_reason, compiled_for_gpu, off_gpu)

try:  # Mosaic GPU's interpret mode (not exported under jax.experimental in jax 0.10.2)
    from jax._src.pallas.mosaic_gpu.interpret.params import InterpretGPUParams
except ImportError:  # pragma: no cover - other JAX versions
    InterpretGPUParams = None

Array = jax.Array

__all__ = ["SMEM_BYTES", "BLOCK_B", "CHUNK", "smem_bytes", "fallback_reason", "supported",
           "unavailable", "sequence", "compiled_for_gpu"]

# Shared memory a kernel may take: H100/H200 give a block at most 227 KiB; a little is left
# for the barriers and Mosaic GPU's own scratch.  An estimate, not measured on a GPU.
SMEM_BYTES = 220 * 1024
# Batch rows per CTA: wgmma's M is 64 per warpgroup.
BLOCK_B = 64
# Hidden units per wgmma (N) and per pass of the gate math: 64 keeps G float32 accumulators
# at 32 registers a thread each, whatever H is.  H is padded to a multiple of it, which is
# also the K tile of a 128-byte swizzled bfloat16 operand (32 for float32).
CHUNK = 64
_SWIZZLE = 128
# Per-step float32 inputs of the backward kernels, in units of Hp (LSTM: acts i, f, g, o,
# c_{t-1}, dh_t -- c_t is recomputed; GRU: acts r, z, n, u_n, h_{t-1}, dh_t).
_BWD_INPUTS = {"elman": 2, "linear": 2, "lstm": 6, "gru": 6}
_GATES = {"elman": 1, "linear": 1, "lstm": 4, "gru": 3}


def _bwd_operands(kind: str) -> int:
    """``[64, Hp]`` dz operand buffers of the backward kernel: the LSTM builds its dz one
    gate at a time in one buffer; the others hold every gate's at once."""
    return 1 if kind == "lstm" else _GATES[kind]


def _padded(n: int, multiple: int = CHUNK) -> int:
    return max(multiple, -(-int(n) // multiple) * multiple)


def _nbytes(bf16: bool) -> int:
    return 2 if bf16 else 4


def _fwd_bytes(kind: str, Hp: int, bf16: bool, nbuf: int) -> int:
    G, b, f = _GATES[kind], _nbytes(bf16), BLOCK_B * Hp * 4
    extra = f if kind == "gru" else 0  # b_hn
    return G * Hp * Hp * b + 2 * BLOCK_B * Hp * b + nbuf * G * f + f + extra


def _bwd_bytes(kind: str, Hp: int, bf16: bool, nbuf: int) -> int:
    G, b, f = _GATES[kind], _nbytes(bf16), BLOCK_B * Hp * 4
    state = 2 * f if kind == "lstm" else f
    return (G * Hp * Hp * b + _bwd_operands(kind) * BLOCK_B * Hp * b
            + nbuf * _BWD_INPUTS[kind] * f + state)


def _nbuf(kind: str, Hp: int, bf16: bool, direction: str) -> int:
    """2 prefetch buffers if they fit, else 1 (interpret mode uses the same choice)."""
    size = _fwd_bytes if direction == "fwd" else _bwd_bytes
    return 2 if size(kind, Hp, bf16, 2) <= SMEM_BYTES else 1


def smem_bytes(cell: Cell, *, bf16: bool = False) -> dict:
    """Shared memory the forward and backward kernels take for ``cell`` (bytes, with the
    number of prefetch buffers chosen).

    Example:
      >>> import jrnn
      >>> from jrnn.core import mosaic
      >>> mosaic.smem_bytes(jrnn.elman(64))
      {'Hp': 64, 'fwd': 98304, 'fwd_buffers': 2, 'bwd': 114688, 'bwd_buffers': 2}
    """
    kind = cell.kind
    Hp = _padded(gate_size(cell))
    nf, nb = _nbuf(kind, Hp, bf16, "fwd"), _nbuf(kind, Hp, bf16, "bwd")
    return {"Hp": Hp, "fwd": _fwd_bytes(kind, Hp, bf16, nf), "fwd_buffers": nf,
            "bwd": _bwd_bytes(kind, Hp, bf16, nb), "bwd_buffers": nb}


def fallback_reason(cell: Cell, *, lengths: bool = False,
                    bf16: bool = False) -> Optional[FallbackReason]:
    """Why ``cell`` cannot run in a Mosaic GPU kernel here, or ``None`` when it can.

    The cell checks (kind, projection, changed step, activation, lengths) are
    :func:`jrnn.core.pallas.cell_reason`'s; the on-chip budget is this module's
    (:func:`smem_bytes` against :data:`SMEM_BYTES`).

    Example:
      >>> import jrnn
      >>> from jrnn.core import mosaic
      >>> mosaic.fallback_reason(jrnn.gru(64)) is None
      True
      >>> mosaic.fallback_reason(jrnn.lstm(64)) is None
      True
      >>> reason = mosaic.fallback_reason(jrnn.elman(192), bf16=True)
      >>> reason.kind, str(reason)[:62]
      (<Fallback.ON_CHIP: 'on-chip budget'>, 'the backward kernel of a 192-unit (padded) elman needs 240 KiB')
      >>> mosaic.fallback_reason(jrnn.lstm(65)).kind
      <Fallback.ON_CHIP: 'on-chip budget'>
    """
    reason = cell_reason(cell, lengths=lengths)
    if reason is not None:
        return reason
    sizes = smem_bytes(cell, bf16=bf16)
    ops = "bfloat16" if bf16 else "float32 (TF32)"
    for d, name in (("fwd", "forward"), ("bwd", "backward")):
        if sizes[d] > SMEM_BYTES:
            return FallbackReason(
                Fallback.ON_CHIP,
                f"the {name} kernel of a {sizes['Hp']}-unit (padded) {cell.kind} needs "
                f"{-(-sizes[d] // 1024)} KiB of shared memory with {ops} operands, over the "
                f"{SMEM_BYTES // 1024} KiB budget")
    return None


def supported(cell: Cell, *, lengths: bool = False, bf16: bool = False) -> bool:
    """Whether :func:`sequence` runs ``cell`` in a Mosaic GPU kernel (see :func:`fallback_reason`)."""
    return fallback_reason(cell, lengths=lengths, bf16=bf16) is None


# The kernels are written against Mosaic GPU's API and its GPU interpret mode as of jax
# 0.10.2 (plgpu.kernel(out_type=..., grid_names=...)): jax 0.7.1 (jrnn's lower bound) has an
# older plgpu.kernel, jax 0.9.0 no interpret mode, and jax 0.10.0's plgpu.kernel takes
# out_shape and its interpreter fails on them ("Too many leaves for PyTreeDef"), so
# method="pallas" runs the scan under those.
_NEEDS = (0, 10, 2)


def _version(text: str) -> tuple:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def unavailable() -> Optional[FallbackReason]:
    """Why this JAX cannot run (or, off a GPU, interpret) the kernels, or ``None``."""
    if _version(jax.__version__) < _NEEDS:
        return FallbackReason(Fallback.UNAVAILABLE,
                              f"this JAX ({jax.__version__}) is older than the kernels' Mosaic "
                              f"GPU API (jax >= {'.'.join(map(str, _NEEDS))})")
    if off_gpu() and InterpretGPUParams is None:
        return FallbackReason(Fallback.UNAVAILABLE,
                              f"this JAX ({jax.__version__}) has no Mosaic GPU interpret mode to "
                              "run the kernels off a GPU")
    return None


# ---------------------------------------------------------------------------
# Kernel pieces.


def _sigmoid(z):
    return 1.0 / (1.0 + jnp.exp(-z))


# The Elman activations written with ops Mosaic GPU lowers (jax.nn.sigmoid/relu bind
# primitives it may not); the derivatives, written from the output, are ACTIVATIONS'.
_ACT_FN = {
    "identity": lambda z: z,
    "tanh": jnp.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda z: jnp.maximum(z, 0.0),
}
_ACT_DERIV = {
    "identity": None,  # multiply by one: skipped
    "tanh": ACTIVATIONS["tanh"].derivative,
    "sigmoid": ACTIVATIONS["sigmoid"].derivative,
    "relu": lambda y: jnp.where(y > 0.0, 1.0, 0.0),
}


def _transforms(dtype):
    """Tiling + 128-byte swizzle: the layout wgmma operands need, and that makes loads of
    these buffers come out in wgmma's register layout (so they add to accumulators)."""
    return (plgpu.TilingTransform((8, _SWIZZLE // jnp.dtype(dtype).itemsize)),
            plgpu.SwizzleTransform(_SWIZZLE))


def _cols(j: int, n: int = CHUNK):
    return pl.ds(j * n, n)


def _w_operand(w_smem, k: int, j: int, kmajor: bool):
    """Gate block ``k``, output columns ``j`` of the resident weight, as wgmma's ``[K, N]``
    operand: stored ``[N, K]`` (K-major) and transposed on the GPU, ``[K, N]`` in interpret
    mode (whose wgmma cannot apply a transpose)."""
    if kmajor:
        return plgpu.transpose_ref(w_smem.at[k, _cols(j)], (1, 0))
    return w_smem.at[k, :, _cols(j)]


def _matmuls(pairs):
    """``[sum_(a, b) a @ b for each group]``: wgmma into float32 accumulators of
    ``[BLOCK_B, CHUNK]``, one per group; returns their values."""
    def body(*accs):
        for acc, group in zip(accs, pairs):
            for a, b in group:
                plgpu.wgmma(acc, a, b)
        return [acc[...] for acc in accs]
    return pl.run_scoped(body, *[plgpu.ACC((BLOCK_B, CHUNK), jnp.float32) for _ in pairs])


def _fwd_kernel(*refs, kind, act, T, Hp, reverse, opdt, nbuf, kmajor):
    """Refs: xs [T, Bp, G Hp], w [G, *, *], h0 [Bp, Hp], (lstm: c0; gru: bhn [64, Hp]) ->
    hs [T, Bp, Hp], (lstm: cs [T, Bp, Hp], acts [T, Bp, 4Hp]; gru: acts [T, Bp, 4Hp])."""
    G = _GATES[kind]
    n_in = 4 if kind in ("lstm", "gru") else 3
    ins, outs = refs[:n_in], refs[n_in:]
    xs_ref, w_ref, h0_ref = ins[:3]
    nch = Hp // CHUNK
    f32 = jnp.float32

    def body(w_smem, a_smem, x_smem, st_smem, extra_smem, bars):
        rows = pl.ds(lax.axis_index("b") * BLOCK_B, BLOCK_B)
        # bars: 0 W_h, 1 h0, 2 c0 / b_hn, 3.. the input buffers.  (The LSTM's c0 goes to
        # st_smem once h0 has left it for a_smem: no buffer of its own.)
        plgpu.copy_gmem_to_smem(w_ref, w_smem, bars.at[0])
        plgpu.copy_gmem_to_smem(h0_ref.at[rows], st_smem, bars.at[1])
        if kind == "gru":
            plgpu.copy_gmem_to_smem(ins[3], extra_smem, bars.at[2])
        t0 = T - 1 if reverse else 0
        plgpu.copy_gmem_to_smem(xs_ref.at[t0, rows], x_smem.at[0], bars.at[3])
        plgpu.barrier_wait(bars.at[1])
        for j in range(nch):  # h0 as the first step's matmul operand
            a_smem[0, :, _cols(j)] = st_smem[:, _cols(j)].astype(opdt)
        if kind == "lstm":  # the state kept in shared memory is c (h lives in a_smem):
            plgpu.commit_smem()  # every thread has read h0 out of st_smem; c0 goes in
            plgpu.copy_gmem_to_smem(ins[3].at[rows], st_smem, bars.at[2])
            plgpu.barrier_wait(bars.at[2])
        if kind == "gru":
            plgpu.barrier_wait(bars.at[2])
        plgpu.commit_smem()
        plgpu.barrier_wait(bars.at[0])

        def step(s, carry):
            t = T - 1 - s if reverse else s
            slot = lax.rem(s, nbuf) if nbuf > 1 else 0
            cur, nxt = lax.rem(s, 2), 1 - lax.rem(s, 2)
            plgpu.barrier_wait(bars.at[3 + slot])
            a = a_smem.at[cur]
            for j in range(nch):
                u = _matmuls([[(a, _w_operand(w_smem, k, j, kmajor))] for k in range(G)])
                x = [x_smem[slot, :, pl.ds(k * Hp + j * CHUNK, CHUNK)] for k in range(G)]
                cols = _cols(j)
                if kind == "lstm":
                    z = [x[k] + u[k] for k in range(4)]
                    i, f, o = _sigmoid(z[0]), _sigmoid(z[1]), _sigmoid(z[3])
                    g = jnp.tanh(z[2])
                    c = f * st_smem[:, cols] + i * g
                    h = o * jnp.tanh(c)
                    st_smem[:, cols] = c
                    outs[1][t, rows, cols] = c
                    for k, v in enumerate((i, f, g, o)):
                        outs[2][t, rows, pl.ds(k * Hp + j * CHUNK, CHUNK)] = v
                elif kind == "gru":
                    un = u[2] + extra_smem[:, cols]
                    r = _sigmoid(x[0] + u[0])  # b_hr and b_hz are folded into xs
                    zg = _sigmoid(x[1] + u[1])
                    n = jnp.tanh(x[2] + r * un)
                    hprev = st_smem[:, cols]
                    h = n + zg * (hprev - n)
                    st_smem[:, cols] = h
                    for k, v in enumerate((r, zg, n, un)):
                        outs[1][t, rows, pl.ds(k * Hp + j * CHUNK, CHUNK)] = v
                else:
                    h = _ACT_FN[act](x[0] + u[0])
                a_smem[nxt, :, cols] = h.astype(opdt)
                outs[0][t, rows, cols] = h

            @pl.when(s + 1 < T)
            def _prefetch():  # this step has read its inputs: the next step's go in
                t1 = t - 1 if reverse else t + 1
                slot1 = lax.rem(s + 1, nbuf) if nbuf > 1 else 0
                plgpu.copy_gmem_to_smem(xs_ref.at[t1, rows], x_smem.at[slot1],
                                        bars.at[3 + slot1])

            plgpu.commit_smem()  # the new h in a_smem, for the next step's wgmma
            return carry

        lax.fori_loop(0, T, step, 0)

    xdt = jnp.float32
    pl.run_scoped(
        body,
        plgpu.SMEM((G, Hp, Hp), opdt, transforms=_transforms(opdt)),
        plgpu.SMEM((2, BLOCK_B, Hp), opdt, transforms=_transforms(opdt)),
        plgpu.SMEM((nbuf, BLOCK_B, G * Hp), xdt, transforms=_transforms(xdt)),
        plgpu.SMEM((BLOCK_B, Hp), f32, transforms=_transforms(f32)),
        plgpu.SMEM((BLOCK_B, Hp), f32, transforms=_transforms(f32)) if kind == "gru" else None,
        plgpu.Barrier(num_barriers=3 + nbuf),
    )


def _bwd_kernel(*refs, kind, act, T, Hp, reverse, opdt, nbuf, kmajor):
    """Refs: the per-step inputs ([T, Bp, width], concatenated on the last axis: Elman
    (hs, dhs); LSTM (acts, cprev, dhs); GRU (acts, hprev, dhs)), w [G, *, *],
    dhT [Bp, Hp], (lstm: dcT) -> dz [T, Bp, G Hp] (GRU: du, then dxs), dh0, (lstm: dc0)."""
    G = _GATES[kind]
    lstm, gru = kind == "lstm", kind == "gru"
    seq_ref, w_ref, dhT_ref = refs[:3]
    rest = refs[3:]
    dcT_ref = rest[0] if lstm else None
    outs = rest[1:] if lstm else rest
    dz_ref = outs[0]
    dxs_ref = outs[1] if gru else None
    dh0_ref = outs[2] if gru else outs[1]
    dc0_ref = outs[2] if lstm else None
    width = _BWD_INPUTS[kind] * Hp
    nch = Hp // CHUNK
    f32 = jnp.float32

    def body(w_smem, a_smem, in_smem, dh_smem, dc_smem, bars):
        rows = pl.ds(lax.axis_index("b") * BLOCK_B, BLOCK_B)
        # bars: 0 W_h, 1 dh_T, 2 dc_T, 3.. the input buffers.
        plgpu.copy_gmem_to_smem(w_ref, w_smem, bars.at[0])
        plgpu.copy_gmem_to_smem(dhT_ref.at[rows], dh_smem, bars.at[1])
        if lstm:
            plgpu.copy_gmem_to_smem(dcT_ref.at[rows], dc_smem, bars.at[2])
        t0 = 0 if reverse else T - 1  # the opposite way to the forward pass
        plgpu.copy_gmem_to_smem(seq_ref.at[t0, rows], in_smem.at[0], bars.at[3])
        plgpu.barrier_wait(bars.at[1])
        if lstm:
            plgpu.barrier_wait(bars.at[2])
        plgpu.barrier_wait(bars.at[0])

        def piece(slot, p, j):  # the p-th Hp-wide input of this step, columns chunk j
            return in_smem[slot, :, pl.ds(p * Hp + j * CHUNK, CHUNK)]

        def put(t, k, j, v, buf=None):  # dz_k, chunk j: to global memory and the operand
            dz_ref[t, rows, pl.ds(k * Hp + j * CHUNK, CHUNK)] = v
            a_smem[k if buf is None else buf, :, _cols(j)] = v.astype(opdt)

        def prefetch(s, t):
            @pl.when(s + 1 < T)
            def _prefetch():
                t1 = t + 1 if reverse else t - 1
                slot1 = lax.rem(s + 1, nbuf) if nbuf > 1 else 0
                plgpu.copy_gmem_to_smem(seq_ref.at[t1, rows], in_smem.at[slot1],
                                        bars.at[3 + slot1])

        def dh_matmul(ks, bufs, add):  # dh_smem (+)= sum_k a_smem[buf] W_k^T, by columns
            for j in range(nch):
                cols = _cols(j)
                (acc,) = _matmuls([[(a_smem.at[b], _w_operand(w_smem, k, j, kmajor))
                                    for k, b in zip(ks, bufs)]])
                # Reading acc waits for the wgmma: a_smem may be refilled after this.
                dh_smem[:, cols] = acc + dh_smem[:, cols] if add else acc

        def lstm_step(s, t, slot):
            # One gate at a time through a single [64, Hp] operand buffer (a_smem[0]): dz_k
            # of every column chunk, then dh_{t-1} += dz_k W_k^T, then the next gate.
            # o first: it (with dc) is all that reads dh, so dh_smem is free for the sum.
            # c_t = f c_{t-1} + i g is recomputed from the staged acts (cs is not staged).
            for j in range(nch):
                cols = _cols(j)
                dh = piece(slot, 5, j) + dh_smem[:, cols]
                i, f, g, o = (piece(slot, k, j) for k in range(4))
                tc = jnp.tanh(f * piece(slot, 4, j) + i * g)
                dc_smem[:, cols] = dc_smem[:, cols] + dh * o * (1 - tc * tc)  # dc_t
                put(t, 3, j, dh * tc * o * (1 - o), 0)
            plgpu.commit_smem()  # the operand (and dc_t) visible, every thread done
            dh_matmul((3,), (0,), add=False)
            for k in (0, 2, 1):  # i, g, then f, which also leaves dc_{t-1} = dc_t f
                for j in range(nch):
                    cols = _cols(j)
                    dc = dc_smem[:, cols]
                    i, f, g = (piece(slot, q, j) for q in range(3))
                    if k == 0:
                        v = dc * g * i * (1 - i)
                    elif k == 2:
                        v = dc * i * (1 - g * g)
                    else:
                        v = dc * piece(slot, 4, j) * f * (1 - f)
                        dc_smem[:, cols] = dc * f
                    put(t, k, j, v, 0)
                plgpu.commit_smem()
                if k == 1:  # every thread has read this step's inputs: refill the buffer
                    prefetch(s, t)
                dh_matmul((k,), (0,), add=True)

        def step(s, carry):
            t = s if reverse else T - 1 - s
            slot = lax.rem(s, nbuf) if nbuf > 1 else 0
            plgpu.barrier_wait(bars.at[3 + slot])
            if lstm:
                lstm_step(s, t, slot)
                return carry
            # Phase 1: every gate cotangent of this step, chunk by chunk.
            for j in range(nch):
                cols = _cols(j)
                dh = piece(slot, _BWD_INPUTS[kind] - 1, j) + dh_smem[:, cols]
                if gru:
                    r, zg, n, un = (piece(slot, k, j) for k in range(4))
                    h_prev = piece(slot, 4, j)
                    dn = dh * (1 - zg) * (1 - n * n)
                    dzg = dh * (h_prev - n) * zg * (1 - zg)
                    dr = dn * un * r * (1 - r)
                    for k, v in enumerate((dr, dzg, dn)):
                        dxs_ref[t, rows, pl.ds(k * Hp + j * CHUNK, CHUNK)] = v
                    dzs = (dr, dzg, dn * r)
                    dh_smem[:, cols] = dh * zg  # the direct path; the matmuls add to it
                else:
                    deriv = _ACT_DERIV[act]
                    dzs = (dh if deriv is None else dh * deriv(piece(slot, 0, j)),)
                for k, v in enumerate(dzs):
                    put(t, k, j, v)
            plgpu.commit_smem()  # dz in a_smem for the wgmma below; every thread done
            prefetch(s, t)  # with the inputs read
            # Phase 2: dh_{t-1} = sum_k dz_k W_k^T, output columns chunk by chunk.
            dh_matmul(range(G), range(G), add=gru)
            return carry

        lax.fori_loop(0, T, step, 0)
        for j in range(nch):
            cols = _cols(j)
            dh0_ref[rows, cols] = dh_smem[:, cols]
            if lstm:
                dc0_ref[rows, cols] = dc_smem[:, cols]

    pl.run_scoped(
        body,
        plgpu.SMEM((G, Hp, Hp), opdt, transforms=_transforms(opdt)),
        plgpu.SMEM((_bwd_operands(kind), BLOCK_B, Hp), opdt, transforms=_transforms(opdt)),
        plgpu.SMEM((nbuf, BLOCK_B, width), f32, transforms=_transforms(f32)),
        plgpu.SMEM((BLOCK_B, Hp), f32, transforms=_transforms(f32)),
        plgpu.SMEM((BLOCK_B, Hp), f32, transforms=_transforms(f32)) if lstm else None,
        plgpu.Barrier(num_barriers=3 + nbuf),
    )


# ---------------------------------------------------------------------------
# Host side: padding, weight layouts, the kernel calls and the custom VJP.


def _interpret_params(interpret):
    if InterpretGPUParams is None:
        raise RuntimeError("this JAX has no Mosaic GPU interpret mode")
    return InterpretGPUParams() if interpret is True else interpret


def _mode(interpret) -> object:
    """``False`` (compile for the GPU) or the interpret params, as :mod:`pallas` picks."""
    if interpret is None:
        interpret = off_gpu()
    return _interpret_params(interpret) if interpret else False


def _weights(W_h: Array, G: int, H: int, Hp: int, opdt, kmajor: bool, backward: bool) -> Array:
    """``W_h: [H, G H]`` as ``[G, Hp, Hp]``, each gate block wgmma's ``B`` operand of the
    forward (``[K=i, N=j]``) or backward (``[K=j, N=i]``) matmul, K-major (``[N, K]``)
    when ``kmajor``."""
    w = _pad_rows(_pad_gates(W_h, G, H, Hp), 0, Hp).reshape(Hp, G, Hp)  # [i, k, j]
    # forward [K, N] = [i, j] = transpose(1, 0, 2); its K-major [j, i] = (1, 2, 0);
    # backward [K, N] = [j, i] = (1, 2, 0); its K-major [i, j] = (1, 0, 2).
    if kmajor != backward:
        w = w.transpose(1, 2, 0)
    else:
        w = w.transpose(1, 0, 2)
    return w.astype(opdt)


def _call(kernel, ins, out_shapes, *, Bp: int, mode, name: str):
    return plgpu.kernel(
        kernel, out_type=tuple(out_shapes), grid=(Bp // BLOCK_B,), grid_names=("b",),
        interpret=mode if mode else None, kernel_name=name,
    )(*ins)


def _sds(shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


@functools.lru_cache(maxsize=None)
def _run(kind: str, act: str, H: int, reverse: bool, bf16: bool, interpret) -> Callable:
    G = _GATES[kind]
    Hp = _padded(H)
    opdt = jnp.bfloat16 if bf16 else jnp.float32
    mode = interpret  # False, or InterpretGPUParams
    kmajor = not mode
    nbuf_f, nbuf_b = _nbuf(kind, Hp, bf16, "fwd"), _nbuf(kind, Hp, bf16, "bwd")
    lstm, gru = kind == "lstm", kind == "gru"
    kw = dict(kind=kind, act=act, Hp=Hp, reverse=reverse, opdt=opdt, kmajor=kmajor)

    def forward(W_h, b_h, xs, h0, c0):
        T, B = xs.shape[:2]
        Bp = _padded(B, BLOCK_B)
        xp = _pad_rows(_pad_gates(xs, G, H, Hp), 1, Bp)
        ins = [xp, _weights(W_h, G, H, Hp, opdt, kmajor, False), _pad_state(h0, Hp, Bp)]
        outs = [_sds((T, Bp, Hp))]
        if lstm:
            ins.append(_pad_state(c0, Hp, Bp))
            outs += [_sds((T, Bp, Hp)), _sds((T, Bp, 4 * Hp))]
        if gru:  # b_hr, b_hz add to the projection; b_hn is multiplied by r in the kernel
            bh = _pad_gates(b_h, 3, H, Hp)
            xp = xp + jnp.concatenate([bh[:2 * Hp], jnp.zeros((Hp,), bh.dtype)])
            ins[0] = xp
            ins.append(jnp.broadcast_to(bh[2 * Hp:], (BLOCK_B, Hp)))
            outs.append(_sds((T, Bp, 4 * Hp)))
        kern = functools.partial(_fwd_kernel, T=T, nbuf=nbuf_f, **kw)
        return _call(kern, ins, outs, Bp=Bp, mode=mode, name=f"jrnn_{kind}_fwd_mgpu")

    def finals(hs, cs, B):
        last = 0 if reverse else -1
        h = hs[last, :B, :H]
        return (h, cs[last, :B, :H]) if lstm else h

    def primal(W_h, b_h, xs, h0, c0):
        B = h0.shape[0]
        if xs.shape[0] == 0:  # no steps: no kernel
            return ((h0, c0) if lstm else h0), xs[..., :H]
        res = forward(W_h, b_h, xs, h0, c0)
        hs = res[0]
        return finals(hs, res[1] if lstm else None, B), hs[:, :B, :H]

    @jax.custom_vjp
    def run(W_h, b_h, xs, h0, c0):
        return primal(W_h, b_h, xs, h0, c0)

    def run_fwd(W_h, b_h, xs, h0, c0):
        B = h0.shape[0]
        if xs.shape[0] == 0:
            return primal(W_h, b_h, xs, h0, c0), (W_h, None, h0, c0, xs)
        res = forward(W_h, b_h, xs, h0, c0)
        hs = res[0]
        out = finals(hs, res[1] if lstm else None, B), hs[:, :B, :H]
        return out, (W_h, res, h0, c0, xs)

    def run_bwd(saved, cts):
        W_h, res, h0, c0, xs = saved
        (dfinal, dhs) = cts
        if res is None:  # no steps
            dz = jnp.zeros(xs.shape, xs.dtype)
            dW = jnp.zeros_like(W_h)
            if lstm:
                return dW, None, dz, dfinal[0], dfinal[1]
            return dW, (jnp.zeros((G * H,), xs.dtype) if gru else None), dz, dfinal, None
        hs = res[0]
        T, Bp = hs.shape[:2]
        B = h0.shape[0]
        dhT, dcT = dfinal if lstm else (dfinal, None)
        hp0 = _pad_state(h0, Hp, Bp)
        h_prev = _prev(hs, hp0, reverse)
        dhs_p = _pad_state(dhs, Hp, Bp, jnp.float32)
        if lstm:
            cs, acts = res[1], res[2]
            seq = jnp.concatenate([acts, _prev(cs, _pad_state(c0, Hp, Bp), reverse), dhs_p],
                                  axis=-1)
        elif gru:
            seq = jnp.concatenate([res[1], h_prev, dhs_p], axis=-1)
        else:
            seq = jnp.concatenate([hs, dhs_p], axis=-1)
        ins = [seq, _weights(W_h, G, H, Hp, opdt, kmajor, True), _pad_state(dhT, Hp, Bp)]
        outs = [_sds((T, Bp, G * Hp))]
        if lstm:
            ins.append(_pad_state(dcT, Hp, Bp))
        if gru:
            outs.append(_sds((T, Bp, 3 * Hp)))
        outs.append(_sds((Bp, Hp)))
        if lstm:
            outs.append(_sds((Bp, Hp)))
        kern = functools.partial(_bwd_kernel, T=T, nbuf=nbuf_b, **kw)
        got = _call(kern, ins, outs, Bp=Bp, mode=mode, name=f"jrnn_{kind}_bwd_mgpu")
        dz = _unpad_gates(got[0][:, :B], G, H, Hp)  # du for the GRU
        dW_h = jnp.einsum("tbh,tbg->hg", h_prev[:, :B, :H], dz)
        if lstm:
            return dW_h, None, dz, got[1][:B, :H], got[2][:B, :H]
        if gru:
            dxs = _unpad_gates(got[1][:, :B], 3, H, Hp)
            return dW_h, dz.sum(axis=(0, 1)), dxs, got[2][:B, :H], None
        return dW_h, None, dz, got[1][:B, :H], None

    run.defvjp(run_fwd, run_bwd)
    return run


def sequence(cell: Cell, *, bf16: bool = False, interpret=None) -> Callable:
    """A whole layer of ``cell`` as Mosaic GPU kernels (forward and backward).

    The contract of :func:`jrnn.core.pallas.sequence`: returns ``run(params, xs_proj,
    carry, *, reverse=False, unroll=None) -> (carry, hs)`` with ``xs_proj: [T, B, G*H]``
    the hoisted ``cell.project(params, xs)`` and ``hs: [T, B, H]``.  ``interpret=None``
    compiles for a GPU on a GPU (or within :func:`compiled_for_gpu`) and uses Mosaic GPU's
    interpret mode elsewhere; ``interpret=True`` forces the interpreter, and an
    ``InterpretGPUParams`` is passed on as is.  Inputs must be float32.

    Raises:
      ValueError: the cell has no kernel here (:func:`fallback_reason` says why;
        interpret mode runs cells over the on-chip budget, a GPU's limit).
    """
    reason = fallback_reason(cell, bf16=bf16)
    if reason is not None and not (_mode(interpret) and reason.kind is Fallback.ON_CHIP):
        raise ValueError(f"no Mosaic GPU kernel for this cell: {reason}")
    H = gate_size(cell)
    kind = "elman" if cell.kind == "linear" else cell.kind
    act = cell.activation if kind == "elman" else None

    def run(params, xs_proj, carry, *, reverse: bool = False, unroll=None):
        del unroll  # the loop is inside the kernel
        if jnp.dtype(xs_proj.dtype) != jnp.float32:
            raise TypeError(f"the Mosaic GPU kernels take float32 inputs, got {xs_proj.dtype}")
        mode = _mode(interpret)
        f32 = jnp.float32
        carry = jax.tree_util.tree_map(lambda c: jnp.asarray(c, f32), carry)
        fn = _run(kind, act, H, bool(reverse), bool(bf16), mode)
        W_h = jnp.asarray(params["W_h"], f32)
        if kind == "lstm":
            (h, c), hs = fn(W_h, None, xs_proj, carry.h, carry.c)
            return LSTMCarry(h, c), hs
        b_h = jnp.asarray(params["b_h"], f32) if kind == "gru" else None
        return fn(W_h, b_h, xs_proj, carry, None)

    return run
