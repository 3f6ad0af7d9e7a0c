"""How the CPU train step is scheduled: output-layer precision and the number of XLA host
devices, against PyTorch and Flax, each variant in its own process, interleaved.

    python benchmarks/cpu_schedules.py                     # Zaremba-small, 5 rounds
    python benchmarks/cpu_schedules.py --rounds 7 --json benchmarks/results/cpu-schedules-<cpu>.json
    python benchmarks/cpu_schedules.py --smoke             # tiny shape, 1 round: checks the script

Variants (each a fresh process, since XLA's host device count is fixed at start-up):

* ``jrnn-f32`` / ``jrnn-bf16``: the step ``jrnn train`` compiles, the output layer's
  matmuls with float32 or bfloat16 operands (float32 accumulation);
* ``jrnn-f32-dp2`` / ``jrnn-bf16-dp2``: the same step data-parallel over two XLA host
  devices (``--xla_force_host_platform_device_count=2``; half the batch each, the
  gradients summed): the recurrence of the two halves runs on two threads at once,
  which is the schedule that keeps both cores busy on the per-step matmuls;
* ``jrnn-f32-wavefront`` / ``jrnn-bf16-wavefront``: the same step with the LSTM stack run
  as a wavefront (``method="wavefront"``, :mod:`jrnn.core.wavefront`): layer 2 at time
  t - 1 beside layer 1 at time t, two independent matmuls per scan step;
* ``torch``: PyTorch ``nn.LSTM`` + linear + cross-entropy with 2 threads;
* ``flax``: Flax linen's ``OptimizedLSTMCell`` under ``nn.scan`` (``benchmarks/peers.py``).

Each round runs every variant once (in a rotated order); the table reports the median
over rounds of each variant's median step time, and ratios (peer time / jrnn time: above
1 means jrnn is faster).  The CPU model and its vector extensions go in the JSON.  Never
asserts on time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = ("jrnn-f32", "jrnn-bf16", "jrnn-f32-dp2", "jrnn-bf16-dp2", "jrnn-f32-wavefront",
            "jrnn-bf16-wavefront", "torch", "flax")


def child(variant: str, shape_name: str, out: str) -> None:
    """Time one variant in this process and write ``{"step_s": ...}`` to ``out``."""
    if variant.endswith("-dp2"):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_force_host_platform_device_count=2").strip()
    sys.path.insert(0, HERE)
    import jax  # noqa: E402  (after XLA_FLAGS)
    import peers  # noqa: E402

    shape = peers.SHAPES[shape_name]
    data = peers.make_data(shape)
    precision = "bfloat16" if "bf16" in variant else "float32"
    if variant == "torch":
        runner = peers.torch_runner(shape, data, threads=2)
    elif variant == "flax":
        runner = peers.flax_runner(shape, data)
    elif variant.endswith("-dp2"):
        runner = _data_parallel_runner(peers, shape, data, precision)
    else:
        method = "wavefront" if variant.endswith("-wavefront") else "scan"
        runner = peers.jrnn_runner(shape, data, output_precision=precision, method=method)
    compile_s = runner.compile()
    t = peers.time_steps(runner.run, runner.sync, warmup=3, reps=5, rep_seconds=0.5)
    with open(out, "w") as f:
        json.dump({"variant": variant, "compile_s": compile_s, "devices": jax.device_count(), **t}, f)


def _data_parallel_runner(peers, shape, data, precision: str):
    import jax
    import jax.numpy as jnp
    import optax

    import jrnn
    from jrnn.training import distributed

    model = jrnn.rnn_lm(shape.V, cell=shape.cell, embed_size=shape.H, hidden_size=shape.H,
                        num_layers=shape.L, method="scan", output_precision=precision)
    opt = optax.sgd(peers.LR)
    mesh = distributed.make_mesh()
    step = distributed.make_sharded_train_step(model, opt, mesh=mesh, clip_norm=peers.CLIP)
    box = {"state": jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1)),
           "carry": model.initial_carry(shape.B)}
    x, y = jnp.asarray(data["inputs"]), jnp.asarray(data["targets"])

    def run(n: int) -> None:
        for _ in range(n):
            box["state"], box["carry"], box["m"] = step(box["state"], x, y, box["carry"])

    def compile_() -> float:  # the first call compiles (the step places its arguments itself)
        t = time.perf_counter()
        run(1)
        jax.block_until_ready(box["m"])
        return time.perf_counter() - t

    return peers.Runner(compile_, run, lambda: jax.block_until_ready((box["state"], box["m"])),
                        lambda: None, {})


def cpu_class(vector) -> str:
    """What the CPU step's speed depends on most: ``AMX``, ``AVX512-BF16``, ``AVX-512`` or ``AVX2``."""
    flags = set(vector)
    if "amx_bf16" in flags:
        return "AMX"
    if "avx512_bf16" in flags:
        return "AVX512-BF16"
    if "avx512f" in flags:
        return "AVX-512"
    return "AVX2" if "avx2" in flags else "older"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="zaremba-small")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--smoke", action="store_true", help="tiny shape, one round (checks the script)")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        child(a.child, a.shape, a.child_out)
        return 0
    if a.smoke:
        a.shape, a.rounds = "tiny-lm", 1
    variants = [v for v in a.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {','.join(VARIANTS)}")
    sys.path.insert(0, HERE)
    import peers

    times: dict = {v: [] for v in variants}
    failures: dict = {}
    for r in range(a.rounds):
        order = variants[r % len(variants):] + variants[:r % len(variants)]
        for v in order:
            with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
                out = f.name
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--shape", a.shape,
                                   "--child", v, "--child-out", out], capture_output=True, text=True)
            if proc.returncode != 0:
                failures[v] = proc.stderr.strip().splitlines()[-1:] or ["failed"]
                print(f"round {r + 1} {v}: failed: {failures[v][0][:200]}", file=sys.stderr)
                continue
            rec = json.load(open(out))
            os.unlink(out)
            times[v].append(rec["step_s"])
            print(f"round {r + 1} {v:14s} {rec['step_s'] * 1e3:8.2f} ms/step "
                  f"({rec['devices']} device(s), {time.perf_counter() - t0:.0f}s)", file=sys.stderr)
    med = {v: statistics.median(ts) for v, ts in times.items() if ts}
    from jrnn.core import select

    shape = peers.SHAPES[a.shape]
    auto = select.output_matmul_dtype(output_weights=shape.H * shape.V)
    result = {"shape": a.shape, "rounds": a.rounds, "machine": peers.machine(), "versions": peers.versions(),
              "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "cpu_class": cpu_class(peers.machine()["vector"]),
              "auto": {"output_precision": auto.dtype, "why": auto.why,
                       "variant": "jrnn-bf16" if auto.dtype == "bfloat16" else "jrnn-f32"},
              "step_ms": {v: m * 1e3 for v, m in med.items()},
              "step_ms_all": {v: [t * 1e3 for t in ts] for v, ts in times.items()},
              "failures": failures}
    peer_names = [v for v in ("torch", "flax") if v in med]
    print(f"\n{a.shape} on {result['machine'].get('cpu_model', '?')} [{result['cpu_class']}] "
          f"({', '.join(result['machine']['vector'])}), median of {a.rounds} rounds; "
          f"jrnn train picks {result['auto']['variant']} here")
    print("| variant | ms/step | " + " | ".join(f"{p} / variant" for p in peer_names) + " |")
    print("| --- | --- |" + " --- |" * len(peer_names))
    for v in variants:
        if v not in med:
            print(f"| {v} | failed |" + " |" * len(peer_names))
            continue
        ratios = " | ".join(f"{med[p] / med[v]:.2f}" for p in peer_names)
        print(f"| {v} | {med[v] * 1e3:.1f} | {ratios} |")
    if a.json:
        os.makedirs(os.path.dirname(os.path.abspath(a.json)), exist_ok=True)
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
