"""The ``jrnn`` command line: train, eval, score, next, generate (and diagnose, tasks).

The only package that parses arguments or prints.  Errors in the user's input
(data, checkpoints, options) end with one line on stderr and exit code 2.
This module parses the arguments with only the names of ``jrnn``'s choices
loaded (:mod:`jrnn.core.names`; ``import jrnn`` loads nothing of JAX, so
``jrnn --help`` answers in about 0.1 s instead of 1.5 s); the commands, the
training loop and the data, and JAX with them, are imported once the
arguments are parsed.  A Ctrl-C while they load is held until they have
loaded, then ends the command in one line (exit code 130).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from importlib import metadata
from typing import Optional, Sequence

from jrnn.cli.options import UserError
from jrnn.core.names import ACTIVATIONS, MODEL_KINDS, OPTIMIZERS, OPTION_ALIASES, PRECISIONS, PRESETS

__all__ = ["main", "UserError"]

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


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``jrnn train: error: ...``, exit code 2), not its usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


CHECKPOINT_HELP = ("a checkpoint file, a run directory, a snapshot folder "
                   "(RUN/snapshots/best/<step>), or a folder with a `latest` pointer "
                   "(default runs: the latest run)")


def _version() -> str:
    try:
        return metadata.version("jrnn")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _checkpoint_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", default="runs", help=CHECKPOINT_HELP)


def _train_data_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--data", default=os.environ.get("JRNN_DATA"),
                   help="PTB-style directory (*.train/valid/test.txt), one text file, or a corpus "
                        "to download (ptb, wikitext-2, tiny-shakespeare); "
                        "default $JRNN_DATA, else the built-in corpus")
    t.add_argument("--level", choices=["word", "char"], default=None,
                   help="word (default for directories) or char (default for single files)")
    t.add_argument("--max-vocab", type=int, default=None)
    t.add_argument("--min-freq", type=int, default=None, help="drop rarer words (default 1)")


def _train_model_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--preset", choices=sorted(PRESETS))
    t.add_argument("--cell", choices=list(MODEL_KINDS))
    t.add_argument("--activation", choices=list(ACTIVATIONS))
    t.add_argument("--layers", "--num-layers", dest="num_layers", type=int)
    t.add_argument("--embed-size", type=int)
    t.add_argument("--hidden-size", type=int)
    t.add_argument("--proj-size", type=int,
                   help="LSTM with projections: each layer outputs this many features (< hidden size)")
    t.add_argument("--context-size", type=int, help="NNLM only: words of context")
    t.add_argument("--dropout", type=float)
    t.add_argument("--tie", "--tie-embeddings", dest="tie_embeddings", action="store_true",
                   default=None, help="tie input and output embeddings")
    t.add_argument("--variational", action="store_true", default=None,
                   help="--dropout with one mask per sequence, shared over time (Gal & Ghahramani)")
    t.add_argument("--recurrent-dropout", type=float,
                   help="variational dropout on h_{t-1} inside the recurrence (LSTM, Elman)")
    t.add_argument("--weight-dropout", type=float,
                   help="DropConnect on each layer's W_h, one mask per forward pass (AWD-LSTM)")
    t.add_argument("--embedding-dropout", type=float,
                   help="drop whole words from the embedding matrix (AWD-LSTM)")
    t.add_argument("--init-scale", type=float)
    t.add_argument("--forget-bias", type=float)


def _train_optimization_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--optimizer", choices=list(OPTIMIZERS))
    t.add_argument("--lr", type=float)
    t.add_argument("--lr-decay", type=float, help="multiply the lr by this each epoch after --decay-start")
    t.add_argument("--decay-start", type=int, help="epochs at the initial lr")
    t.add_argument("--clip", type=float, help="clip the global gradient norm (0: off)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--bptt", type=int, help="BPTT window length T")
    t.add_argument("--unroll", type=_unroll_arg,
                   help="lax.scan unroll factor, or auto (1 on CPU, 8 on GPU; the default)")
    t.add_argument("--output-precision", choices=list(PRECISIONS),
                   help="operands of the output layer's matmuls: auto (the default) picks "
                        "bfloat16 on CPUs with AMX or AVX-512 BF16, float32 elsewhere; evaluation "
                        "is float32")
    t.add_argument("--remat", action="store_true", default=None,
                   help="recompute each step in the backward pass (less memory, long sequences)")


def _train_distributed_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--data-parallel", action="store_true",
                   help="shard the batch over all local devices (parameters replicated)")
    t.add_argument("--coordinator", help="several processes: host:port of process 0 "
                                         "(with --num-processes and --process-id); left out "
                                         "under SLURM, Open MPI, TPU pods and JobSet")
    t.add_argument("--num-processes", type=int, help="how many processes train together")
    t.add_argument("--process-id", type=int, help="this process's number, 0 .. N-1")
    t.add_argument("--local-device-ids", help="devices of this host for this process, e.g. 0 "
                                              "or 0,1 (one process per GPU)")
    t.add_argument("--join-timeout", type=int, default=60,
                   help="seconds to wait for the other processes, and after which a silent one "
                        "counts as dead (default 60)")


def _train_run_arguments(t: argparse.ArgumentParser) -> None:
    t.add_argument("--seed", type=int)
    t.add_argument("--out", default=None,
                   help="the run directory (default: a new runs/<n>, with runs/latest pointing "
                        "at it); an existing run is never replaced without --overwrite")
    t.add_argument("--runs", default="runs", help="where new run directories go (default runs)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out (default: the latest run)")
    t.add_argument("--overwrite", action="store_true", help="replace the run already in --out")
    t.add_argument("--on-nonfinite", choices=["stop", "skip"], default="stop",
                   help="at a NaN/inf loss or gradient: stop with exit code 3 (default), or skip "
                        "that update and count it")
    t.add_argument("--max-windows", type=int, default=None,
                   help="stop each epoch after this many windows (quick trials)")
    t.add_argument("--save-every", type=float, default=300.0,
                   help="seconds between mid-epoch checkpoints (for --resume)")
    t.add_argument("--keep", type=int, default=None, metavar="N",
                   help="also keep Orbax snapshots of the newest N epoch ends in "
                        "RUN/snapshots/last/<step>, written while training goes on (0: none)")
    t.add_argument("--keep-best", type=int, default=None, metavar="M",
                   help="also keep snapshots of the M epoch ends of lowest validation perplexity "
                        "in RUN/snapshots/best/<step> (0: none)")
    t.add_argument("--tensorboard", action="store_true",
                   help="also write the metrics as TensorBoard event files in RUN/tensorboard "
                        "(needs tensorboardX: pip install \"jrnn[tensorboard]\")")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--release-host-memory", action="store_true",
                   help="on a CPU, let the C allocator return freed memory to the OS "
                        "(slower steps; by default jrnn.training.runtime.keep_host_memory() is applied)")
    t.add_argument("--fused-epoch", action="store_true",
                   help="run each epoch as one jitted lax.scan over all windows, data on the "
                        "device (fastest on GPU; progress every 100 windows, Ctrl-C acts at "
                        "the end of the epoch)")


def _train_arguments(sub) -> None:
    t = sub.add_parser("train", help="train a language model")
    t.add_argument("--config", metavar="FILE",
                   help="a TOML file of settings, e.g. a run's config.toml (which runs it again); "
                        "options on the command line win over the file")
    _train_data_arguments(t)
    _train_model_arguments(t)
    _train_optimization_arguments(t)
    _train_distributed_arguments(t)
    _train_run_arguments(t)


def _eval_arguments(sub) -> None:
    e = sub.add_parser("eval", help="perplexity of a checkpoint")
    _checkpoint_argument(e)
    e.add_argument("--split", choices=["train", "valid", "test"], default="test")
    e.add_argument("--file", help="a text file to evaluate instead of a split")
    e.add_argument("--data", help="the corpus (default: the one the checkpoint was trained on)")
    e.add_argument("--batch-size", type=int, default=10)
    e.add_argument("--bptt", type=int, default=35)


def _score_arguments(sub) -> None:
    s = sub.add_parser("score", help="log-probability of sentences, best first")
    s.add_argument("sentences", nargs="*")
    s.add_argument("--file", help="score each line of this file (blank lines skipped), in file "
                                  "order: one line out per sentence, instead of the ranking")
    s.add_argument("--format", choices=["tsv", "json"], default=None,
                   help="with --file: tsv (the default: log-prob, tokens, perplexity, sentence) "
                        "or json (one object per line)")
    _checkpoint_argument(s)


def _next_arguments(sub) -> None:
    n = sub.add_parser("next", help="the next-word distribution after a context")
    n.add_argument("context")
    n.add_argument("--top", type=int, default=10)
    _checkpoint_argument(n)


def _generate_arguments(sub) -> None:
    g = sub.add_parser("generate", help="sample text")
    g.add_argument("--words", type=int, default=100, help="tokens to sample")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=None,
                   help="draw only among the K most probable tokens")
    g.add_argument("--top-p", type=float, default=None,
                   help="draw only from the nucleus: the fewest most probable tokens whose "
                        "probability sums to at least P, in (0, 1]")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--prompt", default="")
    _checkpoint_argument(g)


def _export_arguments(sub) -> None:
    x = sub.add_parser("export", help="write a run's model as StableHLO that JAX alone loads")
    x.add_argument("run", nargs="?", default="runs", help=CHECKPOINT_HELP)
    x.add_argument("--out", required=True, help="a new directory for the exported files")
    x.add_argument("--platforms", default="cpu,cuda",
                   help="what the functions are compiled for, comma-separated (default cpu,cuda)")


def _plot_arguments(sub) -> None:
    p = sub.add_parser("plot", help="learning curves of runs, side by side (PNG, and SVG with --svg)")
    p.add_argument("runs", nargs="+", help="run directories (or their metrics.jsonl)")
    p.add_argument("--out", default="learning_curves.png", help="the figure (default learning_curves.png)")
    p.add_argument("--svg", action="store_true", help="an SVG next to the PNG")
    p.add_argument("--title", default=None)


def _tool_entries(sub) -> None:
    # Listed for --help; their own parsers run before this one (see main).
    sub.add_parser("diagnose", help="gradient flow and information decay figures "
                                    "(jrnn diagnose --help)")
    sub.add_parser("tasks", help="adding, copy-memory and agreement task sweeps "
                                 "(jrnn tasks --help)")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="jrnn", description="Train, evaluate and use RNN language models.")
    p.add_argument("--version", action="version", version=f"jrnn {_version()}")
    sub = p.add_subparsers(dest="command", required=True)
    _train_arguments(sub)
    _eval_arguments(sub)
    _score_arguments(sub)
    _next_arguments(sub)
    _generate_arguments(sub)
    _export_arguments(sub)
    _plot_arguments(sub)
    _tool_entries(sub)
    return p


# ---- Ctrl-C ----------------------------------------------------------------------

_PRESSES = {"n": 0}


def _count_press(signum, frame) -> None:
    _PRESSES["n"] += 1


def _raise_interrupts() -> None:
    """From here on Ctrl-C raises KeyboardInterrupt (``main`` turns it into one line and
    exit code 130; ``jrnn train`` then installs its own handler: finish the window, save).
    A press while JAX was loading, when it could have been swallowed by an import or
    turned into an ImportError, is raised now."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if _PRESSES["n"]:
        raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``jrnn`` command: returns its exit code (0 done, 2 bad input, 3 non-finite, 130
    interrupted, 4 a lost process group)."""
    program = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    main_thread = threading.current_thread() is threading.main_thread()
    # Until JAX is loaded a Ctrl-C is counted, not raised (see _raise_interrupts).
    _PRESSES["n"] = 0
    old = signal.signal(signal.SIGINT, _count_press) if main_thread else None
    try:
        code = _main(argv)
    except KeyboardInterrupt:
        print("jrnn: interrupted", file=sys.stderr)
        code = 130
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, old if old is not None else signal.SIG_DFL)
    if code == 130 and program and main_thread:
        # A second Ctrl-C would interrupt Python's exit (an atexit traceback, exit -2).
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


# Settings of a run's config.toml that are not options of their own.
_NOT_OPTIONS = {"custom_vjp": True, "recurrence_precision": "float32"}


def _settings_options(path: str, train: argparse.ArgumentParser) -> list:
    """The settings in the TOML file at ``path`` as ``jrnn train`` options (placed before the
    command line's, which therefore win), or a :class:`UserError` naming what cannot be."""
    from jrnn.training import configfile  # no JAX: a settings file is read before JAX loads

    try:
        settings = configfile.read(path)
    except configfile.ConfigFileError as e:
        raise UserError(str(e)) from None
    actions = {a.dest: a for a in train._actions if a.option_strings and a.dest != "help"}
    method, scan_unroll = settings.pop("method", "auto"), settings.pop("scan_unroll", None)
    if method == "scan":
        settings.setdefault("unroll", scan_unroll or 1)
    elif method != "auto":
        raise UserError(f"{path}: method = {method!r} has no command-line option; "
                        "set it in Python (jrnn.TrainConfig)")
    out = []
    for name, value in settings.items():
        dest = name.replace("-", "_")
        dest = OPTION_ALIASES.get(dest, dest)
        if dest in _NOT_OPTIONS:
            if value != _NOT_OPTIONS[dest]:
                raise UserError(f"{path}: {name} = {value!r} has no command-line option; "
                                "set it in Python (jrnn.TrainConfig)")
            continue
        action = actions.get(dest)
        if action is None or dest == "config":
            raise UserError(f"{path}: {name} is not a setting of jrnn train "
                            "(the names are its options with underscores, e.g. hidden_size)")
        flag = action.option_strings[0]
        if action.nargs == 0:  # an on/off option
            if not isinstance(value, bool):
                raise UserError(f"{path}: {name} takes true or false, got {value!r}")
            if value:
                out.append(flag)
            elif action.default not in (None, False):
                raise UserError(f"{path}: {name} = false cannot be set from a file")
            continue
        if isinstance(value, bool):
            raise UserError(f"{path}: {name} takes a value like {flag} does, got {value!r}")
        out += [flag, str(value)]
    return out


def _main(argv: list) -> int:
    if argv and argv[0] in ("diagnose", "tasks"):
        # Gradient-flow / decay plots and long-range task sweeps.  Lazy: loads JAX.
        from jrnn.cli import tools

        _raise_interrupts()
        tool = tools.diagnose_main if argv[0] == "diagnose" else tools.tasks_main
        return tool(argv[1:])
    parser = _parser()
    if argv and argv[0] == "train":
        first = argparse.ArgumentParser(add_help=False)
        first.add_argument("--config")
        known, _ = first.parse_known_args(argv[1:])
        if known.config is not None:
            train = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            try:
                argv = ["train", *_settings_options(known.config, train.choices["train"]), *argv[1:]]
            except UserError as e:
                print(f"jrnn: error: {e}", file=sys.stderr)
                return 2
    args = parser.parse_args(argv)
    # Lazy, after parsing: the commands load JAX, which --help does not need.
    from jrnn.cli import commands

    _raise_interrupts()
    try:
        code = commands.COMMANDS[args.command](args)
    except commands.NONFINITE as e:
        print(f"jrnn: error: {e}", file=sys.stderr)
        code = 3
    except commands.USER_ERRORS as e:
        print(f"jrnn: error: {e}", file=sys.stderr)
        code = 2
    except commands.GROUP_LOST as e:  # XLA's runtime errors, and failed collectives
        oom = commands.out_of_memory_message(e)
        if oom is None and not commands.in_group():
            raise
        print(f"jrnn: error: {oom or commands.group_lost_message(e)}", file=sys.stderr)
        if not commands.in_group():
            return 2
        # A collective failed: another process of the group died.  JAX's shutdown would
        # wait for it at a barrier, then abort; leave now (files are written and closed).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(2 if oom else 4)
    return code


if __name__ == "__main__":
    sys.exit(main())
