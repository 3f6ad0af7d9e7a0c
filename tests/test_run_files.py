"""The files a run writes besides its checkpoints: ``metrics.jsonl`` (every record parses,
matches what was printed, and reads as one run after a resume) and ``config.toml``
(``jrnn train --config`` runs it again bit for bit; a hand-written file equals the same
options on the command line; a file jrnn cannot use is refused in one line)."""

import json
import os
import re
import signal

import jax
import numpy as np
import pytest

from jrnn.cli import main
from jrnn.data import builtin_corpus
from jrnn.training import checkpoint as ckpt
from jrnn.training.config import DEFAULT
from jrnn.training.fit import Callbacks, fit

from tests.helpers import subprocess_env

TINY = ["--hidden-size", "8", "--embed-size", "8", "--batch-size", "4", "--bptt", "5",
        "--epochs", "2", "--max-windows", "30", "--quiet"]
TIMING = ("wall_s", "tokens_per_s", "seconds")


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _params(run_dir):
    _, raw = ckpt.load_raw(os.path.join(run_dir, "last.ckpt"))
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(raw["params"])]


def test_metrics_parse_and_match_the_printed_figures(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *TINY, "--out", out]) == 0
    printed = capsys.readouterr().out
    records = _records(out)
    assert [r["kind"] for r in records] == ["train"] * 20 + ["epoch"] + ["train"] * 20 + ["epoch", "test"] \
        or [r["kind"] for r in records].count("epoch") == 2
    train = [r for r in records if r["kind"] == "train"]
    assert train and all(r["window"] % 1 == 0 and r["loss"] > 0 and r["grad_norm"] > 0 for r in train)
    assert [r["step"] for r in records] == sorted(r["step"] for r in records)
    epochs = [r for r in records if r["kind"] == "epoch"]
    lines = re.findall(r"epoch +(\d+) \| lr (\S+) \| train ppl +(\S+) \| valid ppl +(\S+)", printed)
    assert len(lines) == len(epochs) == 2
    for (e, lr, train_ppl, valid_ppl), r in zip(lines, epochs):
        assert (int(e), f"{r['lr']:.4g}", f"{r['train_ppl']:.2f}", f"{r['valid_ppl']:.2f}") == \
            (r["epoch"], lr, train_ppl, valid_ppl)
    (test,) = [r for r in records if r["kind"] == "test"]
    assert f"test ppl {test['test_ppl']:.2f}" in printed
    assert json.load(open(os.path.join(out, "summary.json")))["history"] == \
        [{k: v for k, v in r.items() if k not in ("kind", "step", "wall_s")} for r in epochs]


def test_a_resumed_run_logs_what_the_uninterrupted_run_logs(tmp_path):
    config = DEFAULT.replace(hidden_size=8, embed_size=8, batch_size=20, bptt=10, epochs=2)
    corpus = builtin_corpus(400)  # 17 windows an epoch
    whole = fit(config, corpus, str(tmp_path / "whole"), log_every=3)

    def interrupt_at_window_7(epoch, i, n, m, tok_s):
        if epoch == 0 and i == 6:
            os.kill(os.getpid(), signal.SIGINT)  # fit finishes the window, saves and returns

    cut = str(tmp_path / "cut")
    first = fit(config, corpus, cut, log_every=3,
                callbacks=Callbacks(on_window=interrupt_at_window_7))
    assert not first.complete
    with open(os.path.join(cut, "metrics.jsonl"), "a") as f:  # what a killed run could leave
        f.write(json.dumps({"kind": "train", "step": 10**6}) + "\n" + '{"kind": "tra')
    seen = []
    done = fit(None, corpus, cut, resume=True, log_every=3,
               callbacks=Callbacks(on_metrics=seen.append))
    assert done.complete
    assert _untimed(_records(cut)) == _untimed(_records(whole.run_dir))
    assert _untimed(seen) == _untimed(_records(cut))[-len(seen):]
    assert [np.array_equal(a, b) for a, b in zip(_params(cut), _params(whole.run_dir))] == \
        [True] * len(_params(cut))


def test_the_saved_config_runs_the_run_again_bit_for_bit(tmp_path, capsys):
    first, again = str(tmp_path / "first"), str(tmp_path / "again")
    assert main(["train", *TINY, "--cell", "gru", "--lr", "0.003", "--seed", "7", "--out", first]) == 0
    assert main(["train", "--config", os.path.join(first, "config.toml"), "--out", again]) == 0
    a, b = _params(first), _params(again)
    assert len(a) == len(b) > 4 and all(np.array_equal(x, y) for x, y in zip(a, b))
    assert open(os.path.join(first, "config.toml")).read() == open(os.path.join(again, "config.toml")).read()
    capsys.readouterr()


def test_a_config_file_equals_the_same_options_on_the_command_line(tmp_path):
    settings = tmp_path / "small.toml"
    settings.write_text('# a hand-written file\n[model]\ncell = "elman"\nactivation = "relu"\n'
                        'hidden_size = 8\nembed_size = 8\n\n[train]\nbatch_size = 4\nbptt = 5\n'
                        'epochs = 1\nlr = 0.002\n\n[run]\nmax_windows = 20\n')
    by_file, by_flags = str(tmp_path / "file"), str(tmp_path / "flags")
    assert main(["train", "--config", str(settings), "--quiet", "--hidden-size", "6", "--out", by_file]) == 0
    assert main(["train", "--cell", "elman", "--activation", "relu", "--hidden-size", "6", "--embed-size", "8",
                 "--batch-size", "4", "--bptt", "5", "--epochs", "1", "--lr", "0.002", "--max-windows", "20",
                 "--quiet", "--out", by_flags]) == 0
    a, b = _params(by_file), _params(by_flags)
    assert a[0].shape == b[0].shape and all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("text, message", [
    ("[model]\nfoo = 1\n", "foo is not a setting of jrnn train"),
    ("[models]\nhidden_size = 8\n", "unknown table [models]"),
    ("hidden_size = [8]\n", "hidden_size is a list"),
    ("hidden_size = \n", "not a TOML file"),
    ("tie_embeddings = 1\n", "tie_embeddings takes true or false, got 1"),
    ("hidden_size = true\n", "hidden_size takes a value like --hidden-size does, got True"),
    ('method = "pallas"\n', "method = 'pallas' has no command-line option"),
    ("hidden_size = 8\n[model]\nhidden_size = 9\n", "hidden_size is given twice"),
    ("hidden_size = -3\n", "--hidden-size"),
    ('cell = "transformer"\n', "cell"),
])
def test_a_config_file_jrnn_cannot_use_is_one_line(tmp_path, capsys, text, message):
    settings = tmp_path / "bad.toml"
    settings.write_text(text)
    try:
        code = main(["train", "--config", str(settings), "--out", str(tmp_path / "x")])
    except SystemExit as e:  # argparse's own refusals (a choice, a type) exit from parse_args
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not os.path.exists(tmp_path / "x")


def test_a_python_model_is_named_in_the_saved_config(tmp_path):
    import jrnn

    corpus = builtin_corpus(200)
    model = jrnn.rnn_lm(len(corpus.vocab), cell=jrnn.gru(8), embed_size=8)
    out = str(tmp_path / "mine")
    fit(jrnn.TrainConfig(epochs=1, batch_size=4, bptt=5), corpus, out, model=model, max_windows=3)
    text = open(os.path.join(out, "config.toml")).read()
    assert "This run's model came from Python" in text and "[model]" not in text


def test_readme_settings_block_runs(tmp_path):
    """The README's "Settings files and metrics" commands, each `jrnn train` shortened to
    30 windows (the commands are otherwise as written)."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    section = text.split("### Settings files and metrics", 1)[1]
    block = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    assert block.count("jrnn train") == 3
    script = block.replace("jrnn train ", "jrnn train --max-windows 30 --quiet ").replace(
        "jrnn ", f"{sys.executable} -m jrnn ")
    r = subprocess.run(script, shell=True, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _params(tmp_path / "runs" / "first")[0].tolist() == _params(tmp_path / "runs" / "again")[0].tolist()
    shapes = lambda run: sorted(x.shape for x in _params(tmp_path / "runs" / run))
    assert (128, 512) in shapes("wider") and (128, 512) not in shapes("first")
    valid = json.loads(r.stdout.strip().splitlines()[-2].replace("'", '"'))
    assert r.stdout.strip().splitlines()[-1] == "wrote curves.png" and os.path.getsize(tmp_path / "curves.png")
    assert len(valid) == 1 and valid[0] > 1


# ---- learning curves ------------------------------------------------------------------------

def test_plot_draws_runs_side_by_side_with_labelled_axes(tmp_path, capsys, monkeypatch):
    from jrnn.analysis import plots

    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["train", *TINY, "--out", a]) == 0
    assert main(["train", *TINY, "--lr", "0.003", "--out", b]) == 0
    assert os.path.getsize(os.path.join(a, "learning_curve.png")) > 1000  # written by every run
    drawn = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path, svg: (drawn.append(
        [(ax.get_xlabel(), ax.get_ylabel(), [t.get_text() for t in ax.get_legend().get_texts()])
         for ax in fig.axes]), save(fig, path, svg))[1])
    out = str(tmp_path / "cmp.png")
    capsys.readouterr()
    assert main(["plot", a, b, "--out", out, "--svg"]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}, {out[:-4]}.svg"
    assert os.path.getsize(out) > 1000 and os.path.getsize(out[:-4] + ".svg") > 1000
    (left, right), = drawn
    assert left[:2] == ("epoch", "perplexity") and right[:2] == ("step (updates)",
                                                                 "training loss of the window (nats / token)")
    assert {"a train", "a valid", "b train", "b valid"} <= set(left[2]) and right[2] == ["a", "b"]


def test_plot_refusals_and_no_matplotlib_are_one_line(tmp_path, tiny_run, capsys, monkeypatch):
    from jrnn.analysis import plots

    assert main(["plot", str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no metrics.jsonl or summary.json here" in capsys.readouterr().err
    assert main(["plot", tiny_run, "--out", str(tmp_path / "x.gif")]) == 2
    assert capsys.readouterr().err.count("\n") == 1

    def no_matplotlib(*a, **k):
        raise ImportError("plots need matplotlib: pip install 'jrnn[plot]'")

    monkeypatch.setattr(plots, "_subplots", no_matplotlib)
    assert main(["plot", tiny_run, "--out", str(tmp_path / "x.png")]) == 2
    assert "pip install 'jrnn[plot]'" in capsys.readouterr().err
    out = str(tmp_path / "run")
    loud = [a for a in TINY if a != "--quiet"]
    assert main(["train", *loud, "--out", out]) == 0  # the run is done; the figure is optional
    assert "note: no " in capsys.readouterr().err
    assert not os.path.exists(os.path.join(out, "learning_curve.png"))


# ---- progress ----------------------------------------------------------------------------------

def test_progress_is_a_rich_bar_on_a_terminal_and_plain_lines_in_a_file(tmp_path, monkeypatch, capsys):
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    loud = [a for a in TINY if a != "--quiet"]
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["train", *loud, "--out", str(tmp_path / "tty")]) == 0
    drawn = terminal.getvalue()
    assert "\x1b[" in drawn and "epoch 1/2" in drawn and "tok/s" in drawn  # rich's live display
    assert "[####" not in drawn  # not the hand-drawn line
    monkeypatch.undo()
    capsys.readouterr()
    assert main(["train", *loud, "--out", str(tmp_path / "file")]) == 0
    lines = capsys.readouterr().err.splitlines()
    plain = [line for line in lines if line.startswith("epoch 1/2 [")]
    assert plain and all("\x1b" not in line for line in lines)  # a file gets plain lines
