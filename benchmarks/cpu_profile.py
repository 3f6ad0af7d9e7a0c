"""Where a CPU spends the Zaremba-small train step: jrnn against PyTorch, piece by piece.

The step (2x200 LSTM, vocabulary 10k, B20 T35) is about 11 GFLOP, three
quarters of it in the output layer.  This script times, in one process and
interleaved (jrnn, torch, jrnn, torch, ...; median of ``--reps``):

* ``matmul:*``   bare matmuls of the output layer's three shapes --
  logits ``[700,200] x [200,10000]``, ``dW = h^T dlogits`` ``[200,700] x [700,10000]``,
  ``dh = dlogits W^T`` ``[700,10000] x [10000,200]`` -- as ``jnp.dot`` under
  ``jax.jit`` against ``torch.mm``, with the GFLOP/s each reaches;
* ``output-layer`` the whole softmax output layer with its loss, forward and
  backward: jrnn's chunked ``softmax_cross_entropy`` against
  ``nn.functional.linear`` + ``cross_entropy`` (sum over tokens, / B);
* ``output-layer:bf16`` the same with bfloat16 matmul operands: jrnn's
  ``matmul_dtype="bfloat16"`` (what ``output_precision="auto"`` picks on a
  CPU with AMX) against PyTorch's ``torch.autocast("cpu", torch.bfloat16)``;
* ``matmul:step`` / ``matmul:step:bf16`` the recurrence's per-step matmul
  ``h W_h``, ``[20,200] x [200,800]``, with float32 operands and with bfloat16
  operands accumulating in float32 (``preferred_element_type``), 35 of them in a
  ``lax.scan`` as in one layer's forward pass (does the recurrence gain from bf16?);
* ``recurrence`` the two LSTM layers forward and backward over ``[35, 20, 200]``:
  ``jrnn.unroll`` (hand-written backward) against ``nn.LSTM(200, 200, 2)``;

The whole step is ``benchmarks/peers.py``'s to time.

It prints a table and writes JSON (``--out``), with the CPU model and vector
extensions from ``lscpu``.  PyTorch runs with ``--torch-threads`` threads
(default 2); XLA uses every core it is given.

    python benchmarks/cpu_profile.py [--reps 7] [--out benchmarks/results/cpu-profile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jrnn  # noqa: E402
from jrnn.core.backward import softmax_cross_entropy  # noqa: E402
from jrnn.core.select import vector_extensions  # noqa: E402

B, T, H, V = 20, 35, 200, 10_000
N = B * T


def cpu_info() -> dict:
    info = {"machine": platform.machine(), "nproc": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "Model", "CPU(s)", "Thread(s) per core"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        info["lscpu"] = "not available"
    info["vector"] = vector_extensions()
    return info


def _time(fn, reps: int, inner: int) -> float:
    """Median seconds per call over ``reps`` repetitions of ``inner`` calls."""
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - t) / inner)
    return statistics.median(times)


def jax_pieces(rng: np.random.Generator) -> dict:
    h = jnp.asarray(rng.standard_normal((N, H), np.float32))
    W = jnp.asarray(rng.uniform(-0.1, 0.1, (H, V)).astype(np.float32))
    g = jnp.asarray(rng.standard_normal((N, V), np.float32))
    y = jnp.asarray(rng.integers(0, V, N).astype(np.int32))
    b = jnp.zeros((V,), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot_tn = jax.jit(lambda a, c: a.T @ c)
    dot_nt = jax.jit(lambda a, c: a @ c.T)

    def out_loss(h, W, b):
        w = jnp.full((N,), 1.0 / B, jnp.float32)
        return softmax_cross_entropy(h, W, b, y, w)[0]  # (weighted sum, per-row losses)

    out_grad = jax.jit(jax.grad(out_loss, argnums=(0, 1, 2)))

    def out_loss_bf16(h, W, b):
        w = jnp.full((N,), 1.0 / B, jnp.float32)
        return softmax_cross_entropy(h, W, b, y, w, matmul_dtype="bfloat16")[0]

    out_grad_bf16 = jax.jit(jax.grad(out_loss_bf16, argnums=(0, 1, 2)))

    cells = [jrnn.lstm(H) for _ in range(2)]
    params = [c.init(k, H) for c, k in zip(cells, jax.random.split(jax.random.PRNGKey(0), 2))]
    xs = jnp.asarray(rng.standard_normal((T, B, H), np.float32))
    rec = jax.jit(jax.grad(lambda p, x: jnp.sum(jrnn.unroll(cells, p, x, method="scan",
                                                            scan_unroll=1)[1]),
                           argnums=(0, 1)))

    W_h = jnp.asarray(rng.uniform(-0.1, 0.1, (H, 4 * H)).astype(np.float32))
    h0 = jnp.asarray(rng.standard_normal((B, H), np.float32))

    def steps(dtype):
        def body(h, _):
            z = jax.lax.dot(h.astype(dtype), W_h.astype(dtype), preferred_element_type=jnp.float32)
            return jnp.tanh(z[:, :H]), None
        return jax.jit(lambda h: jax.lax.scan(body, h, None, length=T)[0])

    def run(f, *a):
        return lambda: jax.block_until_ready(f(*a))

    return {
        "matmul:logits": run(dot, h, W),
        "matmul:dW": run(dot_tn, h, g),
        "matmul:dh": run(dot_nt, g, W),
        "output-layer": run(out_grad, h, W, b),
        "output-layer:bf16": run(out_grad_bf16, h, W, b),
        "matmul:step": run(steps(jnp.float32), h0),
        "matmul:step:bf16": run(steps(jnp.bfloat16), h0),
        "recurrence": run(rec, params, xs),
    }


def torch_pieces(rng: np.random.Generator, threads: int):
    import torch

    torch.set_num_threads(threads)
    h = torch.tensor(rng.standard_normal((N, H), np.float32))
    W = torch.tensor(rng.uniform(-0.1, 0.1, (H, V)).astype(np.float32))
    g = torch.tensor(rng.standard_normal((N, V), np.float32))
    y = torch.tensor(rng.integers(0, V, N).astype(np.int64))
    Wt = W.t().contiguous()  # nn.Linear keeps [V, H]
    b = torch.zeros(V)

    def out_layer():
        hh = h.detach().requires_grad_()
        w = Wt.detach().requires_grad_()
        bb = b.detach().requires_grad_()
        loss = torch.nn.functional.cross_entropy(torch.nn.functional.linear(hh, w, bb), y,
                                                 reduction="sum") / B
        loss.backward()

    def out_layer_bf16():  # PyTorch's own mixed precision on a CPU: autocast to bfloat16
        hh = h.detach().requires_grad_()
        w = Wt.detach().requires_grad_()
        bb = b.detach().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = torch.nn.functional.linear(hh, w, bb)
        loss = torch.nn.functional.cross_entropy(logits.float(), y, reduction="sum") / B
        loss.backward()

    W_h = torch.tensor(rng.uniform(-0.1, 0.1, (H, 4 * H)).astype(np.float32))
    h0 = torch.tensor(rng.standard_normal((B, H), np.float32))

    def steps(dtype):
        w = W_h.to(dtype)

        def go():
            h = h0
            for _ in range(T):
                h = torch.tanh(torch.mm(h.to(dtype), w).float()[:, :H])
            return h
        return go

    lstm = torch.nn.LSTM(H, H, 2)
    xs = torch.tensor(rng.standard_normal((T, B, H), np.float32), requires_grad=True)

    def rec():
        lstm.zero_grad(set_to_none=True)
        out, _ = lstm(xs)
        out.sum().backward()

    with torch.no_grad():
        pieces = {
            "matmul:logits": lambda: torch.mm(h, W),
            "matmul:dW": lambda: torch.mm(h.t(), g),
            "matmul:dh": lambda: torch.mm(g, W.t()),
        }
    pieces["output-layer"] = out_layer
    pieces["output-layer:bf16"] = out_layer_bf16
    with torch.no_grad():
        pieces["matmul:step"] = steps(torch.float32)
        pieces["matmul:step:bf16"] = steps(torch.bfloat16)
    pieces["recurrence"] = rec
    return pieces, torch.__version__


FLOPS = {"matmul:logits": 2 * N * H * V, "matmul:dW": 2 * N * H * V, "matmul:dh": 2 * N * H * V,
         "output-layer": 6 * N * H * V, "output-layer:bf16": 6 * N * H * V,
         "matmul:step": 2 * T * B * H * 4 * H, "matmul:step:bf16": 2 * T * B * H * 4 * H,
         "recurrence": 3 * 2 * T * B * (2 * H) * 4 * H * 2}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    jx = jax_pieces(rng)
    try:
        tp, torch_version = torch_pieces(rng, args.torch_threads)
    except ImportError:
        tp, torch_version = {}, None
    rows = {}
    for name, fn in jx.items():
        fn()  # compile
        if name in tp:
            tp[name]()
        inner = 3 if name.startswith(("output-layer", "recurrence")) else 10
        # Interleaved: each repetition times jrnn, then torch.
        js, ts = [], []
        for _ in range(args.reps):
            js.append(_time(fn, 1, inner))
            if name in tp:
                ts.append(_time(tp[name], 1, inner))
        row = {"jrnn_ms": 1e3 * statistics.median(js)}
        if ts:
            row["torch_ms"] = 1e3 * statistics.median(ts)
            row["torch_over_jrnn"] = row["torch_ms"] / row["jrnn_ms"]
        flops = FLOPS.get(name)
        if flops:
            row["jrnn_gflops"] = flops / row["jrnn_ms"] / 1e6
            if ts:
                row["torch_gflops"] = flops / row["torch_ms"] / 1e6
        rows[name] = row
    res = {"cpu": cpu_info(), "jax": jax.__version__, "torch": torch_version,
           "torch_threads": args.torch_threads, "shape": {"B": B, "T": T, "H": H, "V": V},
           "rows": rows}
    print(f"CPU: {res['cpu'].get('Model name')} (model {res['cpu'].get('Model')}), "
          f"{res['cpu'].get('CPU(s)')} CPUs; vector: {' '.join(res['cpu'].get('vector', []))}")
    print(f"jax {jax.__version__}, torch {torch_version} ({args.torch_threads} threads)")
    print(f"{'piece':16} {'jrnn ms':>9} {'torch ms':>9} {'torch/jrnn':>10} {'jrnn GF/s':>10} "
          f"{'torch GF/s':>10}")
    for name, r in rows.items():
        print(f"{name:16} {r['jrnn_ms']:9.2f} {r.get('torch_ms', float('nan')):9.2f} "
              f"{r.get('torch_over_jrnn', float('nan')):10.2f} {r.get('jrnn_gflops', 0):10.1f} "
              f"{r.get('torch_gflops', 0):10.1f}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
