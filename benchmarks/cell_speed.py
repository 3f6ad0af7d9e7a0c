"""Forward + backward time of one recurrent layer for every cell kind, sequential scan against
the parallel form where the cell has one, in one run.

    python benchmarks/cell_speed.py                                  # B16 H256, T = 35 and 1024
    python benchmarks/cell_speed.py --json benchmarks/results/cell-speed-<cpu>.json
    python benchmarks/cell_speed.py --smoke                          # tiny sizes: checks the script

A layer's loss is ``sum(h * dy)`` over its outputs (a fixed random ``dy``), differentiated with
respect to its parameters and inputs; each (cell, method, T) is compiled once and timed as the
median of ``--reps`` repetitions, interleaved across the rows.  Ratios are against the LSTM's
sequential scan at the same T (above 1: faster than the LSTM).  The mLSTM's parallel form is
quadratic in T (a T x T matrix per head).  Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

import jrnn

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ("lstm", "gru", "mingru", "minlstm", "rglru", "slstm", "mlstm")


def methods_for(cell) -> list:
    from jrnn.core.parallel import has_parallel_form

    return ["scan"] + (["associative"] if has_parallel_form(cell) else [])


def make_row(kind: str, method: str, B: int, T: int, H: int):
    cell = jrnn.make_cell(kind, H)
    params = cell.init(jax.random.PRNGKey(0), H)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, H))
    dy = jax.random.normal(jax.random.PRNGKey(2), (T, B, H))

    def loss(params, xs):
        return jnp.sum(jrnn.unroll(cell, params, xs, method=method)[1] * dy)

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    t0 = time.perf_counter()
    compiled = grad.lower(params, xs).compile()
    compile_s = time.perf_counter() - t0

    def once(n: int) -> float:
        t = time.perf_counter()
        for _ in range(n):
            out = compiled(params, xs)
        jax.block_until_ready(out)
        return (time.perf_counter() - t) / n

    once(2)  # warm-up
    n = max(1, min(200, int(0.3 / max(once(1), 1e-6))))
    return {"kind": kind, "method": method, "B": B, "T": T, "H": H, "compile_s": compile_s}, lambda: once(n)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--lengths", default="35,1024")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--json")
    a = p.parse_args(argv)
    if a.smoke:
        a.batch, a.hidden, a.lengths, a.reps = 2, 8, "8,32", 1
    sys.path.insert(0, HERE)
    import peers  # the machine description every timing records

    rows = []
    for T in [int(t) for t in a.lengths.split(",")]:
        for kind in a.kinds.split(","):
            for method in methods_for(jrnn.make_cell(kind, a.hidden)):
                rec, timer = make_row(kind, method, a.batch, T, a.hidden)
                rows.append((rec, timer, []))
                print(f"compiled {kind} {method} T={T} in {rec['compile_s']:.1f}s", file=sys.stderr)
    for _ in range(a.reps):  # interleaved: every row once per round
        for rec, timer, times in rows:
            times.append(timer())
    out = []
    for rec, _, times in rows:
        rec["ms"] = statistics.median(times) * 1e3
        out.append(rec)
    lstm = {r["T"]: r["ms"] for r in out if r["kind"] == "lstm" and r["method"] == "scan"}
    machine = peers.machine()
    print(f"\nB{a.batch} H{a.hidden}, forward + backward of one layer, on {machine.get('cpu_model', '?')} "
          f"({jax.default_backend()}; {', '.join(machine['vector'])}); median of {a.reps}")
    print("| cell | method | T | ms | LSTM scan / this |\n| --- | --- | --- | --- | --- |")
    for r in out:
        ratio = f"{lstm[r['T']] / r['ms']:.2f}" if r["T"] in lstm else "—"
        print(f"| {r['kind']} | {r['method']} | {r['T']} | {r['ms']:.2f} | {ratio} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump({"rows": out, "machine": machine, "versions": peers.versions(),
                       "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
