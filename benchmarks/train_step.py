"""Time jrnn's jitted train step on one shape; compile time reported apart.

    python benchmarks/train_step.py                      # Zaremba-small: B20 T35 2x200 LSTM, V10k
    python benchmarks/train_step.py --hidden 650 --json out.json
    taskset -c 0 python benchmarks/train_step.py        # one core: how the step scales with threads

Prints one line and, with --json, writes the figures.  Never asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import optax

import jrnn
from jrnn.core.select import PRECISIONS, vector_extensions


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cell", default="lstm", choices=list(jrnn.CELL_KINDS))
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--steps", type=int, default=35, help="BPTT length T")
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=10000)
    p.add_argument("--unroll", type=int, default=1)
    p.add_argument("--output-precision", default="auto", choices=list(PRECISIONS),
                   help="the output layer's matmul operands (auto: what jrnn train picks here)")
    p.add_argument("--repeats", type=int, default=30, help="timed steps")
    p.add_argument("--json", help="write the result here")
    a = p.parse_args(argv)

    model = jrnn.rnn_lm(a.vocab, cell=a.cell, embed_size=a.hidden, hidden_size=a.hidden,
                        num_layers=a.layers, init_scale=0.1, method="scan", scan_unroll=a.unroll,
                        output_precision=a.output_precision)
    opt = optax.sgd(1.0)
    state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
    step = jrnn.make_train_step(model, opt, clip_norm=5.0)
    key = jax.random.PRNGKey(2)
    x = jax.random.randint(key, (a.batch, a.steps), 0, a.vocab)
    y = jnp.roll(x, -1, axis=1)
    carry = model.initial_carry(a.batch)

    t0 = time.perf_counter()
    compiled = step.lower(state, x, y, carry).compile()
    compile_s = time.perf_counter() - t0
    state, carry, m = compiled(state, x, y, carry)  # warm-up
    jax.block_until_ready(m)
    times = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        state, carry, m = compiled(state, x, y, carry)
        jax.block_until_ready(m["loss"])
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    tok_s = a.batch * a.steps / med
    result = {
        "shape": f"B{a.batch} T{a.steps} H{a.hidden} L{a.layers} V{a.vocab} {a.cell}",
        "unroll": a.unroll, "output_precision": model.config.output_precision,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "tokens_per_s": tok_s, "step_ms": med * 1e3, "compile_s": compile_s,
        "backend": jax.default_backend(), "device": str(jax.devices()[0]),
        "jax": jax.__version__, "python": platform.python_version(),
        "vector": vector_extensions(),
    }
    print(f"jrnn {result['shape']} unroll {a.unroll} output {result['output_precision']} "
          f"on {result['cores']} core(s): {tok_s / 1e3:.1f}k tok/s, "
          f"{med * 1e3:.1f} ms/step (median of {a.repeats}), compile {compile_s:.2f}s "
          f"[{result['device']}]")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
