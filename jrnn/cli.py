"""The ``jrnn`` command line: train, eval, score, next, generate.

The only module that parses arguments or prints.  Errors in the user's input
(data, checkpoints, options) end with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import sys
import time
from typing import Optional, Sequence

PRESETS = {
    # Zaremba, Sutskever & Vinyals (2014), "Recurrent Neural Network Regularization",
    # as in their released code: uniform init, SGD lr 1 then decay, loss summed over
    # time and averaged over the batch, batch 20, 35 BPTT steps.
    "zaremba-small": dict(cell="lstm", layers=2, embed_size=200, hidden_size=200, dropout=0.0,
                          init_scale=0.1, optimizer="sgd", lr=1.0, lr_decay=0.5, decay_start=4,
                          clip=5.0, epochs=13, batch_size=20, bptt=35),
    "zaremba-medium": dict(cell="lstm", layers=2, embed_size=650, hidden_size=650, dropout=0.5,
                           init_scale=0.05, optimizer="sgd", lr=1.0, lr_decay=0.8, decay_start=6,
                           clip=5.0, epochs=39, batch_size=20, bptt=35),
    "zaremba-large": dict(cell="lstm", layers=2, embed_size=1500, hidden_size=1500, dropout=0.65,
                          init_scale=0.04, optimizer="sgd", lr=1.0, lr_decay=1 / 1.15,
                          decay_start=14, clip=10.0, epochs=55, batch_size=20, bptt=35),
    # A vanilla tanh RNN LM in the spirit of Mikolov's RNNLM, for the comparison.
    # Dropout on the non-recurrent connections (Zaremba-style) and tied embeddings.
    "elman-ptb": dict(cell="elman", activation="tanh", layers=1, embed_size=300, hidden_size=300,
                      tie=True, dropout=0.3, init_scale=0.05, optimizer="adam", lr=2e-3,
                      lr_decay=0.5, decay_start=4, clip=5.0, epochs=8, batch_size=20, bptt=35),
    # The fixed-window feed-forward NNLM baseline (context of 4 words = a 5-gram model).
    "nnlm-ptb": dict(cell="nnlm", context_size=4, layers=1, embed_size=100, hidden_size=300,
                     dropout=0.3, init_scale=0.05, optimizer="adam", lr=1e-3, lr_decay=0.5,
                     decay_start=3, clip=5.0, epochs=5, batch_size=20, bptt=35),
}

# What `jrnn train` does with no options: the built-in corpus, a small LSTM.
DEFAULTS = dict(cell="lstm", activation="tanh", layers=1, embed_size=64, hidden_size=64,
                dropout=0.0, tie=False, init_scale=None, forget_bias=0.0, context_size=4,
                optimizer="adam", lr=0.01, lr_decay=1.0, decay_start=1, clip=5.0, epochs=3,
                batch_size=32, bptt=20, seed=0, unroll="auto", remat=False)


class UserError(Exception):
    """Bad input from the user: one line, exit code 2."""


def _fail(msg: str) -> None:
    raise UserError(msg)


# ---- argument parsing -------------------------------------------------------

def _unroll_arg(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'auto', got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'auto', got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jrnn", description="Train, evaluate and use RNN language models.",
        epilog="Also: `jrnn diagnose --help` (gradient flow, information decay) and "
               "`jrnn tasks --help` (adding, copy-memory and agreement task sweeps).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a language model")
    t.add_argument("--data", default=os.environ.get("JRNN_DATA"),
                   help="PTB-style directory (*.train/valid/test.txt), one text file, or a corpus "
                        "to download (ptb, wikitext-2, tiny-shakespeare); "
                        "default $JRNN_DATA, else the built-in corpus")
    t.add_argument("--level", choices=["word", "char"], default=None,
                   help="word (default for directories) or char (default for single files)")
    t.add_argument("--max-vocab", type=int, default=None)
    t.add_argument("--min-freq", type=int, default=1)
    t.add_argument("--preset", choices=sorted(PRESETS))
    t.add_argument("--cell", choices=["linear", "elman", "lstm", "gru", "nnlm"])
    t.add_argument("--activation", choices=["tanh", "sigmoid", "relu", "identity"])
    t.add_argument("--layers", type=int)
    t.add_argument("--embed-size", type=int)
    t.add_argument("--hidden-size", type=int)
    t.add_argument("--context-size", type=int, help="NNLM only: words of context")
    t.add_argument("--dropout", type=float)
    t.add_argument("--tie", action="store_true", default=None, help="tie input and output embeddings")
    t.add_argument("--init-scale", type=float)
    t.add_argument("--forget-bias", type=float)
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    t.add_argument("--lr", type=float)
    t.add_argument("--lr-decay", type=float, help="multiply the lr by this each epoch after --decay-start")
    t.add_argument("--decay-start", type=int, help="epochs at the initial lr")
    t.add_argument("--clip", type=float, help="clip the global gradient norm (0: off)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--bptt", type=int, help="BPTT window length T")
    t.add_argument("--unroll", type=_unroll_arg,
                   help="lax.scan unroll factor, or auto (1 on CPU, 8 on GPU; the default)")
    t.add_argument("--remat", action="store_true", default=None,
                   help="recompute each step in the backward pass (less memory, long sequences)")
    t.add_argument("--data-parallel", action="store_true",
                   help="shard the batch over all local devices (parameters replicated)")
    t.add_argument("--coordinator", help="multi-host: address:port of process 0 "
                                         "(with --num-processes and --process-id)")
    t.add_argument("--num-processes", type=int)
    t.add_argument("--process-id", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--out", default="runs/latest", help="checkpoint directory (default runs/latest)")
    t.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    t.add_argument("--max-windows", type=int, default=None,
                   help="stop each epoch after this many windows (quick trials)")
    t.add_argument("--save-every", type=float, default=300.0,
                   help="seconds between mid-epoch checkpoints (for --resume)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--release-host-memory", action="store_true",
                   help="on a CPU, let the C allocator return freed memory to the OS "
                        "(slower steps; by default jrnn.keep_host_memory() is applied)")
    t.add_argument("--fused-epoch", action="store_true",
                   help="run each epoch as one jitted lax.scan over all windows, data on the "
                        "device (fastest on GPU; progress every 100 windows, Ctrl-C acts at "
                        "the end of the epoch)")

    e = sub.add_parser("eval", help="perplexity of a checkpoint")
    e.add_argument("--checkpoint", default="runs/latest")
    e.add_argument("--split", choices=["train", "valid", "test"], default="test")
    e.add_argument("--file", help="a text file to evaluate instead of a split")
    e.add_argument("--data", help="the corpus (default: the one the checkpoint was trained on)")
    e.add_argument("--batch-size", type=int, default=10)
    e.add_argument("--bptt", type=int, default=35)

    s = sub.add_parser("score", help="log-probability of sentences, best first")
    s.add_argument("sentences", nargs="+")
    s.add_argument("--checkpoint", default="runs/latest")

    n = sub.add_parser("next", help="the next-word distribution after a context")
    n.add_argument("context")
    n.add_argument("--top", type=int, default=10)
    n.add_argument("--checkpoint", default="runs/latest")

    g = sub.add_parser("generate", help="sample text")
    g.add_argument("--words", type=int, default=100, help="tokens to sample")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prompt", default="")
    g.add_argument("--checkpoint", default="runs/latest")
    return p


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
    import jrnn

    if cfg["cell"] == "nnlm":
        return jrnn.nnlm(vocab_size, context_size=cfg["context_size"], embed_size=cfg["embed_size"],
                         hidden_size=cfg["hidden_size"], dropout=cfg["dropout"],
                         init_scale=cfg["init_scale"] or 0.1)
    return jrnn.rnn_lm(vocab_size, cell=cfg["cell"], activation=cfg["activation"],
                       embed_size=cfg["embed_size"], hidden_size=cfg["hidden_size"],
                       num_layers=cfg["layers"], dropout=cfg["dropout"], tie_embeddings=cfg["tie"],
                       init_scale=cfg["init_scale"], forget_bias=cfg["forget_bias"],
                       unroll=cfg.get("unroll", "auto"), remat=cfg.get("remat", False))


def _load_corpus(data: Optional[str], level: Optional[str], max_vocab, min_freq):
    from jrnn import data as D

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
    import jax
    import numpy as np

    import jrnn
    from jrnn import checkpoint as ckpt
    from jrnn import trainer
    from jrnn.data import batchify

    if not args.release_host_memory and jax.default_backend() == "cpu":
        jrnn.keep_host_memory()  # ~20 % faster steps on a CPU (jrnn/runtime.py)
    if args.coordinator or args.num_processes:
        from jrnn import distributed

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
    corpus = _load_corpus(data, level, max_vocab, min_freq)
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
        from jrnn import distributed

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


def _load_for_use(path: str):
    """Model, params, vocabulary and metadata from a checkpoint."""
    import jax

    import jrnn
    from jrnn import checkpoint as ckpt
    from jrnn import trainer
    from jrnn.data import Vocabulary

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
    import jax

    import jrnn
    from jrnn import data as D
    from jrnn import trainer

    if jax.default_backend() == "cpu":
        jrnn.keep_host_memory()

    model, params, vocab, meta = _load_for_use(args.checkpoint)
    if args.file:
        text = D.read_text(args.file)
        lines = [text] if vocab.level == "char" else [l for l in text.splitlines() if l.strip()]
        ids = D._ids(vocab, lines)
        name = args.file
    else:
        data = args.data if args.data is not None else meta.get("data")
        corpus = _load_corpus(data, meta.get("level"), meta.get("max_vocab"), meta.get("min_freq", 1))
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
    import numpy as np

    import jrnn

    model, params, vocab, _ = _load_for_use(args.checkpoint)
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
    import numpy as np

    import jrnn

    model, params, vocab, _ = _load_for_use(args.checkpoint)
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
    import jax
    import jax.numpy as jnp
    import numpy as np

    model, params, vocab, _ = _load_for_use(args.checkpoint)
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


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "score": cmd_score, "next": cmd_next,
            "generate": cmd_generate}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("diagnose", "tasks"):
        # Gradient-flow / decay plots and long-range task sweeps (jrnn.cli_tools).
        from jrnn import cli_tools

        tool = cli_tools.diagnose_main if argv[0] == "diagnose" else cli_tools.tasks_main
        return tool(argv[1:])
    args = _parser().parse_args(argv)
    from jrnn.checkpoint import CheckpointError
    from jrnn.data import DataError

    try:
        return COMMANDS[args.command](args)
    except (UserError, DataError, CheckpointError) as e:
        print(f"jrnn: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("jrnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
