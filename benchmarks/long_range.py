"""Long-range sweep: the longest length each cell solves within a fixed budget of steps.

Trains every cell on each task at growing lengths (shortest first; a cell is
not tried further once it fails a length), prints one table per task and
writes everything, settings and machine included, to
``benchmarks/out/long_range.json``.  With ``--plots DIR`` it also draws one
``sweep_<task>.png`` per task.

    PYTHONPATH=. python benchmarks/long_range.py            # the sweep in docs/diagnostics.md
    PYTHONPATH=. python benchmarks/long_range.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax

from jrnn import tasks
from jrnn.cli.tools import format_sweep_table, result_to_dict

# The budget the README's table was measured with.
ALL = ["linear", "tanh", "sigmoid", "relu", "lstm", "gru"]
SETTINGS = {
    "adding": {"cells": ALL, "lengths": [10, 20, 50, 100, 200]},
    "adding-sum": {"cells": ALL, "lengths": [10, 20, 50, 100, 200]},
    "copy": {"cells": ["tanh", "lstm", "gru"], "lengths": [5, 10, 20, 50]},
    "agreement": {"cells": ["tanh", "lstm", "gru"], "lengths": [2, 5, 10, 20, 50, 100]},
}
TRAIN = {"steps": 3000, "batch_size": 64, "hidden_size": 32, "learning_rate": 1e-2,
         "clip_norm": 1.0, "eval_every": 250, "eval_size": 1000}
SEEDS = [0]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default=",".join(SETTINGS), help=f"comma-separated, from {','.join(SETTINGS)}")
    p.add_argument("--steps", type=int, default=TRAIN["steps"])
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--quick", action="store_true", help="tiny budget: checks that it runs")
    p.add_argument("--plots", help="directory for sweep_<task>.png")
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out", "long_range.json"))
    args = p.parse_args(argv)
    train = dict(TRAIN, steps=args.steps)
    settings = {k: dict(v) for k, v in SETTINGS.items()}
    if args.quick:
        train.update(steps=100, eval_every=50, eval_size=200, hidden_size=16)
        for s in settings.values():
            s["lengths"] = s["lengths"][:2]
    seeds = [int(s) for s in args.seeds.split(",")]
    machine = {"platform": platform.platform(), "processor": platform.processor(),
               "cpu_count": os.cpu_count(), "jax": jax.__version__, "backend": jax.default_backend(),
               "devices": [str(d) for d in jax.devices()]}
    print(f"# long-range sweep on {machine['backend']} ({machine['cpu_count']} CPUs), jax "
          f"{machine['jax']}; budget {train['steps']} Adam steps (lr {train['learning_rate']}, "
          f"clip {train['clip_norm']}) x batch {train['batch_size']}, H={train['hidden_size']}, "
          f"seeds {seeds}; evaluated every {train['eval_every']} steps on {train['eval_size']} "
          f"held-out sequences, stopping once solved", flush=True)
    out = {"machine": machine, "train": train, "seeds": seeds, "tasks": {}}
    t_all = time.perf_counter()
    for name in args.tasks.split(","):
        task = tasks.get_task(name)
        cfg = settings[name]
        t0 = time.perf_counter()

        def on_result(r):
            print(f"  {task.name} {r.cell:>8} T={r.length:<4} seed {r.seed}: {r.metric:.3f} "
                  f"(chance {r.chance:.3f}) {'solved' if r.solved else 'FAILED'} in {r.steps} steps, "
                  f"{r.seconds:.1f}s", file=sys.stderr, flush=True)

        results = tasks.sweep(task, cfg["cells"], cfg["lengths"], seeds=seeds, on_result=on_result,
                              **train)
        seconds = time.perf_counter() - t0
        print(f"\n## {task.name}: held-out {task.metric_name}, * = solved (>= {task.solved_at}), "
              f"- = not tried after a failure ({seconds:.0f}s)")
        print(format_sweep_table(results, cfg["lengths"], cfg["cells"]), flush=True)
        out["tasks"][task.name] = {**cfg, "solved_at": task.solved_at, "seconds": seconds,
                                   "longest_solved": tasks.longest_solved(results),
                                   "results": [result_to_dict(r) for r in results]}
        if args.plots:
            from jrnn import plots

            plots.sweep_figure(results, os.path.join(args.plots, f"sweep_{name}.png"),
                               solved_at=task.solved_at,
                               title=f"{task.name}: {train['steps']} steps budget, H={train['hidden_size']}")
    out["seconds"] = time.perf_counter() - t_all
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"\nwrote {args.out} ({out['seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
