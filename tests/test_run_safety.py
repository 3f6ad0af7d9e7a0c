"""Nothing lost, nothing outside the run directory (issue 24): --overwrite, the run lock,
the ``latest`` pointer, unwritable --out, planted symlinks and pointers, figures without
matplotlib."""

import fcntl
import hashlib
import json
import os
import sys

import pytest

from jrnn.cli import main
from jrnn.training import fit as fit_module
from jrnn.training import runs

SENTENCES = ["john is driving a car", "mary is driving a truck", "john is feeding a cat",
             "mary is feeding a dog"]
TINY = ["--cell", "lstm", "--layers", "1", "--embed-size", "8", "--hidden-size", "8",
        "--batch-size", "4", "--bptt", "5", "--max-windows", "2", "--epochs", "1",
        "--optimizer", "adam", "--lr", "0.02", "--quiet"]
LOCK = ".jrnn-lock"


@pytest.fixture(scope="module")
def ptb(tmp_path_factory):
    d = tmp_path_factory.mktemp("toyptb")
    (d / "toy.train.txt").write_text("\n".join(SENTENCES * 10) + "\n")
    (d / "toy.valid.txt").write_text("\n".join(SENTENCES * 3) + "\n")
    (d / "toy.test.txt").write_text("\n".join(SENTENCES[::-1] * 3) + "\n")
    return str(d)


def _tree(folder):
    """Every entry below ``folder`` (hidden ones too) with a digest of each file."""
    out = {}
    for root, dirs, files in os.walk(folder):
        for d in dirs:
            out[os.path.relpath(os.path.join(root, d), folder)] = "dir"
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, folder)] = (
                "link" if os.path.islink(p) else hashlib.sha256(open(p, "rb").read()).hexdigest())
    return out


def _line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    return err.splitlines()[-1] if err else ""


def _train(ptb, *extra):
    return main(["train", "--data", ptb, *TINY, *extra])


# ---- --overwrite keeps the old run until the new one has a checkpoint --------------------


def _interrupt(*a, **k):
    raise KeyboardInterrupt


FAILED_STARTS = {
    "split too short": (["--batch-size", "100000"], 2, "too few for", None),
    "memory refusal": (["--hidden-size", "10000000"], 2, "needs about", None),
    "non-finite first step": (["--init-scale", "1e200"], 3, "non-finite", None),
    "ctrl-c at start-up": ([], 130, "interrupted", "_make_steps"),
}


@pytest.mark.parametrize("case", list(FAILED_STARTS))
def test_failed_overwrite_leaves_the_old_run_byte_identical(ptb, tmp_path, capsys, monkeypatch, case):
    args, code, message, patch = FAILED_STARTS[case]
    out = str(tmp_path / "X")
    assert _train(ptb, "--out", out) == 0
    before = _tree(out)
    assert "last.ckpt" in before
    capsys.readouterr()
    if patch:
        monkeypatch.setattr(fit_module, patch, _interrupt)
    assert _train(ptb, "--out", out, "--overwrite", *args) == code
    assert message in _line(capsys)
    assert _tree(out) == before


def test_overwrite_replaces_the_run_and_leaves_nothing_behind(ptb, tmp_path, capsys):
    out = str(tmp_path / "X")
    assert _train(ptb, "--out", out) == 0
    open(os.path.join(out, "notes.txt"), "w").write("mine")  # not jrnn's: kept
    old = _tree(out)
    assert _train(ptb, "--out", out, "--overwrite", "--seed", "7") == 0
    new = _tree(out)
    assert sorted(new) == sorted(old) and new["notes.txt"] == old["notes.txt"]
    assert new["last.ckpt"] != old["last.ckpt"]
    assert json.load(open(os.path.join(out, "summary.json")))["config"]["seed"] == 7


# ---- one process per run directory --------------------------------------------------------


def _hold_lock(folder):
    os.makedirs(folder, exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


@pytest.mark.parametrize("mode", ["new", "resume", "overwrite"])
def test_a_run_directory_in_use_is_refused(ptb, tmp_path, capsys, mode):
    out = str(tmp_path / "X")
    if mode != "new":
        assert _train(ptb, "--out", out) == 0
    fd = _hold_lock(out)
    before = _tree(out) if mode != "new" else None
    try:
        extra = {"new": [], "resume": ["--resume", "--epochs", "2"], "overwrite": ["--overwrite"]}[mode]
        argv = (["train", "--out", out, "--quiet", *extra] if mode == "resume"
                else ["train", "--data", ptb, *TINY, "--out", out, *extra])
        assert main(argv) == 2
        assert "in use" in _line(capsys)
        if before is not None:
            assert _tree(out) == before
        assert not os.path.exists(os.path.join(out, "last.ckpt")) or mode != "new"
    finally:
        os.close(fd)
    assert _train(ptb, "--out", out, "--overwrite") == 0  # the lock died with its holder
    assert not os.path.exists(os.path.join(out, LOCK))  # and the run leaves no lock behind


# ---- runs/latest moves only to a run with a checkpoint ------------------------------------


@pytest.mark.parametrize("case", ["split too short", "non-finite first step", "ctrl-c at start-up"])
def test_latest_stays_at_the_earlier_run_after_a_failed_start(ptb, tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    assert _train(ptb) == 0
    assert runs.read_latest("runs") == os.path.join("runs", "1")
    args, code, message, patch = FAILED_STARTS[case]
    if patch:
        monkeypatch.setattr(fit_module, patch, _interrupt)
    capsys.readouterr()
    assert _train(ptb, *args) == code
    assert message in _line(capsys)
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    assert runs.read_latest("runs") == os.path.join("runs", "1")
    assert sorted(os.listdir("runs")) == ["1", "latest"]  # no empty run directory left
    assert main(["score", "john is driving a car"]) == 0


# ---- an --out that cannot be written is refused before the first step ---------------------


@pytest.mark.parametrize("where", ["out file", "out below a file", "runs file", "runs below a file"])
def test_out_that_is_a_file_is_one_line(ptb, tmp_path, capsys, where):
    f = tmp_path / "f"
    f.write_text("precious")
    target = str(f) if "below" not in where else str(f / "sub")
    flag = "--out" if where.startswith("out") else "--runs"
    assert _train(ptb, flag, target) == 2
    line = _line(capsys)
    assert "not a directory" in line and str(f) in line
    assert f.read_text() == "precious"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_out_is_refused_before_the_first_step(ptb, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert _train(ptb, "--out", str(ro)) == 2
        assert "cannot write" in _line(capsys)
    finally:
        ro.chmod(0o700)


# ---- nothing written outside the run directory ----------------------------------------------


def test_a_planted_symlink_at_a_temporary_name_is_not_followed(ptb, tmp_path, capsys):
    out = tmp_path / "X"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("untouched")
    for name in ("summary.json.tmp", "last.ckpt.tmp", "best.ckpt.tmp"):
        os.symlink(victim, out / name)
    assert _train(ptb, "--out", str(out)) == 0
    assert victim.read_text() == "untouched"
    assert json.load(open(out / "summary.json"))["history"]


def test_stale_cleanup_removes_only_what_jrnn_wrote(ptb, tmp_path, capsys):
    out = tmp_path / "X"
    assert _train(ptb, "--out", str(out)) == 0
    victim = tmp_path / "victim.ckpt.1.tmp"
    victim.write_text("untouched")
    os.symlink(victim, out / "last.ckpt.link.tmp")
    (out / "last.ckpt.abc.tmp").write_bytes(b"half a save")
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--quiet"]) == 0
    assert victim.read_text() == "untouched"
    assert not (out / "last.ckpt.abc.tmp").exists()


@pytest.mark.parametrize("pointer", ["relative", "absolute"])
@pytest.mark.parametrize("command", ["resume", "score", "eval"])
def test_a_latest_pointer_outside_the_runs_root_is_refused(ptb, tmp_path, capsys, monkeypatch,
                                                           pointer, command):
    elsewhere = tmp_path / "elsewhere" / "run"
    assert _train(ptb, "--out", str(elsewhere)) == 0
    (elsewhere / "last.ckpt.abc.tmp").write_bytes(b"someone else's")
    before = _tree(str(elsewhere))
    monkeypatch.chdir(tmp_path)
    os.makedirs("a/runs")
    target = "../../elsewhere/run" if pointer == "relative" else str(elsewhere)
    open("a/runs/latest", "w").write(target + "\n")
    capsys.readouterr()
    argv = {"resume": ["train", "--runs", "a/runs", "--resume", "--epochs", "3", "--quiet"],
            "score": ["score", "john is driving a car", "--checkpoint", "a/runs"],
            "eval": ["eval", "--checkpoint", "a/runs", "--data", ptb]}[command]
    assert main(argv) == 2
    assert "outside" in _line(capsys)
    assert _tree(str(elsewhere)) == before


# ---- tasks and diagnose write their JSON without matplotlib --------------------------------


@pytest.fixture
def no_matplotlib(monkeypatch):
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends",
                 "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)


def test_tasks_without_matplotlib_writes_json(tmp_path, capsys, no_matplotlib):
    out = tmp_path / "t"
    assert main(["tasks", "--task", "adding", "--cells", "tanh", "--lengths", "10", "--steps", "2",
                 "--batch-size", "4", "--hidden-size", "4", "--eval-every", "1", "--eval-size", "8",
                 "--quiet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pip install" in err and "matplotlib" in err
    assert json.load(open(out / "tasks.json"))["tasks"]["adding"]["results"]


def test_diagnose_without_matplotlib_writes_json(tmp_path, capsys, no_matplotlib):
    out = tmp_path / "d"
    assert main(["diagnose", "--cells", "tanh", "--hidden-size", "4", "--input-size", "3",
                 "--length", "6", "--batch-size", "2", "--decay-samples", "8",
                 "--train-steps", "0", "--dtype", "float32", "--quiet", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and "pip install" in err and "matplotlib" in err
    assert json.load(open(out / "diagnose.json"))["cells"]["tanh"]
