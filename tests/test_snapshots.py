"""Epoch snapshots through Orbax (``fit(keep=, keep_best=)``, ``jrnn train --keep --keep-best``):
the newest N and the M best by validation perplexity are kept, each equal bit for bit to the
``last.ckpt`` of its epoch end; a process killed during an asynchronous save resumes to the
uninterrupted run's parameters and snapshots; the commands load a snapshot folder as they
load a checkpoint; bad options and folders are one line; runs without snapshots never
import Orbax."""

import math
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jrnn.cli import main
from jrnn.data import Corpus, Vocabulary
from jrnn.training import checkpoint as ckpt
from jrnn.training import configfile
from jrnn.training.config import DEFAULT
from jrnn.training.fit import Callbacks, FitError, fit
from jrnn.training.rundir import SaveError
from jrnn.training.snapshots import Snapshots, load
from jrnn.training.step import TrainState

from tests.helpers import TINY_TRAIN, subprocess_env

SENTENCES = ["john is driving a car", "mary is driving a truck", "john is feeding a cat",
             "mary is feeding a dog"]
# Adam at lr 1 on the toy corpus: validation perplexities that go down and up again
# (13.2, 3.9, 8.1, 3.3), so the best epochs are not the newest ones.
CONFIG = DEFAULT.replace(cell="lstm", num_layers=1, embed_size=8, hidden_size=8, batch_size=4,
                         bptt=6, optimizer="adam", lr=1.0, epochs=4)
WINDOWS = 4  # per epoch: epoch k ends at step 4k
KEEP, KEEP_BEST = 2, 2
TIMING = ("seconds", "tokens_per_s")
TMP = ".orbax-checkpoint-tmp"


def corpus() -> Corpus:
    vocab = Vocabulary.build(SENTENCES)
    ids = lambda reps: np.asarray([i for s in SENTENCES * reps for i in vocab.encode(s)], np.int32)
    return Corpus(vocab, ids(20), ids(3), ids(3), "toy")


def _steps(run_dir, kind):
    folder = os.path.join(run_dir, "snapshots", kind)
    return sorted((int(n) for n in os.listdir(folder) if n.isdigit()))


def _leftovers(run_dir):
    return [n for kind in ("last", "best") for n in os.listdir(os.path.join(run_dir, "snapshots", kind))
            if TMP in n]


def _untimed(meta):
    meta = {k: v for k, v in meta.items() if k != "_carry"}
    meta["history"] = [{k: v for k, v in r.items() if k not in TIMING} for r in meta["history"]]
    return meta


def _assert_same_state(a, b):
    """Two state dicts with the same structure, dtypes and bytes."""
    (la, ta), (lb, tb) = jax.tree_util.tree_flatten(a), jax.tree_util.tree_flatten(b)
    assert ta == tb
    for x, y in zip(la, lb):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run keeping snapshots, with a copy of ``last.ckpt`` at each epoch end."""
    root = tmp_path_factory.mktemp("whole")
    out = str(root / "run")

    def keep_last(record):
        shutil.copy(os.path.join(out, "last.ckpt"), root / f"epoch{record['epoch']}.ckpt")

    result = fit(CONFIG, corpus(), out, keep=KEEP, keep_best=KEEP_BEST, max_windows=WINDOWS,
                 callbacks=Callbacks(on_epoch=keep_last))
    assert result.complete
    return result, root


# ---- what is kept ------------------------------------------------------------------------

def test_keep_the_newest_n_and_the_m_best_each_equal_to_its_last_ckpt(whole):
    result, root = whole
    ppl = [r["valid_ppl"] for r in result.history]
    best = sorted(sorted(range(1, len(ppl) + 1), key=lambda e: ppl[e - 1])[:KEEP_BEST])
    newest = list(range(len(ppl) - KEEP + 1, len(ppl) + 1))
    assert best != newest, ppl  # the run tells keep-best from keep-N
    assert _steps(result.run_dir, "last") == [WINDOWS * e for e in newest]
    assert _steps(result.run_dir, "best") == [WINDOWS * e for e in best]
    for kind, epochs in (("last", newest), ("best", best)):
        for e in epochs:
            meta, state = load(os.path.join(result.run_dir, "snapshots", kind, str(WINDOWS * e)))
            saved_meta, saved_state = ckpt.load_raw(str(root / f"epoch{e}.ckpt"))
            _assert_same_state(state, saved_state)
            assert meta == saved_meta and meta["epoch"] == e
    assert _leftovers(result.run_dir) == []


def _state(step, w):
    return TrainState({"w": np.full(3, w, np.float32)}, {}, np.asarray(step, np.int32),
                      np.zeros(2, np.uint32))


def test_non_finite_perplexities_are_never_best_and_a_saved_step_is_not_saved_again(tmp_path):
    ppl = {1: 5.0, 2: math.nan, 3: 3.0, 4: math.inf, 5: 4.0, 6: None}
    with Snapshots(str(tmp_path / "snapshots"), keep=2, keep_best=3) as snaps:
        for step, p in ppl.items():
            snaps.save(_state(step, step), {"epoch": step}, p)
    assert _steps(tmp_path, "last") == [5, 6] and _steps(tmp_path, "best") == [1, 3, 5]
    with Snapshots(str(tmp_path / "snapshots"), keep=2, keep_best=3) as snaps:
        snaps.save(_state(5, 99), {"epoch": 0}, 4.0)  # a resume at a saved epoch end: nothing
    assert _steps(tmp_path, "last") == [5, 6] and _steps(tmp_path, "best") == [1, 3, 5]
    for kind in ("last", "best"):
        meta, saved = load(str(tmp_path / "snapshots" / kind / "5"))
        assert meta["epoch"] == 5 and saved["params"]["w"].tolist() == [5.0] * 3 and saved["opt_state"] == {}


def test_a_snapshot_that_cannot_be_written_is_one_line(tmp_path):
    (tmp_path / "snapshots").write_text("a file where the folder goes")
    with pytest.raises(SaveError, match="cannot write a snapshot in .*; the checkpoints already "
                                        "there are intact"):
        with Snapshots(str(tmp_path / "snapshots"), keep=1) as snaps:
            snaps.save(_state(1, 1), {}, None)


# ---- killed while a snapshot is written ----------------------------------------------------

CHILD = r"""
import os, sys, time
import jax
jax.config.update("jax_enable_x64", True)  # as conftest: the programs the tests compile
import orbax.checkpoint as ocp
from jrnn.training.fit import fit
from tests.test_snapshots import CONFIG, KEEP, KEEP_BEST, WINDOWS, corpus

marker, out = sys.argv[1], sys.argv[2]
finalize = ocp.path.atomicity.AtomicRenameTemporaryPath.finalize

async def stall(self):  # epoch 2's snapshot is written but never renamed into place
    if f"{os.sep}{2 * WINDOWS}.orbax-checkpoint-tmp" in str(self.get()):
        open(marker, "w").close()
        time.sleep(600)
    await finalize(self)

ocp.path.atomicity.AtomicRenameTemporaryPath.finalize = stall
fit(CONFIG, corpus(), out, keep=KEEP, keep_best=KEEP_BEST, max_windows=WINDOWS)
"""


def test_killed_during_an_async_save_then_resumed_equals_the_uninterrupted_run(whole, tmp_path):
    result, _ = whole
    out, marker = str(tmp_path / "cut"), tmp_path / "saving"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(marker), out], env=subprocess_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert child.poll() is None, child.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the child never reached epoch 2's snapshot"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.communicate()
    meta, _ = ckpt.load_raw(os.path.join(out, "last.ckpt"))
    assert (meta["epoch"], meta["window"]) == (2, 0)
    assert any(n.startswith(f"{2 * WINDOWS}{TMP}") for n in _leftovers(out))

    said = []
    done = fit(None, corpus(), out, resume=True, max_windows=WINDOWS,  # the run's own keep
               callbacks=Callbacks(on_message=said.append))
    assert done.complete and any(TMP in s and "interrupted save" in s for s in said), said
    _assert_same_state(done.state._asdict(), result.state._asdict())
    assert _leftovers(out) == []
    for kind in ("last", "best"):
        assert _steps(out, kind) == _steps(result.run_dir, kind)
        for step in _steps(out, kind):
            (ma, sa), (mb, sb) = (load(os.path.join(d, "snapshots", kind, str(step)))
                                  for d in (out, result.run_dir))
            _assert_same_state(sa, sb)
            assert _untimed(ma) == _untimed(mb)


def test_a_process_group_saves_snapshots_together_and_process_0_writes_them(tmp_path):
    from tests.test_multiprocess import TINY_EQ, _group

    out = str(tmp_path / "group")
    codes, outs = _group(2, ["--out", out, "--epochs", "2", "--max-windows", "3", "--keep", "1",
                             "--keep-best", "2", *TINY_EQ])
    assert codes == [0, 0], [err[-2000:] for _, err in outs]
    assert _steps(out, "last") == [6] and _steps(out, "best") == [3, 6] and _leftovers(out) == []
    assert os.listdir(os.path.join(out, "snapshots", "last", "6", "state")).count("ocdbt.process_1") == 0
    meta, state = load(os.path.join(out, "snapshots", "last", "6"))
    saved_meta, saved_state = ckpt.load_raw(os.path.join(out, "last.ckpt"))
    _assert_same_state(state, saved_state)
    assert meta == saved_meta


# ---- the command line ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    assert main(["train", *TINY_TRAIN, "--out", out, "--keep", "1", "--keep-best", "1"]) == 0
    return out


def _line(capsys):
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_eval_of_a_snapshot_equals_eval_of_its_checkpoint(cli_run, capsys):
    (step,) = _steps(cli_run, "best")
    capsys.readouterr()
    printed = []
    for path in (os.path.join(cli_run, "snapshots", "best", str(step)), os.path.join(cli_run, "best.ckpt")):
        assert main(["eval", "--checkpoint", path]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1] and "perplexity" in printed[0]
    settings = configfile.read(os.path.join(cli_run, "config.toml"))  # --config runs them again
    assert (settings["keep"], settings["keep_best"]) == (1, 1)


def test_folders_that_are_not_one_snapshot_are_one_line(cli_run, tmp_path, capsys):
    (step,) = _steps(cli_run, "last")
    unfinished = tmp_path / "snapshots" / "last" / f"{step}{TMP}"
    shutil.copytree(os.path.join(cli_run, "snapshots", "last", str(step)), unfinished)
    not_jrnn = tmp_path / "snapshots" / "last" / "9"
    shutil.copytree(unfinished, not_jrnn)
    shutil.rmtree(not_jrnn / "meta")
    cases = [(os.path.join(cli_run, "snapshots", "best"), "a folder of snapshots, not one"),
             (str(unfinished), "an unfinished snapshot"),
             (str(not_jrnn), "not a jrnn snapshot"),
             (str(tmp_path / "snapshots" / "empty"), "not a snapshot")]
    os.makedirs(cases[-1][0])
    for path, message in cases:
        assert main(["score", "a car", "--checkpoint", path]) == 2
        assert message in _line(capsys)


@pytest.mark.parametrize("args, message", [
    (["--keep", "-1"], "keep (--keep) must be a number of epochs >= 0"),
    (["--keep-best", "-3"], "keep_best (--keep-best) must be a number of epochs >= 0"),
    (["--keep", "two"], "argument --keep: invalid int value: 'two'"),
])
def test_bad_keep_values_are_one_line(tmp_path, capsys, args, message):
    try:
        code = main(["train", *TINY_TRAIN, "--out", str(tmp_path / "x"), *args])
    except SystemExit as e:  # argparse's own refusals exit from parse_args
        code = e.code
    assert code == 2 and message in _line(capsys)
    assert not os.path.exists(tmp_path / "x")
    with pytest.raises(FitError, match=r"keep \(--keep\) must be"):
        fit(CONFIG, corpus(), str(tmp_path / "y"), keep=1.5)


def test_overwrite_removes_the_old_runs_snapshots(cli_run, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(cli_run, out)
    assert main(["train", *TINY_TRAIN, "--out", out, "--overwrite"]) == 0
    assert not os.path.exists(os.path.join(out, "snapshots"))
    assert not [n for n in os.listdir(out) if n.startswith(".jrnn-")]


def test_a_run_without_snapshots_never_imports_orbax(tmp_path):
    code = ("import sys, jrnn; from tests.test_snapshots import CONFIG, corpus; "
            f"jrnn.fit(CONFIG.replace(epochs=1), corpus(), {str(tmp_path / 'r')!r}, max_windows=1); "
            "print(sorted(m for m in sys.modules if m.startswith('orbax')))")
    r = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


def test_readme_snapshots_block_runs(tmp_path):
    """The README's "Snapshots" commands as written, `jrnn train` shortened to 3 windows an epoch."""
    import re

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    block = re.findall(r"```bash\n(.*?)```", text.split("### Snapshots", 1)[1], re.S)[0]
    script = block.replace("jrnn train ", "jrnn train --max-windows 3 --quiet ").replace(
        "jrnn ", f"{sys.executable} -m jrnn ")
    r = subprocess.run(script, shell=True, cwd=tmp_path, env=subprocess_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "runs" / "kept" / "snapshots" / "last")) == ["12", "9"]
    assert "test ppl" in r.stdout and len(os.listdir(tmp_path / "runs" / "kept" / "snapshots" / "best")) == 1
