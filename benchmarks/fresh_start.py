"""A trained LM scored from the zero carry and from a warm one: does a fresh start lead it into a state it never leaves?

jrnn's evaluation (``jrnn eval``, and the validation perplexity ``jrnn train``
prints after each epoch) cuts a split into ``--batch-size`` streams and runs
each from the zero carry, as the classic PTB language models do.  A
recurrent layer whose recurrent weights can hold a state on their own may,
from that carry and a particular first word, settle into an attractor it does
not leave for the rest of the stream, whatever the words.  This script finds
out, for one checkpoint:

* per stream: the mean loss from the zero carry (what evaluation counts), the
  same text from a *warm* carry (the state after ``--warmup`` tokens of the
  training text), and how much the top layer's ``h_t`` still varies over
  time (its standard deviation over steps, averaged over units: near 0 for a
  state that no longer follows the input);
* of ``--sample`` first words, each put before the first ``--continuation``
  tokens of every stream: which (word, stream) pairs the model, from the
  zero carry, scores above ``--threshold`` nats a token.

It prints a table and writes the figures as JSON (``--json``); the functions
it runs are :mod:`jrnn.analysis.streams`, for any jrnn model from Python.  Example: the
2-layer sLSTM after its first epoch of ``slstm-ptb`` (the validation perplexity
of 29,910 in ``benchmarks/RESULTS.md``)::

    jrnn train --data DIR --preset slstm-ptb --epochs 1 --out runs/slstm-e1
    python benchmarks/fresh_start.py runs/slstm-e1 --data DIR --json slstm-e1.json

``DIR`` is a PTB-style directory (``*.train.txt``, ``*.valid.txt``,
``*.test.txt``) or one text file, as for ``jrnn train --data``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from jrnn.analysis.streams import (first_word_locks, stream_scores, tile_carry,  # noqa: E402
                                   warm_carry)
from jrnn.data import DataError, batchify, load_corpus  # noqa: E402


def main(argv=None) -> int:
    from jrnn.training.checkpoint import CheckpointError
    from jrnn.training.inference import load_for_inference

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a run directory or checkpoint file (as for jrnn eval)")
    p.add_argument("--data", required=True,
                   help="the PTB-style directory or text file the model was trained on")
    p.add_argument("--split", default="valid", choices=("train", "valid", "test"))
    p.add_argument("--batch-size", type=int, default=10, help="streams (evaluation's default: 10)")
    p.add_argument("--bptt", type=int, default=35)
    p.add_argument("--warmup", type=int, default=50,
                   help="tokens of the training text that make the warm carry")
    p.add_argument("--sample", type=int, default=300, help="first words to try (0: none)")
    p.add_argument("--continuation", type=int, default=200,
                   help="tokens of each stream's text that follow a sampled first word")
    p.add_argument("--threshold", type=float, default=15.0,
                   help="nats a token above which a stream counts as locked")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)
    for name in ("batch_size", "bptt", "continuation"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.sample < 0:
        p.error("--warmup and --sample must be 0 or more")
    if not math.isfinite(args.threshold):
        p.error(f"--threshold must be a finite number of nats, not {args.threshold}")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        p.error(f"--json {args.json}: its folder does not exist")

    try:
        model, params, vocab, meta = load_for_inference(args.checkpoint)
        if model.features is None:
            p.error(f"{args.checkpoint}: not a recurrent model (no features to follow)")
        corpus = load_corpus(args.data, level=meta.get("level") or "word",
                             max_vocab=meta.get("max_vocab"), min_freq=meta.get("min_freq") or 1)
    except (CheckpointError, DataError, OSError) as e:
        p.error(str(e).splitlines()[0])
    if corpus.vocab != vocab:
        p.error(f"{args.checkpoint}: trained with another vocabulary than {args.data} gives")
    try:
        streams = batchify(getattr(corpus, args.split), args.batch_size)
    except DataError as e:
        p.error(str(e))

    cold = stream_scores(model, params, streams, bptt=args.bptt)
    warm_c = warm_carry(model, params, corpus.train, args.warmup)
    warm = stream_scores(model, params, streams, bptt=args.bptt,
                         carry=tile_carry(warm_c, args.batch_size))
    word = lambda i: vocab.decode([int(i)])  # noqa: E731
    print(f"# {args.checkpoint}: {args.split} split as {args.batch_size} streams of "
          f"{cold['tokens']} tokens; warm carry = after {args.warmup} training tokens")
    print("stream | first word      | zero carry (nats) | warm carry (nats) | top-layer h std")
    print("-" * 80)
    for b in range(args.batch_size):
        mark = "  <- locked" if cold["nll"][b] > args.threshold else ""
        print(f"{b:6d} | {word(streams[b, 0])[:15]:15s} | {cold['nll'][b]:17.2f} | "
              f"{warm['nll'][b]:17.2f} | {cold['h_std'][b]:.4f}{mark}")
    ppl = lambda s: math.exp(min(float(np.mean(s["nll"])), 700.0))  # noqa: E731
    print(f"perplexity from the zero carry {ppl(cold):.2f} (what evaluation reports), "
          f"from the warm carry {ppl(warm):.2f}")

    locks, tried = {}, []
    if args.sample:
        rng = np.random.default_rng(args.seed)
        tried = rng.choice(len(vocab), min(args.sample, len(vocab)), replace=False)
        for b in range(args.batch_size):  # each stream's own text follows the sampled words
            cont = streams[b, 1 : 1 + args.continuation]
            for w, v in first_word_locks(model, params, cont, tried, threshold=args.threshold,
                                         bptt=args.bptt):
                locks.setdefault(word(w), []).append(b)
        pairs = sum(len(v) for v in locks.values())
        shown = ", ".join(sorted(locks)[:12]) + (" ..." if len(locks) > 12 else "")
        print(f"first words that lock the zero carry (> {args.threshold:g} nats a token over "
              f"{args.continuation} tokens of a stream's text): {pairs} of "
              f"{len(tried) * args.batch_size} (word, stream) pairs; {len(locks)} of {len(tried)} "
              f"words lock at least one stream{': ' if locks else ''}{shown}")
    if args.json:
        text = json.dumps({
            "checkpoint": args.checkpoint, "split": args.split, "batch_size": args.batch_size,
            "bptt": args.bptt, "warmup": args.warmup, "threshold": args.threshold,
            "first_words": [word(w) for w in streams[:, 0]],
            "zero_carry_nll": cold["nll"].tolist(), "warm_carry_nll": warm["nll"].tolist(),
            "top_h_std": cold["h_std"].tolist(),
            "ppl_zero_carry": ppl(cold), "ppl_warm_carry": ppl(warm),
            "sampled": len(tried), "locks": locks}, indent=1)
        try:
            Path(args.json).write_text(text)
        except OSError as e:
            p.error(f"--json {args.json}: cannot write it ({e.strerror or e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
