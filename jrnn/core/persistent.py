"""Persistent multi-block recurrence kernels for Pallas' Mosaic GPU lowering (Hopper).

:mod:`jrnn.core.mosaic` keeps the whole ``W_h`` in one block's shared memory, which stops
it at small hidden sizes.  This module spreads ``W_h`` over many blocks, as cuDNN's
persistent algorithms, Baidu's persistent RNNs (Diamos et al. 2016) and FlashRNN do:

**Design.**  The input projection ``x W + b`` stays one large matmul before the kernel.
The grid is ``(Bp / 64, nu)``: 64 batch rows per block (one warpgroup, wgmma's M) times
``nu`` blocks per batch group, each owning ``U = Hp / nu`` hidden units (``Hp`` = H
rounded up to a multiple of 64).

* *forward*: block ``u`` keeps, resident in shared memory for all T steps, the columns of
  ``W_h`` of **all G gates of its U units** (``W_h[:, k Hp + u U : k Hp + (u+1) U]`` for
  each gate k: ``G x [Hp, U]``), so its gate math is local.  Per step it reads the
  *full* previous ``h`` (``[64, Hp]``, written by all blocks of its batch group at the
  previous step) from global memory / L2 in 64-column chunks (plain loads, cast to the
  operand dtype, stored to a two-slot shared-memory ring that feeds wgmma while the next
  chunk loads), accumulates ``G`` wgmma ``[64, 64] x [64, U]`` per chunk in float32,
  applies the gate math to its ``[64, U]`` slice and publishes its slice of the new ``h``
  straight from registers into the output ``hs[t]`` -- which *is* the exchange buffer
  (each step has its own slot, so no ping-pong is needed).  Then a grid barrier.  Its
  slice of the projected input is prefetched by TMA one step ahead.
* *backward*: block ``u`` owns the units ``u`` of ``dh`` and keeps **rows ``u U .. (u+1)
  U`` of ``W_h``** (all ``G Hp`` gate columns), i.e. the columns ``j``-slice of ``W_h^T``:
  ``[G Hp, U]``.  Per step (order of the sequence reversed): ``dh = dz_{t+1} W_h^T[:, u]``
  from the *full* ``dz_{t+1}`` published by all blocks at the previous step (``[64, G
  Hp]``, read in chunks as above; at the first step ``dh`` is the incoming ``dh_T``),
  then the local gate cotangents of its units ``dz_t[:, k Hp + u U ...]`` from ``dh +
  dhs_t`` and its saved activations (LSTM: and its slice of ``dc``, kept in shared
  memory), published into the output ``dz[t]``; barrier.  After the loop,
  ``dh_0 = dz_0 W_h^T[:, u]``.  ``dW_h = sum_t h_{t-1}^T dz_t`` is one matmul outside.
* *barrier*: a counter semaphore per batch group in global memory
  (``pl.get_global(plgpu.SemaphoreType.REGULAR((nb,)))``): at the end of step ``s`` every
  block does ``plgpu.semaphore_signal(sem, 1)`` (a ``red.release.gpu`` after a warpgroup
  barrier) and ``plgpu.semaphore_wait(sem, nu (s + 1), decrement=False)`` (a relaxed spin
  then ``fence.acquire.gpu`` and a warpgroup barrier).  The counter only grows during the
  kernel; at the end every block signals a second ``done`` semaphore and block 0 of the
  group waits for ``nu`` on it, then takes ``nu T`` off the counter, so both are zero
  again for the next launch (``get_global`` semaphores persist across launches).  All
  blocks must be co-resident: the grid is refused beyond :data:`NUM_SMS` blocks.

**Matmul precision.**  As in :mod:`jrnn.core.mosaic`: float32 operands are TF32 in
wgmma; ``bf16=True`` feeds bfloat16 ``W_h`` and ``h`` / ``dz``.  Accumulation, state,
gate math and outputs are float32.  On the GPU the weight slices are held K-major and
handed to wgmma transposed (float32 wgmma requires it).  The published ``h`` / ``dz``
are read with plain (generic-proxy) loads -- Mosaic GPU gives them a strided register
layout and cannot load global memory straight into wgmma's ("Only optimized transfers
to SMEM supported") -- staged through an untiled float32 ``[64, 64]`` shared-memory tile
and re-read in wgmma's layout (``plgpu.load(..., optimized=False)``: no bank-conflict-free
plan exists for it), cast and stored into the swizzled operand ring.  Keeping the
exchange in the generic proxy means the semaphore's release/acquire alone orders it (a
TMA read of data written by other blocks' plain stores would also need a global
async-proxy fence, which Pallas does not expose).

**Budget** (:func:`smem_bytes`; ``b`` = 2 with ``bf16`` else 4; ``nbuf`` = 2 prefetch
buffers when they fit, else 1; ``f = 64 U 4``)::

    forward:  G Hp U b  +  2 * 64 * 64 b  +  64 * 64 * 4  +  nbuf G f  (+ f for the LSTM's c)
    backward: G Hp U b  +  2 * 64 * 64 b  +  64 * 64 * 4  +  nbuf n f  +  f (dh)  (+ f for dc)
              (n per-step inputs: 2 Elman (h, dh_out), 7 LSTM (i, f, g, o, c, c_prev, dh_out))

(weight slice, operand ring, float32 staging tile, inputs, state) each against
:data:`SMEM_BYTES` (H100: 227 KiB a block), with ``nb * nu <=``
:data:`NUM_SMS` (132 on an H100) blocks in all.  ``U`` must divide ``Hp`` and be 8, 16 or
a multiple of 32 (wgmma N, and the swizzle of the ``[64, U]`` input tiles), at most 256.
By default :func:`sequence` takes the fewest blocks that fit (fewer blocks: less L2
traffic for the full-``h`` reads, a cheaper barrier), a heuristic never timed.
What fits, e.g. (B <= 64, one batch group; fwd / bwd KiB a block): Elman tanh H 256:
float32 4 blocks (U 64, 144 / 192 KiB), bf16 2 blocks (U 128, 160 / 192); Elman H 1024:
32 / 16 blocks; LSTM H 768 (the B 16 target): float32 96 blocks (U 8, 162 / 176 KiB), bf16
48 blocks (U 16, 164 / 192); LSTM H 1024: 128 / 64 blocks.  The largest H that fits is
about Elman 2112 float32 / 2624 bf16 and LSTM 1024 float32 / 1216 bf16 (not every H
below: ``Hp / U`` must be a block count <= 132 with an allowed ``U``); each further batch
group of 64 rows multiplies the blocks.  All estimates, from H100's figures, unmeasured.

**What is checked on a CPU** (``tests/test_persistent.py``):

* *lowering*: the persistent forward and backward kernels (semaphore barrier included)
  lower for CUDA on this CPU-only machine to ``mosaic_gpu_v2`` custom calls, no Triton.
  PTX compilation and everything after it is not checked.
* *values*: Mosaic GPU's interpret mode (jax 0.10.2) **cannot run the barrier**: it
  runs the grid's blocks one after the other (only a cluster's blocks concurrently), and
  it has no rule for global semaphores (``pl.get_global`` fails with ``TypeError: No
  ir_type_handler for aval type: <class 'jax._src.state.types.AbstractRef'>``).  So in
  interpret mode, with more than one block a group, the *same per-block step code*
  (weight slices, chunked reads of the full ``h`` / ``dz`` from global memory, wgmma,
  gate math, publishing) runs as **one kernel launch per step** (the launch boundary is
  the barrier; the LSTM's ``c`` / ``dc`` slices go through global memory between
  launches), and with one block a group the persistent kernel itself runs, its barrier
  left out (nothing to wait for).  Both are compared with ``jrnn.unroll(...,
  method="scan")``, values and gradients.  Differences from the GPU kernel in interpret
  mode: the weight slices are held untransposed (the interpreter cannot transpose a
  wgmma operand), the staging tile is re-read by plain indexing (the interpreter has no
  rule for ``plgpu.load``), wgmma is an exact float32 matmul (no TF32).
* *never run*: anything on a GPU -- the barrier itself, the memory ordering of the
  published slices between blocks, co-residency (a grid larger than the SMs free at
  launch deadlocks), the budget, timing.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from jrnn.core.backward import _prev
from jrnn.core.cells import Cell, gate_size
from jrnn.core.gates import LSTMCarry
from jrnn.core.mosaic import (BLOCK_B, SMEM_BYTES, _ACT_DERIV, _ACT_FN, _SWIZZLE, _mode,
                              _sigmoid, _transforms, compiled_for_gpu)
from jrnn.core.kernels import (Fallback, FallbackReason, _pad_gates, _pad_rows, _pad_state,
                               _unpad_gates, cell_reason)

Array = jax.Array

__all__ = ["SMEM_BYTES", "NUM_SMS", "BLOCK_B", "smem_bytes", "plan", "fallback_reason",
           "supported", "sequence", "compiled_for_gpu"]

# Shared memory a block may take and the batch rows of a block are jrnn.core.mosaic's
# (SMEM_BYTES, BLOCK_B); the SMs of an H100 SXM: all blocks of a grid barrier must be resident.
NUM_SMS = 132
KC = 64  # columns of the h / dz operand per chunk (wgmma K per step of the chunk loop)
_GATES = {"elman": 1, "lstm": 4}
_BWD_INPUTS = {"elman": 2, "lstm": 7}


def _padded(n: int, multiple: int = KC) -> int:
    return max(multiple, -(-int(n) // multiple) * multiple)


def _unit_ok(U: int) -> bool:
    return U in (8, 16) or (U % 32 == 0 and U <= 256)


def _bytes(kind: str, Hp: int, U: int, bf16: bool, direction: str, nbuf: int) -> int:
    G, b, f = _GATES[kind], (2 if bf16 else 4), BLOCK_B * U * 4
    common = G * Hp * U * b + 2 * BLOCK_B * KC * b + BLOCK_B * KC * 4
    if direction == "fwd":
        return common + nbuf * G * f + (f if kind == "lstm" else 0)
    return common + nbuf * _BWD_INPUTS[kind] * f + (2 * f if kind == "lstm" else f)


def _nbuf(kind, Hp, U, bf16, direction) -> int:
    return 2 if _bytes(kind, Hp, U, bf16, direction, 2) <= SMEM_BYTES else 1


def smem_bytes(cell: Cell, blocks: int, *, bf16: bool = False) -> dict:
    """Shared memory one block of the forward / backward kernel takes when ``blocks``
    blocks share each batch group's hidden units.

    Example:
      >>> import jrnn
      >>> from jrnn.core import persistent
      >>> persistent.smem_bytes(jrnn.elman(256), 4)
      {'Hp': 256, 'U': 64, 'fwd': 147456, 'fwd_buffers': 2, 'bwd': 196608, 'bwd_buffers': 2}
    """
    kind = _kind(cell)
    Hp = _padded(gate_size(cell))
    if Hp % blocks or not _unit_ok(Hp // blocks):
        raise ValueError(f"{blocks} blocks do not split {Hp} (padded) units into slices of "
                         f"8, 16 or a multiple of 32 up to 256")
    U = Hp // blocks
    nf, nb = _nbuf(kind, Hp, U, bf16, "fwd"), _nbuf(kind, Hp, U, bf16, "bwd")
    return {"Hp": Hp, "U": U, "fwd": _bytes(kind, Hp, U, bf16, "fwd", nf), "fwd_buffers": nf,
            "bwd": _bytes(kind, Hp, U, bf16, "bwd", nb), "bwd_buffers": nb}


def _kind(cell: Cell) -> str:
    return "elman" if cell.kind in ("elman", "linear") else cell.kind


def plan(cell: Cell, batch: int = BLOCK_B, *, bf16: bool = False,
         blocks: Optional[int] = None):
    """``(blocks, None)`` -- the blocks a batch group (fewest that fit, or ``blocks``) --
    or ``(None, reason)`` when no split fits.

    Example:
      >>> import jrnn
      >>> from jrnn.core import persistent
      >>> persistent.plan(jrnn.elman(256))[0], persistent.plan(jrnn.lstm(768), 16)[0]
      (4, 96)
      >>> persistent.plan(jrnn.lstm(768), 16, bf16=True)[0]
      48
    """
    kind = _kind(cell)
    Hp = _padded(gate_size(cell))
    nb = -(-max(int(batch), 1) // BLOCK_B)
    cands = [blocks] if blocks is not None else [n for n in range(1, Hp + 1) if Hp % n == 0]
    ops = "bfloat16" if bf16 else "float32 (TF32)"
    split = smem = sms = None  # the first reason of each kind met
    for n in cands:
        if Hp % n or not _unit_ok(Hp // n):
            split = split or (f"{n} blocks do not split {Hp} (padded) units into slices of "
                              f"8, 16 or a multiple of 32 up to 256")
            continue
        s = smem_bytes(cell, n, bf16=bf16)
        big = max(s["fwd"], s["bwd"])
        if big > SMEM_BYTES:  # more blocks may fit: remember the smallest need
            smem = (f"with {n} blocks a group (U = {s['U']} units each) a block of the "
                    f"{kind} kernels needs {-(-big // 1024)} KiB of shared memory with "
                    f"{ops} operands, over the {SMEM_BYTES // 1024} KiB budget")
            continue
        if nb * n > NUM_SMS:
            sms = sms or (f"{nb} batch groups x {n} blocks = {nb * n} blocks, over the "
                          f"{NUM_SMS} SMs that must all be resident for the grid barrier")
            continue
        return n, None
    why = sms or smem or split
    if blocks is None:
        why = f"no split of the {Hp} (padded) units of a {kind} fits: {why}"
    return None, why


def fallback_reason(cell: Cell, *, lengths: bool = False, bf16: bool = False,
                    batch: int = BLOCK_B, blocks: Optional[int] = None
                    ) -> Optional[FallbackReason]:
    """Why ``cell`` cannot run in the persistent kernels, or ``None`` when it can.

    The cell checks are :func:`jrnn.core.pallas.fallback_reason`'s (only Elman/linear and
    LSTM have persistent kernels); the budget: per block ``G Hp U b`` bytes of ``W_h``
    slice plus the operand ring and input buffers (module docstring) within
    :data:`SMEM_BYTES`, and ``ceil(batch / 64) * blocks <=`` :data:`NUM_SMS`.

    Example:
      >>> import jrnn
      >>> from jrnn.core import persistent
      >>> persistent.fallback_reason(jrnn.elman(256)) is None
      True
      >>> persistent.fallback_reason(jrnn.lstm(768), batch=16) is None
      True
      >>> persistent.fallback_reason(jrnn.lstm(2048), batch=16).kind
      <Fallback.ON_CHIP: 'on-chip budget'>
    """
    if cell.kind not in ("elman", "linear", "lstm"):
        return FallbackReason(Fallback.CELL_KIND,
                              f"no persistent kernel for {cell.kind!r} cells")
    reason = cell_reason(cell, lengths=lengths)
    if reason is not None:
        return reason
    n, why = plan(cell, batch, bf16=bf16, blocks=blocks)
    return None if n is not None else FallbackReason(Fallback.ON_CHIP, why)


def supported(cell: Cell, **kw) -> bool:
    """Whether :func:`sequence` runs ``cell`` on a GPU (see :func:`fallback_reason`)."""
    return fallback_reason(cell, **kw) is None


# ---------------------------------------------------------------------------
# Per-block pieces, shared by the persistent kernels and the per-step (interpret) ones.


def _x_transforms(U: int):
    """A ``[64, U]`` float32 tile: swizzle = the row's bytes (32, 64 or 128)."""
    n = min(U, _SWIZZLE // 4)
    return (plgpu.TilingTransform((8, n)), plgpu.SwizzleTransform(n * 4))


class _Geo:
    def __init__(self, kind, act, Hp, U, nu, opdt, interp):
        self.kind, self.act, self.Hp, self.U, self.nu = kind, act, Hp, U, nu
        self.G = _GATES[kind]
        self.opdt, self.interp = opdt, interp
        self.kmajor = not interp

    def rows(self):
        return pl.ds(lax.axis_index("b") * BLOCK_B, BLOCK_B)

    def ucols(self, k: int = 0):  # gate k's columns of this block's units
        return pl.ds(k * self.Hp + lax.axis_index("u") * self.U, self.U)

    def gload(self, ref, idx):
        """A ``[64, KC]`` float32 tile of the published ``h`` / ``dz`` from global memory,
        in wgmma's register layout: plain (generic-proxy) loads, which Mosaic GPU gives
        in a strided layout, staged through the untiled ``[64, KC]`` buffer ``self._stg``
        (a direct WGMMA-layout load from global memory is "Only optimized transfers to
        SMEM supported").  Plain loads keep the exchange in one memory proxy: the
        semaphore's release/acquire orders them, no async-proxy fence is needed."""
        self._stg[...] = ref[idx]
        if self.interp:
            return self._stg[...]
        # Untiled [64, 64] float32 into wgmma's layout has no bank-conflict-free plan.
        return plgpu.load(self._stg, (), layout=plgpu.Layout.WGMMA, optimized=False)

    def w_scratch(self, K):
        """The resident weight slice, ``A`` blocks (the G gates forward, one backward) of
        ``[K, U]`` stacked: ``[A U, K]`` K-major (GPU) or ``[A K, U]`` (2-D: a TMA copy
        takes at most 5 dimensions once tiled)."""
        A = self.G if K == self.Hp else 1
        shape = (A * self.U, K) if self.kmajor else (A * K, self.U)
        tr = _transforms(self.opdt) if self.kmajor else ()
        return plgpu.SMEM(shape, self.opdt, transforms=tr)

    def w_operand(self, w_smem, a: int, c: int, K: int):
        """Accumulator ``a``'s ``[KC, U]`` wgmma operand for K chunk ``c``."""
        if self.kmajor:
            return plgpu.transpose_ref(
                w_smem.at[pl.ds(a * self.U, self.U), pl.ds(c * KC, KC)], (1, 0))
        return w_smem.at[pl.ds(a * K + c * KC, KC), :]

    def matmul(self, src, rows, K, w_smem, a_smem, nacc):
        """``[src[rows, :K] @ W_slice_a for a < nacc]``: the full ``[64, K]`` operand read
        from global memory in ``KC``-column chunks into a two-slot ring, ``nacc`` float32
        accumulators of ``[64, U]``."""
        nK = K // KC
        per_acc = nacc == self.G and K == self.Hp  # forward: one weight block per gate

        def body(*accs):
            for c in range(nK):
                v = self.gload(src, (rows, pl.ds(c * KC, KC))).astype(self.opdt)
                if c >= 2:  # the wgmmas of chunk c - 2 read this slot
                    plgpu.wgmma_wait(len(accs))
                a_smem[c % 2] = v
                plgpu.commit_smem()
                for i, acc in enumerate(accs):
                    w = self.w_operand(w_smem, i if per_acc else 0, c, K)
                    plgpu.wgmma(acc, a_smem.at[c % 2], w)
            return [acc[...] for acc in accs]

        return pl.run_scoped(body, *[plgpu.ACC((BLOCK_B, self.U), jnp.float32)
                                     for _ in range(nacc)])

    def a_scratch(self):
        """The operand ring ``[2, 64, KC]`` and the float32 staging tile ``[64, KC]``."""
        return (plgpu.SMEM((2, BLOCK_B, KC), self.opdt, transforms=_transforms(self.opdt)),
                plgpu.SMEM((BLOCK_B, KC), jnp.float32))

    # -- forward ---------------------------------------------------------------------
    def fwd_step(self, h_src, x_smem, slot, c_smem, t, outs):
        """One step of one block: the full previous h from ``h_src`` ([Bp, Hp], global),
        this block's projected inputs in ``x_smem[slot]`` ([G, 64, U]); publishes its
        slice of ``h`` (and c, the gate activations) at time ``t`` of ``outs``."""
        rows, w_smem, a_smem = self._rows, self._w, self._a
        u = self.matmul(h_src, rows, self.Hp, w_smem, a_smem, self.G)
        x = [x_smem[slot, pl.ds(k * BLOCK_B, BLOCK_B)] for k in range(self.G)]
        if self.kind == "lstm":
            z = [x[k] + u[k] for k in range(4)]
            i, f, o = _sigmoid(z[0]), _sigmoid(z[1]), _sigmoid(z[3])
            g = jnp.tanh(z[2])
            c = f * c_smem[...] + i * g
            h = o * jnp.tanh(c)
            c_smem[...] = c
            outs[1][t, rows, self.ucols()] = c
            for k, v in enumerate((i, f, g, o)):
                outs[2][t, rows, self.ucols(k)] = v
        else:
            h = _ACT_FN[self.act](x[0] + u[0])
        outs[0][t, rows, self.ucols()] = h

    # -- backward --------------------------------------------------------------------
    def bwd_local(self, dh, in_smem, slot, dc_smem, t, dz_ref):
        """This block's gate cotangents at time ``t`` from ``dh`` ([64, U], the matmul
        part) and its saved inputs in ``in_smem[slot]``; published into ``dz_ref[t]``."""
        rows = self._rows
        piece = lambda p: in_smem[slot, pl.ds(p * BLOCK_B, BLOCK_B)]
        dh = piece(_BWD_INPUTS[self.kind] - 1) + dh
        if self.kind == "lstm":
            i, f, g, o = (piece(k) for k in range(4))
            c, c_prev = piece(4), piece(5)
            tc = jnp.tanh(c)
            dc = dc_smem[...] + dh * o * (1 - tc * tc)
            dzs = (dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                   dc * i * (1 - g * g), dh * tc * o * (1 - o))
            dc_smem[...] = dc * f
        else:
            deriv = _ACT_DERIV[self.act]
            dzs = (dh if deriv is None else dh * deriv(piece(0)),)
        for k, v in enumerate(dzs):
            dz_ref[t, rows, self.ucols(k)] = v

    def bwd_dh(self, dz_src):
        """``dh[:, u] = dz W_h^T[:, u]`` from the full ``dz`` ([Bp, G Hp], global)."""
        (dh,) = self.matmul(dz_src, self._rows, self.G * self.Hp, self._w, self._a, 1)
        return dh


def _barrier(sem, s_count, nu):
    """Grid barrier of the ``nu`` blocks of this batch group, the ``s_count``-th one: the
    counter only grows (see the module docstring)."""
    g = lax.axis_index("b")
    plgpu.semaphore_signal(sem.at[g], 1, memory_scope="gpu")
    plgpu.semaphore_wait(sem.at[g], nu * s_count, decrement=False, memory_scope="gpu")


def _reset(sem, done, T, nu):
    """After the last barrier: every block signals ``done``; block 0 of the group waits for
    all of them (so no block still reads the counter) and takes ``nu T`` off the counter:
    both semaphores are zero again for the next launch."""
    g = lax.axis_index("b")
    plgpu.semaphore_signal(done.at[g], 1, memory_scope="gpu")

    @pl.when(lax.axis_index("u") == 0)
    def _():
        plgpu.semaphore_wait(done.at[g], nu, memory_scope="gpu")
        plgpu.semaphore_wait(sem.at[g], nu * T, memory_scope="gpu")


def _when(cond):
    """``pl.when`` that also takes a Python bool (the peeled first step)."""
    if isinstance(cond, bool):
        return (lambda f: f()) if cond else (lambda f: None)
    return pl.when(cond)


def _semaphores(nb: int, sync: bool):
    if not sync:
        return None, None
    return (pl.get_global(plgpu.SemaphoreType.REGULAR((nb,))),
            pl.get_global(plgpu.SemaphoreType.REGULAR((nb,))))


# ---------------------------------------------------------------------------
# The kernels.  ``sync``: the semaphore barrier (GPU); left out in interpret mode, where
# the persistent kernels run only with one block a group.


def _staged(s, *, T, nbuf, tt, src, buf, bars, bar0, ub, work):
    """One step of a persistent loop over staged per-step inputs: wait for step ``s``'s rows
    (slot ``s % nbuf`` of ``buf``, barrier ``bar0 + slot``), run ``work(slot)``, and have
    the TMA fetch step ``s + 1``'s rows of ``src`` -- into the other slot before the work
    when there are two, into the only one after the work has read it otherwise."""
    slot = (s % nbuf if isinstance(s, int) else lax.rem(s, nbuf)) if nbuf > 1 else 0
    plgpu.barrier_wait(bars.at[bar0 + slot])

    def fetch(dst):
        @_when(s + 1 < T)
        def _():
            plgpu.copy_gmem_to_smem(src.at[tt(s + 1), ub, lax.axis_index("b")], buf.at[dst],
                                    bars.at[bar0 + dst])

    if nbuf > 1:  # the other buffer is free: prefetch the next step now
        fetch(1 - slot)
    work(slot)
    if nbuf == 1:
        fetch(0)


def _fwd_persistent(*refs, geo, T, nb, reverse, nbuf, sync):
    """xs [T, nu, G, Bp, U], w [nu, G, ...], h0 [Bp, Hp], (c0) -> hs [T, Bp, Hp],
    (cs [T, Bp, Hp], acts [T, Bp, 4 Hp])."""
    lstm = geo.kind == "lstm"
    n_in = 4 if lstm else 3
    ins, outs = refs[:n_in], refs[n_in:]
    xs_ref, w_ref, h0_ref = ins[:3]

    def body(w_smem, a_smem, x_smem, c_smem, bars):
        geo._rows, geo._w, (geo._a, geo._stg) = geo.rows(), w_smem, a_smem
        rows, ub = geo.rows(), lax.axis_index("u")
        sem, done = _semaphores(nb, sync)
        plgpu.copy_gmem_to_smem(w_ref.at[ub], w_smem, bars.at[0])
        if lstm:
            plgpu.copy_gmem_to_smem(ins[3].at[rows, geo.ucols()], c_smem, bars.at[1])
        tt = (lambda s: T - 1 - s) if reverse else (lambda s: s)
        plgpu.copy_gmem_to_smem(xs_ref.at[tt(0), ub, lax.axis_index("b")], x_smem.at[0], bars.at[2])
        if lstm:
            plgpu.barrier_wait(bars.at[1])
        plgpu.barrier_wait(bars.at[0])

        def step(s, h_src):
            t = tt(s)
            _staged(s, T=T, nbuf=nbuf, tt=tt, src=xs_ref, buf=x_smem, bars=bars, bar0=2, ub=ub,
                    work=lambda slot: geo.fwd_step(h_src, x_smem, slot, c_smem, t, outs))
            if sync:
                _barrier(sem, s + 1, geo.nu)

        step(0, h0_ref)  # the first step reads h0; the others the previous step's slot

        def loop(s, carry):
            step(s, outs[0].at[tt(s - 1)])
            return carry

        lax.fori_loop(1, T, loop, 0)
        if sync:  # the counter stands at nu T
            _reset(sem, done, T, geo.nu)

    f32 = jnp.float32
    pl.run_scoped(
        body,
        geo.w_scratch(geo.Hp),
        geo.a_scratch(),
        plgpu.SMEM((nbuf, geo.G * BLOCK_B, geo.U), f32, transforms=_x_transforms(geo.U)),
        plgpu.SMEM((BLOCK_B, geo.U), f32, transforms=_x_transforms(geo.U)) if lstm else None,
        plgpu.Barrier(num_barriers=2 + nbuf),
    )


def _fwd_stepwise(*refs, geo):
    """One step as its own launch (interpret mode, several blocks a group): xs_t [nu, G,
    Bp, U], w, h_prev [Bp, Hp], (c_prev) -> h [1, Bp, Hp], (c [1, Bp, Hp], acts [1, ...])."""
    lstm = geo.kind == "lstm"
    n_in = 4 if lstm else 3
    ins, outs = refs[:n_in], refs[n_in:]
    xs_ref, w_ref, h_ref = ins[:3]

    def body(w_smem, a_smem, x_smem, c_smem, bars):
        geo._rows, geo._w, (geo._a, geo._stg) = geo.rows(), w_smem, a_smem
        rows, ub = geo.rows(), lax.axis_index("u")
        plgpu.copy_gmem_to_smem(w_ref.at[ub], w_smem, bars.at[0])
        plgpu.copy_gmem_to_smem(xs_ref.at[ub, lax.axis_index("b")], x_smem.at[0], bars.at[1])
        if lstm:
            plgpu.copy_gmem_to_smem(ins[3].at[rows, geo.ucols()], c_smem, bars.at[2])
            plgpu.barrier_wait(bars.at[2])
        plgpu.barrier_wait(bars.at[0])
        plgpu.barrier_wait(bars.at[1])
        geo.fwd_step(h_ref, x_smem, 0, c_smem, 0, outs)

    f32 = jnp.float32
    pl.run_scoped(
        body,
        geo.w_scratch(geo.Hp),
        geo.a_scratch(),
        plgpu.SMEM((1, geo.G * BLOCK_B, geo.U), f32, transforms=_x_transforms(geo.U)),
        plgpu.SMEM((BLOCK_B, geo.U), f32, transforms=_x_transforms(geo.U)) if lstm else None,
        plgpu.Barrier(num_barriers=3),
    )


def _bwd_persistent(*refs, geo, T, nb, reverse, nbuf, sync):
    """seq [T, nu, n, Bp, U], wt [nu, ...], dhT [Bp, Hp], (dcT) -> dz [T, Bp, G Hp],
    dh0 [Bp, Hp], (dc0 [Bp, Hp])."""
    lstm = geo.kind == "lstm"
    seq_ref, wt_ref, dhT_ref = refs[:3]
    dcT_ref = refs[3] if lstm else None
    outs = refs[4:] if lstm else refs[3:]
    dz_ref, dh0_ref = outs[0], outs[1]
    dc0_ref = outs[2] if lstm else None

    def body(w_smem, a_smem, in_smem, dh_smem, dc_smem, bars):
        geo._rows, geo._w, (geo._a, geo._stg) = geo.rows(), w_smem, a_smem
        rows, ub = geo.rows(), lax.axis_index("u")
        sem, done = _semaphores(nb, sync)
        plgpu.copy_gmem_to_smem(wt_ref.at[ub], w_smem, bars.at[0])
        plgpu.copy_gmem_to_smem(dhT_ref.at[rows, geo.ucols()], dh_smem, bars.at[1])
        if lstm:
            plgpu.copy_gmem_to_smem(dcT_ref.at[rows, geo.ucols()], dc_smem, bars.at[2])
        tt = (lambda s: s) if reverse else (lambda s: T - 1 - s)  # opposite to forward
        plgpu.copy_gmem_to_smem(seq_ref.at[tt(0), ub, lax.axis_index("b")], in_smem.at[0], bars.at[3])
        plgpu.barrier_wait(bars.at[1])
        if lstm:
            plgpu.barrier_wait(bars.at[2])
        plgpu.barrier_wait(bars.at[0])

        def step(s, dh):
            t = tt(s)
            _staged(s, T=T, nbuf=nbuf, tt=tt, src=seq_ref, buf=in_smem, bars=bars, bar0=3, ub=ub,
                    work=lambda slot: geo.bwd_local(dh, in_smem, slot, dc_smem, t, dz_ref))
            if sync:
                _barrier(sem, s + 1, geo.nu)

        step(0, dh_smem[...])

        def loop(s, carry):
            step(s, geo.bwd_dh(dz_ref.at[tt(s - 1)]))
            return carry

        lax.fori_loop(1, T, loop, 0)
        dh0_ref[rows, geo.ucols()] = geo.bwd_dh(dz_ref.at[tt(T - 1)])
        if lstm:
            dc0_ref[rows, geo.ucols()] = dc_smem[...]
        if sync:
            _reset(sem, done, T, geo.nu)

    f32 = jnp.float32
    xt = _x_transforms(geo.U)
    pl.run_scoped(
        body,
        geo.w_scratch(geo.G * geo.Hp),
        geo.a_scratch(),
        plgpu.SMEM((nbuf, _BWD_INPUTS[geo.kind] * BLOCK_B, geo.U), f32, transforms=xt),
        plgpu.SMEM((BLOCK_B, geo.U), f32, transforms=xt),
        plgpu.SMEM((BLOCK_B, geo.U), f32, transforms=xt) if lstm else None,
        plgpu.Barrier(num_barriers=3 + nbuf),
    )


def _bwd_stepwise(*refs, geo, first: bool):
    """One backward step as its own launch: seq_t [nu, n, Bp, U], wt, then ``dhT`` [Bp,
    Hp] (first step) or the previous step's full ``dz`` [Bp, G Hp], (dc) -> dz [1, Bp,
    G Hp], (dc [Bp, Hp])."""
    lstm = geo.kind == "lstm"
    seq_ref, wt_ref, src_ref = refs[:3]
    dc_in = refs[3] if lstm else None
    outs = refs[4:] if lstm else refs[3:]

    def body(w_smem, a_smem, in_smem, dh_smem, dc_smem, bars):
        geo._rows, geo._w, (geo._a, geo._stg) = geo.rows(), w_smem, a_smem
        rows, ub = geo.rows(), lax.axis_index("u")
        plgpu.copy_gmem_to_smem(wt_ref.at[ub], w_smem, bars.at[0])
        plgpu.copy_gmem_to_smem(seq_ref.at[ub, lax.axis_index("b")], in_smem.at[0], bars.at[1])
        if first:
            plgpu.copy_gmem_to_smem(src_ref.at[rows, geo.ucols()], dh_smem, bars.at[2])
            plgpu.barrier_wait(bars.at[2])
        if lstm:
            plgpu.copy_gmem_to_smem(dc_in.at[rows, geo.ucols()], dc_smem, bars.at[3])
            plgpu.barrier_wait(bars.at[3])
        plgpu.barrier_wait(bars.at[0])
        plgpu.barrier_wait(bars.at[1])
        dh = dh_smem[...] if first else geo.bwd_dh(src_ref)
        geo.bwd_local(dh, in_smem, 0, dc_smem, 0, outs[0])
        if lstm:
            outs[1][rows, geo.ucols()] = dc_smem[...]

    f32 = jnp.float32
    xt = _x_transforms(geo.U)
    pl.run_scoped(
        body,
        geo.w_scratch(geo.G * geo.Hp),
        geo.a_scratch(),
        plgpu.SMEM((1, _BWD_INPUTS[geo.kind] * BLOCK_B, geo.U), f32, transforms=xt),
        plgpu.SMEM((BLOCK_B, geo.U), f32, transforms=xt),
        plgpu.SMEM((BLOCK_B, geo.U), f32, transforms=xt) if lstm else None,
        plgpu.Barrier(num_barriers=4),
    )


def _bwd_last(dz_ref, wt_ref, dh0_ref, *, geo):
    """``dh_0[:, u] = dz_0 W_h^T[:, u]`` as its own launch (interpret mode)."""
    def body(w_smem, a_smem, bars):
        geo._rows, geo._w, (geo._a, geo._stg) = geo.rows(), w_smem, a_smem
        plgpu.copy_gmem_to_smem(wt_ref.at[lax.axis_index("u")], w_smem, bars.at[0])
        plgpu.barrier_wait(bars.at[0])
        dh0_ref[geo.rows(), geo.ucols()] = geo.bwd_dh(dz_ref)

    pl.run_scoped(body, geo.w_scratch(geo.G * geo.Hp), geo.a_scratch(),
                  plgpu.Barrier(num_barriers=1))


# ---------------------------------------------------------------------------
# Host side.


def _sds(shape):
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _call(kernel, ins, outs, *, nb: int, nu: int, mode, name: str):
    return plgpu.kernel(
        kernel, out_type=tuple(outs), grid=(nb, nu), grid_names=("b", "u"),
        interpret=mode if mode else None, kernel_name=name,
    )(*ins)


def _fwd_weights(W_hp, G, Hp, nu, U, kmajor, opdt):
    """``W_hp: [Hp, G Hp]`` -> per block the columns of its units' gates, gate blocks
    stacked: ``[nu, G U, Hp]`` (K-major) or ``[nu, G Hp, U]``."""
    w = W_hp.reshape(Hp, G, nu, U)  # [i, k, u, j]
    if kmajor:
        return w.transpose(2, 1, 3, 0).reshape(nu, G * U, Hp).astype(opdt)
    return w.transpose(2, 1, 0, 3).reshape(nu, G * Hp, U).astype(opdt)


def _bwd_weights(W_hp, G, Hp, nu, U, kmajor, opdt):
    """Per block the rows of ``W_h`` of its units (the columns of ``W_h^T``): ``[nu, U,
    G Hp]`` (K-major) or ``[nu, G Hp, U]``."""
    w = W_hp.reshape(nu, U, G * Hp)
    return (w if kmajor else w.transpose(0, 2, 1)).astype(opdt)


def _by_block(x, n, nu, U):
    """``[T, Bp, n Hp]`` (n pieces of Hp) -> ``[T, nu, nb, n 64, U]``: a block's slices of
    the n pieces stacked by rows, contiguous for one TMA copy."""
    T, Bp = x.shape[:2]
    nb = Bp // BLOCK_B
    x = x.reshape(T, nb, BLOCK_B, n, nu, U).transpose(0, 4, 1, 3, 2, 5)
    return x.reshape(T, nu, nb, n * BLOCK_B, U)


@functools.lru_cache(maxsize=None)
def _run(kind: str, act, H: int, nu: int, reverse: bool, bf16: bool, mode) -> Callable:
    G = _GATES[kind]
    Hp = _padded(H)
    U = Hp // nu
    opdt = jnp.bfloat16 if bf16 else jnp.float32
    interp = bool(mode)
    lstm = kind == "lstm"
    persistent = not interp or nu == 1  # interpret mode cannot run the grid barrier
    geo = _Geo(kind, act, Hp, U, nu, opdt, interp)
    nbuf_f, nbuf_b = _nbuf(kind, Hp, U, bf16, "fwd"), _nbuf(kind, Hp, U, bf16, "bwd")
    sync = not interp

    def forward(W_h, xs, h0, c0):
        T, B = xs.shape[:2]
        Bp = _padded(B, BLOCK_B)
        nb = Bp // BLOCK_B
        W_hp = _pad_rows(_pad_gates(W_h, G, H, Hp), 0, Hp)
        w = _fwd_weights(W_hp, G, Hp, nu, U, geo.kmajor, opdt)
        xb = _by_block(_pad_rows(_pad_gates(xs, G, H, Hp), 1, Bp), G, nu, U)
        h0p = _pad_state(h0, Hp, Bp)
        c0p = _pad_state(c0, Hp, Bp) if lstm else None
        outs = [_sds((T, Bp, Hp))] + ([_sds((T, Bp, Hp)), _sds((T, Bp, 4 * Hp))] if lstm else [])
        if persistent:
            kern = functools.partial(_fwd_persistent, geo=geo, T=T, nb=nb, reverse=reverse,
                                     nbuf=nbuf_f, sync=sync)
            ins = [xb, w, h0p] + ([c0p] if lstm else [])
            return _call(kern, ins, outs, nb=nb, nu=nu, mode=mode,
                         name=f"jrnn_{kind}_fwd_persistent")
        kern = functools.partial(_fwd_stepwise, geo=geo)
        step_outs = [_sds((1,) + o.shape[1:]) for o in outs]

        def one(carry, x_t):
            h, c = carry
            got = _call(kern, [x_t, w, h] + ([c] if lstm else []), step_outs, nb=nb, nu=nu,
                        mode=mode, name=f"jrnn_{kind}_fwd_step")
            got = [g[0] for g in got]
            return (got[0], got[1] if lstm else c), got

        _, got = lax.scan(one, (h0p, c0p if lstm else jnp.zeros((), jnp.float32)), xb,
                          reverse=reverse)
        return got

    def backward(W_h, seq, dhT, dcT, T, Bp):
        nb = Bp // BLOCK_B
        W_hp = _pad_rows(_pad_gates(W_h, G, H, Hp), 0, Hp)
        wt = _bwd_weights(W_hp, G, Hp, nu, U, geo.kmajor, opdt)
        dhTp = _pad_state(dhT, Hp, Bp)
        dcTp = _pad_state(dcT, Hp, Bp) if lstm else None
        if persistent:
            kern = functools.partial(_bwd_persistent, geo=geo, T=T, nb=nb, reverse=reverse,
                                     nbuf=nbuf_b, sync=sync)
            ins = [seq, wt, dhTp] + ([dcTp] if lstm else [])
            outs = [_sds((T, Bp, G * Hp)), _sds((Bp, Hp))] + ([_sds((Bp, Hp))] if lstm else [])
            got = _call(kern, ins, outs, nb=nb, nu=nu, mode=mode,
                        name=f"jrnn_{kind}_bwd_persistent")
            return got[0], got[1], (got[2] if lstm else None)
        outs = [_sds((1, Bp, G * Hp))] + ([_sds((Bp, Hp))] if lstm else [])

        def launch(first, seq_t, src, dc):
            kern = functools.partial(_bwd_stepwise, geo=geo, first=first)
            got = _call(kern, [seq_t, wt, src] + ([dc] if lstm else []), outs, nb=nb, nu=nu,
                        mode=mode, name=f"jrnn_{kind}_bwd_step")
            return got[0][0], (got[1] if lstm else dc)

        # the backward walks the sequence against the forward direction
        order = seq if reverse else seq[::-1]
        dz0, dc = launch(True, order[0], dhTp, dcTp if lstm else jnp.zeros((), jnp.float32))

        def one(carry, seq_t):
            dz_prev, dc = carry
            dz, dc = launch(False, seq_t, dz_prev, dc)
            return (dz, dc), dz

        (dz_last, dc), dzs = lax.scan(one, (dz0, dc), order[1:])
        dzs = jnp.concatenate([dz0[None], dzs], axis=0)
        dz = dzs if reverse else dzs[::-1]
        last = functools.partial(_bwd_last, geo=geo)
        (dh0,) = _call(last, [dz_last, wt], [_sds((Bp, Hp))], nb=nb, nu=nu, mode=mode,
                       name=f"jrnn_{kind}_bwd_last")
        return dz, dh0, (dc if lstm else None)

    def finals(hs, cs, B):
        last = 0 if reverse else -1
        h = hs[last, :B, :H]
        return (h, cs[last, :B, :H]) if lstm else h

    def primal(W_h, xs, h0, c0):
        if xs.shape[0] == 0:  # no steps: the carry passes through, no kernel
            return (((h0, c0) if lstm else h0), xs[..., :H]), None
        res = forward(W_h, xs, h0, c0)
        B = h0.shape[0]
        return (finals(res[0], res[1] if lstm else None, B), res[0][:, :B, :H]), res

    @jax.custom_vjp
    def run(W_h, xs, h0, c0):
        out, _ = primal(W_h, xs, h0, c0)
        return out

    def run_fwd(W_h, xs, h0, c0):
        out, res = primal(W_h, xs, h0, c0)
        return out, (W_h, res, h0, c0, xs)

    def run_bwd(saved, cts):
        W_h, res, h0, c0, xs = saved
        dfinal, dhs = cts
        if res is None:
            dz = jnp.zeros(xs.shape, xs.dtype)
            if lstm:
                return jnp.zeros_like(W_h), dz, dfinal[0], dfinal[1]
            return jnp.zeros_like(W_h), dz, dfinal, None
        hs = res[0]
        T, Bp = hs.shape[:2]
        B = h0.shape[0]
        dhT, dcT = dfinal if lstm else (dfinal, None)
        h_prev = _prev(hs, _pad_state(h0, Hp, Bp), reverse)
        dhs_p = _pad_state(dhs, Hp, Bp, jnp.float32)
        if lstm:
            cs, acts = res[1], res[2]
            c_prev = _prev(cs, _pad_state(c0, Hp, Bp), reverse)
            seq = jnp.concatenate([acts, cs, c_prev, dhs_p], axis=-1)
        else:
            seq = jnp.concatenate([hs, dhs_p], axis=-1)
        seq = _by_block(seq, _BWD_INPUTS[kind], nu, U)
        dz, dh0, dc0 = backward(W_h, seq, dhT, dcT, T, Bp)
        dz = _unpad_gates(dz[:, :B], G, H, Hp)
        dW_h = jnp.einsum("tbh,tbg->hg", h_prev[:, :B, :H], dz)
        if lstm:
            return dW_h, dz, dh0[:B, :H], dc0[:B, :H]
        return dW_h, dz, dh0[:B, :H], None

    run.defvjp(run_fwd, run_bwd)
    return run


def sequence(cell: Cell, *, bf16: bool = False, interpret=None,
             blocks: Optional[int] = None) -> Callable:
    """A whole layer of ``cell`` (Elman/linear or LSTM) as persistent multi-block Mosaic
    GPU kernels, forward and backward (custom VJP).

    The contract of :func:`jrnn.core.mosaic.sequence`: returns ``run(params, xs_proj,
    carry, *, reverse=False, unroll=None) -> (carry, hs)`` with ``xs_proj: [T, B, G*H]``
    the hoisted ``cell.project(params, xs)``.  ``blocks`` is the number of blocks sharing
    a batch group's hidden units (default: :func:`plan`'s, the fewest that fit);
    ``interpret`` as in :mod:`jrnn.core.mosaic` (with ``blocks > 1`` the interpreter runs
    one launch per step, see the module docstring).  Inputs must be float32.

    Raises:
      ValueError: no persistent kernel for this cell, or (compiled for a GPU) no split of
        its units fits (:func:`fallback_reason`); ``blocks`` that do not split the units.
    """
    kind = _kind(cell)
    reason = fallback_reason(cell, bf16=bf16, blocks=blocks)
    if reason is not None:
        if not (_mode(interpret) and reason.kind is Fallback.ON_CHIP):
            raise ValueError(f"no persistent Mosaic GPU kernel for this cell: {reason}")
    H = gate_size(cell)
    Hp = _padded(H)
    if blocks is not None and (Hp % blocks or not _unit_ok(Hp // blocks)):
        raise ValueError(f"{blocks} blocks do not split {Hp} (padded) units into slices of "
                         f"8, 16 or a multiple of 32 up to 256")
    act = cell.activation if kind == "elman" else None

    def run(params, xs_proj, carry, *, reverse: bool = False, unroll=None):
        del unroll
        if jnp.dtype(xs_proj.dtype) != jnp.float32:
            raise TypeError(f"the persistent kernels take float32 inputs, got {xs_proj.dtype}")
        mode = _mode(interpret)
        nu, why = plan(cell, xs_proj.shape[1], bf16=bf16, blocks=blocks)
        if nu is None:  # the budget or the SM count, at this batch size
            if not mode:
                raise ValueError(f"no persistent Mosaic GPU kernel for this cell: {why}")
            nu = blocks or 1  # interpret mode has no such limits
        f32 = jnp.float32
        carry = jax.tree_util.tree_map(lambda c: jnp.asarray(c, f32), carry)
        fn = _run(kind, act, H, int(nu), bool(reverse), bool(bf16), mode)
        W_h = jnp.asarray(params["W_h"], f32)
        if kind == "lstm":
            (h, c), hs = fn(W_h, xs_proj, carry.h, carry.c)
            return LSTMCarry(h, c), hs
        return fn(W_h, xs_proj, carry, None)

    return run
