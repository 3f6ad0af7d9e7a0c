"""Hostile and careless inputs (issue 24): checkpoints whose header lies, models with huge
parameters, Mikolov's PTB folder, --max-vocab 1, parameters of one cell kind given to another.

Each ends in one line (``jrnn: error: ...``) and a non-zero exit, or in an honest answer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import serialization

from jrnn.cli import main

from tests.helpers import TINY_TRAIN as SIZES


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run


def tamper(src: str, dst: str, header=None, state=None) -> str:
    """Copy checkpoint ``src`` to ``dst``, changing its JSON header and/or its arrays."""
    with open(src, "rb") as f:
        payload = serialization.msgpack_restore(f.read())
    meta = json.loads(payload["header"])
    if header:
        header(meta)
    payload["header"] = json.dumps(meta)
    if state:
        state(payload["state"])
    with open(dst, "wb") as f:
        f.write(serialization.msgpack_serialize(payload))
    return dst


def one_line_error(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("jrnn: error: ") and "\n" not in err, err
    return err


# -- hostile checkpoints ------------------------------------------------------

def test_header_describing_a_huge_model_is_refused_before_allocating(run_dir, tmp_path):
    """hidden_size 20000 needs 6.4 GB for one matrix: under a 4 GB address-space limit the
    refusal must come from comparing shapes, not from running out of memory."""
    ckpt = tamper(os.path.join(run_dir, "best.ckpt"), str(tmp_path / "big.ckpt"),
                  header=lambda m: m["config"]["model"].update(hidden_size=20000))
    bounded = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30)); "
               "from jrnn.cli import main; sys.exit(main(sys.argv[1:]))")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", bounded, "score", "--checkpoint", ckpt, "the cat"],
                       capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - t0
    err = r.stderr.strip()
    assert r.returncode == 2, err[-2000:]
    assert err.startswith("jrnn: error: ") and "\n" not in err, err[-2000:]
    assert "(8, 32)" in err and "(8, 80000)" in err and "hidden size 20000" in err
    assert took < 60


def test_load_for_inference_never_builds_the_headers_model(run_dir, tmp_path, monkeypatch):
    """No ``model.init`` on concrete values before the shapes are checked."""
    import jax

    from jrnn.training import checkpoint as ckpt
    from jrnn.training import inference

    ckpt_path = tamper(os.path.join(run_dir, "best.ckpt"), str(tmp_path / "big.ckpt"),
                       header=lambda m: m["config"]["model"].update(hidden_size=20000))
    concrete = []
    build = inference.build_model

    def spying_build(*a, **k):
        model = build(*a, **k)

        def init(key, *b, **kw):
            if not isinstance(key, jax.core.Tracer):
                concrete.append(key)
            return model.init(key, *b, **kw)
        return model._replace(init=init)

    monkeypatch.setattr(inference, "build_model", spying_build)
    t0 = time.perf_counter()
    with pytest.raises(ckpt.CheckpointError) as refused:
        inference.load_for_inference(ckpt_path)
    assert not concrete, "the header's model was initialized before its shapes were checked"
    assert time.perf_counter() - t0 < 5
    assert "hidden size 20000" in str(refused.value)


def test_a_device_as_checkpoint_is_refused(capsys):
    err = one_line_error(capsys, ["score", "--checkpoint", "/dev/zero", "the cat"])
    assert "not a regular file" in err


@pytest.mark.parametrize("data", ["/dev/zero", "/dev/null"])
def test_header_data_path_is_not_read_blindly(run_dir, tmp_path, capsys, data):
    ckpt = tamper(os.path.join(run_dir, "best.ckpt"), str(tmp_path / "zero.ckpt"),
                  header=lambda m: m.update(data=data))
    t0 = time.perf_counter()
    err = one_line_error(capsys, ["eval", "--checkpoint", ckpt])
    assert data in err and time.perf_counter() - t0 < 30


def test_header_data_as_a_symlinked_directory_of_devices(run_dir, tmp_path, capsys):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        os.symlink("/dev/zero", folder / f"x.{split}.txt")
    ckpt = tamper(os.path.join(run_dir, "best.ckpt"), str(tmp_path / "dir.ckpt"),
                  header=lambda m: m.update(data=str(folder)))
    err = one_line_error(capsys, ["eval", "--checkpoint", ckpt])
    assert "not a regular file" in err


def test_header_data_of_the_wrong_type(run_dir, tmp_path, capsys):
    ckpt = tamper(os.path.join(run_dir, "best.ckpt"), str(tmp_path / "t.ckpt"),
                  header=lambda m: m.update(data=["/etc/passwd"]))
    err = one_line_error(capsys, ["eval", "--checkpoint", ckpt])
    assert "not a corpus" in err


# -- a model with huge finite parameters ------------------------------------------

def _scaled(run_dir, tmp_path, factor):
    def scale(state):
        for layer in ("embed",):
            state["params"][layer] = (np.asarray(state["params"][layer]) * factor).astype(np.float32)
        out = state["params"]["out"]
        out["W"] = (np.asarray(out["W"]) * factor).astype(np.float32)
        for k, v in state["params"]["layers"]["0"].items():
            state["params"]["layers"]["0"][k] = (np.asarray(v) * factor).astype(np.float32)
    return tamper(os.path.join(run_dir, "best.ckpt"), str(tmp_path / f"x{factor:g}.ckpt"),
                  state=scale)


@pytest.mark.parametrize("argv", [["eval"], ["score", "john is driving a car"],
                                  ["next", "john is"], ["generate", "--words", "3"]],
                         ids=lambda a: a[0])
def test_huge_parameters_are_refused_by_every_command(run_dir, tmp_path, capsys, argv):
    ckpt = _scaled(run_dir, tmp_path, 1e30)
    err = one_line_error(capsys, [argv[0], "--checkpoint", ckpt, *argv[1:]])
    assert "reach" in err and "float32" in err


def test_large_parameters_give_an_honest_perplexity(run_dir, tmp_path, capsys):
    """Below the bound, a perplexity past what a float holds is said to be so, not printed
    as a (capped) number, and score does not raise OverflowError."""
    ckpt = _scaled(run_dir, tmp_path, 1e10)
    assert main(["eval", "--checkpoint", ckpt, "--split", "valid"]) == 0
    assert "perplexity above 1e304" in capsys.readouterr().out
    assert main(["score", "--checkpoint", ckpt, "john is driving a car"]) == 0
    assert "perplexity above 1e304" in capsys.readouterr().out


# -- Mikolov's PTB folder ------------------------------------------------------------

def _mikolov(tmp_path):
    folder = tmp_path / "simple-examples-data"
    folder.mkdir()
    words = "the cat sat on the mat\nthe dog sat on the log\n" * 20
    for split in ("train", "valid", "test"):
        (folder / f"ptb.{split}.txt").write_text(words)
        chars = "\n".join(" ".join(w.replace(" ", "_")) for w in words.splitlines()) + "\n"
        (folder / f"ptb.char.{split}.txt").write_text(chars)
    return folder


def test_mikolov_layout_takes_the_word_files_and_says_so(tmp_path):
    from jrnn import data as D

    notes = []
    corpus = D.open_corpus(str(_mikolov(tmp_path)), on_note=notes.append)
    assert "cat" in corpus.vocab and "_" not in corpus.vocab
    assert len(notes) == 1 and "ptb.{train,valid,test}.txt" in notes[0]
    assert "ptb.char.train.txt" in notes[0]


def test_mikolov_layout_in_train_prints_the_choice(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *SIZES, "--data", str(_mikolov(tmp_path)), "--out", out]) == 0
    assert "using the word-level files" in capsys.readouterr().err


def test_ambiguous_directory_is_refused_naming_the_candidates(tmp_path, capsys):
    folder = tmp_path / "two"
    folder.mkdir()
    for prefix in ("a.", "b."):
        for split in ("train", "valid", "test"):
            (folder / f"{prefix}{split}.txt").write_text("the cat sat\n" * 20)
    err = one_line_error(capsys, ["train", *SIZES, "--data", str(folder),
                                  "--out", str(tmp_path / "run")])
    assert "a.{train,valid,test}.txt" in err and "b.{train,valid,test}.txt" in err
    assert not os.path.exists(tmp_path / "run" / "best.ckpt")


def test_mikolov_layout_at_char_level_is_ambiguous(tmp_path):
    from jrnn import data as D

    with pytest.raises(D.DataError, match="ptb.char"):
        D.open_corpus(str(_mikolov(tmp_path)), level="char")


# -- --max-vocab 1 ------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1", "2", "0", "-3"])
def test_max_vocab_too_small_is_one_line(tmp_path, capsys, value):
    text = tmp_path / "t.txt"
    text.write_text("the cat sat on the mat\n" * 50)
    err = one_line_error(capsys, ["train", *SIZES, "--data", str(text), "--level", "word",
                                  "--max-vocab", value, "--out", str(tmp_path / "run")])
    assert "--max-vocab" in err


def test_max_vocab_too_small_with_the_builtin_corpus(tmp_path, capsys):
    err = one_line_error(capsys, ["train", *SIZES, "--max-vocab", "1",
                                  "--out", str(tmp_path / "run")])
    assert "--max-vocab" in err


def test_vocabulary_build_raises_a_data_error():
    from jrnn import data as D

    with pytest.raises(D.DataError, match="at least 3"):
        D.Vocabulary.build(["a b c"], max_size=1)


# -- parameters of one cell kind given to another ---------------------------------------

@pytest.mark.parametrize("cell", ["gru", "elman"])
def test_lstm_checkpoint_under_another_cell_kind(run_dir, tmp_path, capsys, cell):
    ckpt = tamper(os.path.join(run_dir, "best.ckpt"), str(tmp_path / f"{cell}.ckpt"),
                  header=lambda m: m["config"]["model"].update(cell=cell))
    err = one_line_error(capsys, ["score", "--checkpoint", ckpt, "the cat"])
    assert f"its header says {cell!r}" in err


def test_gru_header_with_lstm_arrays_and_gru_keys(run_dir, tmp_path, capsys):
    """The LSTM's arrays under a GRU's names: the shape mismatch is named, not broadcast."""
    def add_b_h(state):
        layer = state["params"]["layers"]["0"]
        layer["b_h"] = np.zeros_like(np.asarray(layer["b"]))

    ckpt = tamper(os.path.join(run_dir, "best.ckpt"), str(tmp_path / "g.ckpt"),
                  header=lambda m: m["config"]["model"].update(cell="gru"), state=add_b_h)
    err = one_line_error(capsys, ["score", "--checkpoint", ckpt, "the cat"])
    assert "(8, 32)" in err and "(8, 24)" in err and "'gru'" in err
