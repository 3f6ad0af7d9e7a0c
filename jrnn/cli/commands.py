"""The commands of ``jrnn``: train, eval, score, next, generate (loaded after parsing)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from typing import Optional, Sequence

import jax
import numpy as np

import jrnn
from jrnn import data as D
from jrnn.core.validation import positive_int
from jrnn.cli.options import UserError, _fail, flag
from jrnn.analysis import plots
from jrnn.data import DataError
from jrnn.models.export import export_model
from jrnn.training import checkpoint as ckpt
from jrnn.training import distributed
from jrnn.training import loop as trainer
from jrnn.training import fit as fit_module
from jrnn.training.inference import load_for_inference
from jrnn.training import runs
from jrnn.training.checkpoint import CheckpointError
from jrnn.training.config import DEFAULT, MAX_SEED, PRESETS, ConfigError, TrainConfig
from jrnn.training.rundir import RunDirError, read_metrics
from jrnn.training.runtime import keep_host_memory
from jrnn.training.tensorboard import TensorBoardWriter, run_logdir

# ---- the training config from the options ---------------------------------------

CONFIG_FIELDS = tuple(DEFAULT.flat())  # every option by its one name (the model's included)


def _overrides(args) -> dict:
    """The config fields given on the command line (argparse leaves the others None).

    ``--unroll auto`` is ``method="auto"``; ``--unroll N`` is ``lax.scan`` unrolled N steps.
    """
    given = {f: getattr(args, f) for f in CONFIG_FIELDS if getattr(args, f, None) is not None}
    unroll = getattr(args, "unroll", None)
    if unroll is not None:
        given.update(method="auto", scan_unroll=None) if unroll == "auto" else \
            given.update(method="scan", scan_unroll=unroll)
    return given


def _positive(name: str, value) -> None:
    try:
        positive_int(name, value)
    except ValueError as e:
        raise UserError(str(e)) from None


def _config_error(e: Exception) -> UserError:
    """A ConfigError names a field; the user typed a flag."""
    text = str(e)
    field, _, rest = text.partition(" ")
    return UserError(f"{flag(field)} {rest}" if field in CONFIG_FIELDS else text)


def _config(args) -> TrainConfig:
    base = PRESETS[args.preset] if args.preset else DEFAULT
    try:
        return base.replace(**_overrides(args))
    except ConfigError as e:
        raise _config_error(e) from None


def load_corpus(data: Optional[str], level: Optional[str], max_vocab, min_freq):
    """:func:`jrnn.data.open_corpus`, telling the user when it downloads."""
    return D.open_corpus(data, level, max_vocab, min_freq,
                         on_download=lambda text: print(text, file=sys.stderr),
                         on_note=lambda text: print(f"note: {text}", file=sys.stderr))


class _Events:
    """``jrnn train --tensorboard``: the run's metric records as TensorBoard event files in
    ``RUN/tensorboard`` (:mod:`jrnn.training.tensorboard`), written by the leader.

    The files are opened at the end of the first epoch, when the run has its checkpoint and
    its directory is its own (a replaced run's is swapped in at its first save), and the
    records before are written then; a run stopped before that writes them if it saved.  A
    resume purges the steps after its checkpoint, which it logs again."""

    def __init__(self, on: bool):
        if on and importlib.util.find_spec("tensorboardX") is None:
            _fail('--tensorboard needs tensorboardX: pip install "jrnn[tensorboard]" '
                  "(or pip install tensorboardX)")
        self.on, self.writer, self.info, self.waiting = on, None, None, []

    def start(self, info: dict) -> None:
        self.info = info

    def _open(self) -> None:
        self.writer = TensorBoardWriter(run_logdir(self.info["run_dir"]),
                                        purge_step=self.info["step"] + 1)
        for record in self.waiting:
            self.writer(record)
        self.waiting = []

    def __call__(self, record: dict) -> None:
        if self.writer is None:
            self.waiting.append(record)
        else:
            self.writer(record)

    def epoch_done(self) -> None:
        if self.on and self.writer is None:
            self._open()

    def close(self, saved: bool = False) -> None:
        """``saved``: the run ended with its checkpoint (write what is still waiting)."""
        if self.writer is None and saved and self.waiting and self.info is not None:
            self._open()
        if self.writer is not None:
            self.writer.close()


class _Progress:
    """Progress on stderr: on a terminal rich's live bar (or a line redrawn in place without
    rich), in a file or a pipe a plain line per tenth of an epoch; one summary line per epoch
    on stdout."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.last_decile = -1
        self.epochs = 0
        self.rich = None  # rich.progress.Progress while an epoch runs on a terminal
        self.task = None

    def start(self, info: dict) -> None:
        c = info["config"]
        self.epochs = c.epochs
        print(f"run: {info['run_dir']} | vocab {info['vocab_size']}, train {info['train_tokens']} / "
              f"valid {info['valid_tokens']} / test {info['test_tokens']} tokens", file=sys.stderr)
        m = c.model
        print(f"model: {m.cell} x{m.num_layers} E{m.embed_size} H{m.hidden_size}"
              f"{f' P{m.proj_size}' if m.proj_size else ''} "
              f"({info['params'] / 1e6:.2f}M params) | {c.optimizer} lr {c.lr} clip {c.clip} "
              f"| batch {c.batch_size} bptt {c.bptt} | {info['backend']}"
              + (" | output layer bf16 x bf16 -> f32" if info.get("output_precision") == "bfloat16"
                 else "")
              + (f" | data parallel over {info['devices']} devices" if info["data_parallel"] else ""),
              file=sys.stderr)

    def __call__(self, epoch: int, i: int, n: int, m: dict, tok_s: float) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        decile = (10 * (i + 1)) // n
        if self.tty and now - self.last < 0.2 and i + 1 < n:
            return
        if not self.tty and decile == self.last_decile:
            return
        self.last, self.last_decile = now, decile
        ppl = math.exp(min(m["token_nll"], 50)) if math.isfinite(m["token_nll"]) else float("nan")
        stats = (f"loss {m['token_nll']:.3f} ppl {ppl:8.2f} {tok_s / 1000:6.1f}k tok/s "
                 f"|g| {m['grad_norm']:.2f}" + ("" if m["finite"] else " NON-FINITE"))
        bar = self._bar() if self.tty else None
        if bar is not None:  # a terminal: rich's live progress bar, redrawn in place
            if self.task is None:
                self.task = bar.add_task("", total=n, epoch=f"{epoch + 1}/{self.epochs}", stats=stats)
            bar.update(self.task, completed=i + 1, stats=stats)
            return
        width = 24
        filled = int(width * (i + 1) / n)
        line = (f"epoch {epoch + 1}/{self.epochs} [{'#' * filled}{'.' * (width - filled)}] "
                f"{i + 1}/{n} {stats}")
        if self.tty:
            sys.stderr.write("\r" + line + ("\n" if i + 1 >= n else ""))
        else:  # a file or a pipe: plain lines, one per tenth of the epoch
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def _bar(self):
        """rich's progress display (rich comes with Flax), or None where it cannot be loaded."""
        if self.rich is None:
            try:
                from rich.console import Console
                from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                           TimeElapsedColumn)
            except ImportError:
                self.rich = False
                return None
            self.rich = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                 MofNCompleteColumn(), TextColumn("{task.fields[stats]}"),
                                 TimeElapsedColumn(), console=Console(file=sys.stderr),
                                 transient=True)
            self.rich.start()
        return self.rich or None

    def close(self) -> None:
        """End the live display (an epoch's end, an interruption, an error)."""
        if self.rich:
            self.rich.stop()
            self.rich = None
        self.task = None

    def epoch_done(self, r: dict) -> None:
        self.last_decile = -1
        if self.rich:
            self.close()
        elif self.tty and not self.quiet:
            sys.stderr.write("\n")
        train = f"{r['train_ppl']:9.2f}" if r["train_ppl"] is not None else "      n/a"
        valid = f"{r['valid_ppl']:9.2f}" if r["valid_ppl"] is not None else "      n/a"
        print(f"epoch {r['epoch']:3d} | lr {r['lr']:.4g} | train ppl {train} | "
              f"valid ppl {valid}{' *' if r['improved'] else ''} | "
              f"{r['tokens_per_s'] / 1000:.1f}k tok/s | {r['seconds']:.0f}s"
              + (f" | {r['nonfinite_windows']} non-finite windows" if r["nonfinite_windows"] else ""))
        sys.stdout.flush()


# ---- commands -----------------------------------------------------------------

def _train_data(args):
    """``(corpus, data_info)``: from the options, or (with --resume) from the saved run."""
    if args.resume:
        run_dir = runs.resolve_run(args.out if args.out is not None else args.runs)
        meta, _ = ckpt.load_raw(os.path.join(run_dir, "last.ckpt"))
        info = {k: meta.get(k) for k in ("data", "level", "max_vocab", "min_freq")}
        given = {"data": args.data, "level": args.level, "max_vocab": args.max_vocab}
        differs = [k for k, v in given.items() if v is not None and v != info[k]]
        if args.min_freq is not None and args.min_freq != info["min_freq"]:
            differs.append("min_freq")
        if differs:
            _fail("--resume restores the saved data; these options differ from it: "
                  + ", ".join(flag(k) for k in differs))
    else:
        info = {"data": args.data, "level": args.level, "max_vocab": args.max_vocab,
                "min_freq": args.min_freq if args.min_freq is not None else 1}
    corpus = load_corpus(info["data"], info["level"], info["max_vocab"], info["min_freq"] or 1)
    info["level"] = corpus.vocab.level
    return corpus, info


_GROUP = {"joined": False}


# Options each process has its own value of; every other option must be the same in the group.
_PER_PROCESS = {"command", "func", "process_id", "local_device_ids", "quiet", "release_host_memory", "tensorboard",
                "coordinator", "join_timeout", "out", "runs"}


def _group_options(args) -> dict:
    """The options every process of a group must share, by their flags (``--lr``: 0.5)."""
    return {flag(k): v for k, v in sorted(vars(args).items())
            if k not in _PER_PROCESS and not callable(v)}


def _join_group(args) -> Optional[str]:
    """Join the process group the options or the environment describe (before anything
    asks JAX for a device).  Returns a label for this process, or None when alone."""
    explicit = [args.coordinator, args.num_processes, args.process_id]
    if any(v is not None for v in explicit):
        if any(v is None for v in explicit):
            _fail("--coordinator, --num-processes and --process-id go together")
        _positive("--num-processes", args.num_processes)
        if not 0 <= args.process_id < args.num_processes:
            _fail(f"--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}")
    elif distributed.cluster_environment() is None:
        if args.local_device_ids is not None:
            _fail("--local-device-ids needs a process group (--coordinator ...)")
        return None
    _positive("--join-timeout", args.join_timeout)
    local = None
    if args.local_device_ids is not None:
        try:
            local = [int(i) for i in args.local_device_ids.split(",")]
        except ValueError:
            _fail(f"--local-device-ids takes numbers like 0 or 0,1, got {args.local_device_ids!r}")
    try:
        index, count = distributed.initialize_multihost(
            args.coordinator, args.num_processes, args.process_id, local_device_ids=local,
            timeout_s=args.join_timeout, options=_group_options(args))
    except distributed.DistributedError as e:
        raise UserError(str(e)) from None
    _GROUP["joined"] = count > 1
    return f"process {index}/{count}" if count > 1 else None


def cmd_train(args) -> int:
    """``jrnn train``: options -> :func:`jrnn.training.fit.fit` -> printed progress."""
    who = _join_group(args)  # first: jax.distributed must start before the backend does
    if not args.release_host_memory and jax.default_backend() == "cpu":
        keep_host_memory()  # faster steps on a CPU (jrnn/training/runtime.py)
    config = None if args.resume else _config(args)
    leader = jax.process_index() == 0
    corpus, info = _train_data(args)
    progress = _Progress(args.quiet or not leader)  # one progress display for the group
    events = _Events(args.tensorboard and leader)
    message = (lambda text: print(text, file=sys.stderr)) if leader else None

    def start(info: dict) -> None:
        progress.start(info)
        events.start(info)

    def epoch_done(record: dict) -> None:
        progress.epoch_done(record)
        events.epoch_done()

    result = None

    try:
        result = fit_module.fit(
            config, corpus, args.out, runs_root=args.runs, data_info=info, resume=args.resume,
            overrides=_overrides(args), overwrite=args.overwrite, on_nonfinite=args.on_nonfinite,
            max_windows=args.max_windows, save_every=args.save_every, fused_epoch=args.fused_epoch,
            data_parallel=args.data_parallel, keep=args.keep, keep_best=args.keep_best,
            callbacks=fit_module.Callbacks(
                on_start=start if leader else None, on_window=progress if leader else None,
                on_epoch=epoch_done if leader else None, on_message=message,
                on_metrics=events if events.on else None))
    finally:
        progress.close()  # a live bar never outlives the run (Ctrl-C, an error)
        events.close(saved=result is not None and result.last_path is not None
                     and os.path.exists(result.last_path))
    prefix = f"{who}: " if who else ""
    if not result.complete:
        if leader:
            print(f"continue with `jrnn train --out {result.run_dir} --resume`", file=sys.stderr)
        return 130
    if result.state is None:  # resumed a finished run: nothing was changed
        return 0
    if leader:
        learning_curve(result.run_dir, args.quiet)
    saved = [p for p in (result.best_path, result.last_path) if p and os.path.exists(p)]
    for folder in (runs.SNAPSHOTS, runs.TENSORBOARD):
        if os.path.isdir(os.path.join(result.run_dir, folder)):
            saved.append(os.path.join(result.run_dir, folder))
    test = f"test ppl {result.test_ppl:.2f}" if result.test_ppl is not None else "test ppl n/a"
    best = f"best valid {result.best_valid_ppl:.2f}" if result.best_valid_ppl is not None else "no finite valid ppl"
    skipped = f" | {result.skipped_windows} non-finite windows skipped" if result.skipped_windows else ""
    where = f" | saved {', '.join(saved)}" if leader else ""
    print(f"{prefix}{test} ({best}) | wall {result.wall_seconds:.0f}s{skipped}{where}")
    return 0


def in_group() -> bool:
    """Whether this process joined a group of several (``jrnn train --coordinator ...``)."""
    return _GROUP["joined"]


def out_of_memory_message(error: Exception) -> Optional[str]:
    """One line for XLA's ``RESOURCE_EXHAUSTED`` (memory ran out although the estimate
    before the first step passed: fragmentation, other processes); None for other errors."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if "RESOURCE_EXHAUSTED" not in first:
        return None
    device = jax.devices()[0]
    return (f"out of memory on {device.platform} ({first[:160]}); the checkpoints already written "
            "are intact; use a smaller --batch-size, --bptt or --hidden-size")


def group_lost_message(error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"process {jax.process_index()} lost the process group ({first[:200]}); "
            "the last checkpoint written stays loadable")


load_for_use = load_for_inference


def _header_data(checkpoint: str, meta: dict):
    """``(data, level, max_vocab, min_freq)`` a checkpoint's header names, checked as data:
    a corpus name, or a path to a regular file or a directory (read no further than the
    files hold, by :func:`jrnn.data.read_text`); anything else is refused in one line."""
    data, level = meta.get("data"), meta.get("level")
    max_vocab, min_freq = meta.get("max_vocab"), meta.get("min_freq", 1)
    bad = None
    if data is not None and not isinstance(data, str):
        bad = f"data {data!r}"
    elif level not in (None, "word", "char"):
        bad = f"level {level!r}"
    elif max_vocab is not None and (isinstance(max_vocab, bool) or not isinstance(max_vocab, int)):
        bad = f"max_vocab {max_vocab!r}"
    elif min_freq is not None and (isinstance(min_freq, bool) or not isinstance(min_freq, int)):
        bad = f"min_freq {min_freq!r}"
    if bad:
        raise CheckpointError(f"{checkpoint}: its header names {bad}, which is not a corpus; "
                              "pass --data (or --file) to evaluate")
    if data is not None and os.path.exists(data) and not (
            os.path.isdir(data) or os.path.isfile(data)):
        raise CheckpointError(f"{checkpoint}: its header names {data} as its data, which is not "
                              "a file or a directory; pass --data (or --file) to evaluate")
    return data, level, max_vocab, min_freq or 1


def _mean_nll_text(mean_nll: float) -> str:
    """A perplexity ``exp(mean_nll)`` as text, saying so where a float cannot hold it."""
    if mean_nll >= 700:
        return f"above 1e304 (e^{mean_nll:.4g})" if math.isfinite(mean_nll) else "above 1e304"
    return f"{math.exp(mean_nll):.2f}"


def _largest(params) -> str:
    leaves = [np.max(np.abs(np.asarray(x))) for x in jax.tree_util.tree_leaves(params)
              if np.size(x)]
    return f"{max(leaves):.3g}" if leaves else "?"


def _not_finite(checkpoint: str, params, what: str) -> CheckpointError:
    """The one line for a model whose float32 arithmetic overflows on the input."""
    return CheckpointError(f"{checkpoint}: the model's {what} are not finite (its parameters "
                           f"reach {_largest(params)}, beyond what float32 arithmetic holds); "
                           "this checkpoint cannot score text")


def cmd_eval(args) -> int:
    for name in ("batch_size", "bptt"):
        _positive(flag(name), getattr(args, name))
    if jax.default_backend() == "cpu":
        keep_host_memory()

    model, params, vocab, meta = load_for_use(args.checkpoint)
    if args.file:
        text = D.read_text(args.file)
        lines = [text] if vocab.level == "char" else [l for l in text.splitlines() if l.strip()]
        ids = D._ids(vocab, lines)
        name = args.file
    else:
        if args.data is not None:
            data, level = args.data, meta.get("level")
            max_vocab, min_freq = meta.get("max_vocab"), meta.get("min_freq", 1)
        else:
            data, level, max_vocab, min_freq = _header_data(args.checkpoint, meta)
        corpus = load_corpus(data, level, max_vocab, min_freq)
        if corpus.vocab != vocab:
            _fail(f"{args.checkpoint}: trained with another vocabulary than {data or 'the built-in corpus'} gives")
        ids = getattr(corpus, args.split)
        name = f"{corpus.name or data} {args.split}"
    ppl, n = trainer.evaluate(model, params, ids, batch_size=args.batch_size, bptt=args.bptt)
    if math.isnan(ppl):
        raise _not_finite(args.checkpoint, params, "losses")
    # evaluate() caps the mean loss at 700 nats (a perplexity of e^700): above it, say so.
    text = ("above 1e304 (the mean loss exceeds 700 nats per token)"
            if ppl >= math.exp(700.0) * (1 - 1e-9) else f"{ppl:.2f}")
    print(f"{name}: perplexity {text} over {n} tokens")
    return 0


def _warn_unknown(vocab, texts: Sequence[str]) -> None:
    for t in texts:
        unk = vocab.unknown(t)
        if unk:
            print(f"note: not in the vocabulary, scored as <unk>: {', '.join(sorted(set(unk)))}",
                  file=sys.stderr)


def _score_file(args, model, params, vocab) -> int:
    """``jrnn score --file``: one output line per non-blank input line, in file order."""
    if not os.path.exists(args.file):
        _fail(f"{args.file}: no such file (score --file reads one sentence a line)")
    sentences = [" ".join(line.split()) for line in D.read_text(args.file).splitlines()]
    sentences = [s for s in sentences if s]  # blank lines are skipped (read_text refuses all-blank)
    unknown = sorted({w for s in sentences for w in vocab.unknown(s)})
    if unknown:
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        print(f"note: not in the vocabulary, scored as <unk>: {', '.join(unknown[:20])}{more}",
              file=sys.stderr)
    scores = jrnn.score(model, params, [[vocab.eos_id] + vocab.encode(s) for s in sentences])
    if not np.all(np.isfinite(scores.log_prob)):
        raise _not_finite(args.checkpoint, params, "log-probabilities")
    for s, lp, n in zip(sentences, scores.log_prob.tolist(), scores.num_tokens.tolist()):
        ppl = math.exp(-lp / n) if -lp / n < 700 else math.inf
        if args.format == "json":
            print(json.dumps({"log_prob": lp, "tokens": n,
                              "perplexity": ppl if math.isfinite(ppl) else None, "sentence": s}))
        else:
            print(f"{lp:.4f}\t{n}\t{ppl:.6g}\t{s}")
    return 0


def cmd_score(args) -> int:
    if args.file is not None and args.sentences:
        _fail("give sentences or --file, not both")
    if args.file is None and not args.sentences:
        _fail("give sentences to score, or --file FILE (one sentence a line)")
    if args.format is not None and args.file is None:
        _fail("--format goes with --file")
    model, params, vocab, _ = load_for_use(args.checkpoint)
    if vocab.level != "word":
        _fail("score needs a word-level checkpoint")
    if args.file is not None:
        return _score_file(args, model, params, vocab)
    sentences = [s for s in args.sentences]
    if any(not s.split() for s in sentences):
        _fail("cannot score an empty sentence")
    _warn_unknown(vocab, sentences)
    tokens, lengths = vocab.encode_batch(sentences)
    tlp = np.asarray(jrnn.token_log_probs(model, params, tokens, lengths))
    if not np.all(np.isfinite(tlp)):
        raise _not_finite(args.checkpoint, params, "log-probabilities")
    rows = []
    for i, s in enumerate(sentences):
        n = int(lengths[i]) - 1
        lp = float(tlp[i, :n].sum())
        rows.append((lp, s, [(vocab.itos[int(tokens[i, t + 1])], float(np.exp(tlp[i, t]))) for t in range(n)]))
    rows.sort(key=lambda r: -r[0])
    for rank, (lp, s, per) in enumerate(rows, 1):
        n = len(per)
        print(f"{rank}. {s!r}: log p = {lp:.3f} (log10 {lp / math.log(10):.3f}), "
              f"perplexity {_mean_nll_text(-lp / n)} over {n} tokens")
        print("   " + "  ".join(f"{w}:{p:.4f}" for w, p in per))
    return 0


def cmd_next(args) -> int:
    model, params, vocab, _ = load_for_use(args.checkpoint)
    if args.top <= 0:
        _fail(f"--top must be positive, got {args.top}")
    _warn_unknown(vocab, [args.context])
    ids = [vocab.eos_id] + vocab.encode(args.context, add_eos=False)
    lp = np.asarray(jrnn.next_token_log_probs(model, params, np.array([ids], np.int32)))[0]
    if not np.all(np.isfinite(lp)):
        raise _not_finite(args.checkpoint, params, "log-probabilities")
    top = np.argsort(-lp)[: args.top]
    print(f"after {args.context!r}:")
    for rank, i in enumerate(top, 1):
        print(f"{rank:3d}. {vocab.itos[i]!r:>16}  p = {math.exp(lp[i]):.4f}")
    return 0


def cmd_generate(args) -> int:
    model, params, vocab, _ = load_for_use(args.checkpoint)
    if not (args.temperature > 0 and math.isfinite(args.temperature)):
        _fail(f"--temperature must be a positive finite number, got {args.temperature}")
    _positive("--words", args.words)
    if args.words <= 0:
        _fail(f"--words must be positive, got {args.words}")
    if not 0 <= args.seed <= MAX_SEED:
        _fail(f"--seed must be an int in 0..{MAX_SEED}, got {args.seed}")
    if args.top_k is not None:
        _positive("--top-k", args.top_k)
    if args.top_p is not None and not 0 < args.top_p <= 1:
        _fail(f"--top-p must be in (0, 1], got {args.top_p}")

    if args.prompt:
        _warn_unknown(vocab, [args.prompt])
    prompt = [vocab.eos_id] + (vocab.encode(args.prompt, add_eos=False) if args.prompt else [])
    # One key for the one row, split once per token: the seed gives the text 0.3.0 gave.
    key = jax.random.PRNGKey(args.seed)[None]
    try:
        tokens = jrnn.sample(model, params, np.array([prompt], np.int32), args.words, key=key,
                             temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    except FloatingPointError:
        raise _not_finite(args.checkpoint, params, "logits") from None
    out = [int(i) for i in np.asarray(tokens)[0]]
    if vocab.level == "word":
        words = [("\n" if vocab.itos[i] == "<eos>" else vocab.itos[i]) for i in out]
        text = " ".join(words).replace(" \n ", "\n").replace(" \n", "\n")
    else:
        text = vocab.decode(out)
    print((args.prompt + " " if args.prompt and vocab.level == "word" else args.prompt) + text)
    return 0


# The errors that end a command with one line and exit code 2 (3: a non-finite run).
def _run_names(paths: Sequence[str]) -> list:
    """Short names for runs: their folder names, with the parent added where two are alike."""
    names = [os.path.basename(os.path.normpath(p)) or p for p in paths]
    return [os.path.join(os.path.basename(os.path.dirname(os.path.normpath(p))), n)
            if names.count(n) > 1 else n for p, n in zip(paths, names)]


def cmd_plot(args) -> int:
    """``jrnn plot RUN [RUN ...]``: their learning curves in one figure."""
    runs_records = {}
    for name, path in zip(_run_names(args.runs), args.runs):
        runs_records[name] = read_metrics(path)
    try:
        written = plots.learning_curve_figure(runs_records, args.out, title=args.title, svg=args.svg)
    except ImportError as e:
        _fail(f"{e} (the metrics themselves are in each run's metrics.jsonl)")
    except (ValueError, OSError) as e:
        _fail(f"{args.out}: {getattr(e, 'strerror', None) or e}")
    print("wrote " + ", ".join(written))
    return 0


def learning_curve(run_dir: str, quiet: bool) -> None:
    """``RUN/learning_curve.png`` after ``jrnn train``; without matplotlib, a note (unless quiet)."""
    try:
        plots.learning_curve_figure({os.path.basename(os.path.normpath(run_dir)): read_metrics(run_dir)},
                                    os.path.join(run_dir, "learning_curve.png"))
    except ImportError:
        if not quiet:
            print(f"note: no {os.path.join(run_dir, 'learning_curve.png')}: pip install matplotlib "
                  f"(or `jrnn plot {run_dir}` later)", file=sys.stderr)
    except (OSError, ValueError, RunDirError) as e:
        print(f"note: no learning-curve figure ({e})", file=sys.stderr)


EXPORT_README = """\
A jrnn language model as serialized StableHLO (jax.export): load it with JAX alone.

    import json, jax.numpy as jnp, numpy as np
    from jax import export
    info = json.load(open("model.json"))
    vocab = json.load(open("vocab.json"))            # the words, by id
    score = export.deserialize(open("token_log_probs.stablehlo", "rb").read())
    step = export.deserialize(open("next_log_probs.stablehlo", "rb").read())
    ids = [info["start_id"]] + [vocab.index(w) if w in vocab else info["unk_id"]
                                for w in "the cat sat on the mat".split()]
    print(float(score.call(jnp.array([ids], jnp.int32)).sum()))   # log p of the sentence
    state = tuple(jnp.zeros((1, *s), d) for s, d in zip(info["state_shapes"], info["state_dtypes"]))
    state, log_p = step.call(state, jnp.array([info["start_id"]], jnp.int32))  # p(first word)

token_log_probs(tokens: int32[b, t]) -> float32[b, t-1]: log p(tokens[:, i+1] | tokens[:, :i+1]),
  tokens[:, 0] the start symbol; b and t are any sizes (t >= 2).
next_log_probs(state, token: int32[b]) -> (state, float32[b, V]): one step from `state`.
(Character-level models: one character per token; see "level" in model.json.)
"""


def cmd_export(args) -> int:
    """``jrnn export RUN --out DIR``: :func:`jrnn.models.export.export_model` and the
    vocabulary, written to a new directory (built beside it, then renamed into place)."""
    model, params, vocab, _ = load_for_use(args.run)
    platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
    unknown = sorted(set(platforms) - {"cpu", "cuda", "rocm", "tpu"})
    if not platforms or unknown:
        _fail(f"--platforms takes cpu, cuda, rocm and tpu, comma-separated; got {args.platforms!r}")
    out = os.path.abspath(args.out)
    if os.path.lexists(out) and not (os.path.isdir(out) and not os.listdir(out)):
        _fail(f"{args.out} already exists; jrnn export writes a new directory")
    parent = os.path.dirname(out)
    try:
        os.makedirs(parent, exist_ok=True)
        work = tempfile.mkdtemp(prefix=".jrnn-export-", dir=parent)
    except OSError as e:
        _fail(f"{args.out}: cannot create it ({e.strerror or e})")
    try:
        try:
            files = export_model(model, params, platforms=platforms)
        except ImportError as e:  # jax.export serializes with flatbuffers
            _fail(f"exporting needs {e.name or 'flatbuffers'}: pip install flatbuffers")
        except ValueError as e:
            _fail(str(e))
        for name in ("token_log_probs", "next_log_probs"):
            with open(os.path.join(work, f"{name}.stablehlo"), "wb") as f:
                f.write(files[name])
        info = {k: files[k] for k in ("format", "vocab_size", "state_shapes", "state_dtypes", "platforms")}
        info.update(start_id=vocab.eos_id, unk_id=vocab.unk_id, level=vocab.level,
                    jax=jax.__version__, model=model.config.to_dict())
        with open(os.path.join(work, "model.json"), "w") as f:
            json.dump(info, f, indent=1)
        with open(os.path.join(work, "vocab.json"), "w") as f:
            json.dump(list(vocab.itos), f)
        with open(os.path.join(work, "README.txt"), "w") as f:
            f.write(EXPORT_README)
        if os.path.isdir(out):
            os.rmdir(out)  # an empty directory the user made for it
        os.rename(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    print(f"exported {args.run} to {args.out}: token_log_probs.stablehlo, next_log_probs.stablehlo "
          f"({', '.join(platforms)}), model.json, vocab.json, README.txt")
    return 0


USER_ERRORS = (UserError, DataError, CheckpointError, fit_module.FitError, ConfigError, RunDirError)
NONFINITE = fit_module.NonFiniteError
# Only caught when several processes train together: a failed collective.
GROUP_LOST = (jax.errors.JaxRuntimeError, distributed.GroupLostError)

COMMANDS = {"train": cmd_train, "eval": cmd_eval, "score": cmd_score, "next": cmd_next,
            "generate": cmd_generate, "export": cmd_export, "plot": cmd_plot}
