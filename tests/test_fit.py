"""Training runs are never lost and never lie: jrnn.training.fit and `jrnn train` on bad input."""

import hashlib
import json
import os
import signal
import stat

import jax
import numpy as np
import pytest

from jrnn.cli import main
from jrnn.data import Corpus, Vocabulary
from jrnn.training import checkpoint as ckpt
from jrnn.training import runs
from jrnn.training.config import DEFAULT, PRESETS, ConfigError, TrainConfig
from jrnn.training.fit import Callbacks, FitError, NonFiniteError, fit

SENTENCES = ["john is driving a car", "mary is driving a truck", "john is feeding a cat",
             "mary is feeding a dog"]
TINY = dict(cell="lstm", num_layers=1, embed_size=8, hidden_size=8, batch_size=4, bptt=6,
            optimizer="adam", lr=0.02, epochs=2)
TINY_ARGS = ["--cell", "lstm", "--layers", "1", "--embed-size", "8", "--hidden-size", "8",
             "--batch-size", "4", "--bptt", "6", "--optimizer", "adam", "--lr", "0.02", "--quiet"]


def _corpus(train_reps=20, eval_reps=3) -> Corpus:
    vocab = Vocabulary.build(SENTENCES)
    ids = lambda reps: np.asarray([i for s in SENTENCES * reps for i in vocab.encode(s)], np.int32)
    return Corpus(vocab, ids(train_reps), ids(eval_reps), ids(eval_reps), "toy")


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    d = tmp_path_factory.mktemp("toyptb")
    (d / "toy.train.txt").write_text("\n".join(SENTENCES * 20) + "\n")
    (d / "toy.valid.txt").write_text("\n".join(SENTENCES * 3) + "\n")
    (d / "toy.test.txt").write_text("\n".join(SENTENCES[::-1] * 3) + "\n")
    return str(d)


def _digests(folder):
    return {f: hashlib.sha256(open(os.path.join(folder, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(folder)) if os.path.isfile(os.path.join(folder, f))}


def _err(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1] if err else ""


# ---- the library loop ------------------------------------------------------------------


def test_fit_from_python_with_a_callback(tmp_path):
    seen = []
    result = fit(DEFAULT.replace(**TINY), _corpus(), str(tmp_path / "r"),
                 callbacks=Callbacks(on_epoch=seen.append))
    assert result.complete and [r["epoch"] for r in seen] == [1, 2]
    assert result.history == seen and result.test_ppl is not None and result.test_ppl < 11
    summary = json.load(open(tmp_path / "r" / "summary.json"))
    assert summary["test_ppl"] == result.test_ppl
    assert TrainConfig.from_dict(summary["config"]) == DEFAULT.replace(**TINY)


def test_config_is_one_frozen_object():
    cfg = PRESETS["zaremba-small"]
    with pytest.raises(Exception):
        cfg.lr = 2.0  # frozen
    assert cfg.replace(epochs=1).epochs == 1 and cfg.epochs == 13
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    for bad in (dict(lr=float("nan")), dict(lr=float("inf")), dict(init_scale=float("nan")),
                dict(clip=-1.0), dict(clip=float("nan")), dict(lr_decay=-0.5), dict(lr_decay=1.5),
                dict(dropout=1.0), dict(hidden_size=0), dict(epochs=-1), dict(scan_unroll=0),
                dict(optimizer="rmsprop"), dict(nope=1)):
        with pytest.raises(ConfigError):
            cfg.replace(**bad)


def test_interrupted_and_resumed_equals_uninterrupted_bit_for_bit(tmp_path):
    config = DEFAULT.replace(**TINY, dropout=0.2)
    whole = fit(config, _corpus(), str(tmp_path / "whole"))

    def interrupt_once(epoch, i, n, m, tok_s, fired=[]):
        if epoch == 0 and i == 7 and not fired:  # mid-epoch: the carry must be saved
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    part = fit(config, _corpus(), str(tmp_path / "part"), callbacks=Callbacks(on_window=interrupt_once))
    assert not part.complete
    meta, _ = ckpt.load_raw(str(tmp_path / "part" / "last.ckpt"))
    assert (meta["epoch"], meta["window"]) == (0, 8) and meta["_carry"] is not None
    done = fit(None, _corpus(), str(tmp_path / "part"), resume=True)
    assert done.complete
    for a, b in zip(jax.tree_util.tree_leaves(whole.state), jax.tree_util.tree_leaves(done.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("seconds", "tokens_per_s")} for r in h]
    assert strip(done.history) == strip(whole.history)
    assert done.test_ppl == whole.test_ppl


def test_nonfinite_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    config = DEFAULT.replace(cell="elman", activation="relu", num_layers=1, embed_size=8, hidden_size=8,
                             batch_size=4, bptt=6, optimizer="sgd", lr=1e4, clip=0.0, epochs=1)
    out = str(tmp_path / "nan")
    with pytest.raises(NonFiniteError) as info:
        fit(config, _corpus(), out, save_every=1e-9)
    e = info.value
    assert e.step >= 1 and "step" in str(e) and "window" in str(e)
    if os.path.exists(os.path.join(out, "last.ckpt")):  # the last good state, never a NaN one
        _, raw = ckpt.load_raw(os.path.join(out, "last.ckpt"))
        assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(raw["params"]))
    assert not os.path.exists(os.path.join(out, "best.ckpt"))
    skipped = fit(config, _corpus(), str(tmp_path / "skip"), on_nonfinite="skip")
    assert skipped.skipped_windows > 0


def test_cli_nonfinite_exit_code_3(ptb, tmp_path, capsys):
    args = ["train", "--data", ptb, "--out", str(tmp_path / "o"), "--cell", "elman",
            "--activation", "relu", "--optimizer", "sgd", "--lr", "1e4", "--clip", "0",
            "--epochs", "1", "--batch-size", "4", "--bptt", "6", "--quiet"]
    assert main(args) == 3
    line = _err(capsys)
    assert "non-finite" in line and "step" in line


# ---- never overwrite a run ---------------------------------------------------------------


def test_runs_get_new_directories_and_latest_points_at_the_newest(ptb, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["train", "--data", ptb, "--epochs", "1", "--max-windows", "2", *TINY_ARGS]
    assert main(args) == 0 and main(args) == 0
    assert sorted(os.listdir("runs")) == ["1", "2", "latest"]
    assert runs.read_latest("runs") == os.path.join("runs", "2")
    assert os.stat("runs/latest").st_mode & 0o777 == 0o644
    assert main(["score", "john is driving a car"]) == 0  # the latest run by default
    before = _digests("runs/1")
    assert main(["train", "--data", ptb, "--out", "runs/1", "--epochs", "1", *TINY_ARGS]) == 2
    assert "already holds a run" in _err(capsys)
    assert _digests("runs/1") == before
    assert main(["train", "--data", ptb, "--out", "runs/1", "--overwrite", "--epochs", "1",
                 "--max-windows", "1", *TINY_ARGS]) == 0
    mode = os.stat("runs/1/best.ckpt").st_mode
    assert stat.S_IMODE(mode) == 0o666 & ~_umask()


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


def test_resume_rules(ptb, tmp_path, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "--data", ptb, "--out", out, "--epochs", "1", *TINY_ARGS]) == 0
    assert main(["train", "--out", out, "--resume", "--lr", "0.5"]) == 2
    line = _err(capsys)
    assert "--resume restores the saved configuration" in line and "lr (saved 0.02, given 0.5)" in line
    before = _digests(out)
    assert main(["train", "--out", out, "--resume"]) == 0
    assert "the run is complete" in capsys.readouterr().err
    assert _digests(out) == before
    open(os.path.join(out, "last.ckpt.abc.tmp"), "wb").write(b"half a save")
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "epochs changed from 1 to 2" in err and "removed" in err
    assert not os.path.exists(os.path.join(out, "last.ckpt.abc.tmp"))
    assert len(json.load(open(os.path.join(out, "summary.json")))["history"]) == 2


# ---- every bad input is one line --------------------------------------------------------


@pytest.mark.parametrize("args,message", [
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--lr", "inf"], "--lr must be a finite number"),
    (["--init-scale", "nan"], "--init-scale must be a finite number"),
    (["--clip", "-1"], "--clip must be >= 0.0"),
    (["--clip", "nan"], "--clip must be a finite number"),
    (["--lr-decay", "-0.5"], "--lr-decay must be > 0.0"),
    (["--dropout", "1"], "--dropout must be < 1.0"),
    (["--hidden-size", "0"], "--hidden-size must be a positive int"),
    (["--max-windows", "0"], "max_windows must be a positive int"),
    (["--hidden-size", "10000000"], "needs about"),
    (["--batch-size", "400"], "too few for"),
])
def test_train_refuses_bad_options_before_running(ptb, tmp_path, capsys, args, message):
    out = tmp_path / "o"
    assert main(["train", "--data", ptb, "--out", str(out), "--quiet", *args]) == 2
    assert message in _err(capsys)
    assert not os.path.exists(out / "last.ckpt")


def test_eval_split_shorter_than_the_eval_batch_names_the_split(tmp_path, capsys):
    d = tmp_path / "p"
    d.mkdir()
    (d / "x.train.txt").write_text("\n".join(SENTENCES * 20) + "\n")
    (d / "x.valid.txt").write_text("john\n")
    (d / "x.test.txt").write_text("\n".join(SENTENCES * 3) + "\n")
    assert main(["train", "--data", str(d), "--out", str(tmp_path / "o"), *TINY_ARGS]) == 2
    assert "the valid split" in _err(capsys)


@pytest.fixture(scope="module")
def trained(ptb, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "r")
    assert main(["train", "--data", ptb, "--out", out, "--epochs", "1", *TINY_ARGS]) == 0
    return out


@pytest.mark.parametrize("args,message", [
    (["eval", "--batch-size", "0"], "--batch-size must be a positive int"),
    (["eval", "--batch-size", "-1"], "--batch-size must be a positive int"),
    (["eval", "--bptt", "0"], "--bptt must be a positive int"),
    (["eval", "--bptt", "-5"], "--bptt must be a positive int"),
    (["generate", "--temperature", "nan"], "--temperature must be a positive finite"),
])
def test_use_commands_refuse_bad_options(trained, capsys, args, message):
    assert main([*args, "--checkpoint", trained]) == 2
    assert message in _err(capsys)


def _rewrite(path, dst, *, header=None, params=None):
    meta, raw = ckpt.load_raw(path)
    meta.pop("_carry", None)
    raw = dict(raw)
    if params is not None:
        raw["params"] = params(raw["params"])
    payload = {"header": json.dumps(header(meta) if header else meta), "state": raw}
    from flax import serialization

    open(dst, "wb").write(serialization.msgpack_serialize(payload))


@pytest.mark.parametrize("kind,message", [
    ("list", "header is a JSON list"),
    ("optimizer", "saved configuration is invalid"),
    ("int", "holds int"),
    ("nan", "NaN or infinite"),
])
def test_malformed_checkpoints_are_one_line(trained, tmp_path, capsys, kind, message):
    src, dst = os.path.join(trained, "best.ckpt"), str(tmp_path / "bad.ckpt")
    if kind == "list":
        _rewrite(src, dst, header=lambda m: [1, 2])
    elif kind == "optimizer":
        _rewrite(src, dst, header=lambda m: {**m, "config": {**m["config"], "optimizer": "lion"}})
    elif kind == "int":
        _rewrite(src, dst, params=lambda p: jax.tree_util.tree_map(
            lambda x: np.asarray(x).astype(np.int32), p))
    else:
        _rewrite(src, dst, params=lambda p: jax.tree_util.tree_map(
            lambda x: np.full_like(np.asarray(x), np.nan), p))
    assert main(["score", "john is driving a car", "--checkpoint", dst]) == 2
    assert message in _err(capsys)


def test_version_and_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("jrnn ")
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert "diagnose" in out and "tasks" in out


def test_fit_refuses_an_existing_run_from_python(tmp_path):
    out = str(tmp_path / "r")
    config = DEFAULT.replace(**{**TINY, "epochs": 1})
    fit(config, _corpus(), out)
    before = _digests(out)
    with pytest.raises(FitError, match="already holds a run"):
        fit(config, _corpus(), out)
    assert _digests(out) == before


@pytest.mark.parametrize("args,message", [
    (["tasks", "--lr", "nan"], "--lr: expected a positive finite number"),
    (["tasks", "--clip", "-1"], "--clip: expected a positive finite number"),
    (["diagnose", "--init-scale", "nan"], "--init-scale: expected a positive finite number"),
])
def test_research_commands_refuse_nan_options(capsys, args, message):
    assert main(args) == 2
    assert message in _err(capsys)


@pytest.mark.parametrize("mode", ["data_parallel", "fused_epoch"])
def test_resume_is_exact_with_data_parallel_and_at_epoch_boundaries_fused(tmp_path, mode):
    config = DEFAULT.replace(**TINY)
    kw = {mode: True}
    whole = fit(config, _corpus(), str(tmp_path / "whole"), **kw)

    def interrupt(*args, fired=[]):
        if not fired:
            fired.append(True)
            os.kill(os.getpid(), signal.SIGINT)

    hook = (Callbacks(on_window=lambda e, i, n, m, t: i == 5 and interrupt()) if mode == "data_parallel"
            else Callbacks(on_epoch=lambda r: interrupt()))
    part = fit(config, _corpus(), str(tmp_path / "part"), callbacks=hook, **kw)
    assert not part.complete
    done = fit(None, _corpus(), str(tmp_path / "part"), resume=True, **kw)
    for a, b in zip(jax.tree_util.tree_leaves(whole.state), jax.tree_util.tree_leaves(done.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert done.test_ppl == whole.test_ppl


def test_first_release_checkpoints_still_score(trained, tmp_path, capsys):
    """A 0.1 checkpoint (format v1, a `settings` dict) loads for eval/score/next/generate."""
    src, dst = os.path.join(trained, "best.ckpt"), str(tmp_path / "v1.ckpt")

    def as_v1(meta):
        meta = dict(meta)
        meta["format"] = "jrnn-checkpoint-v1"
        meta["settings"] = meta.pop("config")
        return meta

    _rewrite(src, dst, header=as_v1)
    assert main(["score", "john is driving a car", "--checkpoint", dst]) == 0
    assert "log p" in capsys.readouterr().out
    out = str(tmp_path / "run")
    os.makedirs(out)
    os.replace(dst, os.path.join(out, "last.ckpt"))
    assert main(["train", "--out", out, "--resume"]) == 2
    assert "written by jrnn 0.1" in _err(capsys)
