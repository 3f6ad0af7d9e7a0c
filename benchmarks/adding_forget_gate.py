"""Why the LSTM failed Hochreiter & Schmidhuber's adding problem at T = 50: the forget gate's start.

Trains jrnn's LSTM on the adding problem (H&S 1997, experiment 4: values in
[-1, 1], the first marker among the first ten pairs, lengths T..1.1T, target
0.5 + (X1 + X2)/4, solved = 95 % of 1000 held-out sequences within 0.04)
with the setup of ``docs/diagnostics.md``'s sweep (H = 32, Adam lr 0.01,
clip 1, batches of 64, at most ``--steps`` steps) and two initializations:
forget bias 1 (the sweep's) and chrono initialization (Tallec & Ollivier
2018).  First prints the gradient evidence: ||dL/dh_t|| against the
distance from the end at initialization for the tanh RNN and both LSTMs.
Then prints, per run, the sequences used and the held-out solved fraction;
writes everything as JSON with ``--out``.

    python benchmarks/adding_forget_gate.py --lengths 50,100 --seeds 0 [--steps 3000]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from jrnn.analysis import diagnostics, tasks  # noqa: E402


def gradient_evidence(T: int = 100, distances=(0, 10, 25, 50, 99)) -> dict:
    """||dL_T/dh_t|| against the distance T-1-t at initialization, relative to distance 0,
    for the tanh RNN, the LSTM with forget bias 1 and the LSTM with chrono initialization,
    on adding-problem inputs (H = 32, the loss on the last step's sum of h)."""
    batch = tasks.adding_problem(jax.random.PRNGKey(1), 64, T, variant="sum")
    xs = jnp.swapaxes(batch.inputs, 0, 1)
    out = {}
    for name, cell in (("tanh", diagnostics.cell_by_name("tanh", 32)),
                       ("lstm forget-bias 1", diagnostics.cell_by_name("lstm", 32, forget_bias=1.0)),
                       ("lstm chrono", diagnostics.cell_by_name("lstm", 32, chrono=T))):
        params = cell.init(jax.random.PRNGKey(0), 2)
        flow = diagnostics.grad_flow(cell, params, xs)
        h = jnp.asarray(flow.hidden)
        out[name] = {d: float(h[T - 1 - d] / h[T - 1]) for d in distances}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lengths", default="50,100")
    p.add_argument("--seeds", default="0")
    p.add_argument("--inits", default="forget-bias,chrono")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    evidence = gradient_evidence()
    print("||dL/dh_t|| at initialization, relative to the last step (distance: ratio):")
    for name, r in evidence.items():
        print(f"  {name:20s} " + "  ".join(f"{d}: {v:.1e}" for d, v in r.items()))
    task = tasks.adding_task("hs97")
    rows = []
    for T in [int(x) for x in args.lengths.split(",")]:
        for init in args.inits.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                r = tasks.train_task(task, "lstm", T, steps=args.steps, batch_size=64, hidden_size=32,
                                     learning_rate=0.01, clip_norm=1.0, seed=seed, lstm_init=init)
                row = {"T": T, "init": init, "seed": seed, "steps": r.steps,
                       "sequences": r.steps * 64, "solved_fraction": r.metric, "solved": r.solved,
                       "seconds": round(r.seconds, 1), "history": r.history}
                rows.append(row)
                print(f"T={T:4d} {init:12s} seed {seed}: {'SOLVED' if r.solved else 'not solved'} "
                      f"after {r.steps * 64:,} sequences (held-out {r.metric:.3f}) in {r.seconds:.0f} s",
                      flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"gradient_evidence": evidence, "runs": rows},
                                             indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
