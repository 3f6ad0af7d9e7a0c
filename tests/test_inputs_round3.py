"""Careless inputs, third round (issue 24's cases not covered by test_run_safety.py and
test_hostile_inputs.py): each ends in one line and a non-zero exit, or does what it says."""

import os

import pytest

from jrnn.cli import main
from jrnn.training.config import DEFAULT, MAX_SEED, ConfigError

from tests.helpers import TINY_TRAIN as TINY


@pytest.fixture
def run(tiny_run):
    return tiny_run


def _last_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_a_seed_jax_cannot_take_is_one_line(tmp_path, run, capsys):
    with pytest.raises(ConfigError, match=f"0..{MAX_SEED}"):
        DEFAULT.replace(seed=2**64)
    assert main(["train", *TINY, "--seed", "99999999999999999999", "--out",
                 str(tmp_path / "x")]) == 2
    assert _last_line(capsys).startswith("jrnn: error: --seed must be an int in 0..")
    assert not os.path.exists(tmp_path / "x" / "last.ckpt")
    assert main(["generate", "--checkpoint", run, "--words", "3",
                 "--seed", "99999999999999999999"]) == 2
    assert _last_line(capsys).startswith("jrnn: error: --seed must be an int in 0..")


def test_fused_epoch_with_max_windows_is_refused_not_ignored(tmp_path, capsys):
    assert main(["train", *TINY, "--fused-epoch", "--out", str(tmp_path / "f")]) == 2
    line = _last_line(capsys)
    assert "--max-windows" in line and "--fused-epoch" in line, line
    assert not os.path.exists(tmp_path / "f" / "last.ckpt")


def test_score_reads_a_run_that_has_only_its_last_checkpoint(tmp_path, run, capsys):
    only_last = tmp_path / "only-last"
    only_last.mkdir()
    with open(os.path.join(run, "last.ckpt"), "rb") as f:
        (only_last / "last.ckpt").write_bytes(f.read())
    assert main(["score", "john is driving a car", "--checkpoint", str(only_last)]) == 0
    assert "log p" in capsys.readouterr().out


# ---- lines that say what happened -----------------------------------------------------------

def test_the_nonfinite_stop_names_the_step_that_failed(tmp_path, capsys):
    from jrnn.data import builtin_corpus
    from jrnn.training.fit import NonFiniteError, fit

    assert main(["train", *TINY, "--init-scale", "1e200", "--out", str(tmp_path / "n")]) == 3
    assert "at step 1 (epoch 1, window 1)" in _last_line(capsys)
    config = DEFAULT.replace(hidden_size=8, embed_size=8, batch_size=4, bptt=5, epochs=1, init_scale=1e200)
    with pytest.raises(NonFiniteError, match=r"at step 1 \(epoch 1, window 1\)") as info:
        fit(config, builtin_corpus(60), str(tmp_path / "fused"), fused_epoch=True)
    assert info.value.step == 1


def test_resuming_a_checkpoint_that_holds_nan_is_refused_not_called_good(tmp_path, run, capsys):
    import shutil

    import jax
    import numpy as np

    from jrnn.training import checkpoint as ckpt

    copy = str(tmp_path / "diverged")
    shutil.copytree(run, copy)
    last = os.path.join(copy, "last.ckpt")
    meta, raw = ckpt.load_raw(last)
    carry = meta.pop("_carry")
    meta.pop("format")
    meta.update(epoch=0, window=1, finished=False)
    raw["params"] = jax.tree_util.tree_map(lambda x: np.full_like(np.asarray(x), np.nan), raw["params"])
    ckpt.save(last, raw, meta, carry=carry)
    before = open(last, "rb").read()
    assert main(["train", "--out", copy, "--resume"]) == 2
    line = _last_line(capsys)
    assert line.startswith(f"jrnn: error: {last} holds non-finite values (['params']") and "good" not in line
    assert open(last, "rb").read() == before


# ---- a full disk during a save -----------------------------------------------------------

def _tree_bytes(root):
    found = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            found[os.path.relpath(path, root)] = open(path, "rb").read()
    return found


def test_a_full_disk_during_a_save_is_one_line_and_the_checkpoints_stay_intact(tmp_path, run, capsys,
                                                                              monkeypatch):
    import errno
    import shutil

    from jrnn.training import checkpoint as ckpt

    copy = str(tmp_path / "full")
    shutil.copytree(run, copy)
    before = _tree_bytes(copy)

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.os, "fsync", full)  # the data was written; the disk refuses it
    assert main(["train", *TINY, "--out", copy, "--overwrite"]) == 2
    line = _last_line(capsys)
    assert line.startswith("jrnn: error: cannot write ") and "(No space left on device)" in line, line
    assert line.endswith("the checkpoints already there are intact")
    assert _tree_bytes(copy) == before  # no temporary file left, nothing changed
    assert [p for p in os.listdir(tmp_path) if p != "full"] == []


def test_running_out_of_memory_after_the_estimate_passed_is_one_line(tmp_path, run, capsys, monkeypatch):
    import shutil

    import jax

    from jrnn.training import fit as fit_module

    copy = str(tmp_path / "oom")
    shutil.copytree(run, copy)
    before = _tree_bytes(copy)

    def exhausted(*a, **k):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate "
                                         "123456789 bytes.\nBufferAssignment OOM Debugging ...")

    monkeypatch.setattr(fit_module, "_make_steps", exhausted)
    assert main(["train", *TINY, "--out", copy, "--overwrite"]) == 2
    line = _last_line(capsys)
    assert line == ("jrnn: error: out of memory on cpu (RESOURCE_EXHAUSTED: Out of memory while trying to "
                    "allocate 123456789 bytes.); the checkpoints already written are intact; use a smaller "
                    "--batch-size, --bptt or --hidden-size")
    assert _tree_bytes(copy) == before
    monkeypatch.setattr(fit_module, "_make_steps", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # other errors are not dressed up as user errors
        main(["train", *TINY, "--out", copy, "--overwrite"])


# ---- Ctrl-C while JAX loads, and twice in a row ------------------------------------------------

@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_while_jax_loads_is_held_then_one_line(tmp_path, capsys, monkeypatch, presses):
    import signal

    import jrnn.cli as cli

    build = cli._parser

    def parser_then_ctrl_c():  # a press while the command line is still loading
        p = build()
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
        return p

    monkeypatch.setattr(cli, "_parser", parser_then_ctrl_c)
    before = signal.getsignal(signal.SIGINT)
    assert main(["train", *TINY, "--out", str(tmp_path / "x")]) == 130
    assert capsys.readouterr().err.strip() == "jrnn: interrupted"
    assert not os.path.exists(tmp_path / "x")  # held, not swallowed: the run never started
    assert signal.getsignal(signal.SIGINT) is before


def test_two_quick_ctrl_cs_during_a_run_end_in_one_line_and_exit_130(tmp_path):
    import signal
    import subprocess
    import sys

    out = str(tmp_path / "run")
    p = subprocess.Popen([sys.executable, "-m", "jrnn", "train", "--hidden-size", "8", "--embed-size", "8",
                          "--batch-size", "4", "--bptt", "5", "--epochs", "1", "--out", out],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"})
    first = p.stderr.readline()  # "run: ..." once JAX is loaded and the run has started
    assert first.startswith("run: "), first
    p.send_signal(signal.SIGINT)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_import_jrnn_and_help_load_no_jax():
    import subprocess
    import sys

    code = ("import sys, jrnn\n"
            "from jrnn.cli import main\n"
            "for argv in (['--help'], ['train', '--help'], ['generate', '--help']):\n"
            "    try:\n"
            "        main(argv)\n"
            "    except SystemExit:\n"
            "        pass\n"
            "sys.exit(3 if 'jax' in sys.modules else 0)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-500:]
    assert "--hidden-size" in r.stdout and "--config" in r.stdout
