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
