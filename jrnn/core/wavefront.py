"""A stack of LSTM layers run as a wavefront, with a hand-written backward pass.

Run layer by layer (:func:`jrnn.unroll` with a list of cells), a stack of
``L`` LSTM layers is ``L`` scans of ``T`` steps, each step one small
``[B, H] x [H, 4H]`` matmul that depends on the step before it: on a CPU each
such matmul runs on one core while the others wait.  Run as a **wavefront**,
layer ``l`` handles time ``t = s - l`` at scan step ``s``: layer ``l`` at time
``t`` alongside layer ``l + 1`` at time ``t - 1``.  Every layer reads only
the carries from the start of the step -- layer 0 its own ``h^0_{t-1}``
(and the hoisted ``x_t W_0 + b_0``), layer ``l >= 1`` the carry of layer
``l - 1``, which holds ``h^{l-1}_t``, and its own ``h^l_{t-1}`` -- so the
``L`` matmuls of a step are independent of each other and XLA may run them
at once.  The scan has ``S = T + L - 1`` steps; at the first ``l`` and the
last ``L - 1 - l`` of them layer ``l`` has nothing to do (``t`` outside
``[0, T)``) and its carry is kept with ``jnp.where``.

Schedule (``L = 2``, ``T = 3``; ``l:t`` is layer ``l`` at time ``t``)::

    forward step s   0     1     2     3
    layer 0          0:0   0:1   0:2   -
    layer 1          -     1:0   1:1   1:2

    backward step s  3     2     1     0        (descending)
    layer 1          1:2   1:1   1:0   -
    layer 0          -     0:2   0:1   0:0

The backward pass (``jax.custom_vjp``) is the same wavefront reversed.  At
backward step ``s`` layer ``l`` handles ``t = s - l`` and needs

    ``dh^l_t = [l = L-1] dhs_top[t] + dz^l_{t+1} W_h^{l T} + dz^{l+1}_t W^{l+1 T}``

whose two ``dz`` were both produced at the previous backward step, so each
layer carries its last ``dz`` and these matmuls are computed at the start of
the step from the carries (again independent across layers).  Then the LSTM
step of :mod:`jrnn.core.backward`: ``dc = dc_{t+1} f_{t+1} + dh m_t``,
``dz = [dc, dc, dc, dh] k_t``, with every cotangent-independent factor
(``k_t``, ``m_t``) built for all steps and layers before the loop.  Outside
its window a layer's ``k`` and ``m`` are zero and its ``f`` one, so its
``dz`` is zero and its ``dc`` carry passes unchanged, with no mask in the
loop.  After the loop, per layer, ``dW_h = sum_t h^l_{t-1}^T dz^l_t``,
``dW = sum_t h^{l-1 T}_t dz^l_t`` and ``db = sum dz^l_t`` are single einsums;
layer 0's ``dz`` is the cotangent of its hoisted input projection.

The values are those of the layer-by-layer scan (``tests/test_wavefront.py``
holds values and gradients to ``jax.grad`` of it in float64).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

from jrnn.core.gates import LSTMCarry, lstm_update
from jrnn.core.validation import positive_int

Array = jax.Array

__all__ = ["lstm_stack"]


def _skew(a: Array, l: int, L: int, value: float = 0.0) -> Array:
    """``a: [T, ...]`` of layer ``l`` laid out on the ``S = T + L - 1`` wavefront steps."""
    pad = [(l, L - 1 - l)] + [(0, 0)] * (a.ndim - 1)
    return jnp.pad(a, pad, constant_values=value)


def _prev(hs: Array, h0: Array) -> Array:
    """``[h0, h_0, ..., h_{T-2}]``: the state before each step."""
    return jnp.concatenate([h0[None], hs[:-1]], axis=0)


@functools.lru_cache(maxsize=None, typed=True)  # typed: unroll=True != unroll=1
def _stack_run(H: int, L: int, unroll, stack_weights: bool) -> Callable:
    def forward(Ws, bs, W_hs, xs0, h0s, c0s):
        # Ws, bs: layers 1..L-1 (their input weights); W_hs, h0s, c0s: all L layers.
        T = xs0.shape[0]
        S = T + L - 1
        xs_pad = jnp.pad(xs0, [(0, L - 1), (0, 0), (0, 0)])
        W_cat = [None] + [jnp.concatenate([Ws[l - 1], W_hs[l]], axis=0) for l in range(1, L)]

        def body(carry, inp):
            hs, cs = carry
            x, s = inp
            new_h, new_c, outs = [], [], []
            for l in range(L):
                if l == 0:
                    z = x + hs[0] @ W_hs[0]
                elif stack_weights:
                    z = jnp.concatenate([hs[l - 1], hs[l]], axis=-1) @ W_cat[l] + bs[l - 1]
                else:
                    z = hs[l - 1] @ Ws[l - 1] + hs[l] @ W_hs[l] + bs[l - 1]
                h, c, a = lstm_update(z, cs[l], H)
                valid = (s >= l) & (s < T + l)
                new_h.append(jnp.where(valid, h, hs[l]))
                new_c.append(jnp.where(valid, c, cs[l]))
                outs.append((c, a))
            return (tuple(new_h), tuple(new_c)), tuple(outs)

        (hT, cT), outs = jax.lax.scan(
            body, (tuple(h0s), tuple(c0s)), (xs_pad, jnp.arange(S)), unroll=unroll)
        # Unskew: layer l's times 0..T-1 ran at steps l..l+T-1.
        cs = [outs[l][0][l : l + T] for l in range(L)]
        acts = [outs[l][1][l : l + T] for l in range(L)]
        hs = [a[..., 3 * H :] * jnp.tanh(c) for a, c in zip(acts, cs)]
        return (hT, cT), (hs, cs, acts)

    @jax.custom_vjp
    def run(Ws, bs, W_hs, xs0, h0s, c0s):
        final, (hs, _, _) = forward(Ws, bs, W_hs, xs0, h0s, c0s)
        return final, hs[-1]

    def run_fwd(Ws, bs, W_hs, xs0, h0s, c0s):
        final, (hs, cs, acts) = forward(Ws, bs, W_hs, xs0, h0s, c0s)
        return (final, hs[-1]), (Ws, W_hs, hs, cs, acts, h0s, c0s)

    def run_bwd(res, cts):
        Ws, W_hs, hs, cs, acts, h0s, c0s = res
        (dh_T, dc_T), dhs_top = cts
        T = dhs_top.shape[0]
        # Everything of dz that does not depend on the flowing cotangents, for all
        # steps and layers at once, laid out on the wavefront steps (see the module doc):
        #   k = [g i(1-i), c_{t-1} f(1-f), i (1-g^2), tanh(c) o(1-o)],  m = o (1 - tanh(c)^2);
        # outside a layer's window k = m = 0 and f = 1.
        ks, ms, fs, dh_in = [], [], [], []
        for l in range(L):
            i, f, g, o = (acts[l][..., j * H : (j + 1) * H] for j in range(4))
            tc = jnp.tanh(cs[l])
            c_prev = _prev(cs[l], c0s[l])
            k = jnp.concatenate(
                [g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g), tc * o * (1 - o)], axis=-1)
            ks.append(_skew(k, l, L))
            ms.append(_skew(o * (1 - tc * tc), l, L))
            fs.append(_skew(f, l, L, 1.0))
            # The output cotangent (top layer) and the final carry's dh, which enters at t = T-1.
            d = jnp.zeros_like(hs[l]) if l < L - 1 else dhs_top
            dh_in.append(_skew(d.at[T - 1].add(dh_T[l]), l, L))
        # dh^l_t reads dz^l_{t+1} through W_h^l and dz^{l+1}_t through W^{l+1}: one
        # [B, 8H] x [8H, H] matmul per layer below the top (or two).
        WT = [jnp.concatenate([W_hs[l], Ws[l]], axis=1).T if stack_weights else None
              for l in range(L - 1)]

        def body(carry, inp):
            dzs, dcs = carry
            k, m, f, dh_out = inp
            new_dz, new_dc = [], []
            for l in range(L):
                if l == L - 1:
                    dh = dh_out[l] + dzs[l] @ W_hs[l].T
                elif stack_weights:
                    dh = dh_out[l] + jnp.concatenate([dzs[l], dzs[l + 1]], axis=-1) @ WT[l]
                else:
                    dh = dh_out[l] + dzs[l] @ W_hs[l].T + dzs[l + 1] @ Ws[l].T
                dc = dcs[l] + dh * m[l]
                dz = jnp.concatenate([dc, dc, dc, dh], axis=-1) * k[l]
                new_dz.append(dz)
                new_dc.append(dc * f[l])
            return (tuple(new_dz), tuple(new_dc)), tuple(new_dz)

        dz0 = tuple(jnp.zeros(k.shape[1:], k.dtype) for k in ks)
        (_, dc0), dz_steps = jax.lax.scan(
            body, (dz0, tuple(dc_T)), (tuple(ks), tuple(ms), tuple(fs), tuple(dh_in)),
            reverse=True, unroll=unroll)
        dzs = [dz_steps[l][l : l + T] for l in range(L)]
        dW_h = tuple(jnp.einsum("tbh,tbg->hg", _prev(hs[l], h0s[l]), dzs[l]) for l in range(L))
        dW = tuple(jnp.einsum("tbh,tbg->hg", hs[l - 1], dzs[l]) for l in range(1, L))
        db = tuple(jnp.sum(dzs[l], axis=(0, 1)) for l in range(1, L))
        dh0 = tuple(dzs[l][0] @ W_hs[l].T for l in range(L))
        return dW, db, dW_h, dzs[0], dh0, dc0

    run.defvjp(run_fwd, run_bwd)
    return run


def lstm_stack(hidden_size: int, num_layers: int) -> Callable:
    """A stack of ``num_layers`` plain LSTM layers of width ``H`` run as a wavefront.

    Returns ``run(params_list, xs_proj0, carries, *, unroll=1,
    stack_weights=True) -> (finals, hs_top)``:

    * ``params_list``: one :func:`jrnn.lstm` params dict per layer (``W``,
      ``W_h: [H, 4H]``, ``b: [4H]``).  Layer 0 reads only its ``W_h`` (its
      ``x W_0 + b_0`` is ``xs_proj0``); layers ``l >= 1`` read ``W: [H, 4H]``,
      ``W_h`` and ``b`` inside the loop.
    * ``xs_proj0: [T, B, 4H]``: layer 0's hoisted input projection.
    * ``carries``: one :class:`LSTMCarry` ``(h [B, H], c [B, H])`` per layer.
    * ``finals``: the list of final carries; ``hs_top: [T, B, H]`` the top
      layer's outputs.
    * ``unroll``: ``lax.scan``'s unroll factor (forward and backward loops).
    * ``stack_weights``: layer ``l >= 1`` as one ``[B, 2H] x [2H, 4H]`` matmul
      with ``[W; W_h]`` stacked (and one ``[B, 8H] x [8H, H]`` per layer
      below the top in the backward loop) instead of two.

    The values are those of ``jrnn.unroll([jrnn.lstm(H)] * L, params_list,
    xs, carries)`` run layer by layer; the schedule and the backward pass are
    in the module doc.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> H, L, T, B = 4, 2, 5, 2
      >>> cells = [jrnn.lstm(H)] * L
      >>> ks = jax.random.split(jax.random.PRNGKey(0), L)
      >>> params = [cells[0].init(ks[0], 3), cells[1].init(ks[1], H)]
      >>> xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, 3))
      >>> carries = [jrnn.LSTMCarry(jnp.full((B, H), 0.1), jnp.full((B, H), -0.2))] * L
      >>> run = lstm_stack(H, L)
      >>> finals, hs = run(params, xs @ params[0]["W"] + params[0]["b"], carries)
      >>> ref_finals, ref_hs = jrnn.unroll(cells, params, xs, carries, method="scan")
      >>> hs.shape, bool(jnp.allclose(hs, ref_hs, atol=1e-6))
      ((5, 2, 4), True)
      >>> all(bool(jnp.allclose(a, b, atol=1e-6)) for a, b in zip(jax.tree.leaves(finals),
      ...                                                      jax.tree.leaves(ref_finals)))
      True
    """
    H = positive_int("hidden_size", hidden_size)
    L = positive_int("num_layers", num_layers)

    def run(params_list: Sequence[dict], xs_proj0: Array, carries: Sequence, *, unroll=1,
            stack_weights: bool = True):
        params_list, carries = list(params_list), [LSTMCarry(*c) for c in carries]
        if len(params_list) != L or len(carries) != L:
            raise ValueError(f"expected {L} params and {L} carries, got {len(params_list)} "
                             f"and {len(carries)}")
        xs_proj0 = jnp.asarray(xs_proj0)
        if xs_proj0.ndim != 3 or xs_proj0.shape[-1] != 4 * H:
            raise ValueError(f"xs_proj0 must be [T, B, 4H] = [T, B, {4 * H}], got {xs_proj0.shape}")
        for l, p in enumerate(params_list):
            if p["W_h"].shape != (H, 4 * H) or (l > 0 and p["W"].shape != (H, 4 * H)):
                raise ValueError(f"layer {l} is not a plain LSTM of width {H}: W_h "
                                 f"{p['W_h'].shape}" + (f", W {p['W'].shape}" if l else ""))
        dtype = xs_proj0.dtype
        cast = lambda a: jnp.asarray(a, dtype)
        h0s = tuple(cast(c.h) for c in carries)
        c0s = tuple(cast(c.c) for c in carries)
        if xs_proj0.shape[0] == 0:  # no step: the carries pass through
            return [LSTMCarry(h, c) for h, c in zip(h0s, c0s)], jnp.zeros(
                (0, xs_proj0.shape[1], H), dtype)
        fn = _stack_run(H, L, unroll, bool(stack_weights))
        Ws = tuple(cast(p["W"]) for p in params_list[1:])
        bs = tuple(cast(p["b"]) for p in params_list[1:])
        W_hs = tuple(cast(p["W_h"]) for p in params_list)
        (hT, cT), hs_top = fn(Ws, bs, W_hs, xs_proj0, h0s, c0s)
        return [LSTMCarry(h, c) for h, c in zip(hT, cT)], hs_top

    return run
