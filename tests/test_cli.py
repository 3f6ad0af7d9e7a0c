"""The command line end to end on tiny data: train, eval, score, next, generate, resume, errors."""

import json
import os
import subprocess
import sys

import pytest

from jrnn.training import checkpoint as ckpt
from jrnn.cli import main

SENTENCES = ["john is driving a car", "mary is driving a truck", "john is feeding a cat",
             "mary is feeding a dog"]
TINY = ["--cell", "lstm", "--layers", "1", "--embed-size", "16", "--hidden-size", "16",
        "--batch-size", "4", "--bptt", "6", "--optimizer", "adam", "--lr", "0.02", "--quiet"]


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    d = tmp_path_factory.mktemp("toyptb")
    (d / "toy.train.txt").write_text("\n".join(SENTENCES * 30) + "\n")
    (d / "toy.valid.txt").write_text("\n".join(SENTENCES * 3) + "\n")
    (d / "toy.test.txt").write_text("\n".join(SENTENCES[::-1] * 3) + "\n")
    return str(d)


@pytest.fixture(scope="module")
def trained(ptb, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run"))
    assert main(["train", "--data", ptb, "--out", out, "--epochs", "4", *TINY]) == 0
    return out


def test_train_writes_checkpoints_and_summary(trained, capsys):
    assert os.path.exists(os.path.join(trained, "best.ckpt"))
    assert os.path.exists(os.path.join(trained, "last.ckpt"))
    summary = json.load(open(os.path.join(trained, "summary.json")))
    assert len(summary["history"]) == 4
    assert summary["test_ppl"] < 8.0  # 11 word types; a learned model is far below uniform


def test_score_ranks_the_likely_sentence_first(trained, capsys):
    assert main(["score", "john is driving a cat", "john is driving a car",
                 "--checkpoint", trained]) == 0
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("1. 'john is driving a car'"), out
    assert "car:" in out and "perplexity" in out


def test_score_says_when_words_are_unknown(trained, capsys):
    assert main(["score", "john is driving a spaceship", "--checkpoint", trained]) == 0
    assert "spaceship" in capsys.readouterr().err


def test_next_lists_top_words(trained, capsys):
    assert main(["next", "mary is feeding a", "--top", "3", "--checkpoint", trained]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and any(w in lines[1] for w in ("'cat'", "'dog'"))


def test_generate_is_seeded(trained, capsys):
    assert main(["generate", "--words", "12", "--seed", "1", "--checkpoint", trained]) == 0
    a = capsys.readouterr().out
    assert main(["generate", "--words", "12", "--seed", "1", "--checkpoint", trained]) == 0
    assert capsys.readouterr().out == a and len(a.split()) >= 8


def test_eval_split_and_file(trained, ptb, tmp_path, capsys):
    assert main(["eval", "--checkpoint", trained, "--split", "valid"]) == 0
    assert "perplexity" in capsys.readouterr().out
    f = tmp_path / "x.txt"
    f.write_text("john is driving a car\n" * 10)
    assert main(["eval", "--checkpoint", trained, "--file", str(f), "--batch-size", "2",
                 "--bptt", "5"]) == 0


def test_resume_continues_an_interrupted_run(ptb, tmp_path):
    """SIGINT mid-run saves where it stopped; --resume finishes with the same step count."""
    import signal
    import time

    out = str(tmp_path / "r")
    cmd = [sys.executable, "-m", "jrnn", "train", "--data", ptb, "--out", out, "--epochs", "500",
           "--save-every", "0", *TINY]
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = os.path.join(out, "last.ckpt")
    deadline = time.time() + 120
    while not os.path.exists(last) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    meta, raw = ckpt.load_raw(last)
    epoch, window, steps = meta["epoch"], meta["window"], int(raw["step"])
    windows_per_epoch = 30  # 720 training tokens, batch 4, bptt 6
    assert steps == epoch * windows_per_epoch + window
    assert main(["train", "--out", out, "--resume", "--epochs", str(epoch + 1), "--quiet"]) == 0
    _, raw = ckpt.load_raw(last)
    assert int(raw["step"]) == (epoch + 1) * windows_per_epoch


def _err(capsys):
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip()


def test_user_errors_are_one_line(ptb, trained, tmp_path, capsys):
    empty = tmp_path / "e.txt"
    empty.write_text("   \n")
    assert main(["train", "--data", str(empty), "--out", str(tmp_path / "o"), *TINY]) == 2
    assert "empty or whitespace-only" in _err(capsys)
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file or directory" in _err(capsys)
    short = tmp_path / "s.txt"
    short.write_text("abcdefghijklmnopqrstuvwxyz")
    assert main(["train", "--data", str(short), "--batch-size", "64", "--out",
                 str(tmp_path / "o")]) == 2
    assert "--batch-size" in _err(capsys)
    assert main(["score", "a car", "--checkpoint", str(tmp_path / "none")]) == 2
    assert "no checkpoint" in _err(capsys)
    corrupt = tmp_path / "c.ckpt"
    corrupt.write_bytes(b"garbage")
    assert main(["score", "a car", "--checkpoint", str(corrupt)]) == 2
    assert "corrupt" in _err(capsys)
    assert main(["train", "--data", ptb, "--hidden-size", "0", "--out", str(tmp_path / "o")]) == 2
    assert "--hidden-size must be a positive int" in _err(capsys)
    assert main(["generate", "--temperature", "0", "--checkpoint", trained]) == 2
    assert "--temperature" in _err(capsys)


def test_checkpoint_of_another_vocabulary_is_refused(ptb, trained, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    for split in ("train", "valid", "test"):
        (other / f"o.{split}.txt").write_text("completely different words here\n" * 5)
    assert main(["eval", "--checkpoint", trained, "--data", str(other)]) == 2
    assert "another vocabulary" in _err(capsys)


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = str(tmp_path / "a.ckpt")
    ckpt.save(path, {"w": __import__("numpy").ones(3)}, {"settings": {}})
    before = open(path, "rb").read()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(RuntimeError):
        ckpt.save(path, {"w": __import__("numpy").zeros(3)}, {"settings": {}})
    assert open(path, "rb").read() == before
    assert os.listdir(tmp_path) == ["a.ckpt"]


def test_python_dash_m_exits_nonzero_without_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "jrnn", "eval", "--checkpoint", str(tmp_path / "x")],
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert r.returncode == 2 and r.stderr.startswith("jrnn: error:") and "Traceback" not in r.stderr


def test_fused_epoch_trains_like_the_window_loop(ptb, tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    assert main(["train", "--data", ptb, "--out", a, "--epochs", "2", *TINY]) == 0
    assert main(["train", "--data", ptb, "--out", b, "--epochs", "2", "--fused-epoch", *TINY]) == 0
    ha = json.load(open(os.path.join(a, "summary.json")))
    hb = json.load(open(os.path.join(b, "summary.json")))
    for ea, eb in zip(ha["history"], hb["history"]):
        assert abs(ea["valid_ppl"] - eb["valid_ppl"]) < 1e-3 * ea["valid_ppl"]
    assert abs(ha["test_ppl"] - hb["test_ppl"]) < 1e-3 * ha["test_ppl"]


def test_data_parallel_flag_on_one_device_and_bad_unroll(ptb, tmp_path, capsys):
    out = str(tmp_path / "dp")
    assert main(["train", "--data", ptb, "--out", out, "--epochs", "1", "--data-parallel",
                 "--unroll", "2", "--remat", "--release-host-memory", *TINY]) == 0
    assert "data parallel over" in capsys.readouterr().err
    capsys.readouterr()
    for bad in (["--unroll", "fast"], ["--output-precision", "fp8"]):
        with pytest.raises(SystemExit) as e:
            main(["train", *bad])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and err[0].startswith("jrnn train: error:"), err
