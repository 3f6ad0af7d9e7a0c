"""Parallel-in-time against sequential unrolling of linear recurrences.

For each recurrence -- the dense linear cell (``jrnn.linear``) and the
diagonal LRU-style cell (``jrnn.parallel.diagonal``, real and complex) -- and
each length ``T`` (and, for the dense cell, each ``H``), it times

* ``scan``: ``jrnn.unroll`` (``lax.scan``, ``T`` sequential steps);
* ``assoc``: ``jrnn.parallel.associative_unroll(method="associative")``;
* ``doubling``: ``associative_unroll(method="doubling")``;

forward only (``fwd``) and forward + backward (``grad`` of ``sum(h)``
w.r.t. the params and inputs), all jitted, in float32, and prints the
speed-up ``scan time / parallel time`` with the largest difference of the
states from the sequential scan relative to their scale (equality check).

Usage::

    python benchmarks/parallel_scan.py                  # CPU-sized sweep
    python benchmarks/parallel_scan.py --T 256,1024,4096 --dense-H 8,32,128 --B 8

Writes ``benchmarks/out/parallel_scan-<time>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jrnn  # noqa: E402
from jrnn import parallel  # noqa: E402

OUT_DIR = Path(__file__).resolve().parent / "out"
MAX_DENSE_BYTES = 1 << 29  # associative dense keeps T matrices of H x H: skip past 512 MiB


def _time(f, args, reps: int, min_rep_s: float = 0.2) -> tuple[float, float]:
    """(compile seconds, median seconds per call) of a jitted ``f``."""
    t = time.perf_counter()
    compiled = jax.jit(f).lower(*args).compile()
    compile_s = time.perf_counter() - t
    jax.block_until_ready(compiled(*args))
    t = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    one = time.perf_counter() - t
    k = max(1, int(min_rep_s / max(one, 1e-6)))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        for _ in range(k):
            out = compiled(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - t) / k)
    return compile_s, statistics.median(times)


def bench_one(kind: str, T: int, B: int, H: int, reps: int) -> dict:
    if kind == "dense":
        cell = jrnn.linear(H, init_scale=0.9 / H**0.5)  # spectral radius below 1: stays bounded
    else:
        cell = parallel.diagonal(H, complex_state=(kind == "diag-complex"))
    D = H
    params = cell.init(jax.random.PRNGKey(0), D)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D), jnp.float32)
    impls = {
        "scan": lambda p, x: jrnn.unroll(cell, p, x)[1],
        "assoc": lambda p, x: parallel.associative_unroll(cell, p, x)[1],
        "doubling": lambda p, x: parallel.associative_unroll(cell, p, x, method="doubling")[1],
    }
    row = {"kind": kind, "T": T, "B": B, "H": H}
    if kind == "dense" and T * H * H * 4 > MAX_DENSE_BYTES:
        impls.pop("assoc")
        row["assoc_skipped"] = f"T*H*H floats = {T * H * H * 4 / 2**20:.0f} MiB"
    want = np.asarray(jax.jit(impls["scan"])(params, xs))
    scale = float(np.max(np.abs(want))) or 1.0
    for name, f in impls.items():
        got = np.asarray(jax.jit(f)(params, xs))
        row[f"{name}_max_rel_err"] = float(np.max(np.abs(got - want))) / scale
        c, s = _time(f, (params, xs), reps)
        row[f"{name}_fwd_s"], row[f"{name}_fwd_compile_s"] = s, c
        g = jax.grad(lambda p, x, f=f: jnp.sum(f(p, x)), argnums=(0, 1))
        c, s = _time(g, (params, xs), reps)
        row[f"{name}_grad_s"], row[f"{name}_grad_compile_s"] = s, c
    for name in ("assoc", "doubling"):
        for mode in ("fwd", "grad"):
            if f"{name}_{mode}_s" in row:
                row[f"{name}_{mode}_speedup"] = row[f"scan_{mode}_s"] / row[f"{name}_{mode}_s"]
    return row


def _f(row, key, spec):
    return format(row[key], spec) if key in row else "-"


def print_table(rows: list) -> None:
    head = (f"{'kind':12s} {'T':>6s} {'B':>3s} {'H':>4s} | {'scan fwd ms':>11s} {'assoc x':>8s} "
            f"{'doubl x':>8s} | {'scan grad ms':>12s} {'assoc x':>8s} {'doubl x':>8s} | "
            f"{'max rel err (assoc, doubl)':>27s}")
    print()
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['kind']:12s} {r['T']:6d} {r['B']:3d} {r['H']:4d} | "
              f"{r['scan_fwd_s'] * 1e3:11.3f} {_f(r, 'assoc_fwd_speedup', '8.2f')} "
              f"{_f(r, 'doubling_fwd_speedup', '8.2f')} | {r['scan_grad_s'] * 1e3:12.3f} "
              f"{_f(r, 'assoc_grad_speedup', '8.2f')} {_f(r, 'doubling_grad_speedup', '8.2f')} | "
              f"{_f(r, 'assoc_max_rel_err', '12.1e')} {_f(r, 'doubling_max_rel_err', '12.1e')}")
    print("\nassoc x / doubl x: sequential time / parallel time (> 1: the parallel scan is faster).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--T", default="64,256,1024,4096,16384", help="sequence lengths")
    p.add_argument("--B", type=int, default=8)
    p.add_argument("--H", type=int, default=32, help="H of the T sweep (all kinds)")
    p.add_argument("--dense-H", default="4,16,64,256", help="H sweep of the dense cell")
    p.add_argument("--dense-H-T", type=int, default=1024, help="T of the dense H sweep")
    p.add_argument("--kinds", default="diag-real,diag-complex,dense")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    Ts = [int(t) for t in args.T.split(",")]
    rows = []
    for kind in args.kinds.split(","):
        for T in Ts:
            rows.append(bench_one(kind, T, args.B, args.H, args.reps))
            print(json.dumps(rows[-1]), flush=True)
        if kind == "dense":
            for H in (int(h) for h in args.dense_H.split(",")):
                if H == args.H and args.dense_H_T in Ts:
                    continue
                rows.append(bench_one(kind, args.dense_H_T, args.B, H, args.reps))
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    info = {"backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "jax": jax.__version__, "argv": sys.argv,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    out = Path(args.out) if args.out else OUT_DIR / f"parallel_scan-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**info, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
