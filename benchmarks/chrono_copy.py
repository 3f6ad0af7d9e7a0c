"""Chrono-initialized LSTM on the copy task: what separates jrnn's run from Tallec & Ollivier's?

jrnn's long-range sweep (``benchmarks/long_range.py``) trains the LSTM on
Arjovsky et al.'s copy task at T = 100 with 40 units, Adam lr 1e-2, clipping
at 1 and chrono initialization with ``T_max = T + 20``; it reaches recall
0.36 in 6000 steps of 64 sequences, not solved.  Tallec & Ollivier (2018,
"Can recurrent neural networks warp time?", ICLR, Sec. 3 "Copy tasks" and
Fig. 1) report chrono-initialized LSTMs learning the same task at T = 500 and
2000 where the standard initialization (forget bias 1) stays at the
memoryless loss ``10 log 8 / (T + 20)``.  Their setup, as the paper states
it: single-layer LSTM with 128 units; RMSprop, learning rate 1e-3, moving
average 0.9, no gradient clipping; chrono ``T_max = 3T/2`` on the copy task;
the same task definition as jrnn's (``tasks.copy_memory``) and, by their
memoryless baseline, the mean cross-entropy over all ``T + 20`` steps.  The
batch size and the number of iterations are not given in the paper's text;
every row here uses ``--batch-size`` (default 64, jrnn's).

This script runs the comparison as a small grid on jrnn's own task API
(:func:`jrnn.tasks.train_task`), each row changing one factor of jrnn's
setting toward theirs, at T = 100 and 500, the same number of steps for every
row at a given T:

=============  =====  ============================  ===========  =======================
row            units  optimizer                     clipping     initialization
=============  =====  ============================  ===========  =======================
jrnn           40     Adam 1e-2                     1            chrono, T_max = T + 20
size           128    Adam 1e-2                     1            chrono, T_max = T + 20
optimizer      40     RMSprop 1e-3 (avg 0.9)        none         chrono, T_max = T + 20
tmax           40     Adam 1e-2                     1            chrono, T_max = 3T/2
standard       40     Adam 1e-2                     1            forget bias 1
full           128    RMSprop 1e-3 (avg 0.9)        none         chrono, T_max = 3T/2
full-standard  128    RMSprop 1e-3 (avg 0.9)        none         forget bias 1
=============  =====  ============================  ===========  =======================

``full`` is Tallec & Ollivier's setup, ``full-standard`` their baseline.
Every run draws fresh batches, checks recall on 500 held-out sequences ten
times and stops early once solved (recall >= 0.9).  The script prints a
table (recall of the ten symbols, held-out loss against the memoryless
baseline, steps, wall time) and writes every run, with its learning curve,
to ``--out``/chrono_copy.json after every run:

    python benchmarks/chrono_copy.py --out runs/chrono-copy        # about 50 min on 2 busy cores
    python benchmarks/chrono_copy.py --only jrnn,full --lengths 500
    python benchmarks/chrono_copy.py --smoke                        # tiny sizes, < 30 s

Default budgets (``--steps``): 2500 steps at T = 100 and 1000 at T = 500,
the same for every row.  Per step, measured while the 2-core machine was
busy with other training jobs (load average about 6): 25 ms at T = 100 with
40 units, 96 ms with 128; 105 ms and 503 ms at T = 500.  So a 128-unit row
(size, full, full-standard) takes about 4 min at T = 100 and 8.5 min at
T = 500, a 40-unit row about 1 and 2 min, plus 10-15 s of compiling each:
about 50 min for the grid with one seed, less on an idle machine.  These
budgets (160,000 and 64,000 sequences) are far below jrnn's 6000-step sweep
at T = 100 and below what Tallec & Ollivier's figure spans; raise
``--steps`` for the rows that matter.  Never run it while timing
benchmarks: it keeps the cores busy.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
if "--smoke" in sys.argv[1:] and "--xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    # The smoke run's programs are tiny and compiling is most of its time (as in the test suite's
    # conftest.py): XLA's backend optimizations off.  Set before jax is imported.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

from jrnn.analysis import tasks  # noqa: E402
from jrnn.cli.tools import result_to_dict  # noqa: E402
from long_range import machine  # noqa: E402  (the same machine record as the long-range sweep)

# What each row changes; "tmax" is chrono's T_max as a rule of T: "longest" = the longest
# sequence, T + 20 (train_task's default), "3T/2" = Tallec & Ollivier's choice for the copy task.
JRNN = {"hidden_size": 40, "optimizer": "adam", "learning_rate": 1e-2, "clip_norm": 1.0,
        "lstm_init": "chrono", "tmax": "longest"}
TO = {"hidden_size": 128, "optimizer": "rmsprop", "learning_rate": 1e-3, "clip_norm": None,
      "lstm_init": "chrono", "tmax": "3T/2"}
ROWS = {
    "jrnn": dict(JRNN),
    "size": {**JRNN, "hidden_size": TO["hidden_size"]},
    "optimizer": {**JRNN, **{k: TO[k] for k in ("optimizer", "learning_rate", "clip_norm")}},
    "tmax": {**JRNN, "tmax": TO["tmax"]},
    "standard": {**JRNN, "lstm_init": "forget-bias", "tmax": None},
    "full": dict(TO),
    "full-standard": {**TO, "lstm_init": "forget-bias", "tmax": None},
}
STEPS = {100: 2500, 500: 1000}  # per T; see the module docstring for the timings behind them
LENGTHS = (100, 500)
EVAL_SIZE = 500

# Tallec & Ollivier's copy-task setup as their paper states it (ICLR 2018, Sec. 3), for the JSON.
TALLEC_OLLIVIER = {
    "source": "Tallec & Ollivier, Can recurrent neural networks warp time?, ICLR 2018, Sec. 3 "
              "'Synthetic tasks' and 'Copy tasks', Fig. 1 (arXiv:1804.11188)",
    "model": "single-layer LSTM, 128 units",
    "optimizer": "RMSprop, learning rate 1e-3, moving average 0.9, no gradient clipping",
    "standard_init": "forget-gate biases 1",
    "chrono_tmax": "3T/2 (copy task); T (variable copy task)",
    "task": "10 symbols from 8, T - 1 blanks, signal, 10 blanks; target T + 10 blanks then the "
            "10 symbols; memoryless loss 10 log 8 / (T + 20)",
    "lengths": "copy T = 500 and 2000; variable copy T = 500 and 1000",
    "not_stated": "batch size, number of iterations, weight initialization",
}


def chrono_tmax(rule, length: int):
    """``train_task``'s ``chrono_tmax`` for a row's rule at copy length ``length``."""
    if rule in (None, "longest"):
        return None  # train_task: the longest sequence, T + 20
    if rule == "3T/2":
        return max(3, (3 * length) // 2)
    raise ValueError(f"unknown T_max rule {rule!r}")


def parse_steps(text: str, lengths) -> dict:
    """``--steps``: one int for every T, or ``T:steps`` pairs (``100:2500,500:1000``)."""
    text = text.strip()
    if ":" not in text:
        n = int(text)
        if n < 1:
            raise ValueError("steps must be positive")
        return {T: n for T in lengths}
    out = {}
    for part in text.split(","):
        T, n = (int(v) for v in part.split(":"))
        if n < 1:
            raise ValueError("steps must be positive")
        out[T] = n
    missing = [T for T in lengths if T not in out]
    if missing:
        raise ValueError(f"no step budget for T = {missing}")
    return out


def describe(cfg: dict) -> str:
    opt = (f"Adam {cfg['learning_rate']:g}" if cfg["optimizer"] == "adam"
           else f"RMSprop {cfg['learning_rate']:g}")
    clip = f"clip {cfg['clip_norm']:g}" if cfg["clip_norm"] is not None else "no clip"
    init = ("forget bias 1" if cfg["lstm_init"] == "forget-bias"
            else f"chrono T_max={'T+20' if cfg['tmax'] == 'longest' else cfg['tmax']}")
    return f"H {cfg['hidden_size']}, {opt}, {clip}, {init}"


def table(runs) -> str:
    lines = ["row           |    T | recall | loss    | no-memory | ratio | steps | sequences | seconds",
             "-" * 92]
    for r in runs:
        lines.append(f"{r['row']:13s} | {r['length']:4d} | {r['metric']:.3f}{'*' if r['solved'] else ' '}"
                     f" | {r['loss']:.4f}  | {r['baseline_loss']:.4f}    | {r['loss_ratio']:5.2f} | "
                     f"{r['steps']:5d} | {r['sequences']:9,d} | {r['seconds']:7.0f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", help=f"comma-separated rows to run (default: all of {','.join(ROWS)})")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="copy lengths T (default 100,500)")
    p.add_argument("--steps", help="steps per row: one int for every T, or T:steps pairs "
                   f"(default {','.join(f'{T}:{n}' for T, n in STEPS.items())})")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--batch-size", type=int, default=64,
                   help="sequences per step, every row (Tallec & Ollivier do not state theirs; default 64)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes (T = 10, 8 or 16 units, 20 steps): checks that every row runs")
    p.add_argument("--out", help="directory for chrono_copy.json (default runs/chrono-copy; "
                   "with --smoke a temporary directory)")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else list(ROWS)
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        p.error(f"--only: unknown rows {unknown}; choose from {list(ROWS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        lengths = [int(s) for s in args.lengths.split(",") if s.strip()]
    except ValueError:
        p.error("--seeds and --lengths take comma-separated integers")
    if not seeds or not lengths or min(lengths) < 1 or args.batch_size < 1:
        p.error("--seeds, --lengths and --batch-size must be non-empty and positive")
    rows = {n: dict(ROWS[n]) for n in names}
    eval_size, batch_size = EVAL_SIZE, args.batch_size
    if args.smoke:
        lengths, eval_size, batch_size = [10], 32, 16
        steps = {10: 20}
        for cfg in rows.values():  # keep the 40 : 128 contrast, at 8 : 16 units
            cfg["hidden_size"] = 8 if cfg["hidden_size"] == JRNN["hidden_size"] else 16
    else:
        try:
            steps = (parse_steps(args.steps, lengths) if args.steps
                     else {T: STEPS.get(T, STEPS[min(STEPS, key=lambda k: abs(k - T))]) for T in lengths})
        except ValueError as e:
            p.error(f"--steps: {e}")
    out_dir = args.out or (os.path.join(tempfile.gettempdir(), "jrnn-chrono-copy-smoke") if args.smoke
                           else os.path.join("runs", "chrono-copy"))
    os.makedirs(out_dir, exist_ok=True)
    out_path = Path(out_dir, "chrono_copy.json")

    info = machine()
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    task = tasks.get_task("copy")
    busy = f"; load average {load[0]:.1f} at start" if load else ""
    print(f"# chrono copy study: {info.get('cpu')} ({info['cpu_count']} CPUs, "
          f"{' '.join(info.get('vector_extensions', []))}), jax {info['jax']} on {info['backend']}{busy}",
          flush=True)
    print(f"# T = {lengths}, steps {steps}, batch {batch_size}, seeds {seeds}, held-out {eval_size} "
          f"sequences, solved at recall >= {task.solved_at}", flush=True)
    for n, cfg in rows.items():
        print(f"#   {n:13s} {describe(cfg)}", flush=True)
    out = {"study": "chrono_copy", "machine": info, "load_average_at_start": load,
           "started": time.strftime("%Y-%m-%d %H:%M:%S"), "smoke": args.smoke,
           "tallec_ollivier": TALLEC_OLLIVIER, "rows": rows, "lengths": lengths,
           "steps": {str(T): n for T, n in steps.items()}, "batch_size": batch_size,
           "eval_size": eval_size, "seeds": seeds, "runs": []}
    t_all = time.perf_counter()
    for length in lengths:
        n_steps = steps[length]
        for name, cfg in rows.items():
            for seed in seeds:
                tmax = chrono_tmax(cfg["tmax"], length)
                r = tasks.train_task(
                    task, "lstm", length, steps=n_steps, batch_size=batch_size,
                    hidden_size=cfg["hidden_size"], learning_rate=cfg["learning_rate"],
                    clip_norm=cfg["clip_norm"], optimizer=cfg["optimizer"], lstm_init=cfg["lstm_init"],
                    chrono_tmax=tmax, seed=seed, eval_size=eval_size,
                    eval_every=max(1, n_steps // 10))
                run = {"row": name, **cfg, "chrono_tmax": (tmax if tmax is not None else
                                                           (length + 20 if cfg["lstm_init"] == "chrono" else None)),
                       "batch_size": batch_size, **result_to_dict(r),
                       "loss_ratio": r.loss / r.baseline_loss, "sequences": r.steps * batch_size}
                out["runs"].append(run)
                print(f"  {name:>13} T={length:<4} seed {seed}: recall {r.metric:.3f} (chance {r.chance:.3f}), "
                      f"loss {r.loss:.4f} (no memory {r.baseline_loss:.4f}) "
                      f"{'solved' if r.solved else 'not solved'} in {r.steps} steps, {r.seconds:.1f}s",
                      file=sys.stderr, flush=True)
                out["seconds"] = time.perf_counter() - t_all
                out_path.write_text(json.dumps(out, indent=1))  # after every run: an interruption keeps them
    print("\n## copy task, LSTM: held-out recall of the ten symbols (* = solved, >= "
          f"{task.solved_at}), loss against the memoryless baseline 10 log 8 / (T + 20)")
    print(table(out["runs"]))
    print(f"\nwrote {out_path} ({out['seconds']:.0f}s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
