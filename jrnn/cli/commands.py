"""The commands of ``jrnn``: train, eval, score, next, generate (loaded after parsing)."""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import jrnn
from jrnn import data as D
from jrnn.cli.options import DEFAULTS, PRESETS, UserError, _fail
from jrnn.data import DataError, Vocabulary, batchify
from jrnn.training import checkpoint as ckpt
from jrnn.training import distributed
from jrnn.training import loop as trainer
from jrnn.training.checkpoint import CheckpointError
from jrnn.training.runtime import keep_host_memory

# ---- building models from settings ------------------------------------------

def _settings(args) -> dict:
    cfg = dict(DEFAULTS)
    if args.preset:
        cfg.update(PRESETS[args.preset])
    for key in list(DEFAULTS):
        val = getattr(args, key, None)
        if val is not None:
            cfg[key] = val
    for key in ("layers", "embed_size", "hidden_size", "epochs", "batch_size", "bptt",
                "context_size", "decay_start"):
        if cfg[key] is None or cfg[key] <= 0:
            _fail(f"--{key.replace('_', '-')} must be positive, got {cfg[key]}")
    if not 0 <= cfg["dropout"] < 1:
        _fail(f"--dropout must be in [0, 1), got {cfg['dropout']}")
    if cfg["lr"] <= 0:
        _fail(f"--lr must be positive, got {cfg['lr']}")
    if cfg["tie"] and cfg["embed_size"] != cfg["hidden_size"]:
        _fail("--tie needs --embed-size equal to --hidden-size")
    return cfg


def build_model(cfg: dict, vocab_size: int):

    unroll = cfg.get("unroll", "auto")  # the checkpoint's key: "auto" or a scan unroll factor
    if cfg["cell"] == "nnlm":
        return jrnn.nnlm(vocab_size, context_size=cfg["context_size"], embed_size=cfg["embed_size"],
                         hidden_size=cfg["hidden_size"], dropout=cfg["dropout"],
                         init_scale=cfg["init_scale"] or 0.1)
    return jrnn.rnn_lm(vocab_size, cell=cfg["cell"], activation=cfg["activation"],
                       embed_size=cfg["embed_size"], hidden_size=cfg["hidden_size"],
                       num_layers=cfg["layers"], dropout=cfg["dropout"], tie_embeddings=cfg["tie"],
                       init_scale=cfg["init_scale"], forget_bias=cfg["forget_bias"],
                       method="auto" if unroll == "auto" else "scan",
                       scan_unroll=None if unroll == "auto" else unroll,
                       remat=cfg.get("remat", False))


def load_corpus(data: Optional[str], level: Optional[str], max_vocab, min_freq):

    if data is None:
        return D.builtin_corpus()
    if not os.path.exists(data) and data in D.CORPORA:
        print(f"fetching {data} into {D.default_cache_dir()} (cached after the first time)",
              file=sys.stderr)
        folder = D.download(data)
        files = list(D.CORPORA[data])
        data = folder if len(files) > 1 else os.path.join(folder, files[0])
    if not os.path.exists(data):
        _fail(f"{data}: no such file or directory; give a PTB-style directory "
              "(e.g. ../shared/data/ptb) or a UTF-8 text file")
    if level is None:
        level = "word" if os.path.isdir(data) else "char"
    return D.load_corpus(data, level=level, max_vocab=max_vocab, min_freq=min_freq)


class _Progress:
    """A one-line live progress bar on stderr (plain lines when not a terminal)."""

    def __init__(self, epoch: int, epochs: int, quiet: bool):
        self.epoch, self.epochs, self.quiet = epoch, epochs, quiet
        self.tty = sys.stderr.isatty()
        self.last = 0.0
        self.last_decile = -1

    def __call__(self, i: int, n: int, m: dict, tok_s: float) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        decile = (10 * (i + 1)) // n
        if self.tty and now - self.last < 0.2 and i + 1 < n:
            return
        if not self.tty and decile == self.last_decile:
            return
        self.last, self.last_decile = now, decile
        width = 24
        filled = int(width * (i + 1) / n)
        ppl = math.exp(min(m["token_nll"], 50))
        line = (f"epoch {self.epoch + 1}/{self.epochs} [{'#' * filled}{'.' * (width - filled)}] "
                f"{i + 1}/{n} loss {m['token_nll']:.3f} ppl {ppl:8.2f} "
                f"{tok_s / 1000:6.1f}k tok/s |g| {m['grad_norm']:.2f}")
        if not m["finite"]:
            line += " NON-FINITE"
        if self.tty:
            sys.stderr.write("\r" + line)
            if i + 1 >= n:
                sys.stderr.write("\n")
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def done(self) -> None:
        if self.tty and not self.quiet:
            sys.stderr.write("\n")


# ---- commands -----------------------------------------------------------------

def cmd_train(args) -> int:
    if not args.release_host_memory and jax.default_backend() == "cpu":
        keep_host_memory()  # faster steps on a CPU (jrnn/training/runtime.py)
    if args.coordinator or args.num_processes:
        distributed.initialize_multihost(args.coordinator, args.num_processes, args.process_id)
    out = args.out
    last_path, best_path = os.path.join(out, "last.ckpt"), os.path.join(out, "best.ckpt")
    if args.resume:
        resumed_meta, resumed_raw = ckpt.load_raw(last_path)
        meta = resumed_meta
        cfg = dict(meta["settings"])
        if args.epochs is not None:  # a resumed run may be lengthened or shortened
            cfg["epochs"] = args.epochs
        data, level = meta["data"], meta["level"]
        max_vocab, min_freq = meta.get("max_vocab"), meta.get("min_freq", 1)
    else:
        cfg = _settings(args)
        data, level, max_vocab, min_freq = args.data, args.level, args.max_vocab, args.min_freq
    corpus = load_corpus(data, level, max_vocab, min_freq)
    vocab = corpus.vocab
    streams = batchify(corpus.train, cfg["batch_size"])
    if streams.shape[1] < 2:
        _fail("the training text is too short for this --batch-size")
    model = build_model(cfg, len(vocab))
    optimizer = trainer.make_optimizer(cfg["optimizer"], cfg["lr"])
    key = jax.random.PRNGKey(cfg["seed"])
    k_init, k_run = jax.random.split(key)
    state = jrnn.init_train_state(model.init(k_init), optimizer, k_run)
    start_epoch, start_window, best = 0, 0, float("inf")
    history = []
    if args.resume:
        meta = resumed_meta
        if meta["vocab"] != vocab.to_dict():
            _fail(f"{last_path}: saved with another vocabulary than {data or 'the built-in corpus'} gives")
        state = ckpt.restore_into(state, resumed_raw, last_path)
        start_epoch, start_window = meta["epoch"], meta["window"]
        best, history = meta.get("best_valid_ppl", best), meta.get("history", [])
        print(f"resuming {out}: epoch {start_epoch + 1}, window {start_window}, step {int(state.step)}",
              file=sys.stderr)

    level_name = vocab.level
    print(f"data: {corpus.name or data} ({level_name}, vocab {len(vocab)}, train {len(corpus.train)} "
          f"/ valid {len(corpus.valid)} / test {len(corpus.test)} tokens)", file=sys.stderr)
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    print(f"model: {cfg['cell']} x{cfg['layers']} E{cfg['embed_size']} H{cfg['hidden_size']} "
          f"({n_params / 1e6:.2f}M params) | {cfg['optimizer']} lr {cfg['lr']} clip {cfg['clip']} "
          f"| batch {cfg['batch_size']} bptt {cfg['bptt']} | {jax.default_backend()}", file=sys.stderr)

    if args.data_parallel:
        if args.fused_epoch:
            _fail("--fused-epoch and --data-parallel cannot be combined yet; drop one")
        mesh = distributed.make_mesh()
        if cfg["batch_size"] % mesh.size:
            _fail(f"--batch-size {cfg['batch_size']} does not split over {mesh.size} devices; "
                  f"use a multiple of {mesh.size}")
        print(f"data parallel over {mesh.size} devices", file=sys.stderr)
        step = distributed.make_sharded_train_step(model, optimizer, mesh=mesh,
                                                   clip_norm=cfg["clip"] or None, batch_mean=True)
    else:
        step = jrnn.make_train_step(model, optimizer, clip_norm=cfg["clip"] or None,
                                    batch_mean=True)
    epoch_fn = None
    if args.fused_epoch:
        n_total = (streams.shape[1] - 1) // cfg["bptt"]

        def fused_progress(i, m):
            if not args.quiet:
                print(f"  window {int(i) + 1}/{n_total} loss {float(m['token_nll']):.3f} "
                      f"|g| {float(m['grad_norm']):.2f}", file=sys.stderr, flush=True)

        epoch_fn = jrnn.make_train_epoch(model, optimizer, clip_norm=cfg["clip"] or None,
                                         on_progress=fused_progress, progress_every=100)
    eval_step = jrnn.make_eval_step(model)

    def meta_for(epoch, window):
        return {"settings": cfg, "data": data, "level": level_name, "max_vocab": max_vocab,
                "min_freq": min_freq, "vocab": vocab.to_dict(), "epoch": epoch, "window": window,
                "best_valid_ppl": best, "history": history}

    # Ctrl-C / SIGTERM: finish the current window, save, and exit cleanly.
    interrupted = {"flag": False}

    def on_signal(signum, frame):
        interrupted["flag"] = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    t_start = time.perf_counter()
    try:
        for epoch in range(start_epoch, cfg["epochs"]):
            lr = trainer.zaremba_lr(cfg["lr"], cfg["lr_decay"], cfg["decay_start"], epoch)
            state = trainer.set_learning_rate(state, lr)
            last_save = [time.perf_counter()]
            progress = _Progress(epoch, cfg["epochs"], args.quiet)

            def should_stop(i, current, epoch=epoch):
                if interrupted["flag"]:
                    return True
                if args.max_windows is not None and i + 1 >= start_window + args.max_windows:
                    return True
                if time.perf_counter() - last_save[0] > args.save_every:
                    ckpt.save(last_path, current, meta_for(epoch, i + 1))
                    last_save[0] = time.perf_counter()
                return False

            if epoch_fn is not None and start_window == 0:
                state, stats = trainer.train_epoch_fused(epoch_fn, step, model, state, streams,
                                                         cfg["bptt"])
                next_window = 0
            else:
                state, stats, next_window = trainer.train_epoch(
                    step, model, state, streams, cfg["bptt"], start_window=start_window,
                    on_window=progress, should_stop=should_stop)
            start_window = 0
            if interrupted["flag"] and epoch_fn is None:
                ckpt.save(last_path, state, meta_for(epoch, next_window))
                print(f"\ninterrupted: saved {last_path}; continue with "
                      f"`jrnn train --out {out} --resume`", file=sys.stderr)
                return 130
            valid_ppl, _ = trainer.evaluate(model, state.params, corpus.valid, eval_step=eval_step,
                                            batch_size=min(10, cfg["batch_size"]), bptt=cfg["bptt"])
            improved = valid_ppl < best
            best = min(best, valid_ppl)
            history.append({"epoch": epoch + 1, "lr": lr, "train_ppl": stats.perplexity,
                            "valid_ppl": valid_ppl, "tokens_per_s": stats.tokens / stats.seconds,
                            "seconds": stats.seconds, "nonfinite_windows": stats.nonfinite_windows})
            progress.done()
            print(f"epoch {epoch + 1:3d} | lr {lr:.4g} | train ppl {stats.perplexity:9.2f} | "
                  f"valid ppl {valid_ppl:9.2f}{' *' if improved else ''} | "
                  f"{stats.tokens / stats.seconds / 1000:.1f}k tok/s | {stats.seconds:.0f}s"
                  + (f" | {stats.nonfinite_windows} non-finite windows" if stats.nonfinite_windows else ""))
            sys.stdout.flush()
            if improved:
                ckpt.save(best_path, state, meta_for(epoch + 1, 0))
            ckpt.save(last_path, state, meta_for(epoch + 1, 0))
            if interrupted["flag"]:
                print(f"interrupted: saved {last_path} after epoch {epoch + 1}; continue with "
                      f"`jrnn train --out {out} --resume`", file=sys.stderr)
                return 130
    finally:
        for s, h in old.items():
            signal.signal(s, h)

    if os.path.exists(best_path):
        _, raw = ckpt.load_raw(best_path)
        best_state = ckpt.restore_into(state, raw, best_path)
    else:  # no epoch gave a finite validation perplexity
        print("warning: no epoch improved on the validation set (non-finite perplexity?); "
              "testing the last state", file=sys.stderr)
        best_state = state
    test_ppl, n_test = trainer.evaluate(model, best_state.params, corpus.test, eval_step=eval_step,
                                        batch_size=min(10, cfg["batch_size"]), bptt=cfg["bptt"])
    wall = time.perf_counter() - t_start
    print(f"test ppl {test_ppl:.2f} ({n_test} tokens, best valid {best:.2f}) | wall {wall:.0f}s "
          f"| saved {best_path}")
    summary = {"test_ppl": test_ppl, "best_valid_ppl": best, "wall_seconds": wall,
               "settings": cfg, "data": data, "history": history}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return 0


def load_for_use(path: str):
    """Model, params, vocabulary and metadata from a checkpoint."""

    meta, raw = ckpt.load_raw(path)
    try:
        vocab = Vocabulary.from_dict(meta["vocab"])
        cfg = meta["settings"]
        model = build_model(cfg, len(vocab))
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{path}: header is incomplete ({e})") from None
    optimizer = trainer.make_optimizer(cfg["optimizer"], cfg["lr"])
    template = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), optimizer,
                                     jax.random.PRNGKey(0))
    state = ckpt.restore_into(template, raw, path)
    return model, state.params, vocab, meta


def cmd_eval(args) -> int:
    if jax.default_backend() == "cpu":
        keep_host_memory()

    model, params, vocab, meta = load_for_use(args.checkpoint)
    if args.file:
        text = D.read_text(args.file)
        lines = [text] if vocab.level == "char" else [l for l in text.splitlines() if l.strip()]
        ids = D._ids(vocab, lines)
        name = args.file
    else:
        data = args.data if args.data is not None else meta.get("data")
        corpus = load_corpus(data, meta.get("level"), meta.get("max_vocab"), meta.get("min_freq", 1))
        if corpus.vocab != vocab:
            _fail(f"{args.checkpoint}: trained with another vocabulary than {data or 'the built-in corpus'} gives")
        ids = getattr(corpus, args.split)
        name = f"{corpus.name or data} {args.split}"
    ppl, n = trainer.evaluate(model, params, ids, batch_size=args.batch_size, bptt=args.bptt)
    print(f"{name}: perplexity {ppl:.2f} over {n} tokens")
    return 0


def _warn_unknown(vocab, texts: Sequence[str]) -> None:
    for t in texts:
        unk = vocab.unknown(t)
        if unk:
            print(f"note: not in the vocabulary, scored as <unk>: {', '.join(sorted(set(unk)))}",
                  file=sys.stderr)


def cmd_score(args) -> int:
    model, params, vocab, _ = load_for_use(args.checkpoint)
    if vocab.level != "word":
        _fail("score needs a word-level checkpoint")
    sentences = [s for s in args.sentences]
    if any(not s.split() for s in sentences):
        _fail("cannot score an empty sentence")
    _warn_unknown(vocab, sentences)
    tokens, lengths = vocab.encode_batch(sentences)
    tlp = np.asarray(jrnn.token_log_probs(model, params, tokens, lengths))
    rows = []
    for i, s in enumerate(sentences):
        n = int(lengths[i]) - 1
        lp = float(tlp[i, :n].sum())
        rows.append((lp, s, [(vocab.itos[int(tokens[i, t + 1])], float(np.exp(tlp[i, t]))) for t in range(n)]))
    rows.sort(key=lambda r: -r[0])
    for rank, (lp, s, per) in enumerate(rows, 1):
        n = len(per)
        print(f"{rank}. {s!r}: log p = {lp:.3f} (log10 {lp / math.log(10):.3f}), "
              f"perplexity {math.exp(-lp / n):.2f} over {n} tokens")
        print("   " + "  ".join(f"{w}:{p:.4f}" for w, p in per))
    return 0


def cmd_next(args) -> int:
    model, params, vocab, _ = load_for_use(args.checkpoint)
    if args.top <= 0:
        _fail(f"--top must be positive, got {args.top}")
    _warn_unknown(vocab, [args.context])
    ids = [vocab.eos_id] + vocab.encode(args.context, add_eos=False)
    lp = np.asarray(jrnn.next_token_log_probs(model, params, np.array([ids], np.int32)))[0]
    top = np.argsort(-lp)[: args.top]
    print(f"after {args.context!r}:")
    for rank, i in enumerate(top, 1):
        print(f"{rank:3d}. {vocab.itos[i]!r:>16}  p = {math.exp(lp[i]):.4f}")
    return 0


def cmd_generate(args) -> int:

    model, params, vocab, _ = load_for_use(args.checkpoint)
    if args.temperature <= 0:
        _fail(f"--temperature must be positive, got {args.temperature}")
    if args.words <= 0:
        _fail(f"--words must be positive, got {args.words}")

    @jax.jit
    def one(params, tok, carry, key):
        logits, carry = model.apply(params, tok, carry)
        nxt = jax.random.categorical(key, logits[:, -1] / args.temperature)
        return nxt[:, None].astype(jnp.int32), carry

    prompt = [vocab.eos_id] + (vocab.encode(args.prompt, add_eos=False) if args.prompt else [])
    _, carry = model.apply(params, jnp.array([prompt[:-1]], jnp.int32)) if len(prompt) > 1 else (None, None)
    carry = carry if carry is not None else model.initial_carry(1)
    tok = jnp.array([[prompt[-1]]], jnp.int32)
    key = jax.random.PRNGKey(args.seed)
    out = []
    for _ in range(args.words):
        key, sub = jax.random.split(key)
        tok, carry = one(params, tok, carry, sub)
        out.append(int(tok[0, 0]))
    if vocab.level == "word":
        words = [("\n" if vocab.itos[i] == "<eos>" else vocab.itos[i]) for i in out]
        text = " ".join(words).replace(" \n ", "\n").replace(" \n", "\n")
    else:
        text = vocab.decode(out)
    print((args.prompt + " " if args.prompt and vocab.level == "word" else args.prompt) + text)
    return 0


# The errors that end a command with one line and exit code 2.
USER_ERRORS = (UserError, DataError, CheckpointError)

COMMANDS = {"train": cmd_train, "eval": cmd_eval, "score": cmd_score, "next": cmd_next,
            "generate": cmd_generate}
