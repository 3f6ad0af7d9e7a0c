"""``jrnn diagnose`` and ``jrnn tasks``: the vanilla RNN's problems, from the command line.

Each entry point takes its own argument list and returns an exit code; user
errors end with one line ``jrnn: error: ...`` on stderr and code 2.
Progress goes to stderr, tables to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jrnn
from jrnn import data as D
from jrnn.analysis import diagnostics as dg
from jrnn.analysis import plots, tasks
from jrnn.analysis.tasks import longest_solved
from jrnn.training.inference import load_for_inference
from jrnn.data import DataError
from jrnn.training.checkpoint import CheckpointError

__all__ = ["diagnose_main", "tasks_main", "format_sweep_table", "DEFAULT_LENGTHS"]

CELLS = dg.CELL_NAMES
ALL_CELLS = dg.CELL_NAMES + dg.MORE_CELL_NAMES  # what --cells accepts

# Lengths T (copy: blank steps T; agreement: distance k) each task is swept over by default.
DEFAULT_LENGTHS = {
    "adding": (10, 20, 50, 100, 200),
    "adding-sum": (10, 20, 50, 100, 200),
    "copy": (5, 10, 20, 50, 100),
    "agreement": (2, 5, 10, 20, 50, 100),
}


class UserError(Exception):
    """Bad input from the user: one line, exit code 2."""

class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UserError(f"{self.prog.split()[-1]}: {message}")


def _positive_float(text: str) -> float:
    """An argparse type: a finite number > 0 (NaN and infinities refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _finite_float(text: str) -> float:
    """An argparse type: a finite number."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise UserError(f"{what} must be positive integers, got {text!r}")
    return values


def _cells(text: str, allowed: Sequence[str] = ALL_CELLS) -> list[str]:
    names = [c.strip() for c in text.split(",") if c.strip()]
    bad = [c for c in names if c not in allowed]
    if bad or not names:
        raise UserError(f"unknown cell {', '.join(map(repr, bad)) or repr(text)}; "
                        f"choose from {','.join(allowed)}")
    return names


def _positive(name: str, value) -> None:
    if value is None or value <= 0:
        raise UserError(f"--{name} must be positive, got {value}")


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def _run(main, argv) -> int:
    try:
        return main(argv)
    except UserError as e:
        print(f"jrnn: error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except ImportError as e:
        if "matplotlib" not in str(e):
            raise
        print(f"jrnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jrnn: interrupted", file=sys.stderr)
        return 130


def _out_dir(path: str) -> None:
    """Make the output folder, or refuse it in one line."""
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"--out {path} is not a directory (it, or a folder above it, is a file)") from None
    except OSError as e:
        raise UserError(f"--out {path}: cannot create it ({e.strerror})") from None
    if not os.path.isdir(path):
        raise UserError(f"--out {path} is not a directory (it, or a folder above it, is a file)")


def _write_json(path: str, obj, **kw) -> None:
    """``obj`` as JSON at ``path``, atomically (a temporary file created exclusively, renamed)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                                   dir=os.path.dirname(path) or ".")
    except OSError as e:
        raise UserError(f"{path}: cannot write it ({e.strerror})") from None
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, **kw)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def _draw(figures, quiet: bool) -> list[str]:
    """Draw the figures; without matplotlib, say how to get them and go on."""
    written = []
    for draw in figures:
        try:
            written += draw()
        except ImportError as e:
            if "matplotlib" not in str(e):
                raise
            print('jrnn: figures skipped: they need matplotlib (pip install "jrnn[plot]" or '
                  "pip install matplotlib); the results are in the JSON", file=sys.stderr)
            break
    return written


# ---- jrnn diagnose ------------------------------------------------------------------

def _diagnose_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jrnn diagnose",
                description="Gradient flow, Jacobian decay, information decay and exploding "
                            "gradients, as tables and PNG plots.")
    p.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, from {','.join(ALL_CELLS)}")
    p.add_argument("--checkpoint", help="diagnose a trained LM (`jrnn train` output) instead of fresh cells")
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--input-size", type=int, default=8)
    p.add_argument("--length", type=int, default=None,
                   help="sequence length T (default 100; 35 with --checkpoint)")
    p.add_argument("--batch-size", type=int, default=8, help="sequences the norms are averaged over")
    p.add_argument("--init-scale", type=_positive_float, default=None,
                   help="weights ~ U(-s, s) (default 1/sqrt(H), as PyTorch)")
    p.add_argument("--forget-bias", type=_finite_float, default=1.0, help="LSTM forget-gate bias at init")
    p.add_argument("--method", choices=["exact", "estimate"], default="exact",
                   help="Jacobian norms: exact spectral norms, or the cheap probe estimate")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                   help="precision of the fresh-cell diagnostics (float64 follows the decay "
                        "below float32's 1e-38 floor)")
    p.add_argument("--decay-samples", type=int, default=512, help="sequences for the linear probe")
    p.add_argument("--train-steps", type=int, default=150,
                   help="steps of the clipped vs unclipped training comparison (0: skip)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/diagnose", help="directory for the plots and JSON")
    p.add_argument("--svg", action="store_true", help="also write SVG files")
    p.add_argument("--quiet", action="store_true")
    return p


def _fmt(x: float) -> str:
    return f"{x:9.2e}" if math.isfinite(x) else f"{x!s:>9}"


def _diagnose_cells(args, names, out_dir) -> dict:
    T, B, D, H = args.length, args.batch_size, args.input_size, args.hidden_size
    dtype = jnp.float64 if args.dtype == "float64" else jnp.float32
    key = jax.random.PRNGKey(args.seed)
    k_params, k_x, k_decay = jax.random.split(key, 3)
    xs = jax.random.normal(k_x, (T, B, D), dtype)
    flows, jacs, bounds, decays, report = {}, {}, {}, {}, {}
    decay_T = min(T, 50)
    lags = [k for k in (0, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 40) if k < decay_T] + [decay_T - 1]
    lags = sorted(set(lags))
    for i, name in enumerate(names):
        _say(f"diagnose: {name} ({i + 1}/{len(names)}): gradient flow, Jacobians, decay", args.quiet)
        extra = {"forget_bias": args.forget_bias} if name == "lstm" else {}
        cell = dg.cell_by_name(name, H, init_scale=args.init_scale, **extra)
        params = cell.init(k_params, D, dtype)
        flow = dg.grad_flow(cell, params, xs)
        rel = np.asarray(flow.hidden[::-1] / flow.hidden[-1])  # by distance 0 .. T-1
        flows[name] = (np.arange(T), rel)
        jn = dg.jacobian_norms(cell, params, xs, method=args.method)
        jacs[name] = (np.asarray(jn.distance), np.asarray(jn.norms))
        if cell.activation in dg.MAX_DERIVATIVE:  # the Elman bound: a named activation
            bounds[name] = (np.asarray(jn.distance),
                            np.asarray(dg.elman_jacobian_bound(cell, params, jn.distance)))
        curve = dg.information_decay(cell, params, k_decay, seq_len=decay_T, lags=lags,
                                     num_samples=args.decay_samples, vocab_size=D)
        decays[name] = curve
        report[name] = {
            "grad_flow_relative": rel.tolist(),
            "input_grad_norm": np.asarray(flow.inputs).tolist(),
            "jacobian_norms": np.asarray(jn.norms).tolist(),
            "jacobian_rate": float(jn.rate),
            "bound": bounds[name][1].tolist() if name in bounds else None,
            "decay_lags": lags,
            "sensitivity": np.asarray(curve.sensitivity).tolist(),
            "probe_accuracy": np.asarray(curve.probe_accuracy).tolist(),
            "chance": float(np.mean(np.asarray(curve.chance))),
        }

    show = [k for k in (1, 10, 50, 100, 200) if k < T]
    print(f"gradient flow ||dL_T/dh_(T-k)|| / ||dL_T/dh_T||  (H={H}, T={T}, seed {args.seed}, "
          f"{args.dtype}; rate/step: geometric mean of the Jacobian product's per-step factor)")
    print(f"{'cell':>8} " + " ".join(f"{'k=' + str(k):>9}" for k in show) + f" {'rate/step':>9}")
    for name in names:
        rel = report[name]["grad_flow_relative"]
        print(f"{name:>8} " + " ".join(_fmt(rel[k]) for k in show)
              + f" {report[name]['jacobian_rate']:9.3f}")
    print(f"\nlinear probe accuracy for the token k steps back (chance "
          f"{report[names[0]]['chance']:.2f}, T={decay_T}, V={D})")
    shown = [k for k in lags if k in (0, 1, 2, 5, 10, 20) or k == lags[-1]]
    print(f"{'cell':>8} " + " ".join(f"{'k=' + str(k):>6}" for k in shown))
    for name in names:
        acc = dict(zip(lags, report[name]["probe_accuracy"]))
        print(f"{name:>8} " + " ".join(f"{acc[k]:6.2f}" for k in shown))

    figures = [
        lambda: plots.gradient_flow_figure(flows, os.path.join(out_dir, "gradient_flow.png"),
                                           svg=args.svg, title=f"Gradient flow, H={H}, T={T}"),
        lambda: plots.gradient_flow_figure(
            jacs, os.path.join(out_dir, "jacobian.png"), bounds=bounds, svg=args.svg,
            ylabel="||ds_T / ds_(T-k)||_2", title="Jacobian products and the activation bound (dashed)"),
        lambda: plots.decay_figure(decays, os.path.join(out_dir, "decay.png"), svg=args.svg,
                                   title=f"Information decay, H={H}")]
    return {"cells": report, "figures": figures}


def _training_demo(args, out_dir) -> dict:
    """A tanh RNN LM with large recurrent weights, trained with and without clipping."""

    corpus = D.builtin_corpus(2000, seed=args.seed)
    V = len(corpus.vocab)
    streams = D.batchify(corpus.train, 16)
    windows = list(D.bptt_windows(streams, 35))
    batches = [windows[i % len(windows)] for i in range(args.train_steps)]
    model = jrnn.rnn_lm(V, cell="elman", activation="relu", embed_size=32, hidden_size=64,
                        num_layers=1, init_scale=0.25)
    params = model.init(jax.random.PRNGKey(args.seed))
    loss_fn = dg.lm_loss_fn(model)
    traces = {}
    for label, clip in (("no clipping", None), ("clip_by_global_norm(1.0)", 1.0)):
        _say(f"diagnose: training a ReLU RNN LM, {label}, {args.train_steps} steps", args.quiet)
        tr = dg.watch_training(loss_fn, params, optax.sgd(0.5), batches, clip_norm=clip)
        traces[label] = tr
        first = tr.first_nonfinite
        print(f"{label:>26}: {len(tr.loss)} steps, final loss {tr.loss[-1]:.3f}, max pre-clip "
              f"|g| {np.nanmax(np.where(np.isfinite(tr.grad_norm), tr.grad_norm, np.nan)):.3g}, "
              + (f"first non-finite: {first}" if first else "all finite"))
    figures = [lambda: plots.training_figure(traces, os.path.join(out_dir, "training.png"), svg=args.svg,
                                             title="ReLU RNN LM (init U(+-0.25), H=64, SGD lr 0.5)")]
    return {"training": {k: {"loss": v.loss.tolist(), "grad_norm": v.grad_norm.tolist(),
                             "first_nonfinite": str(v.first_nonfinite) if v.first_nonfinite else None}
                         for k, v in traces.items()},
            "figures": figures}


def _diagnose_checkpoint(args, out_dir) -> dict:
    model, params, vocab, meta = load_for_inference(args.checkpoint)
    if not hasattr(model.config, "num_layers"):
        raise UserError(f"{args.checkpoint}: diagnose needs an RNN LM, not an NNLM")
    corpus = D.open_corpus(meta.get("data"), meta.get("level"), meta.get("max_vocab"),
                           meta.get("min_freq", 1))
    ids = np.asarray(corpus.valid)
    T = args.length
    n = min(args.decay_samples, (len(ids) - 1) // T)
    if n < 8:
        raise UserError(f"the validation text is too short for --length {T}")
    x = ids[: n * T].reshape(n, T)
    y = ids[1 : n * T + 1].reshape(n, T)
    _say(f"diagnose: {args.checkpoint}: gradient flow over {min(n, args.batch_size)} windows", args.quiet)
    flow = dg.lm_grad_flow(model, params, jnp.asarray(x[: args.batch_size]), jnp.asarray(y[: args.batch_size]))
    hidden = np.asarray(flow.hidden)
    curves = {f"layer {l + 1}": (np.arange(T), hidden[l, ::-1] / hidden[-1, -1]) for l in range(len(hidden))}
    lags = sorted(set(np.linspace(0, T - 1, 12).astype(int).tolist()))
    _say(f"diagnose: linear probes on {n} windows", args.quiet)
    curve = dg.lm_information_decay(model, params, jnp.asarray(x), lags)
    print(f"{args.checkpoint}: {model.config.cell} x{model.config.num_layers}, T={T}")
    print(f"{'k':>4} " + " ".join(f"{'layer ' + str(l + 1):>10}" for l in range(len(hidden)))
          + f" {'probe acc':>9} {'sensitivity':>11}")
    acc = dict(zip(lags, np.asarray(curve.probe_accuracy)))
    sens = dict(zip(lags, np.asarray(curve.sensitivity)))
    for k in lags:
        print(f"{k:4d} " + " ".join(f"{hidden[l, T - 1 - k] / hidden[-1, -1]:10.2e}" for l in range(len(hidden)))
              + f" {acc[k]:9.3f} {sens[k]:11.2e}")
    print(f"probe chance (most frequent token): {float(np.mean(np.asarray(curve.chance))):.3f}")
    figures = [
        lambda: plots.gradient_flow_figure(curves, os.path.join(out_dir, "gradient_flow.png"),
                                           svg=args.svg,
                                           title=f"Gradient flow in {os.path.basename(args.checkpoint)}"),
        lambda: plots.decay_figure({model.config.cell: curve}, os.path.join(out_dir, "decay.png"),
                                   svg=args.svg)]
    return {"grad_flow": hidden.tolist(), "lags": lags, "probe_accuracy": list(map(float, acc.values())),
            "sensitivity": list(map(float, sens.values())), "figures": figures}


def _diagnose(argv) -> int:
    args = _diagnose_parser().parse_args(argv)
    if args.length is None:
        args.length = 35 if args.checkpoint is not None else 100
    for name in ("hidden-size", "input-size", "length", "batch-size", "decay-samples"):
        _positive(name, getattr(args, name.replace("-", "_")))
    if args.train_steps < 0:
        raise UserError(f"--train-steps must be >= 0, got {args.train_steps}")
    if args.init_scale is not None and args.init_scale <= 0:
        raise UserError(f"--init-scale must be positive, got {args.init_scale}")
    if args.decay_samples < 8:
        raise UserError(f"--decay-samples must be at least 8, got {args.decay_samples}")
    names = _cells(args.cells)
    if args.checkpoint is None and args.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    t0 = time.perf_counter()
    _out_dir(args.out)
    if args.checkpoint is not None:
        try:
            result = _diagnose_checkpoint(args, args.out)
        except (CheckpointError, DataError) as e:
            raise UserError(str(e)) from None
    else:
        result = _diagnose_cells(args, names, args.out)
        if args.train_steps:
            print()
            extra = _training_demo(args, args.out)
            result["figures"] += extra.pop("figures")
            result.update(extra)
    figures = result.pop("figures")
    path = os.path.join(args.out, "diagnose.json")
    _write_json(path, result)  # the results first: figures are optional
    written = _draw(figures, args.quiet) + [path]
    print(f"\nwrote {', '.join(written)} ({time.perf_counter() - t0:.0f}s)")
    return 0


def diagnose_main(argv: Optional[Sequence[str]] = None) -> int:
    """``jrnn diagnose [options]``: returns the exit code."""
    return _run(_diagnose, list(sys.argv[1:] if argv is None else argv))


# ---- jrnn tasks -----------------------------------------------------------------------

def format_sweep_table(results, lengths: Sequence[int], cells: Sequence[str], need: int = 1) -> str:
    """One row per cell: the held-out metric at each length (``*`` = solved by at least ``need``
    seeds; the best seed's metric is shown), and the longest solved."""

    best = longest_solved(results, need)
    solved = tasks.solved_lengths(results, need)
    head = f"{'cell':>8} | " + " ".join(f"{l:>7}" for l in lengths) + " | longest solved"
    lines = [head, "-" * len(head)]
    for cell in cells:
        row = []
        for l in lengths:
            rs = [r for r in results if r.cell == cell and r.length == l]
            if not rs:
                row.append(f"{'-':>7}")
                continue
            r = max(rs, key=lambda r: r.metric)
            row.append(f"{r.metric:6.2f}{'*' if solved[(cell, l)] else ' '}")
        b = best.get(cell)
        lines.append(f"{cell:>8} | " + " ".join(row) + f" | {b if b is not None else 'none'}")
    return "\n".join(lines)


def _tasks_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="jrnn tasks",
                description="Train each cell on a long-range task over growing lengths and report "
                            "where it stops learning.")
    p.add_argument("--task", default="adding", choices=["adding", "adding-sum", "copy", "agreement", "all"])
    p.add_argument("--cells", default="tanh,lstm,gru",
                   help=f"comma-separated, from {','.join(tasks.TASK_CELLS + dg.MORE_CELL_NAMES)}")
    p.add_argument("--lengths", help="comma-separated lengths (default depends on the task)")
    p.add_argument("--steps", type=int, default=1500, help="budget of Adam steps per run")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--lr", type=_positive_float, default=1e-2, help="Adam learning rate")
    p.add_argument("--clip", type=_positive_float, default=1.0, help="clip_by_global_norm")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-size", type=int, default=1000)
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--need", type=int, default=1,
                   help="seeds that must solve a length for it to count as solved (default 1: any)")
    p.add_argument("--lstm-init", default="chrono", choices=["chrono", "forget-bias"],
                   help="LSTM gate biases: chrono initialization (default) or forget bias 1")
    p.add_argument("--keep-going", action="store_true",
                   help="try longer lengths even after a cell has failed a shorter one")
    p.add_argument("--out", default="runs/tasks", help="directory for the JSON and plots")
    p.add_argument("--svg", action="store_true")
    p.add_argument("--quiet", action="store_true")
    return p


def result_to_dict(r) -> dict:
    d = r._asdict()
    d["history"] = [list(h) for h in r.history]
    return d


def _tasks(argv) -> int:
    args = _tasks_parser().parse_args(argv)
    for name in ("steps", "batch-size", "hidden-size", "lr", "clip", "eval-every", "eval-size"):
        _positive(name, getattr(args, name.replace("-", "_")))
    cells = _cells(args.cells, tasks.TASK_CELLS + dg.MORE_CELL_NAMES)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds must be comma-separated integers, got {args.seeds!r}") from None
    if not seeds:
        raise UserError("--seeds is empty")
    if not 1 <= args.need <= len(seeds):
        raise UserError(f"--need must be between 1 and the number of seeds ({len(seeds)}), got {args.need}")
    task_names = ["adding", "copy", "agreement"] if args.task == "all" else [args.task]


    _out_dir(args.out)
    everything, figures = {}, []
    for task_name in task_names:
        task = tasks.get_task(task_name)
        lengths = _int_list(args.lengths, "--lengths") if args.lengths else list(DEFAULT_LENGTHS[task_name])
        if min(lengths) < task.min_length:
            raise UserError(f"{task_name} needs lengths >= {task.min_length}, got {min(lengths)}")
        _say(f"tasks: {task.name}: cells {','.join(cells)}, lengths {lengths}, {args.steps} steps, "
             f"seeds {seeds}", args.quiet)

        def on_result(r):
            _say(f"  {r.cell:>8} T={r.length:<4} seed {r.seed}: {task.metric_name} {r.metric:.3f} "
                 f"(chance {r.chance:.3f}) loss {r.loss:.4f} (baseline {r.baseline_loss:.4f}) "
                 f"{'solved' if r.solved else 'NOT solved'} after {r.steps} steps, {r.seconds:.0f}s",
                 args.quiet)

        def on_progress(step, steps, loss, metric):
            if not args.quiet and sys.stderr.isatty():
                sys.stderr.write(f"\r    step {step}/{steps} loss {loss:.4f} metric {metric:.3f}   ")
                sys.stderr.flush()
                if step >= steps:
                    sys.stderr.write("\r" + " " * 60 + "\r")

        results = tasks.sweep(task, cells, lengths, seeds=seeds, need=args.need,
                              stop_after_failure=not args.keep_going, lstm_init=args.lstm_init,
                              on_result=on_result, steps=args.steps, batch_size=args.batch_size,
                              hidden_size=args.hidden_size, learning_rate=args.lr, clip_norm=args.clip,
                              eval_every=args.eval_every, eval_size=args.eval_size,
                              on_progress=on_progress)
        print(f"\n{task.name}: held-out {task.metric_name} (* = solved: >= {task.solved_at}); "
              f"budget {args.steps} steps x batch {args.batch_size}, H={args.hidden_size}, seeds {seeds}")
        print(format_sweep_table(results, lengths, cells, args.need))
        everything[task.name] = {"lengths": lengths, "results": [result_to_dict(r) for r in results],
                                 "longest_solved": tasks.longest_solved(results, args.need)}
        figures.append(lambda results=results, task_name=task_name, task=task: plots.sweep_figure(
            results, os.path.join(args.out, f"sweep_{task_name}.png"), solved_at=task.solved_at,
            svg=args.svg))
    settings = {k: v for k, v in vars(args).items()}
    path = os.path.join(args.out, "tasks.json")
    _write_json(path, {"settings": settings, "tasks": everything}, indent=1)  # results first
    written = _draw(figures, args.quiet)
    print(f"\nwrote {', '.join(written + [path])}")
    return 0


def tasks_main(argv: Optional[Sequence[str]] = None) -> int:
    """``jrnn tasks [options]``: returns the exit code."""
    return _run(_tasks, list(sys.argv[1:] if argv is None else argv))
