"""The training loop as a library function: :func:`fit`.

``jrnn train`` is argument parsing and printing over this function; a JAX
user calls it directly::

    from jrnn.data import builtin_corpus
    from jrnn.training.config import DEFAULT
    from jrnn.training.fit import fit

    result = fit(DEFAULT.replace(epochs=1), builtin_corpus(), "runs/demo")
    print(result.test_ppl, result.best_path)

What it guarantees:

* **No run is lost.**  ``out=None`` makes a new run directory (``runs/<n>``)
  and points ``runs/latest`` at it; an ``out`` that already holds a run is
  refused unless ``resume`` or ``overwrite``.  Checkpoints are atomic;
  temporary files a killed save left behind are removed at the next start.
* **No run lies.**  The first non-finite loss or gradient stops the run
  (``on_nonfinite="stop"``: :class:`NonFiniteError` names the step, the
  window and the parameters whose gradient broke; nothing non-finite is ever
  saved and the last good checkpoint stays), or is skipped and counted
  (``"skip"``).  An epoch with no counted window reports no perplexity.
* **Resume is exact.**  The checkpoint holds the config, the carry and the
  epoch's running sums, so an interrupted and resumed run ends with the same
  parameters, optimizer state and perplexities as the uninterrupted one.
* **Bad input fails before the first step**: every split is checked against
  the shapes it will be used with, and a model that would not fit in memory
  is refused with the size it needs.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import numpy as np

from jrnn.data import Corpus, Vocabulary, batchify
from jrnn.models.lm import LanguageModel, nnlm, rnn_lm
from jrnn.training import checkpoint as ckpt
from jrnn.training import distributed, runs
from jrnn.training.config import ConfigError, TrainConfig
from jrnn.training.loop import (
    evaluate,
    make_optimizer,
    set_learning_rate,
    train_epoch,
    train_epoch_fused,
    zaremba_lr,
)
from jrnn.training.step import (
    TrainState,
    init_train_state,
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
    "build_model",
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
    * ``on_message(text)``: notes (resuming, skipped windows, interruptions).
    """

    on_start: Optional[Callable[[dict], None]] = None
    on_window: Optional[Callable[[int, int, int, dict, float], None]] = None
    on_epoch: Optional[Callable[[dict], None]] = None
    on_message: Optional[Callable[[str], None]] = None


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


def build_model(config: TrainConfig, vocab_size: int) -> LanguageModel:
    """The language model a config describes."""
    if config.cell == "nnlm":
        return nnlm(vocab_size, context_size=config.context_size, embed_size=config.embed_size,
                    hidden_size=config.hidden_size, dropout=config.dropout,
                    init_scale=config.init_scale or 0.1)
    auto = config.unroll == "auto"
    return rnn_lm(vocab_size, cell=config.cell, activation=config.activation,
                  embed_size=config.embed_size, hidden_size=config.hidden_size,
                  num_layers=config.layers, dropout=config.dropout, tie_embeddings=config.tie,
                  init_scale=config.init_scale, forget_bias=config.forget_bias,
                  method="auto" if auto else "scan", scan_unroll=None if auto else config.unroll,
                  remat=config.remat, variational=config.variational,
                  recurrent_dropout=config.recurrent_dropout, weight_dropout=config.weight_dropout,
                  embedding_dropout=config.embedding_dropout, proj_size=config.proj_size,
                  output_precision=config.output_precision)


def load_for_inference(path: str):
    """``(model, params, vocab, meta)`` from a checkpoint file, a run directory, or a folder
    with a ``latest`` pointer.  Only the parameters are read (no optimizer is built); a
    header that does not describe a model, or parameters that are not finite, are a
    :class:`~jrnn.training.checkpoint.CheckpointError`."""
    path = runs.resolve_run(path)
    meta, raw = ckpt.load_raw(path)
    try:
        vocab = Vocabulary.from_dict(meta["vocab"])
        config = TrainConfig.from_dict(meta["config"] if "config" in meta else meta["settings"])
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{path}: the saved configuration is invalid ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{path}: header is incomplete ({e})") from None
    model = build_model(config, len(vocab))
    if "params" not in raw:
        raise ckpt.CheckpointError(f"{path}: holds no parameters")
    params = ckpt.restore_into(model.init(jax.random.PRNGKey(0)), raw["params"], path)
    bad = [n for n, x in zip(_leaf_names(params), jax.tree_util.tree_leaves(params))
           if not np.all(np.isfinite(np.asarray(x)))]
    if bad:
        raise ckpt.CheckpointError(f"{path}: parameters {', '.join(bad[:3])} hold NaN or infinite "
                                   "values; this checkpoint cannot score text")
    return model, params, vocab, meta


def resume_config(saved: TrainConfig, overrides: dict) -> tuple[TrainConfig, list[str]]:
    """The config of a resumed run: ``saved``, with only ``epochs`` allowed to change.

    Returns ``(config, notes)``; any other override that differs from the
    saved value is refused with one line naming them.
    """
    differs = sorted(k for k, v in overrides.items()
                     if k != "epochs" and getattr(saved, k, None) != v)
    if differs:
        raise FitError("--resume restores the saved configuration; these options differ from it: "
                       + ", ".join(f"{k} (saved {getattr(saved, k)!r}, given {overrides[k]!r})"
                                   for k in differs))
    notes = []
    epochs = overrides.get("epochs", saved.epochs)
    if epochs != saved.epochs:
        notes.append(f"epochs changed from {saved.epochs} to {epochs}")
    return saved.replace(epochs=epochs), notes


def _param_count(config: TrainConfig, V: int) -> int:
    E, H, L = config.embed_size, config.hidden_size, config.layers
    if config.cell == "nnlm":
        return V * E + config.context_size * E * H + H + H * V + V
    G = {"lstm": 4, "gru": 3}.get(config.cell, 1)
    P = config.proj_size or H  # what each layer outputs (LSTMP: W_h reads P, W_hr is H x P)
    layers = sum((E if i == 0 else P) * G * H + P * G * H + 2 * G * H
                 + (H * P if config.proj_size else 0) for i in range(L))
    return V * E + layers + (0 if config.tie else P * V) + V


def estimate_bytes(config: TrainConfig, vocab_size: int) -> int:
    """About how much memory training ``config`` needs: parameters, gradients,
    optimizer state and one window's activations (float32)."""
    P = _param_count(config, vocab_size)
    moments = {"sgd": 0, "adam": 2, "adamw": 2}[config.optimizer]
    B, T, H = config.batch_size, config.bptt, config.hidden_size
    G = {"lstm": 4, "gru": 3}.get(config.cell, 1)
    activations = B * T * (config.layers * (G + 2) * H + config.embed_size) * 2
    logits = min(B * T, max(1, 1_500_000 // max(vocab_size, 1))) * vocab_size * 3
    return 4 * (P * (2 + moments) + activations + logits)


def _available_bytes() -> Optional[int]:
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit")
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not every OS has these
        return None


def _check_memory(config: TrainConfig, vocab_size: int) -> None:
    need, have = estimate_bytes(config, vocab_size), _available_bytes()
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


def _leaf_names(tree) -> list[str]:
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)]


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _prepare_dir(out: Optional[str], runs_root: str, resume: bool, overwrite: bool) -> str:
    if resume:
        run_dir = runs.resolve_run(out if out is not None else runs_root)
        if not os.path.exists(os.path.join(run_dir, "last.ckpt")):
            raise FitError(f"{run_dir}: no run to resume here (no last.ckpt)")
        return run_dir
    if out is None:
        run_dir = runs.new_run_dir(runs_root)
        runs.write_latest(runs_root, run_dir)
        return run_dir
    if runs.holds_run(out):
        if not overwrite:
            raise FitError(f"{out} already holds a run; continue it with --resume, replace it with "
                           "--overwrite, or leave out --out for a new run directory")
        for f in runs.RUN_FILES:
            if os.path.exists(os.path.join(out, f)):
                os.unlink(os.path.join(out, f))
    os.makedirs(out, exist_ok=True)
    return out


def fit(
    config: Optional[TrainConfig],
    corpus: Corpus,
    out: Optional[str] = None,
    *,
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
) -> FitResult:
    """Train a language model on ``corpus`` and keep its run in a directory.

    Args:
      config: the run (:class:`~jrnn.training.config.TrainConfig`); with
        ``resume`` it may be ``None`` (the saved one is used) and
        ``overrides`` may lengthen it (``{"epochs": n}``).
      corpus: a :class:`jrnn.data.Corpus` (vocabulary and three id streams).
      out: the run directory; ``None`` makes ``runs_root/<n>`` and points
        ``runs_root/latest`` at it (with ``resume``: the latest run).
      data_info: JSON-able facts about the data, stored in the checkpoint
        (the CLI stores the path, level and vocabulary options).
      resume: continue the run saved in ``out``.
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

    Returns:
      :class:`FitResult`.

    Raises:
      FitError: a run that cannot start (an existing run in ``out``, a split
        too short, a model too large, a resume that changes the config).
      NonFiniteError: with ``on_nonfinite="stop"``.
    """
    if on_nonfinite not in ("stop", "skip"):
        raise FitError(f"on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    if max_windows is not None and (isinstance(max_windows, bool) or not isinstance(max_windows, int)
                                    or max_windows <= 0):
        raise FitError(f"max_windows must be a positive int, got {max_windows!r}")
    if not (isinstance(save_every, (int, float)) and save_every >= 0 and not math.isnan(save_every)):
        raise FitError(f"save_every must be a number of seconds >= 0 (0: after every window), "
                       f"got {save_every!r}")
    say = callbacks.on_message or (lambda text: None)
    t_start = time.perf_counter()
    # Several processes (jax.distributed) are one data-parallel run: process 0 decides
    # the run directory and writes every file; all of them train and evaluate.
    multi = distributed.is_multiprocess()
    leader = jax.process_index() == 0
    if multi:
        if fused_epoch:
            raise FitError(f"fused_epoch runs an epoch in one call of one process; with "
                           f"{jax.process_count()} processes leave it out")
        data_parallel = True
        decided = ""
        if leader:
            try:
                decided = "ok:" + _prepare_dir(out, runs_root, resume, overwrite)
            except (FitError, OSError) as e:
                decided = "error:" + str(e)
        kind, _, run_dir = distributed.broadcast_text(decided).partition(":")
        if kind == "error":
            raise FitError(run_dir)
    else:
        run_dir = _prepare_dir(out, runs_root, resume, overwrite)
    for stale in runs.remove_stale_temporaries(run_dir) if leader else ():
        say(f"removed {stale}, left by an interrupted save")
    last_path, best_path = os.path.join(run_dir, "last.ckpt"), os.path.join(run_dir, "best.ckpt")
    summary_path = os.path.join(run_dir, "summary.json")

    saved = None
    if resume:
        meta, raw = ckpt.load_raw(last_path)
        if meta.get("format") != ckpt.FORMAT or "config" not in meta:
            raise FitError(f"{last_path}: written by jrnn 0.1 ({meta.get('format')}); it can be "
                           "evaluated and scored, but not resumed")
        try:
            config, notes = resume_config(TrainConfig.from_dict(meta["config"]), overrides or {})
        except ConfigError as e:
            raise FitError(f"{last_path}: its saved configuration is invalid ({e})") from None
        if meta["vocab"] != corpus.vocab.to_dict():
            raise FitError(f"{last_path}: saved with another vocabulary than the data gives")
        for note in notes:
            say(note)
        if meta["epoch"] >= config.epochs and meta.get("window", 0) == 0 \
                and os.path.exists(summary_path):
            with open(summary_path) as f:
                summary = json.load(f)
            say(f"{run_dir}: the run is complete ({meta['epoch']} epochs); nothing to do")
            return FitResult(run_dir, None, summary.get("history", []),
                             best_path if os.path.exists(best_path) else None, last_path,
                             summary.get("best_valid_ppl"), summary.get("test_ppl"), True,
                             summary.get("skipped_windows", 0), 0.0)
        saved = (meta, raw)
    elif config is None:
        raise FitError("fit needs a TrainConfig (or resume=True)")

    vocab = corpus.vocab
    streams = _check_splits(config, corpus)
    _check_memory(config, len(vocab))
    model = build_model(config, len(vocab))
    optimizer = make_optimizer(config.optimizer, config.lr)
    k_init, k_run = jax.random.split(jax.random.PRNGKey(config.seed))
    state = init_train_state(model.init(k_init), optimizer, k_run)
    names = _leaf_names(state.params)
    start_epoch, start_window, best, history, carry, totals, skipped = 0, 0, math.inf, [], None, None, 0
    if saved is not None:
        meta, raw = saved
        state = ckpt.restore_into(state, raw, last_path)
        start_epoch, start_window = meta["epoch"], meta.get("window", 0)
        best = meta.get("best_valid_ppl") or math.inf
        history, skipped = meta.get("history", []), meta.get("skipped_windows", 0)
        if start_window:
            carry = ckpt.load_carry(meta, model.initial_carry(config.batch_size), last_path)
            totals = tuple(meta["epoch_totals"])
        if resume and multi:
            say("every process read the checkpoint (a run over several hosts needs its run "
                "directory on a shared filesystem to resume)")
        say(f"resuming {run_dir}: epoch {start_epoch + 1}, window {start_window}, "
            f"step {int(state.step)}")

    clip = config.clip or None
    skip = on_nonfinite == "skip"
    if data_parallel:
        if fused_epoch:
            raise FitError("fused_epoch and data_parallel cannot be combined yet; drop one")
        mesh = distributed.make_mesh()
        if config.batch_size % mesh.size:
            raise FitError(f"batch size {config.batch_size} does not split over {mesh.size} "
                           f"devices; use a multiple of {mesh.size}")
        step = distributed.make_sharded_train_step(model, optimizer, mesh=mesh, clip_norm=clip,
                                                   skip_nonfinite=True)
        # Each process feeds its own rows of every window; the step assembles the global batch.
        rows = distributed.process_rows(config.batch_size, mesh)
        streams = streams[rows]
        if carry is not None:
            carry = jax.tree_util.tree_map(lambda x: np.asarray(x)[rows], carry)
    else:
        mesh = None
        step = make_train_step(model, optimizer, clip_norm=clip, skip_nonfinite=True)
    epoch_fn = (make_train_epoch(model, optimizer, clip_norm=clip, skip_nonfinite=True)
                if fused_epoch else None)
    eval_step = make_eval_step(model)
    eval_batch = min(EVAL_BATCH, config.batch_size)
    if callbacks.on_start is not None:
        callbacks.on_start({
            "run_dir": run_dir, "vocab_size": len(vocab), "train_tokens": len(corpus.train),
            "valid_tokens": len(corpus.valid), "test_tokens": len(corpus.test),
            "params": sum(int(np.prod(np.shape(x))) for x in jax.tree_util.tree_leaves(state.params)),
            "backend": jax.default_backend(), "devices": mesh.size if mesh is not None else 1,
            "data_parallel": mesh is not None, "processes": jax.process_count(),
            "config": config,
            "output_precision": getattr(model.config, "output_precision", "float32"),
        })

    def meta_for(epoch, window, totals=None):
        m = {**(data_info or {}), "config": config.to_dict(), "vocab": vocab.to_dict(),
             "epoch": epoch, "window": window,
             "best_valid_ppl": best if math.isfinite(best) else None, "history": history,
             "skipped_windows": skipped}
        if totals is not None:
            m["epoch_totals"] = list(totals)
        return m

    def save(path, st, meta, carry=None):
        if multi:  # gather the sharded carry (every process), then write once
            st, carry = distributed.to_host(st), distributed.to_host(carry)
        if leader:
            ckpt.save(path, st, meta, carry=carry)

    def host_params(st):  # evaluation runs in each process on its own device
        return distributed.to_host(st.params) if multi else st.params

    def nonfinite(epoch, window, m, step_no):
        flags = np.asarray(m.get("finite_leaves", []), bool)
        broke = tuple(n for n, ok in zip(names, flags) if not ok)
        loss_ok = math.isfinite(float(m["loss"]))
        what = ([] if loss_ok else ["the loss"]) + (
            [f"the gradient of {', '.join(broke)}"] if broke else [])
        keep = (f"the last good checkpoint is {last_path}" if os.path.exists(last_path)
                else "no checkpoint was written")
        return NonFiniteError(
            f"non-finite {' and '.join(what) or 'values'} at step {step_no} (epoch {epoch + 1}, "
            f"window {window + 1}); stopped without saving it, {keep}",
            step=step_no, epoch=epoch, window=window, parameters=broke)

    stop = threading.Event()
    halted = False  # stop agreed by every process
    best_params = None  # multi-process: the best parameters, kept in memory
    old_handlers = {}
    if handle_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            old_handlers[sig] = signal.signal(sig, lambda signum, frame: stop.set())
    try:
        for epoch in range(start_epoch, config.epochs):
            lr = zaremba_lr(config.lr, config.lr_decay, config.decay_start, epoch)
            state = set_learning_rate(state, lr)
            last_save = time.perf_counter()
            running_totals = totals

            def should_stop(i, st, c, m, running, epoch=epoch):
                nonlocal last_save, skipped, running_totals, halted
                running_totals = running
                if not m["finite"]:  # the loss is global: every process sees the same
                    if not skip:
                        raise nonfinite(epoch, i, m, int(st.step) + 1)
                    skipped += 1
                # A signal or a clock reaches each process on its own: act on them together.
                halted, due = distributed.any_process(
                    stop.is_set(), time.perf_counter() - last_save > save_every)
                if halted:
                    return True
                if max_windows is not None and i + 1 >= start_window + max_windows:
                    return True
                if due:
                    save(last_path, st, meta_for(epoch, i + 1, running), carry=c)
                    last_save = time.perf_counter()
                return False

            on_window = None
            if callbacks.on_window is not None:
                on_window = lambda i, n, m, tok_s, epoch=epoch: callbacks.on_window(epoch, i, n, m, tok_s)
            if epoch_fn is not None and start_window == 0:
                step_before = int(state.step)
                state, stats, first_bad = train_epoch_fused(epoch_fn, step, model, state, streams,
                                                            config.bptt)
                if first_bad is not None:
                    if not skip:
                        window, m = first_bad
                        raise nonfinite(epoch, window, m, step_before + window + 1)
                    skipped += stats.nonfinite_windows
                next_window = 0
            else:
                state, stats, next_window, carry = train_epoch(
                    step, model, state, streams, config.bptt, start_window=start_window,
                    carry=carry, totals=totals, on_window=on_window, should_stop=should_stop)
            if halted and epoch_fn is None and next_window < -(-(streams.shape[1] - 1) // config.bptt):
                save(last_path, state, meta_for(epoch, next_window, running_totals), carry=carry)
                say(f"interrupted: saved {last_path} at epoch {epoch + 1}, window {next_window}")
                return FitResult(run_dir, state, history, best_path if os.path.exists(best_path) else None,
                                 last_path, best if math.isfinite(best) else None, None, False, skipped,
                                 time.perf_counter() - t_start)
            start_window, carry, totals = 0, None, None
            valid_ppl, _ = evaluate(model, host_params(state), corpus.valid, eval_step=eval_step,
                                    batch_size=eval_batch, bptt=config.bptt)
            improved = math.isfinite(valid_ppl) and valid_ppl < best
            if improved:
                best = valid_ppl
            record = {"epoch": epoch + 1, "lr": lr, "train_ppl": stats.perplexity,
                      "valid_ppl": valid_ppl if math.isfinite(valid_ppl) else None,
                      "improved": improved, "train_tokens": stats.tokens,
                      "tokens_per_s": stats.tokens / max(stats.seconds, 1e-9),
                      "seconds": stats.seconds, "nonfinite_windows": stats.nonfinite_windows}
            history.append(record)
            if improved:
                save(best_path, state, meta_for(epoch + 1, 0))
                if multi:
                    best_params = host_params(state)
            save(last_path, state, meta_for(epoch + 1, 0))
            if callbacks.on_epoch is not None:
                callbacks.on_epoch(dict(record))
            halted = distributed.any_process(stop.is_set())[0]
            if halted:
                say(f"interrupted: saved {last_path} after epoch {epoch + 1}")
                return FitResult(run_dir, state, history, best_path if os.path.exists(best_path) else None,
                                 last_path, best if math.isfinite(best) else None, None, False, skipped,
                                 time.perf_counter() - t_start)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)

    if best_params is not None:
        test_params = best_params
    elif os.path.exists(best_path):
        _, raw = ckpt.load_raw(best_path)
        test_params = ckpt.restore_into(state, raw, best_path).params
    else:
        say("no epoch gave a finite validation perplexity: testing the last state")
        test_params = host_params(state)
    test_ppl, n_test = evaluate(model, test_params, corpus.test, eval_step=eval_step,
                                batch_size=eval_batch, bptt=config.bptt)
    wall = time.perf_counter() - t_start
    result = FitResult(run_dir, state, history, best_path if os.path.exists(best_path) else None,
                       last_path, best if math.isfinite(best) else None,
                       test_ppl if math.isfinite(test_ppl) else None, True, skipped, wall)
    if leader:
        _write_json(summary_path, {"test_ppl": result.test_ppl, "test_tokens": n_test,
                                   "best_valid_ppl": result.best_valid_ppl, "wall_seconds": wall,
                                   "config": config.to_dict(), **(data_info or {}),
                                   "history": history, "skipped_windows": skipped,
                                   "processes": jax.process_count()})
    return result

