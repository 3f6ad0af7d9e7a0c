"""The training loop as a library function: :func:`fit`.

``jrnn train`` is argument parsing and printing over this function.  A JAX
user calls it with a configuration that builds the model and the optimizer::

    from jrnn.data import builtin_corpus
    from jrnn.training.config import DEFAULT
    from jrnn.training.fit import fit

    result = fit(DEFAULT.replace(epochs=1), builtin_corpus(), "runs/demo")
    print(result.test_ppl, result.best_path)

or with their own model and optimizer (anything with the
:class:`jrnn.LanguageModel` interface, any ``optax.GradientTransformation``,
schedules included); the configuration then only says how to feed it
(``epochs``, ``batch_size``, ``bptt``, ``seed``, ``clip``)::

    model = jrnn.rnn_lm(len(corpus.vocab), cell=my_cell, embed_size=64)
    opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 3e-3, 50, 1000))
    result = fit(TrainConfig(epochs=2), corpus, "runs/mine", model=model, optimizer=opt)

What it guarantees, for either way in:

* **No run is lost.**  ``out=None`` makes a new run directory (``runs/<n>``)
  and points ``runs/latest`` at it once it has a checkpoint; an ``out`` that
  already holds a run is refused unless ``resume`` or ``overwrite`` (the old
  run stays until the new one has written its first checkpoint); one process
  holds a run directory at a time (:mod:`jrnn.training.rundir`).
  Checkpoints are atomic; temporary files a killed save left behind are
  removed at the next start.
* **No run lies.**  The first non-finite loss or gradient stops the run
  (``on_nonfinite="stop"``: :class:`NonFiniteError` names the step, the
  window and the parameters whose gradient broke; nothing non-finite is ever
  saved and the last good checkpoint stays), or is skipped and counted
  (``"skip"``).  An epoch with no counted window reports no perplexity.
* **Resume is exact.**  The checkpoint holds the config, the optimizer
  state, the carry and the epoch's running sums, so an interrupted and
  resumed run ends with the same parameters, optimizer state and
  perplexities as the uninterrupted one.
* **Bad input fails before the first step**: every split is checked against
  the shapes it will be used with, and a model that would not fit in memory
  is refused with the size it needs.

The parts, each small enough to read on its own: :mod:`jrnn.training.rundir`
(the run directory and its writes), :mod:`jrnn.training.snapshots` (the
Orbax snapshots ``keep`` and ``keep_best`` ask for), :class:`Plan` (what is trained: the
model, the optimizer, the per-epoch learning rate), :class:`Progress` (where
the run is: what a checkpoint stores), :class:`_Epochs` (one epoch of
windows with its stops and saves) and :func:`fit`, which strings them
together.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np
import optax

from jrnn.data import Corpus, batchify, num_windows
from jrnn.models.lm import LanguageModel, build_model
from jrnn.training import checkpoint as ckpt
from jrnn.training import configfile
from jrnn.training import distributed
from jrnn.training.config import DEFAULT, ConfigError, TrainConfig
from jrnn.training.loop import (
    evaluate,
    get_learning_rate,
    make_optimizer,
    set_learning_rate,
    train_epoch,
    train_epoch_fused,
    zaremba_lr,
)
from jrnn.training.rundir import RunDir, RunDirError, Writer, open_run_dir
from jrnn.training.inference import load_for_inference
from jrnn.training.snapshots import Snapshots
from jrnn.training.step import (
    TrainState,
    init_train_state,
    leaf_names,
    make_eval_step,
    make_train_epoch,
    make_train_step,
)

__all__ = [
    "fit",
    "FitResult",
    "FitError",
    "NonFiniteError",
    "Callbacks",
    "Plan",
    "build_plan",
    "resume_config",
    "estimate_bytes",
    "load_for_inference",
    "EVAL_BATCH",
]

EVAL_BATCH = 10  # sequences evaluated in parallel (at most batch_size)


class FitError(ValueError):
    """A run that cannot start or go on, in one line (the CLI exits with code 2)."""


class NonFiniteError(FitError):
    """Training produced a NaN or an infinity (the CLI exits with code 3)."""

    def __init__(self, message: str, *, step: int, epoch: int, window: int, parameters: tuple):
        super().__init__(message)
        self.step, self.epoch, self.window, self.parameters = step, epoch, window, parameters


class Callbacks(NamedTuple):
    """Optional hooks; each gets plain Python values.

    * ``on_start(info)``: once, with the run directory, sizes and the device;
    * ``on_window(epoch, i, n, metrics, tokens_per_s)``: after every window
      (not with ``fused_epoch``);
    * ``on_epoch(record)``: after each epoch, with its history record;
    * ``on_message(text)``: notes (resuming, skipped windows, interruptions);
    * ``on_metrics(record)``: each record the run appends to its
      ``metrics.jsonl`` (``"kind"``: ``"train"`` every ``log_every`` windows,
      ``"epoch"``, ``"test"``).
    """

    on_start: Optional[Callable[[dict], None]] = None
    on_window: Optional[Callable[[int, int, int, dict, float], None]] = None
    on_epoch: Optional[Callable[[dict], None]] = None
    on_message: Optional[Callable[[str], None]] = None
    on_metrics: Optional[Callable[[dict], None]] = None


class FitResult(NamedTuple):
    """What :func:`fit` returns."""

    run_dir: str
    state: TrainState
    history: list  # one dict per epoch (epoch, lr, train_ppl, valid_ppl, tokens_per_s, ...)
    best_path: Optional[str]  # None when no epoch gave a finite validation perplexity
    last_path: Optional[str]
    best_valid_ppl: Optional[float]
    test_ppl: Optional[float]  # None when the run was interrupted
    complete: bool  # False: interrupted; continue with resume=True
    skipped_windows: int  # non-finite windows skipped (on_nonfinite="skip")
    wall_seconds: float


class Plan(NamedTuple):
    """What a run trains: the model, the optimizer, and how its learning rate moves.

    ``epoch_lr(epoch) -> lr`` (epochs count from 0) sets the learning rate an
    ``optax.inject_hyperparams`` optimizer keeps in its state at the start of
    each epoch (the configuration's Zaremba schedule); ``None`` leaves the
    optimizer alone (an optax schedule inside it moves the rate per step).
    ``given`` names what came from Python rather than from the configuration
    (``"model"``, ``"optimizer"``): a checkpoint cannot rebuild those, so a
    resume must pass them again.
    """

    config: TrainConfig
    model: LanguageModel
    optimizer: optax.GradientTransformation
    epoch_lr: Optional[Callable[[int], float]] = None
    given: tuple = ()


def build_plan(config: TrainConfig, vocab_size: int, *, model: Optional[LanguageModel] = None,
               optimizer: Optional[optax.GradientTransformation] = None) -> Plan:
    """The :class:`Plan` of a run: ``model`` and ``optimizer`` if given, else what ``config`` builds.

    A model built here is the one ``config.model`` describes; an optimizer
    built here is ``config.optimizer`` at ``config.lr`` with Zaremba et al.'s
    per-epoch decay (``lr_decay``, ``decay_start``).  With a model given,
    the plan's ``config.model`` is ``None`` (what checkpoints record).

    Example:
      >>> import optax
      >>> plan = build_plan(DEFAULT, 30, optimizer=optax.sgd(0.1))
      >>> plan.given, plan.epoch_lr is None, plan.model.config.vocab_size
      (('optimizer',), True, 30)
    """
    if model is not None and not (callable(getattr(model, "init", None))
                                  and callable(getattr(model, "apply", None))
                                  and callable(getattr(model, "initial_carry", None))):
        raise FitError(f"model must have the jrnn.LanguageModel interface (init, apply, "
                       f"initial_carry, config), got {type(model).__name__}")
    if model is not None and getattr(getattr(model, "config", None), "vocab_size", None) != vocab_size:
        raise FitError(f"the model's vocab_size ({getattr(getattr(model, 'config', None), 'vocab_size', None)}) "
                       f"is not the corpus vocabulary's ({vocab_size})")
    if optimizer is not None and not isinstance(optimizer, optax.GradientTransformation):
        raise FitError(f"optimizer must be an optax.GradientTransformation, "
                       f"got {type(optimizer).__name__}")
    if model is None and config.model is not None and config.model.from_python:
        model = build_model(config.model, vocab_size)  # no file form: a model from Python
    given = tuple(name for name, v in (("model", model), ("optimizer", optimizer)) if v is not None)
    epoch_lr = None
    if optimizer is None:
        optimizer = make_optimizer(config.optimizer, config.lr)
        epoch_lr = lambda epoch: zaremba_lr(config.lr, config.lr_decay, config.decay_start, epoch)
    if model is None:
        if config.model is None:
            raise FitError("the configuration describes no model (model=None): pass model= "
                           "or a TrainConfig with a ModelConfig")
        model = build_model(config.model, vocab_size)
    else:
        config = config.replace(model=None)
    return Plan(config, model, optimizer, epoch_lr, given)


def resume_config(saved: TrainConfig, overrides: dict) -> tuple[TrainConfig, list[str]]:
    """The config of a resumed run: ``saved``, with only ``epochs`` allowed to change.

    Returns ``(config, notes)``; any other override that differs from the
    saved value is refused with one line naming them.
    """
    flat = saved.flat()
    differs = sorted(k for k, v in overrides.items() if k != "epochs" and flat.get(k) != v)
    if differs:
        raise FitError("--resume restores the saved configuration; these options differ from it: "
                       + ", ".join(f"{k} (saved {flat.get(k)!r}, given {overrides[k]!r})"
                                   for k in differs))
    notes = []
    epochs = overrides.get("epochs", saved.epochs)
    if epochs != saved.epochs:
        notes.append(f"epochs changed from {saved.epochs} to {epochs}")
    return saved.replace(epochs=epochs), notes


def _size(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(tree))


def _plan_bytes(plan: Plan, batch_size: int, bptt: int) -> int:
    """About how much memory training ``plan`` needs (float32): parameters and gradients,
    the optimizer state (both sized by ``jax.eval_shape``), one window's activations."""
    params = jax.eval_shape(plan.model.init, jax.random.PRNGKey(0))
    n_params, n_opt = _size(params), _size(jax.eval_shape(plan.optimizer.init, params))
    V = plan.model.config.vocab_size
    widths = [(c.num_gates + 2) * (c.cell_size or c.hidden_size) for c in getattr(plan.model, "cells", ())]
    embed = params["embed"].shape[-1] if isinstance(params, dict) and "embed" in params else 0
    activations = batch_size * bptt * (sum(widths) + embed) * 2
    logits = min(batch_size * bptt, max(1, 1_500_000 // max(V, 1))) * V * 3
    return 4 * (2 * n_params + n_opt + activations + logits)


def estimate_bytes(config: TrainConfig, vocab_size: int) -> int:
    """About how much memory training ``config`` needs: parameters, gradients,
    optimizer state and one window's activations (float32)."""
    return _plan_bytes(build_plan(config, vocab_size), config.batch_size, config.bptt)


def _available_bytes() -> Optional[int]:
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every OS has these
        return None


def _check_memory(plan: Plan) -> None:
    need = _plan_bytes(plan, plan.config.batch_size, plan.config.bptt)
    have = _available_bytes()
    if have is not None and need > 0.9 * have:
        raise FitError(f"this model needs about {need / 2**30:.1f} GiB to train (parameters, "
                       f"gradients, optimizer state, activations) but {have / 2**30:.1f} GiB are "
                       "available; use a smaller --hidden-size / --embed-size / --batch-size")


def _check_splits(config: TrainConfig, corpus: Corpus) -> np.ndarray:
    """The training streams, after checking every split against the shapes it meets."""
    name = corpus.name or "the corpus"
    eval_batch = min(EVAL_BATCH, config.batch_size)
    for split, batch, flag in (("train", config.batch_size, "--batch-size"),
                               ("valid", eval_batch, "--batch-size (evaluation uses min(10, it))"),
                               ("test", eval_batch, "--batch-size (evaluation uses min(10, it))")):
        ids = getattr(corpus, split)
        if len(ids) // batch < 2:
            raise FitError(f"the {split} split of {name} has {len(ids)} tokens: too few for "
                           f"{batch} streams of 2 or more tokens; use a smaller {flag} or more text")
    return batchify(corpus.train, config.batch_size)


@dataclasses.dataclass
class Progress:
    """Where a run is: what its checkpoints hold besides the training state.

    ``epoch`` epochs are finished and ``window`` windows of the next one are
    trained (non-zero only mid-epoch); ``carry`` and ``totals`` (the epoch's
    running sums ``(nll, tokens, non-finite windows, max gradient norm)``)
    continue that epoch exactly.
    """

    epoch: int = 0
    window: int = 0
    best: float = math.inf
    history: list = dataclasses.field(default_factory=list)
    skipped: int = 0
    carry: Any = None
    totals: Optional[tuple] = None

    @classmethod
    def from_checkpoint(cls, meta: dict, carry_template: Any, path: str) -> "Progress":
        window = meta.get("window", 0)
        return cls(meta["epoch"], window, meta.get("best_valid_ppl") or math.inf,
                   meta.get("history", []), meta.get("skipped_windows", 0),
                   ckpt.load_carry(meta, carry_template, path) if window else None,
                   tuple(meta["epoch_totals"]) if window else None)

    def best_or_none(self) -> Optional[float]:
        return self.best if math.isfinite(self.best) else None

    def meta(self, header: dict, epoch: int, window: int, totals: Optional[tuple] = None) -> dict:
        """A checkpoint's header: the run's ``header`` and where it stands."""
        m = {**header, "epoch": epoch, "window": window, "best_valid_ppl": self.best_or_none(),
             "history": self.history, "skipped_windows": self.skipped}
        if totals is not None:
            m["epoch_totals"] = list(totals)
        return m


class _StopRequests:
    """SIGINT and SIGTERM set a flag (the window in flight finishes; the run saves and returns)."""

    def __init__(self, handle_signals: bool):
        self.event = threading.Event()
        self.install = handle_signals and threading.current_thread() is threading.main_thread()
        self.old = {}

    def __enter__(self) -> threading.Event:
        if self.install:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.old[sig] = signal.signal(sig, lambda signum, frame: self.event.set())
        return self.event

    def __exit__(self, *exc) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


class _Steps(NamedTuple):
    """The compiled functions a run calls, and the rows of the batch this process feeds."""

    train: Callable
    epoch: Optional[Callable]  # fused_epoch: a whole epoch in one call
    eval: Callable
    mesh: Any  # a device mesh when the batch is split over devices, else None
    rows: Optional[slice]


def _make_steps(plan: Plan, *, data_parallel: bool, fused_epoch: bool) -> _Steps:
    clip = plan.config.clip or None
    if not data_parallel:
        epoch_fn = (make_train_epoch(plan.model, plan.optimizer, clip_norm=clip,
                                     skip_nonfinite=True) if fused_epoch else None)
        return _Steps(make_train_step(plan.model, plan.optimizer, clip_norm=clip,
                                      skip_nonfinite=True),
                      epoch_fn, make_eval_step(plan.model), None, None)
    if fused_epoch:
        raise FitError("fused_epoch and data_parallel cannot be combined yet; drop one")
    mesh = distributed.make_mesh()
    if plan.config.batch_size % mesh.size:
        raise FitError(f"batch size {plan.config.batch_size} does not split over {mesh.size} "
                       f"devices; use a multiple of {mesh.size}")
    step = distributed.make_sharded_train_step(plan.model, plan.optimizer, mesh=mesh,
                                               clip_norm=clip, skip_nonfinite=True)
    # Each process feeds its own rows of every window; the step assembles the global batch.
    return _Steps(step, None, make_eval_step(plan.model), mesh,
                  distributed.process_rows(plan.config.batch_size, mesh))


class _Epochs:
    """Trains a run epoch by epoch: its windows, mid-epoch saves, agreed stops, evaluation.

    Every process of a group runs the same calls in the same order; a signal
    or a clock reaches each process on its own, so they act on them together
    (``distributed.any_process``).
    """

    def __init__(self, plan: Plan, steps: _Steps, corpus: Corpus, streams: np.ndarray,
                 progress: Progress, writer: Writer, snapshots: Snapshots, header: dict, *,
                 skip: bool, max_windows: Optional[int], save_every: float,
                 stop: threading.Event, callbacks: Callbacks, names: list, log_every: int,
                 t_start: float):
        self.plan, self.steps, self.corpus, self.streams = plan, steps, corpus, streams
        self.progress, self.writer, self.snapshots, self.header = progress, writer, snapshots, header
        self.skip, self.max_windows, self.save_every, self.stop = skip, max_windows, save_every, stop
        self.callbacks, self.names = callbacks, names
        self.log_every, self.t_start = log_every, t_start
        self.eval_batch = min(EVAL_BATCH, plan.config.batch_size)
        self.best_params = None  # several processes: the best parameters, kept in memory
        self.halted = False  # a stop agreed by every process
        self.last_save = time.perf_counter()  # when last.ckpt was last written
        self.running = progress.totals  # the running sums after the latest window

    @property
    def last(self) -> str:
        return self.writer.run_dir.last

    def save_last(self, state, meta: dict, carry: Any = None) -> None:
        """Write ``last.ckpt`` once the snapshot being written is complete: a resume from
        it then finds the snapshots of every epoch before it."""
        self.snapshots.wait()
        self.writer.save(self.last, state, meta, carry=carry)

    def _host_params(self, state):  # evaluation runs in each process on its own device
        return distributed.to_host(state.params) if self.writer.multi else state.params

    def nonfinite(self, epoch: int, window: int, m: dict, step_no: int) -> NonFiniteError:
        flags = np.asarray(m.get("finite_leaves", []), bool)
        broke = tuple(n for n, ok in zip(self.names, flags) if not ok)
        loss_ok = math.isfinite(float(m["loss"]))
        what = ([] if loss_ok else ["the loss"]) + (
            [f"the gradient of {', '.join(broke)}"] if broke else [])
        keep = (f"the last good checkpoint is {self.last}" if os.path.exists(self.last)
                else "no checkpoint was written")
        return NonFiniteError(
            f"non-finite {' and '.join(what) or 'values'} at step {step_no} (epoch {epoch + 1}, "
            f"window {window + 1}); stopped without saving it, {keep}",
            step=step_no, epoch=epoch, window=window, parameters=broke)

    def record(self, kind: str, step: int, **fields) -> None:
        """One record for ``metrics.jsonl`` and ``Callbacks.on_metrics``."""
        record = {"kind": kind, "step": step, **fields,
                  "wall_s": round(time.perf_counter() - self.t_start, 3)}
        self.writer.log(record)
        if self.callbacks.on_metrics is not None:
            self.callbacks.on_metrics(dict(record))

    def _window_done(self, epoch, i, state, carry, m, running) -> bool:
        """After window ``i``: stop on a non-finite value, an agreed signal, or max_windows;
        save ``last.ckpt`` when ``save_every`` seconds have passed.  True ends the epoch."""
        p = self.progress
        self.running = running
        if not m["finite"]:  # the loss is global: every process sees the same
            if not self.skip:
                raise self.nonfinite(epoch, i, m, int(state.step))  # the step just taken, from 1
            p.skipped += 1
        if (i + 1) % self.log_every == 0:
            nll, tokens = running[0], running[1]
            self.record("train", int(state.step), epoch=epoch + 1, window=i + 1,
                        loss=m["token_nll"] if m["finite"] else None,
                        epoch_ppl=math.exp(min(nll / tokens, 700.0)) if tokens else None,
                        grad_norm=m["grad_norm"] if math.isfinite(m["grad_norm"]) else None,
                        lr=_learning_rate(state))
        self.halted, due = distributed.any_process(
            self.stop.is_set(), time.perf_counter() - self.last_save > self.save_every)
        if self.halted:
            return True
        if self.max_windows is not None and i + 1 >= p.window + self.max_windows:
            return True
        if due:
            self.save_last(state, p.meta(self.header, epoch, i + 1, running), carry=carry)
            self.last_save = time.perf_counter()
        return False

    def train(self, epoch: int, state: TrainState) -> tuple[TrainState, Any, bool]:
        """One epoch's windows: ``(state, stats, interrupted)``; an interrupted epoch is saved."""
        p, cfg = self.progress, self.plan.config
        if self.plan.epoch_lr is not None:
            state = set_learning_rate(state, self.plan.epoch_lr(epoch))
        self.last_save, self.running = time.perf_counter(), p.totals
        if self.steps.epoch is not None and p.window == 0:
            step_before = int(state.step)
            state, stats, first_bad = train_epoch_fused(self.steps.epoch, self.steps.train,
                                                        self.plan.model, state, self.streams,
                                                        cfg.bptt)
            if first_bad is not None:
                if not self.skip:
                    window, m = first_bad
                    raise self.nonfinite(epoch, window, m, step_before + window + 1)
                p.skipped += stats.nonfinite_windows
            return state, stats, False
        on_window = None
        if self.callbacks.on_window is not None:
            on_window = lambda i, n, m, tok_s: self.callbacks.on_window(epoch, i, n, m, tok_s)
        state, stats, next_window, carry = train_epoch(
            self.steps.train, self.plan.model, state, self.streams, cfg.bptt,
            start_window=p.window, carry=p.carry, totals=p.totals, on_window=on_window,
            should_stop=lambda i, st, c, m, running: self._window_done(epoch, i, st, c, m, running))
        if self.halted and next_window < num_windows(self.streams, cfg.bptt):
            p.window = next_window
            self.save_last(state, p.meta(self.header, epoch, next_window, self.running), carry=carry)
            return state, stats, True
        p.window, p.carry, p.totals = 0, None, None
        return state, stats, False

    def finish(self, epoch: int, state: TrainState, stats) -> bool:
        """Evaluate, record and save the epoch (and start its snapshot); True when a stop was
        asked for meanwhile."""
        p = self.progress
        valid_ppl, _ = evaluate(self.plan.model, self._host_params(state), self.corpus.valid,
                                eval_step=self.steps.eval, batch_size=self.eval_batch,
                                bptt=self.plan.config.bptt)
        improved = math.isfinite(valid_ppl) and valid_ppl < p.best
        if improved:
            p.best = valid_ppl
        record = {"epoch": epoch + 1, "lr": _learning_rate(state), "train_ppl": stats.perplexity,
                  "valid_ppl": valid_ppl if math.isfinite(valid_ppl) else None,
                  "improved": improved, "train_tokens": stats.tokens,
                  "tokens_per_s": stats.tokens / max(stats.seconds, 1e-9),
                  "seconds": stats.seconds, "nonfinite_windows": stats.nonfinite_windows}
        p.history.append(record)
        p.epoch = epoch + 1
        if improved:
            self.writer.save(self.writer.run_dir.best, state, p.meta(self.header, epoch + 1, 0))
            if self.writer.multi:
                self.best_params = self._host_params(state)
        self.record("epoch", int(state.step), **record)
        self.save_last(state, p.meta(self.header, epoch + 1, 0))
        self.snapshots.save(state, p.meta(self.header, epoch + 1, 0), record["valid_ppl"])
        if self.callbacks.on_epoch is not None:
            self.callbacks.on_epoch(dict(record))
        self.halted = distributed.any_process(self.stop.is_set())[0]
        return self.halted

    def test(self, state: TrainState, say: Callable[[str], None]) -> tuple[float, int]:
        """Test perplexity of the best parameters (the last ones if none was best)."""
        best = self.writer.run_dir.existing_best()
        if self.best_params is not None:
            params = self.best_params
        elif best is not None:
            _, raw = ckpt.load_raw(best)
            params = ckpt.restore_into(state, raw, best).params
        else:
            say("no epoch gave a finite validation perplexity: testing the last state")
            params = self._host_params(state)
        return evaluate(self.plan.model, params, self.corpus.test, eval_step=self.steps.eval,
                        batch_size=self.eval_batch, bptt=self.plan.config.bptt)


def _learning_rate(state: TrainState) -> Optional[float]:
    """The learning rate an ``inject_hyperparams`` optimizer holds, else ``None``."""
    try:
        return get_learning_rate(state)
    except (KeyError, TypeError, ValueError):
        return None


def _start_info(plan: Plan, run_dir: RunDir, corpus: Corpus, state: TrainState,
                steps: _Steps) -> dict:
    """What ``Callbacks.on_start`` receives."""
    return {
        "run_dir": run_dir.path, "step": int(state.step), "vocab_size": len(corpus.vocab),
        "train_tokens": len(corpus.train), "valid_tokens": len(corpus.valid),
        "test_tokens": len(corpus.test), "params": _size(state.params),
        "backend": jax.default_backend(),
        "devices": steps.mesh.size if steps.mesh is not None else 1,
        "data_parallel": steps.mesh is not None, "processes": jax.process_count(),
        "config": plan.config, "given": plan.given,
        "output_precision": getattr(plan.model.config, "output_precision", "float32"),
    }


def _check_options(on_nonfinite, max_windows, save_every, fused_epoch, keep, keep_best) -> None:
    if on_nonfinite not in ("stop", "skip"):
        raise FitError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows <= 0):
        raise FitError(f"max_windows must be a positive int, got {max_windows!r}")
    if max_windows is not None and fused_epoch:
        raise FitError("max_windows (--max-windows) ends an epoch early, but fused_epoch "
                       "(--fused-epoch) runs every window of an epoch in one call; drop one")
    if not (isinstance(save_every, (int, float)) and save_every >= 0 and not math.isnan(save_every)):
        raise FitError(f"save_every must be a number of seconds >= 0 (0: after every window), "
                       f"got {save_every!r}")
    for name, flag, n in (("keep", "--keep", keep), ("keep_best", "--keep-best", keep_best)):
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise FitError(f"{name} ({flag}) must be a number of epochs >= 0 (0: no snapshots), "
                           f"got {n!r}")


def _read_resume(run_dir: RunDir, corpus: Corpus, overrides: Optional[dict], given: tuple,
                 say: Callable[[str], None]):
    """``(config, (meta, raw))`` of the run to resume, or a finished run's :class:`FitResult`."""
    meta, raw = ckpt.load_raw(run_dir.last)
    if meta.get("format") != ckpt.FORMAT or "config" not in meta:
        raise FitError(f"{run_dir.last}: written by jrnn 0.1 ({meta.get('format')}); it can be "
                       "evaluated and scored, but not resumed")
    missing = [name for name in meta.get("given", ()) if name not in given]
    if missing:
        raise FitError(f"{run_dir.last}: this run's {' and '.join(missing)} came from Python; "
                       f"pass the same {', '.join(m + '=' for m in missing)} to resume it")
    try:
        config, notes = resume_config(TrainConfig.from_dict(meta["config"]), overrides or {})
    except ConfigError as e:
        raise FitError(f"{run_dir.last}: its saved configuration is invalid ({e})") from None
    if meta["vocab"] != corpus.vocab.to_dict():
        raise FitError(f"{run_dir.last}: saved with another vocabulary than the data gives")
    for note in notes:
        say(note)
    if meta["epoch"] >= config.epochs and meta.get("window", 0) == 0 \
            and os.path.exists(run_dir.summary):
        with open(run_dir.summary) as f:
            summary = json.load(f)
        say(f"{run_dir.path}: the run is complete ({meta['epoch']} epochs); nothing to do")
        return config, None, FitResult(
            run_dir.path, None, summary.get("history", []), run_dir.existing_best(), run_dir.last,
            summary.get("best_valid_ppl"), summary.get("test_ppl"), True,
            summary.get("skipped_windows", 0), 0.0)
    return config, (meta, raw), None


def _open_run(out, runs_root: str, resume: bool, overwrite: bool,
              say: Callable[[str], None]) -> Writer:
    """The run directory's writer, holding the directory until it is closed (stale temporary
    files removed)."""
    try:
        run_dir = open_run_dir(out, runs_root, resume=resume, overwrite=overwrite)
    except RunDirError as e:
        raise FitError(str(e)) from None
    writer = Writer(run_dir)
    try:
        for stale in writer.remove_stale():
            say(f"removed {stale}, left by an interrupted save")
    except BaseException:
        writer.close()
        raise
    return writer


def _first_state(plan: Plan, saved, writer: Writer,
                 say: Callable[[str], None]) -> tuple[TrainState, Progress]:
    """A new run's state from the seed, or the checkpoint's for a resume."""
    k_init, k_run = jax.random.split(jax.random.PRNGKey(plan.config.seed))
    fresh = lambda: init_train_state(plan.model.init(k_init), plan.optimizer, k_run)
    if saved is None:
        return fresh(), Progress()
    meta, raw = saved
    last = writer.run_dir.last
    # Shapes checked against the file before anything of the header's size is allocated.
    state = ckpt.restore_into(jax.eval_shape(fresh), raw, last)
    held = {"params": state.params, "opt_state": state.opt_state}
    bad = [name for name, x in zip(leaf_names(held), jax.tree_util.tree_leaves(held))
           if np.issubdtype(np.asarray(x).dtype, np.inexact) and not np.all(np.isfinite(np.asarray(x)))]
    if bad:  # a run that diverged: resuming would stop at its first step, naming this file "good"
        raise FitError(f"{last} holds non-finite values ({', '.join(bad[:3])}"
                       f"{', ...' if len(bad) > 3 else ''}), so it cannot be resumed; "
                       "start a new run or resume from a copy of an earlier checkpoint")
    progress = Progress.from_checkpoint(meta, plan.model.initial_carry(plan.config.batch_size), last)
    if writer.multi:
        say("every process read the checkpoint (a run over several hosts needs its run "
            "directory on a shared filesystem to resume)")
    say(f"resuming {writer.run_dir.path}: epoch {progress.epoch + 1}, window {progress.window}, "
        f"step {int(state.step)}")
    return state, progress


def settings_text(config: TrainConfig, data_info: Optional[dict], given: tuple = (),
                  **run: Any) -> str:
    """A run's ``config.toml``: its data, model, training and run settings, which
    ``jrnn train --config FILE`` reads back (:mod:`jrnn.training.configfile`).

    Example:
      >>> text = settings_text(DEFAULT, {"data": None, "level": "word"}, on_nonfinite="stop")
      >>> "[model]" in text and "hidden_size = 64" in text and 'on_nonfinite = "stop"' in text
      True
    """
    d = config.to_dict()
    model = d.pop("model")
    tables = {}
    if data_info:
        tables["data"] = {k: data_info.get(k) for k in ("data", "level", "max_vocab", "min_freq")}
    if model is not None:
        tables["model"] = {k: v for k, v in model.items() if k != "vocab_size"}
    tables["train"] = d
    tables["run"] = run
    note = ("The settings of a jrnn run: `jrnn train --config THIS_FILE --out DIR` runs it again.\n"
            "Options given on the command line win over the file.")
    if given:
        note += (f"\nThis run's {' and '.join(given)} came from Python: this file does not hold "
                 "them, and does not reproduce the run.")
    return configfile.dumps(tables, note)


def _resume_snapshots(snapshots: Snapshots, run_dir: RunDir, state: TrainState,
                      progress: Progress, header: dict, say: Callable[[str], None]) -> None:
    """A resume at an epoch end saves that epoch's snapshot again where a kill lost it
    (``state`` is the epoch end's, read from ``last.ckpt``); without snapshots, a note."""
    if not snapshots.enabled:
        if os.path.isdir(run_dir.snapshots):
            say(f"{run_dir.snapshots} is left as it is (no more snapshots: keep and keep_best "
                "are 0)")
        return
    if progress.window == 0 and progress.history:
        snapshots.save(state, progress.meta(header, progress.epoch, 0),
                       progress.history[-1]["valid_ppl"])


def _interrupted_note(run_dir: RunDir, progress: Progress) -> str:
    if progress.window:
        return (f"interrupted: saved {run_dir.last} at epoch {progress.epoch + 1}, "
                f"window {progress.window}")
    return f"interrupted: saved {run_dir.last} after epoch {progress.epoch}"


def _result(run_dir: RunDir, state: TrainState, progress: Progress, t_start: float,
            test_ppl: Optional[float] = None) -> FitResult:
    """The result of a run that ended (``test_ppl`` given) or was interrupted (``None``)."""
    complete = test_ppl is not None
    return FitResult(run_dir.path, state, progress.history, run_dir.existing_best(), run_dir.last,
                     progress.best_or_none(),
                     test_ppl if complete and math.isfinite(test_ppl) else None, complete,
                     progress.skipped, time.perf_counter() - t_start)


def fit(
    config: Optional[TrainConfig],
    corpus: Corpus,
    out: Optional[str] = None,
    *,
    model: Optional[LanguageModel] = None,
    optimizer: Optional[optax.GradientTransformation] = None,
    runs_root: str = "runs",
    data_info: Optional[dict] = None,
    resume: bool = False,
    overrides: Optional[dict] = None,
    overwrite: bool = False,
    on_nonfinite: str = "stop",
    max_windows: Optional[int] = None,
    save_every: float = 300.0,
    fused_epoch: bool = False,
    data_parallel: bool = False,
    handle_signals: bool = True,
    callbacks: Callbacks = Callbacks(),
    log_every: Optional[int] = None,
    keep: Optional[int] = None,
    keep_best: Optional[int] = None,
) -> FitResult:
    """Train a language model on ``corpus`` and keep its run in a directory.

    Args:
      config: the run (:class:`~jrnn.training.config.TrainConfig`): its
        ``model`` and optimizer fields build the model and the optimizer
        unless they are given, and it always sets ``epochs``,
        ``batch_size``, ``bptt``, ``seed`` and ``clip``.  ``None``
        with ``resume`` (the saved one is used; ``overrides`` may lengthen it,
        ``{"epochs": n}``) or with a ``model`` (``DEFAULT``'s loop settings).
      corpus: a :class:`jrnn.data.Corpus` (vocabulary and three id streams).
      out: the run directory; ``None`` makes ``runs_root/<n>`` and points
        ``runs_root/latest`` at it once it has a checkpoint (with
        ``resume``: the latest run).
      model: your own language model (the :class:`jrnn.LanguageModel`
        interface: ``init``, ``apply``, ``initial_carry``, ``config.vocab_size``;
        any cells, e.g. ``jrnn.rnn_lm(V, cell=my_cell)``).
      optimizer: your own ``optax.GradientTransformation``; its schedules run
        per step, and the configuration's ``lr`` fields are not used.
      data_info: JSON-able facts about the data, stored in the checkpoint
        (the CLI stores the path, level and vocabulary options).
      resume: continue the run saved in ``out`` (pass the same ``model`` and
        ``optimizer`` again if the run was started with them).
      overwrite: replace a run already in ``out``.
      on_nonfinite: ``"stop"`` (raise :class:`NonFiniteError` at the first
        non-finite loss or gradient) or ``"skip"`` (drop that update, count it).
      max_windows: end each epoch after this many windows (quick trials).
      save_every: seconds between mid-epoch saves of ``last.ckpt`` (0: every window).
      fused_epoch: run each epoch as one jitted ``lax.scan`` (interrupts act
        at the end of the epoch).
      data_parallel: split the batch over the local devices.
      handle_signals: on SIGINT/SIGTERM finish the current window, save and
        return with ``complete=False`` (main thread only).
      callbacks: :class:`Callbacks`.
      log_every: windows between the ``"train"`` records of ``metrics.jsonl``
        (default: 20 records an epoch).
      keep: also keep Orbax snapshots of the training state at the newest
        ``keep`` epoch ends, in ``snapshots/last/<step>`` (``None`` or 0:
        none, and Orbax is not imported); written in the background while
        the next epoch trains (:mod:`jrnn.training.snapshots`).
      keep_best: likewise the ``keep_best`` epoch ends of lowest validation
        perplexity, in ``snapshots/best/<step>``.  A resume keeps the run's
        own unless given these again (0: no more snapshots).

    Files: ``last.ckpt`` and ``best.ckpt`` (checkpoints), ``summary.json``
    (the finished run), ``config.toml`` (the settings: ``jrnn train --config``
    runs them again) and ``metrics.jsonl`` (one JSON record a line: a
    ``"train"`` record every ``log_every`` windows with the window's loss,
    the epoch's perplexity so far, the gradient norm and the learning rate;
    an ``"epoch"`` record with the history's fields; a ``"test"`` record).
    Each record has the ``step`` (updates so far) and ``wall_s`` (seconds
    since the start); a resume drops the records after its checkpoint and
    logs those windows again, so the file reads as one run.  With ``keep``
    or ``keep_best``: ``snapshots/`` (``jrnn eval runs/3/snapshots/best/1200``
    evaluates one).

    Returns:
      :class:`FitResult`.

    Raises:
      FitError: a run that cannot start (an existing run in ``out``, a split
        too short, a model too large, a resume that changes the config).
      NonFiniteError: with ``on_nonfinite="stop"``.

    Example (your own cell, model and optimizer):
      >>> import jax.numpy as jnp, optax, tempfile, jrnn
      >>> from jrnn.data import builtin_corpus
      >>> corpus = builtin_corpus(2000)
      >>> cell = jrnn.elman(16, activation=lambda z: jnp.tanh(z) * 0.9)
      >>> model = jrnn.rnn_lm(len(corpus.vocab), cell=cell, embed_size=16)
      >>> opt = optax.adamw(optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 200))
      >>> loop = jrnn.TrainConfig(epochs=1, batch_size=8, bptt=10)
      >>> result = fit(loop, corpus, tempfile.mkdtemp(), model=model, optimizer=opt,
      ...              max_windows=5)
      >>> result.complete, result.test_ppl is not None
      (True, True)
    """
    _check_options(on_nonfinite, max_windows, save_every, fused_epoch, keep, keep_best)
    say = callbacks.on_message or (lambda text: None)
    t_start = time.perf_counter()
    if distributed.is_multiprocess():  # several processes are one data-parallel run
        if fused_epoch:
            raise FitError(f"fused_epoch runs an epoch in one call of one process; with "
                           f"{jax.process_count()} processes leave it out")
        data_parallel = True
    if not resume and config is None:
        if model is None:
            raise FitError("fit needs a TrainConfig, a model, or resume=True")
        config = DEFAULT
    given = tuple(name for name, v in (("model", model), ("optimizer", optimizer)) if v is not None)
    writer, saved = _open_run(out, runs_root, resume, overwrite, say), None
    snapshots = Snapshots(writer.final.snapshots, keep or 0, keep_best or 0, say)
    # The run directory is held until the run ends (a start that never saved is undone), and
    # the snapshots being written are finished before it is let go.
    with writer, snapshots:
        if resume:
            config, saved, finished = _read_resume(writer.run_dir, corpus, overrides, given, say)
            if finished is not None:
                return finished
            if keep is None and keep_best is None and saved is not None:  # the run's own
                kept = saved[0].get("snapshots") or {}
                keep, keep_best = kept.get("keep"), kept.get("keep_best")
                snapshots.keep, snapshots.keep_best = keep or 0, keep_best or 0

        streams = _check_splits(config, corpus)
        plan = build_plan(config, len(corpus.vocab), model=model, optimizer=optimizer)
        config = plan.config  # no model description when the model came from Python
        _check_memory(plan)
        state, progress = _first_state(plan, saved, writer, say)
        writer.trim_log(int(state.step))  # a resume logs its windows again
        writer.settings = settings_text(config, data_info, plan.given, on_nonfinite=on_nonfinite,
                                        max_windows=max_windows, fused_epoch=fused_epoch,
                                        data_parallel=data_parallel, keep=keep or None,
                                        keep_best=keep_best or None)
        steps = _make_steps(plan, data_parallel=data_parallel, fused_epoch=fused_epoch)
        if steps.rows is not None:
            streams = streams[steps.rows]
            if progress.carry is not None:
                progress.carry = jax.tree_util.tree_map(lambda x: np.asarray(x)[steps.rows],
                                                        progress.carry)
        if callbacks.on_start is not None:
            callbacks.on_start(_start_info(plan, writer.final, corpus, state, steps))
        header = {**(data_info or {}), "config": config.to_dict(), "vocab": corpus.vocab.to_dict(),
                  **({"given": list(plan.given)} if plan.given else {}),
                  **({"snapshots": {"keep": keep or 0, "keep_best": keep_best or 0}}
                     if snapshots.enabled else {})}
        if saved is not None:
            _resume_snapshots(snapshots, writer.final, state, progress, header, say)

        with _StopRequests(handle_signals) as stop:
            epochs = _Epochs(plan, steps, corpus, streams, progress, writer, snapshots, header,
                             skip=on_nonfinite == "skip", max_windows=max_windows,
                             save_every=save_every, stop=stop, callbacks=callbacks,
                             names=leaf_names(state.params), t_start=t_start,
                             log_every=log_every or max(1, min(num_windows(streams, config.bptt),
                                                                max_windows or 2**62) // 20))
            for epoch in range(progress.epoch, config.epochs):
                state, stats, interrupted = epochs.train(epoch, state)
                if interrupted or epochs.finish(epoch, state, stats):
                    say(_interrupted_note(writer.run_dir, progress))
                    return _result(writer.run_dir, state, progress, t_start)

        test_ppl, n_test = epochs.test(state, say)
        epochs.record("test", int(state.step), test_ppl=test_ppl if math.isfinite(test_ppl) else None,
                      test_tokens=n_test)
        result = _result(writer.run_dir, state, progress, t_start, test_ppl)
        snapshots.wait()  # a run with a summary is complete: its snapshots too
        writer.summary({"test_ppl": result.test_ppl, "test_tokens": n_test,
                        "best_valid_ppl": result.best_valid_ppl, "wall_seconds": result.wall_seconds,
                        "config": config.to_dict(), **{k: v for k, v in header.items() if k == "given"},
                        **(data_info or {}), "history": progress.history,
                        "skipped_windows": progress.skipped, "processes": jax.process_count()})
        return result
