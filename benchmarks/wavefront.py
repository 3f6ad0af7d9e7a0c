"""A two-layer LSTM stack run as a wavefront against the layer-by-layer scan: forward + backward.

    python benchmarks/wavefront.py                          # Zaremba-small recurrence, 9 rounds
    python benchmarks/wavefront.py --rounds 15 --json benchmarks/results/wavefront-<cpu>.json
    python benchmarks/wavefront.py --smoke                  # tiny shape, 1 round: checks the script

What is timed is the jitted gradient of ``sum(hs * w)`` (w fixed) with respect to every
layer's params and the inputs, for the recurrence of Zaremba-small (2 x 200 LSTM, batch 20,
35 steps, float32; layer 0's ``x W + b`` is computed inside the timed function in every
variant):

* ``wavefront``: :func:`jrnn.core.wavefront.lstm_stack`, layer ``l`` at time ``t`` alongside
  layer ``l + 1`` at ``t - 1`` in one scan step, hand-written backward (the reversed
  wavefront); layer 1 as one ``[B, 2H] x [2H, 4H]`` matmul with ``[W; W_h]`` stacked;
* ``wavefront-2mm``: the same with two matmuls per layer-1 step (``stack_weights=False``);
* ``layered``: ``jrnn.unroll([lstm, lstm], ..., method="scan")``, one scan per layer, each
  with jrnn's hand-written backward (:mod:`jrnn.core.backward`);
* ``layered-autodiff``: the same with ``custom_vjp=False`` (JAX differentiates the scans).

Each round runs every variant once, in a rotated order, for about ``--seconds`` each (the
mean time per call); the table gives the median over rounds and each variant's ratio to
``wavefront`` (above 1: the wavefront is faster).  The JSON also holds every round's times,
the CPU model and its vector extensions (``jrnn.core.select.vector_extensions``), the
versions and the load average at the start and the end.  The variants' gradients are
compared with each other once (float32, so to a tolerance).  Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("wavefront", "wavefront-2mm", "layered", "layered-autodiff")
SHAPES = {  # name -> (T, B, H, L)
    "zaremba-small": (35, 20, 200, 2),
    "tiny": (6, 3, 8, 2),
}


def build(variant: str, T: int, B: int, H: int, L: int, unroll: int):
    """``(jitted grad function, its arguments)`` for one variant."""
    import jax
    import jax.numpy as jnp

    import jrnn
    from jrnn.core.wavefront import lstm_stack

    cells = [jrnn.lstm(H)] * L
    ks = jax.random.split(jax.random.PRNGKey(0), L + 2)
    params = [cells[l].init(ks[l], H) for l in range(L)]
    xs = jax.random.normal(ks[L], (T, B, H), jnp.float32)
    w = jax.random.normal(ks[L + 1], (T, B, H), jnp.float32)
    carries = [cells[l].initial_carry((B,), jnp.float32) for l in range(L)]

    if variant.startswith("wavefront"):
        run = lstm_stack(H, L)
        stack = variant == "wavefront"

        def hs_of(p, x):
            return run(p, x @ p[0]["W"] + p[0]["b"], carries, unroll=unroll, stack_weights=stack)[1]
    else:
        custom = variant == "layered"

        def hs_of(p, x):
            return jrnn.unroll(cells, p, x, carries, method="scan", scan_unroll=unroll,
                               custom_vjp=custom)[1]

    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(hs_of(p, x) * w), argnums=(0, 1)))
    return grad, (params, xs)


def time_calls(fn, args, seconds: float) -> tuple[float, int]:
    """Mean seconds per call over about ``seconds`` of calls (at least one), and the count."""
    import jax

    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    one = time.perf_counter() - t
    n = max(1, int(seconds / max(one, 1e-6)))
    t = time.perf_counter()
    for _ in range(n):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / n, n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="zaremba-small", choices=sorted(SHAPES))
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--seconds", type=float, default=1.0, help="time per variant per round")
    p.add_argument("--unroll", type=int, default=1, help="lax.scan's unroll factor (every variant)")
    p.add_argument("--smoke", action="store_true", help="tiny shape, one round (checks the script)")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)
    if a.smoke:
        a.shape, a.rounds, a.seconds = "tiny", 1, 0.05
    variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {','.join(VARIANTS)}")

    sys.path.insert(0, HERE)
    import jax
    import numpy as np
    import peers

    from jrnn.core import select

    T, B, H, L = SHAPES[a.shape]
    fns, compile_s, grads = {}, {}, {}
    for v in variants:
        fn, args = build(v, T, B, H, L, a.unroll)
        t = time.perf_counter()
        grads[v] = jax.block_until_ready(fn(*args))  # compiles
        compile_s[v] = time.perf_counter() - t
        fns[v] = (fn, args)
    # The variants compute the same gradients (float32: to a tolerance).
    first = variants[0]
    max_diff = {v: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                       for x, y in zip(jax.tree.leaves(grads[v]), jax.tree.leaves(grads[first])))
                for v in variants[1:]}

    machine = peers.machine()  # cpu_model, vector extensions, nproc, load average at start
    times: dict = {v: [] for v in variants}
    for r in range(a.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            s, n = time_calls(*fns[v], a.seconds)
            times[v].append(s)
            print(f"round {r + 1} {v:17s} {s * 1e3:8.2f} ms/call ({n} calls)", file=sys.stderr)
    med = {v: statistics.median(ts) for v, ts in times.items()}
    base = "wavefront" if "wavefront" in med else first

    try:
        load_end = os.getloadavg()
    except OSError:
        load_end = None
    result = {
        "benchmark": "wavefront", "shape": a.shape, "T": T, "B": B, "H": H, "L": L,
        "dtype": "float32", "unroll": a.unroll, "rounds": a.rounds, "seconds_per_round": a.seconds,
        "smoke": a.smoke,
        "machine": machine, "cpu_features": sorted(select.cpu_features()),
        "vector_extensions": select.vector_extensions(), "loadavg_end": load_end,
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "versions": peers.versions(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "compile_s": compile_s, "grad_max_abs_diff_vs_" + first: max_diff,
        "ms": {v: m * 1e3 for v, m in med.items()},
        "ms_all": {v: [t * 1e3 for t in ts] for v, ts in times.items()},
        "ratio_to_" + base: {v: med[v] / med[base] for v in variants},
    }
    print(f"\n{a.shape} (T{T} B{B} H{H} L{L}, float32, unroll {a.unroll}) on "
          f"{machine.get('cpu_model', '?')} ({', '.join(machine.get('vector', []))}), "
          f"{machine.get('nproc')} CPUs, median of {a.rounds} rounds"
          + (" -- SMOKE RUN, the times mean nothing" if a.smoke else ""))
    print(f"| variant | ms (fwd+bwd) | variant / {base} | compile s |")
    print("| --- | --- | --- | --- |")
    for v in variants:
        print(f"| {v} | {med[v] * 1e3:.2f} | {med[v] / med[base]:.2f} | {compile_s[v]:.1f} |")
    if max_diff:
        print("max |grad - grad of " + first + "|: "
              + ", ".join(f"{v} {d:.1e}" for v, d in max_diff.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
