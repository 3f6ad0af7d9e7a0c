"""jrnn against its peers on the same shapes and data, in one process.

Peers: Flax linen ``nn.RNN`` (``OptimizedLSTMCell`` / ``GRUCell`` /
``SimpleCell``), Equinox cells (``eqx.nn.LSTMCell`` / ``GRUCell``, vmapped over
the batch under ``lax.scan``) and PyTorch ``nn.LSTM`` / ``nn.GRU`` /
``nn.RNN`` (cuDNN on a GPU).  Peers that are not installed are skipped with a
note (``pip install -e .[bench]`` plus ``torch``).  Opt-in peers (name them in
``--peers``): ``torch-fp16`` (the same PyTorch model converted with
``.half()``, the loss in float32, no grad scaler: a speed measurement; on a
GPU cuDNN picks its persistent LSTM kernels when it can), ``jax-cudnn``
(``jax.experimental.rnn.lstm``, JAX's binding of cuDNN's LSTM: LSTM only,
float32, CUDA only), ``jrnn-pallas`` / ``jrnn-pallas-bf16`` (jrnn's fused
Pallas kernels, ``method="pallas"``; n/a with the reason where ``W_h`` is over
their on-chip budget) and ``jrnn-cudnn`` (``method="cudnn"``: cuDNN's LSTM
with jrnn's params).  A peer that fails is reported as an error row
(traceback on stderr) and the run goes on.

Two kinds of shape:

* ``lm``: the language-model train step of Zaremba et al. -- embedding ->
  ``L`` recurrent layers -> softmax over ``V`` words, loss summed over time
  and averaged over the batch, global-norm clipping at 5, SGD, the carry
  passed from one window to the next (truncated BPTT);
* ``rec``: the recurrence alone, forward and backward (``sum(h)`` w.r.t.
  the weights and the inputs), as a cuDNN benchmark does.

Each implementation is timed on the same token / input arrays: a compile
(JAX: ``jit(...).lower(...).compile()``; PyTorch: its first step), then
``--warmup`` steps, then ``--reps`` timed repetitions of ``k`` steps (``k``
chosen so that a repetition lasts about ``--rep-seconds``); the median of
the per-step times is reported, with tokens/s = B * T / step time.

Memory, two measures, both reported and named:

* ``xla_mb``: XLA's buffer assignment of the compiled step
  (``compiled.memory_analysis()``: arguments + outputs + temporaries -
  donated aliases), exact for what the step allocates; JAX only;
* ``rss_mb``: the rise of the process's resident set during the timed steps
  over its size just before them, sampled every 2 ms from ``/proc``; every
  implementation, but approximate (allocators keep freed memory); on a GPU
  it is replaced by the device's peak bytes (PyTorch
  ``max_memory_allocated``, JAX ``memory_stats()['peak_bytes_in_use']``).

jrnn variants: ``--unroll 1,2,4,8`` measures each scan unroll factor;
``--remat`` wraps each cell's step in ``jax.checkpoint`` (the backward pass
recomputes a step's gates instead of storing them: memory for time);
``--bf16`` does the matmuls in bfloat16 with a float32 carry, float32
logits and float32 loss, and reports its loss and gradient error against
float32 on the same batch.  The variants reuse jrnn's cells, ``unroll``
and ``make_train_step`` through a :class:`jrnn.LanguageModel` whose
``apply`` is rebuilt here.

Usage::

    python benchmarks/peers.py                         # CPU-sized defaults
    python benchmarks/peers.py --shapes zaremba-small --unroll 1,2,4,8,16
    python benchmarks/peers.py --shapes long-lstm --remat --peers jrnn,torch
    python benchmarks/peers.py --interleave --torch-threads 2,1   # fair on a busy machine
    python benchmarks/peers.py --shapes zaremba-small --autodiff --keep-host-memory

jrnn's default train step uses its hand-written backward passes
(:mod:`jrnn.core.backward`); ``--autodiff`` adds a row with plain autodiff
(``custom_vjp=False``).  ``--keep-host-memory`` applies
:func:`jrnn.training.runtime.keep_host_memory` to the whole process, so to every
implementation in the run alike; run once with and once without it.
    python benchmarks/peers.py --list

Writes ``benchmarks/out/peers-<time>.json`` (or ``--out``).  Never asserts on time.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Callable, NamedTuple, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import jrnn  # noqa: E402
from jrnn.core import select  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "out"
LR, CLIP = 1.0, 5.0


class Shape(NamedTuple):
    cell: str  # lstm | gru | elman
    B: int
    T: int
    H: int
    L: int
    V: int  # vocabulary (lm mode); 0 in rec mode
    mode: str  # "lm" (train step) or "rec" (recurrence fwd+bwd)
    note: str = ""


SHAPES = {
    "zaremba-small": Shape("lstm", 20, 35, 200, 2, 10_000, "lm", "Zaremba et al. small"),
    "zaremba-medium": Shape("lstm", 20, 35, 650, 2, 10_000, "lm", "Zaremba et al. medium"),
    "large-batch": Shape("lstm", 128, 64, 1024, 1, 10_000, "lm", "B128 T64 H1024 L1 (GPU-sized)"),
    "gru-small": Shape("gru", 20, 35, 200, 2, 10_000, "lm", "zaremba-small with a GRU"),
    "elman-small": Shape("elman", 20, 35, 200, 2, 10_000, "lm", "zaremba-small with a tanh RNN"),
    "rnn-long": Shape("elman", 64, 1024, 256, 1, 0, "rec", "tanh RNN fwd+bwd (GPU-sized)"),
    "long-lstm": Shape("lstm", 8, 4096, 64, 1, 0, "rec", "T = 4096, LSTM fwd+bwd"),
    "long-elman": Shape("elman", 8, 4096, 64, 1, 0, "rec", "T = 4096, tanh RNN fwd+bwd"),
    "tiny-lm": Shape("lstm", 4, 8, 16, 2, 50, "lm", "smoke test"),
    "tiny-gru": Shape("gru", 4, 8, 16, 2, 50, "lm", "smoke test"),
    "lstm-1024-768": Shape("lstm", 16, 1024, 768, 1, 0, "rec",
                           "LSTM fwd+bwd; cuDNN persistent fp16 on an H100: 2.01 ms fwd, "
                           "5.19 ms fwd+bwd (NX-AI/flashrnn)"),
    "tiny-rec": Shape("lstm", 4, 64, 16, 1, 0, "rec", "smoke test"),
    "tiny-elman-rec": Shape("elman", 4, 64, 16, 1, 0, "rec", "smoke test"),
    "rnn-long-128": Shape("elman", 64, 1024, 128, 1, 0, "rec",
                          "tanh RNN fwd+bwd, W_h within the Pallas kernels' on-chip budget"),
    "lstm-long-64": Shape("lstm", 64, 1024, 64, 1, 0, "rec",
                          "LSTM fwd+bwd, W_h within the Pallas kernels' on-chip budget"),
}
CPU_DEFAULT = ["zaremba-small", "gru-small", "elman-small", "long-lstm", "long-elman"]
GPU_DEFAULT = ["zaremba-small", "zaremba-medium", "large-batch", "gru-small", "elman-small",
               "rnn-long", "long-lstm", "long-elman"]
PEERS = ["jrnn", "flax", "equinox", "torch"]
OPT_IN_PEERS = ["torch-fp16", "torch-f32-full", "jrnn-f32-full", "jax-cudnn", "jrnn-pallas",
                "jrnn-pallas-bf16", "jrnn-persistent", "jrnn-persistent-bf16", "jrnn-cudnn"]


# --------------------------------------------------------------------------
# Measuring.


class RSSSampler:
    """Peak resident set size above a baseline, sampled from /proc every ``interval`` s."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
        self.available = Path("/proc/self/statm").exists()

    def rss(self) -> int:
        if not self.available:
            return 0
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.base = self.peak = self.rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss())

    @property
    def delta_mb(self) -> Optional[float]:
        return (self.peak - self.base) / 2**20 if self.available else None


def _on_gpu() -> bool:
    return jax.default_backend() == "gpu"


def time_steps(run: Callable[[int], None], sync: Callable[[], None], warmup: int, reps: int,
               rep_seconds: float) -> dict:
    """``run(n)`` does n steps; returns per-step times (s) of ``reps`` repetitions."""
    run(warmup)
    sync()
    t = time.perf_counter()
    run(1)
    sync()
    one = time.perf_counter() - t
    k = max(1, min(1000, int(math.ceil(rep_seconds / max(one, 1e-6)))))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        run(k)
        sync()
        times.append((time.perf_counter() - t) / k)
    return {"step_s": statistics.median(times), "step_s_min": min(times),
            "step_s_max": max(times), "steps_per_rep": k, "reps": reps}


def _xla_mb(compiled) -> Optional[float]:
    try:
        m = compiled.memory_analysis()
        total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
        return total / 2**20
    except Exception:  # not every backend reports it
        return None


def _jax_device_peak_mb() -> Optional[float]:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


class Runner(NamedTuple):
    """What a peer hands to the timer: ``compile() -> seconds``, ``run(n)``, ``sync()``.

    ``forward(n)``, when given, runs n forward passes only (no gradients); it
    is timed after the train steps and reported as ``fwd_step_s``.
    """

    compile: Callable[[], float]
    run: Callable[[int], None]
    sync: Callable[[], None]
    xla_mb: Callable[[], Optional[float]]
    extra: dict
    forward: Optional[Callable[[int], None]] = None


def _jax_runner(jitted, args: list, carry_index: Optional[int], state_index: int = 0) -> Runner:
    """Time a jitted ``f(*args) -> (state, carry, ...)`` or ``f(*args) -> grads`` step."""
    box: dict = {"args": list(args)}

    def compile_() -> float:
        t = time.perf_counter()
        box["compiled"] = jitted.lower(*box["args"]).compile()
        return time.perf_counter() - t

    def run(n: int) -> None:
        f, a = box["compiled"], box["args"]
        for _ in range(n):
            out = f(*a)
            if carry_index is not None:
                a[state_index] = out[0]
                a[carry_index] = out[1]
            box["last"] = out

    def sync() -> None:
        # Every output of the last step (new state, carry, loss / gradients):
        # dispatch is asynchronous on a GPU, and each step reads the state the
        # one before wrote, so this waits for all n steps.
        if "last" in box:
            jax.block_until_ready(box["last"])

    return Runner(compile_, run, sync, lambda: _xla_mb(box["compiled"]), {})


# --------------------------------------------------------------------------
# Data, shared by every implementation of one shape.


def make_data(shape: Shape, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    if shape.mode == "lm":
        toks = rng.integers(0, shape.V, (shape.B, shape.T + 1)).astype(np.int32)
        return {"inputs": toks[:, :-1], "targets": toks[:, 1:]}
    xs = rng.standard_normal((shape.T, shape.B, shape.H)).astype(np.float32)
    return {"xs": xs}


# --------------------------------------------------------------------------
# jrnn and its variants.


def _bf16_cell(cell: jrnn.Cell) -> jrnn.Cell:
    """Matmuls in bfloat16, the carry and everything elementwise in float32.

    The recurrent matmul gets ``h`` and ``W_h`` rounded to bfloat16, and its
    bfloat16 product is promoted back to float32 when added to the float32
    input projection.  LSTM and Elman cells use ``h`` only in that matmul, so
    their carry stays float32; the GRU also blends ``z * h`` with the rounded
    ``h`` (a small extra error).
    """
    bf16 = jnp.bfloat16

    def project(params, xs):
        return jax.lax.dot_general(
            xs.astype(bf16), params["W"].astype(bf16), (((xs.ndim - 1,), (0,)), ((), ())),
            preferred_element_type=jnp.float32) + params["b"]

    def step(params, carry, x_proj):
        p = dict(params, W_h=params["W_h"].astype(bf16))
        if isinstance(carry, jrnn.LSTMCarry):
            low = carry._replace(h=carry.h.astype(bf16))
        else:
            low = carry.astype(bf16)
        new, h = cell.step(p, low, x_proj)
        return jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), new), h.astype(jnp.float32)

    return cell._replace(project=project, step=step)


def _remat_cell(cell: jrnn.Cell) -> jrnn.Cell:
    # The scan's backward pass re-runs each step from its carry instead of
    # keeping the step's gates: T * B * (G + 1) * H floats fewer, one more step forward.
    return jrnn.remat(cell)


def _jrnn_cells(shape: Shape, remat: bool, bf16: bool, make_cell: Callable = None) -> list:
    make_cell = make_cell or jrnn.make_cell
    cells = [make_cell(shape.cell, shape.H) for _ in range(shape.L)]
    if bf16:
        cells = [_bf16_cell(c) for c in cells]
    if remat:
        cells = [_remat_cell(c) for c in cells]
    return cells


def _jrnn_lm(shape: Shape, unroll: int, remat: bool, bf16: bool,
             custom_vjp: bool = True, make_cell: Callable = None,
             method: str = "scan", output_precision: str = "float32",
             precision: str = "float32") -> jrnn.LanguageModel:
    """``jrnn.rnn_lm`` itself, or one with the same params whose apply uses other cells
    (wrapped ones, or those of ``make_cell(kind, H)``)."""
    base = jrnn.rnn_lm(shape.V, cell=shape.cell, embed_size=shape.H, hidden_size=shape.H,
                       num_layers=shape.L, method=method, scan_unroll=unroll,
                       custom_vjp=custom_vjp, output_precision=output_precision,
                       recurrence_precision=precision)
    if not (remat or bf16 or make_cell):
        return base
    cells = _jrnn_cells(shape, remat, bf16, make_cell)

    def apply(params, tokens, carry=None, *, lengths=None, key=None):
        del key  # no dropout in the benchmark
        xs = params["embed"][tokens.T]
        carry, hs = jrnn.unroll(cells, params["layers"], xs, carry, lengths=lengths,
                                method="scan", scan_unroll=unroll, custom_vjp=custom_vjp)
        hs = jnp.swapaxes(hs, 0, 1)
        W, b = params["out"]["W"], params["out"]["b"]
        if bf16:
            logits = jax.lax.dot_general(hs.astype(jnp.bfloat16), W.astype(jnp.bfloat16),
                                         (((2,), (0,)), ((), ())),
                                         preferred_element_type=jnp.float32) + b
        else:
            logits = hs @ W + b
        return logits, carry

    return base._replace(apply=apply)


def jrnn_runner(shape: Shape, data: dict, *, unroll: int = 1, remat: bool = False,
                bf16: bool = False, custom_vjp: bool = True, make_cell: Callable = None,
                method: str = "scan", output_precision: str = "float32",
                precision: str = "float32") -> Runner:
    if shape.mode == "lm":
        model = _jrnn_lm(shape, unroll, remat, bf16, custom_vjp, make_cell, method,
                         output_precision, precision)
        opt = optax.sgd(LR)
        state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
        step = jrnn.make_train_step(model, opt, clip_norm=CLIP)
        args = [state, jnp.asarray(data["inputs"]), jnp.asarray(data["targets"]),
                model.initial_carry(shape.B)]
        return _jax_runner(step, args, carry_index=3)
    cells = _jrnn_cells(shape, remat, bf16, make_cell)
    params = [c.init(k, shape.H) for c, k in
              zip(cells, jax.random.split(jax.random.PRNGKey(0), shape.L))]

    def loss(params, xs):
        return jnp.sum(jrnn.unroll(cells, params, xs, method=method, scan_unroll=unroll,
                                   custom_vjp=custom_vjp, precision=precision)[1])

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return _jax_runner(grad, [params, jnp.asarray(data["xs"])], carry_index=None)


def jrnn_pallas_runner(shape: Shape, data: dict, *, bf16: bool = False) -> Runner:
    """jrnn's fused Pallas kernels (``method="pallas"``, float32 or bfloat16 operands): the same
    train step or recurrence as the ``jrnn[u=...]`` rows.  A shape whose ``W_h`` is over
    the kernels' on-chip budget is reported n/a with the reason (it would run the scan)."""
    from jrnn.core import pallas

    cell = jrnn.make_cell(shape.cell, shape.H)
    reason = pallas.fallback_reason(cell, bf16=bf16)
    if reason is not None:
        raise _Skip(f"n/a: {reason}")
    return jrnn_runner(shape, data, method="pallas", precision="bfloat16" if bf16 else "float32")


def jrnn_full_f32_runner(shape: Shape, data: dict) -> Runner:
    """jrnn's default step with every float32 matmul at full precision
    (``jax.default_matmul_precision("highest")``: no TF32 on a GPU), beside the default
    (which lets XLA use TF32 on Hopper), as ``torch-f32-full`` is beside ``torch``."""
    with jax.default_matmul_precision("highest"):
        runner = jrnn_runner(shape, data, unroll=8 if _on_gpu() else 1)

    def highest(fn):
        def wrapped(*a):
            with jax.default_matmul_precision("highest"):
                return fn(*a)
        return wrapped

    return runner._replace(compile=highest(runner.compile), run=highest(runner.run),
                           extra={**runner.extra, "matmul_precision": "highest"},
                           forward=runner.forward and highest(runner.forward))


def jrnn_persistent_runner(shape: Shape, data: dict, *, bf16: bool = False) -> Runner:
    """jrnn's persistent multi-block kernels (``method="persistent"``: ``W_h`` split over
    thread blocks, a grid barrier per step); n/a with the reason where they do not fit."""
    from jrnn.core import unroll

    cell = jrnn.make_cell(shape.cell, shape.H)
    reason = unroll.kernel_fallback_reason(cell, "persistent", batch=shape.B,
                                           precision="bfloat16" if bf16 else "float32")
    if reason is not None:
        raise _Skip(f"n/a: {reason}")
    return jrnn_runner(shape, data, method="persistent",
                       precision="bfloat16" if bf16 else "float32")


def jrnn_cudnn_runner(shape: Shape, data: dict) -> Runner:
    """``jrnn.unroll(..., method="cudnn")``: cuDNN's LSTM with jrnn's params converted."""
    from jrnn.core import cudnn

    # Timed under jit, where the binding is not safe (jrnn.core.cudnn.UNDER_JIT): the
    # train step would run the scan.  Kept for eager use and for a fixed JAX.
    reason = cudnn.fallback_reason(jrnn.make_cell(shape.cell, shape.H), traced=True)
    if reason is not None:
        raise _Skip(f"n/a: {reason}")
    return jrnn_runner(shape, data, method="cudnn")


def bf16_accuracy(shape: Shape, data: dict) -> dict:
    """Loss and gradient of the bf16 variant against float32, same params and batch."""
    if shape.mode != "lm":
        cells32, cells16 = _jrnn_cells(shape, False, False), _jrnn_cells(shape, False, True)
        params = [c.init(k, shape.H) for c, k in
                  zip(cells32, jax.random.split(jax.random.PRNGKey(0), shape.L))]
        xs = jnp.asarray(data["xs"])

        def f(cells):
            return jax.jit(jax.value_and_grad(lambda p, xs: jnp.sum(jrnn.unroll(cells, p, xs)[1])))

        (l32, g32), (l16, g16) = f(cells32)(params, xs), f(cells16)(params, xs)
    else:
        m32, m16 = _jrnn_lm(shape, 1, False, False), _jrnn_lm(shape, 1, False, True)
        params = m32.init(jax.random.PRNGKey(0))
        x, y = jnp.asarray(data["inputs"]), jnp.asarray(data["targets"])

        def f(m):
            return jax.jit(jax.value_and_grad(
                lambda p, x, y: jrnn.sequence_loss(m, p, x, y, batch_mean=True)[0]))

        (l32, g32), (l16, g16) = f(m32)(params, x, y), f(m16)(params, x, y)
    diff = jax.tree_util.tree_map(lambda a, b: a - b, g16, g32)
    gnorm = float(optax.global_norm(g32))
    return {"loss_f32": float(l32), "loss_bf16": float(l16),
            "loss_rel_err": abs(float(l16) - float(l32)) / abs(float(l32)),
            "grad_rel_err": float(optax.global_norm(diff)) / gnorm}


def _sgd_train_step(forward, *, time_major_logits: bool = False):
    """The peers' jitted train step: summed CE / B, clip at CLIP, SGD at LR, carry passed on.

    ``forward(params, x, carries) -> (logits, new_carries)``; logits are
    ``[B, T, V]``, or ``[T, B, V]`` with ``time_major_logits``.
    Returns ``(jitted_step, optimizer)``.
    """
    opt = optax.chain(optax.clip_by_global_norm(CLIP), optax.sgd(LR))

    def step(state, x, y, carries):
        params, opt_state = state

        def loss_fn(p):
            logits, new = forward(p, x, carries)
            labels = y.T if time_major_logits else y
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
            return jnp.sum(ce) / x.shape[0], new

        (loss, new), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), jax.lax.stop_gradient(new), loss

    return jax.jit(step, donate_argnums=(0, 3)), opt


# --------------------------------------------------------------------------
# Flax linen.


def flax_runner(shape: Shape, data: dict) -> Runner:
    import flax.linen as nn

    cell_cls = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell, "elman": nn.SimpleCell}[shape.cell]
    H, B = shape.H, shape.B

    def zeros_carry():
        z = jnp.zeros((B, H))
        return (z, jnp.zeros((B, H))) if shape.cell == "lstm" else z

    if shape.mode == "rec":
        class Rec(nn.Module):
            @nn.compact
            def __call__(self, xs):  # [B, T, H]
                for _ in range(shape.L):
                    xs = nn.RNN(cell_cls(H))(xs)
                return xs

        net = Rec()
        xs = jnp.asarray(np.swapaxes(data["xs"], 0, 1))  # flax is batch-major
        params = net.init(jax.random.PRNGKey(0), xs)
        grad = jax.jit(jax.grad(lambda p, x: jnp.sum(net.apply(p, x)), argnums=(0, 1)))
        return _jax_runner(grad, [params, xs], carry_index=None)

    class LM(nn.Module):
        @nn.compact
        def __call__(self, tokens, carries):
            x = nn.Embed(shape.V, H)(tokens)
            new = []
            for layer in range(shape.L):
                carry, x = nn.RNN(cell_cls(H), return_carry=True)(x, initial_carry=carries[layer])
                new.append(carry)
            return nn.Dense(shape.V)(x), new

    net = LM()
    x, y = jnp.asarray(data["inputs"]), jnp.asarray(data["targets"])
    carries = [zeros_carry() for _ in range(shape.L)]
    params = net.init(jax.random.PRNGKey(0), x, carries)
    jitted, opt = _sgd_train_step(net.apply)
    return _jax_runner(jitted, [(params, opt.init(params)), x, y, carries], carry_index=3)


# --------------------------------------------------------------------------
# Equinox.


def equinox_runner(shape: Shape, data: dict) -> Runner:
    import equinox as eqx

    if shape.cell == "elman":
        raise _Skip("equinox has no plain (Elman) RNN cell")
    cell_cls = {"lstm": eqx.nn.LSTMCell, "gru": eqx.nn.GRUCell}[shape.cell]
    H, B = shape.H, shape.B
    keys = jax.random.split(jax.random.PRNGKey(0), shape.L + 2)
    cells = [cell_cls(H, H, key=keys[i]) for i in range(shape.L)]

    def zeros_carry():
        z = jnp.zeros((B, H))
        return (z, jnp.zeros((B, H))) if shape.cell == "lstm" else z

    def run_layers(cells, xs, carries):  # xs: [T, B, H]
        finals = []
        for cell, c0 in zip(cells, carries):
            batched = jax.vmap(cell)  # eqx cells take one example: vmap over the batch

            def body(c, x_t, batched=batched):
                c = batched(x_t, c)
                return c, (c[0] if isinstance(c, tuple) else c)

            c, xs = jax.lax.scan(body, c0, xs)
            finals.append(c)
        return xs, finals

    if shape.mode == "rec":
        params, static = eqx.partition(cells, eqx.is_array)

        def loss(params, xs):
            cs = eqx.combine(params, static)
            return jnp.sum(run_layers(cs, xs, [zeros_carry() for _ in cs])[0])

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        return _jax_runner(grad, [params, jnp.asarray(data["xs"])], carry_index=None)

    class LM(eqx.Module):
        embed: eqx.nn.Embedding
        cells: list
        out: eqx.nn.Linear

        def __call__(self, tokens, carries):  # tokens: [B, T]
            xs = self.embed.weight[tokens.T]  # [T, B, H]
            hs, finals = run_layers(self.cells, xs, carries)
            return hs @ self.out.weight.T + self.out.bias, finals  # [T, B, V]

    model = LM(eqx.nn.Embedding(shape.V, H, key=keys[-2]), cells,
               eqx.nn.Linear(H, shape.V, key=keys[-1]))
    params, static = eqx.partition(model, eqx.is_array)
    jitted, opt = _sgd_train_step(lambda p, x, c: eqx.combine(p, static)(x, c),
                                  time_major_logits=True)
    carries = [zeros_carry() for _ in range(shape.L)]
    args = [(params, opt.init(params)), jnp.asarray(data["inputs"]), jnp.asarray(data["targets"]),
            carries]
    return _jax_runner(jitted, args, carry_index=3)


# --------------------------------------------------------------------------
# PyTorch.


_TORCH_TF32: dict = {}


def cudnn_rnn_algorithm(cell: str, hidden: int, input_size: int, layers: int, batch: int,
                        seq_len: int, half: bool, forward: bool, major: int, minor: int,
                        sms: int) -> str:
    """The cuDNN RNN algorithm PyTorch asks for on this shape: its ``get_algo`` rule
    (``aten/src/ATen/native/cudnn/RNN.cpp``, unpacked input, unidirectional, no
    projection), restated here so that every timing says what it compared against.

    Example:
      >>> cudnn_rnn_algorithm("elman", 256, 256, 1, 64, 1024, False, True, 9, 0, 132)
      'PERSIST_STATIC_SMALL_H'
      >>> cudnn_rnn_algorithm("lstm", 768, 768, 1, 16, 1024, True, True, 9, 0, 132)
      'PERSIST_STATIC'
      >>> cudnn_rnn_algorithm("lstm", 200, 200, 2, 20, 35, False, True, 9, 0, 132)
      'STANDARD'
    """
    if major >= 6:  # PERSIST_STATIC_SMALL_H: small hidden sizes, any dtype but double
        small = {True: {"elman": 384, "lstm": 192, "gru": 192},
                 False: {"elman": 256, "lstm": 128, "gru": 128}}[forward][cell]
        if hidden <= small:
            return "PERSIST_STATIC_SMALL_H"
    if half and layers == 1 and hidden <= 1024 and hidden % 128 == 0 and input_size % 128 == 0:
        if major == 7 and minor != 5:
            ok = (((batch % 16 == 0 and batch not in (80, 112)) or batch == 8)
                  and ((seq_len >= 40 and batch <= 128) or (seq_len >= 20 and batch <= 96)
                       or (seq_len >= 10 and batch <= 32)))
        elif major >= 8 and sms >= 98 and minor != 6:
            ok = (cell != "gru" and batch % 8 == 0 and batch <= 128
                  and (cell == "lstm" or batch < 96 or hidden < 896))
        else:
            ok = False
        if ok:
            return "PERSIST_STATIC"
    return "STANDARD"


def torch_runner(shape: Shape, data: dict, threads: Optional[int] = None,
                 half: bool = False, full_f32: bool = False) -> Runner:
    """PyTorch ``nn.LSTM`` / ``GRU`` / ``RNN`` (cuDNN on a GPU), float32 or, with
    ``half``, the whole model ``.half()`` (loss in float32, SGD on the fp16
    weights, no grad scaler: the speed of cuDNN's fp16 kernels, persistent
    ones for the LSTM when cuDNN's heuristics allow, not a training recipe)."""
    import torch

    # PyTorch's own TF32 settings, as this process started (cuDNN: allowed by default).
    defaults = _TORCH_TF32.setdefault("defaults", (torch.backends.cudnn.allow_tf32,
                                                   torch.backends.cuda.matmul.allow_tf32))

    def set_threads():
        if threads:
            torch.set_num_threads(threads)
        # full_f32: no TF32 in cuDNN or cuBLAS; otherwise PyTorch's defaults (reset each
        # time: a full-float32 runner earlier in the process must not leak into this one).
        torch.backends.cudnn.allow_tf32 = defaults[0] and not full_f32
        torch.backends.cuda.matmul.allow_tf32 = defaults[1] and not full_f32

    set_threads()

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if half else torch.float32
    torch.manual_seed(0)
    rnn_cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "elman": torch.nn.RNN}[shape.cell]
    H, B = shape.H, shape.B
    rnn = rnn_cls(H, H, num_layers=shape.L).to(dev, dtype)  # time-major, as cuDNN wants

    def zeros_hidden():
        z = torch.zeros(shape.L, B, H, device=dev, dtype=dtype)
        return (z, torch.zeros_like(z)) if shape.cell == "lstm" else z

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    forward_only = None
    if shape.mode == "rec":
        xs = torch.tensor(data["xs"], device=dev, dtype=dtype, requires_grad=True)

        def run(n):
            set_threads()
            for _ in range(n):
                rnn.zero_grad(set_to_none=True)
                xs.grad = None
                out, _ = rnn(xs)
                out.sum().backward()  # d sum / d out = 1 even if an fp16 sum overflows

        def forward(n):
            set_threads()
            with torch.no_grad():
                for _ in range(n):
                    rnn(xs)

        forward_only = forward
    else:
        embed = torch.nn.Embedding(shape.V, H).to(dev, dtype)
        out_layer = torch.nn.Linear(H, shape.V).to(dev, dtype)
        params = list(embed.parameters()) + list(rnn.parameters()) + list(out_layer.parameters())
        opt = torch.optim.SGD(params, lr=LR)
        x = torch.tensor(data["inputs"].T.copy(), dtype=torch.long, device=dev)  # [T, B]
        y = torch.tensor(data["targets"].T.copy(), dtype=torch.long, device=dev)
        box = {"hidden": zeros_hidden()}

        def run(n):
            set_threads()
            for _ in range(n):
                opt.zero_grad(set_to_none=True)
                hs, hidden = rnn(embed(x), box["hidden"])
                logits = out_layer(hs).float()
                loss = torch.nn.functional.cross_entropy(
                    logits.reshape(-1, shape.V), y.reshape(-1), reduction="sum") / B
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, CLIP)
                opt.step()
                box["hidden"] = (tuple(h.detach() for h in hidden) if isinstance(hidden, tuple)
                                 else hidden.detach())

    def compile_():
        t = time.perf_counter()
        run(1)
        sync()
        return time.perf_counter() - t

    extra = {"threads": torch.get_num_threads(), "dtype": str(dtype).replace("torch.", ""),
             "cudnn": bool(dev.type == "cuda" and torch.backends.cudnn.enabled)}
    if dev.type == "cuda":
        extra.update(cudnn_version=torch.backends.cudnn.version(),
                     cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                     matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32)
        props = torch.cuda.get_device_properties(dev)
        for forward in (True, False):
            extra["cudnn_algo_" + ("forward" if forward else "backward")] = cudnn_rnn_algorithm(
                shape.cell, H, H, shape.L, B, shape.T, half, forward, props.major, props.minor,
                props.multi_processor_count)
    return Runner(compile_, run, sync, lambda: None, extra, forward_only)


# --------------------------------------------------------------------------
# jax.experimental.rnn: JAX's binding of cuDNN's LSTM.


def jax_cudnn_runner(shape: Shape, data: dict) -> Runner:
    """``jax.experimental.rnn.lstm`` (cuDNN, float32, batch-major), all layers in one call.

    Its weights are one flat vector in cuDNN's layout, initialised by
    ``rnn.init_lstm_weight``; ``benchmarks/jax_cudnn.py`` converts jrnn's LSTM
    params into it and checks the outputs against jrnn.  The LM step is the
    peers' (embedding -> LSTM -> dense -> summed CE / B, clip 5, SGD).
    """
    if shape.cell != "lstm":
        raise _Skip("n/a: jax.experimental.rnn has only the LSTM")
    from jax.experimental import rnn

    if not _on_gpu() and not getattr(rnn, "_jrnn_emulated_on_cpu", False):
        raise _Skip("n/a: needs a CUDA GPU (cuDNN); the weight layout is checked on CPU by "
                    "benchmarks/jax_cudnn.py")
    H, B, L, T = shape.H, shape.B, shape.L, shape.T
    k_w, k_e, k_o = jax.random.split(jax.random.PRNGKey(0), 3)
    weights = rnn.init_lstm_weight(k_w, H, H, L, False)
    seq_lengths = jnp.full((B,), T, jnp.int32)

    def lstm(w, xs, h0, c0):  # xs: [B, T, H]
        return rnn.lstm(xs, h0, c0, w, seq_lengths, H, H, L, 0.0, False)

    def zeros_carry():
        return (jnp.zeros((L, B, H)), jnp.zeros((L, B, H)))

    if shape.mode == "rec":
        def loss(w, xs):
            h0, c0 = zeros_carry()
            return jnp.sum(lstm(w, xs, h0, c0)[0])

        grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
        xs = jnp.asarray(np.swapaxes(data["xs"], 0, 1))  # cuDNN here is batch-major
        fwd = jax.jit(lambda w, xs: lstm(w, xs, *zeros_carry())[0])
        runner = _jax_runner(grad, [weights, xs], carry_index=None)

        def forward(n):
            for _ in range(n):
                out = fwd(weights, xs)
            jax.block_until_ready(out)

        return runner._replace(forward=forward)

    params = {"embed": jax.random.uniform(k_e, (shape.V, H), minval=-0.1, maxval=0.1),
              "lstm": weights,
              "out": {"W": jax.random.uniform(k_o, (H, shape.V), minval=-0.1, maxval=0.1),
                      "b": jnp.zeros((shape.V,))}}

    def forward_lm(p, tokens, carry):  # tokens: [B, T]
        ys, h, c = lstm(p["lstm"], p["embed"][tokens], *carry)
        return ys @ p["out"]["W"] + p["out"]["b"], (h, c)

    jitted, opt = _sgd_train_step(forward_lm)
    args = [(params, opt.init(params)), jnp.asarray(data["inputs"]), jnp.asarray(data["targets"]),
            zeros_carry()]
    return _jax_runner(jitted, args, carry_index=3)


# --------------------------------------------------------------------------


class _Skip(Exception):
    pass


def versions() -> dict:
    out = {"python": platform.python_version(), "jax": jax.__version__,
           "jaxlib": _pkg_version("jaxlib"),
           "numpy": np.__version__, "optax": optax.__version__, "jrnn": jrnn.__version__}
    for name in ("flax", "equinox", "chex", "torch"):
        out[name] = _pkg_version(name)
    try:  # None: XLA's default (TF32 for float32 matmuls on recent NVIDIA GPUs)
        out["jax_default_matmul_precision"] = jax.config.jax_default_matmul_precision
    except Exception:  # noqa: BLE001
        pass
    return out


def _pkg_version(name: str) -> Optional[str]:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:
        return None


def machine() -> dict:
    info = {"platform": platform.platform(), "nproc": os.cpu_count(),
            "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
            "device_kind": jax.devices()[0].device_kind}
    try:
        info["sched_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The vector extensions the speed depends on (the brief: record them with every timing).
    info["vector"] = select.vector_extensions()
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    return info


def _error(rec: dict, stage: str, e: BaseException) -> dict:
    """An error row: one line in the table and JSON, the traceback on stderr."""
    import traceback

    print(f"--- {rec['impl']} failed during {stage}:", file=sys.stderr)
    traceback.print_exc(file=sys.stderr)
    sys.stderr.flush()
    msg = " ".join(str(e).split())
    return {**rec, "error": f"{stage}: {type(e).__name__}: {msg[:400]}"}


def _release_torch_memory(name: str) -> None:
    if name.startswith("torch") and "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # let the JAX implementations have it back


def measure(name: str, make: Callable[[], Runner], shape: Shape, args) -> tuple:
    gc.collect()
    rec: dict = {"impl": name}
    try:
        runner = make()
    except _Skip as e:
        return {**rec, "skipped": str(e)}, None
    except ImportError as e:
        return {**rec, "skipped": f"not installed ({e.name})"}, None
    except Exception as e:  # noqa: BLE001 -- one peer failing must not end the run
        _release_torch_memory(name)
        return _error(rec, "setup", e), None
    stage = "compile"
    try:
        rec["compile_s"] = runner.compile()
        stage = "timing"
        with RSSSampler() as mem:
            rec.update(time_steps(runner.run, runner.sync, args.warmup, args.reps,
                                  args.rep_seconds))
        rec["tokens_per_s"] = shape.B * shape.T / rec["step_s"]
        rec["xla_mb"] = runner.xla_mb()
        rec["rss_mb"] = mem.delta_mb
        if _on_gpu():
            if name.startswith("torch"):
                import torch

                rec["device_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
                torch.cuda.reset_peak_memory_stats()
            else:
                rec["device_peak_mb"] = _jax_device_peak_mb()  # process-wide high-water mark
        rec.update(runner.extra)
        if runner.forward is not None and not getattr(args, "no_forward", False):
            stage = "forward timing"
            fwd = time_steps(runner.forward, runner.sync, 2, args.reps, args.rep_seconds)
            rec["fwd_step_s"] = fwd["step_s"]
    except Exception as e:  # noqa: BLE001
        rec = _error(rec, stage, e)
        runner = None
    _release_torch_memory(name)
    return rec, runner


def interleave(measured: list, shape: Shape, reps: int) -> None:
    """Time every implementation again, round-robin, so that all see the same contention."""
    times: dict = {i: [] for i, (rec, runner) in enumerate(measured) if runner is not None}
    for _ in range(reps):
        for i in times:
            rec, runner = measured[i]
            k = rec["steps_per_rep"]
            t = time.perf_counter()
            runner.run(k)
            runner.sync()
            times[i].append((time.perf_counter() - t) / k)
    for i, ts in times.items():
        rec = measured[i][0]
        rec["step_s_interleaved"] = statistics.median(ts)
        rec["tokens_per_s_interleaved"] = shape.B * shape.T / rec["step_s_interleaved"]


def _step_s(rec: dict) -> float:
    return rec.get("step_s_interleaved", rec["step_s"])


def _is_jrnn(impl: str) -> bool:
    return impl.startswith("jrnn")


def run_shape(shape_name: str, args, save: Callable[[dict], None] = lambda res: None) -> dict:
    """Time every implementation on one shape, in the order of ``args.peers``
    (``jrnn`` stands for its variants); ``save(partial result)`` after each one."""
    shape = SHAPES[shape_name]
    data = make_data(shape)
    impls: list[tuple[str, Callable[[], Runner]]] = []
    makers = {"flax": flax_runner, "equinox": equinox_runner, "torch": torch_runner,
              "torch-fp16": lambda shape, data: torch_runner(shape, data, half=True),
              "jax-cudnn": jax_cudnn_runner,
              "jrnn-pallas": jrnn_pallas_runner,
              "jrnn-pallas-bf16": lambda shape, data: jrnn_pallas_runner(shape, data, bf16=True),
              "jrnn-persistent": jrnn_persistent_runner,
              "jrnn-persistent-bf16": lambda shape, data: jrnn_persistent_runner(shape, data,
                                                                                 bf16=True),
              "torch-f32-full": lambda shape, data: torch_runner(shape, data, full_f32=True),
              "jrnn-f32-full": jrnn_full_f32_runner,
              "jrnn-cudnn": jrnn_cudnn_runner}
    # jrnn as `jrnn train` runs it: the output layer's precision chosen for this machine
    # (jrnn.core.select.output_matmul_dtype); where that is bfloat16, a float32 row as well.
    auto_out = select.output_matmul_dtype().dtype if shape.mode == "lm" else "float32"
    for peer in args.peers:
        if peer == "jrnn":
            tag = ",out=bf16" if auto_out == "bfloat16" else ""
            for u in args.unroll:
                impls.append((f"jrnn[u={u}{tag}]", lambda u=u: jrnn_runner(
                    shape, data, unroll=u, output_precision=auto_out)))
            u = args.unroll[0]
            if auto_out != "float32":
                impls.append((f"jrnn[u={u},out=f32]", lambda u=u: jrnn_runner(shape, data, unroll=u)))
            if args.autodiff:
                impls.append((f"jrnn[u={u},autodiff]",
                              lambda u=u: jrnn_runner(shape, data, unroll=u, custom_vjp=False)))
            if args.remat:
                impls.append((f"jrnn[u={u},remat]",
                              lambda u=u: jrnn_runner(shape, data, unroll=u, remat=True)))
            if args.bf16:
                impls.append((f"jrnn[u={u},bf16]",
                              lambda u=u: jrnn_runner(shape, data, unroll=u, bf16=True)))
        elif peer == "torch" and args.torch_threads:
            for n in args.torch_threads:
                impls.append((f"torch[t={n}]", lambda n=n: torch_runner(shape, data, n)))
        elif peer in makers:
            impls.append((peer, lambda peer=peer: makers[peer](shape, data)))

    out = {"shape": shape_name, **shape._asdict(), "rows": []}
    measured = []
    for name, make in impls:
        rec, runner = measure(name, make, shape, args)
        measured.append((rec, runner if args.interleave else None))
        del runner
        out["rows"].append(rec)
        _print_progress(shape_name, rec)
        save(out)
    if args.interleave:
        interleave(measured, shape, args.reps)
    rows = out["rows"]
    del measured
    peers = {r["impl"]: r for r in rows if "step_s" in r and not _is_jrnn(r["impl"])}
    for r in rows:
        if _is_jrnn(r["impl"]) and "step_s" in r:
            r["ratio"] = {p: _step_s(pr) / _step_s(r) for p, pr in peers.items()}
    if args.bf16:
        out["bf16_accuracy"] = bf16_accuracy(shape, data)
    save(out)
    return out


def _print_progress(shape_name: str, rec: dict) -> None:
    if "skipped" in rec:
        print(f"  {shape_name:15s} {rec['impl']:22s} skipped: {rec['skipped']}", flush=True)
    elif "error" in rec:
        print(f"  {shape_name:15s} {rec['impl']:22s} ERROR {rec['error']}", flush=True)
    else:
        print(f"  {shape_name:15s} {rec['impl']:22s} {rec['step_s'] * 1e3:9.2f} ms "
              f"{rec['tokens_per_s']:12,.0f} tok/s  compile {rec['compile_s']:.2f} s", flush=True)


def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_table(results: list, peers: list, interleaved: bool = False) -> None:
    names = [r["impl"] for res in results for r in res["rows"] if "step_s" in r]
    peer_cols = list(dict.fromkeys(n for n in names if not _is_jrnn(n)))
    head = (f"{'shape':15s} {'impl':20s} {'tok/s':>11s} {'step ms':>9s} {'compile s':>9s} "
            f"{'xla MB':>8s} {'rss MB':>8s} " + " ".join(f"{'x' + p:>9s}" for p in peer_cols))
    print()
    print(head)
    print("-" * len(head))
    for res in results:
        for r in res["rows"]:
            if "skipped" in r:
                print(f"{res['shape']:15s} {r['impl']:20s} skipped: {r['skipped']}")
                continue
            if "error" in r:
                print(f"{res['shape']:15s} {r['impl']:20s} err: {r['error'][:80]}")
                continue
            ratios = " ".join(_fmt(r.get("ratio", {}).get(p), "9.2f") for p in peer_cols)
            print(f"{res['shape']:15s} {r['impl']:20s} {res['B'] * res['T'] / _step_s(r):11,.0f} "
                  f"{_step_s(r) * 1e3:9.2f} {r['compile_s']:9.2f} {_fmt(r['xla_mb'], '8.1f')} "
                  f"{_fmt(r['rss_mb'], '8.1f')} {ratios}")
        if "bf16_accuracy" in res:
            a = res["bf16_accuracy"]
            print(f"{'':15s} bf16 vs f32: loss rel err {a['loss_rel_err']:.2e}, "
                  f"grad rel err {a['grad_rel_err']:.2e}")
    print("\nx<peer>: peer step time / jrnn step time (> 1: jrnn faster)."
          + (" Times from the interleaved (round-robin) repetitions." if interleaved else ""))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shapes", default=None,
                   help="comma-separated shape names (default: a CPU or GPU set); see --list")
    p.add_argument("--peers", default=",".join(PEERS),
                   help=f"comma-separated, timed in this order: {PEERS} and the opt-in "
                        f"{OPT_IN_PEERS}")
    p.add_argument("--unroll", default="1", help="jrnn scan unroll factors to measure, e.g. 1,2,4,8")
    p.add_argument("--remat", action="store_true", help="also time jrnn with jax.checkpoint'ed steps")
    p.add_argument("--bf16", action="store_true", help="also time jrnn with bf16 matmuls")
    p.add_argument("--autodiff", action="store_true",
                   help="also time jrnn with custom_vjp=False (plain autodiff, the [B*T, V] logits)")
    p.add_argument("--keep-host-memory", action="store_true",
                   help="call keep_host_memory() first: glibc keeps freed memory for reuse; "
                        "it applies to the whole process, so to every implementation alike")
    p.add_argument("--torch-threads", default="",
                   help="PyTorch intra-op thread counts to measure, e.g. 2,1 (default: its own)")
    p.add_argument("--interleave", action="store_true",
                   help="after the one-by-one runs, time all implementations again round-robin "
                        "(fairer on a busy machine; the table then uses these times)")
    p.add_argument("--no-forward", action="store_true",
                   help="skip the forward-only timing of the rec shapes (PyTorch, jax-cudnn)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--rep-seconds", type=float, default=0.5)
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/out/peers-<time>.json)")
    p.add_argument("--list", action="store_true", help="list the shapes and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, s in SHAPES.items():
            print(f"{name:15s} {s.mode:3s} {s.cell:5s} B={s.B} T={s.T} H={s.H} L={s.L} V={s.V}  {s.note}")
        return 0
    shapes = (args.shapes.split(",") if args.shapes
              else (GPU_DEFAULT if jax.default_backend() == "gpu" else CPU_DEFAULT))
    unknown = [s for s in shapes if s not in SHAPES]
    if unknown:
        p.error(f"unknown shapes {unknown}; see --list")
    args.peers = args.peers.split(",")
    unknown = [q for q in args.peers if q not in PEERS + OPT_IN_PEERS]
    if unknown:
        p.error(f"unknown peers {unknown}; known: {PEERS + OPT_IN_PEERS}")
    args.unroll = [int(u) for u in args.unroll.split(",")]
    args.torch_threads = [int(n) for n in args.torch_threads.split(",") if n]
    host_memory = "glibc default"
    if args.keep_host_memory:
        from jrnn.training.runtime import keep_host_memory  # only when asked: it changes the allocator

        host_memory = "kept (keep_host_memory)" if keep_host_memory() else "not applicable"
    info = {"machine": machine(), "versions": versions(), "argv": sys.argv,
            "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "settings": {"lr": LR, "clip": CLIP, "warmup": args.warmup, "reps": args.reps,
                         "rep_seconds": args.rep_seconds, "host_memory": host_memory}}
    print(json.dumps(info["machine"]), json.dumps(info["versions"]), f"host memory: {host_memory}",
          sep="\n", flush=True)
    out = Path(args.out) if args.out else OUT_DIR / f"peers-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results: list = []

    def save(partial: Optional[dict] = None, complete: bool = False) -> None:
        # Rewritten after every implementation, so a run cut off by a time
        # limit keeps what it measured.
        done = results + ([partial] if partial is not None else [])
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps({**info, "complete": complete, "results": done}, indent=1))
        os.replace(tmp, out)

    for s in shapes:
        results.append(run_shape(s, args, save))
    try:
        info["machine"]["loadavg_end"] = os.getloadavg()
    except OSError:
        pass
    print_table(results, args.peers, args.interleave)
    save(complete=True)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
