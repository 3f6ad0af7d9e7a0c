"""TensorBoard event files (jrnn.training.tensorboard) hold a run's metric records: read back
here without TensorBoard -- the TFRecord framing and its CRCs checked by hand, the payloads
decoded with tensorboardX's protobuf classes -- and compared with ``metrics.jsonl``, live,
after a resume (as TensorBoard shows it) and replayed; without tensorboardX the module
still imports and the writer fails in one line."""

import importlib
import json
import os
import shutil
import struct
import sys
import time

import numpy as np
import pytest

import jrnn
from jrnn.data import builtin_corpus
from jrnn.training import checkpoint as ckpt
from jrnn.training.config import DEFAULT
from jrnn.training.fit import Callbacks, fit
from jrnn.training.tensorboard import TensorBoardWriter, replay_metrics, run_logdir

try:
    from tensorboardX.proto import event_pb2
except ImportError:  # the tests of what happens without it still run
    event_pb2 = None
needs_tensorboardx = pytest.mark.skipif(event_pb2 is None, reason='pip install "jrnn[tensorboard]"')

CONFIG = DEFAULT.replace(hidden_size=8, embed_size=8, batch_size=20, bptt=10, epochs=2)
NOT_SCALARS = ("kind", "step", "wall_s")


# ---- reading event files by hand ---------------------------------------------------------

def _crc32c_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)  # Castagnoli, reflected
        table.append(c)
    return table


CRC_TABLE = _crc32c_table()


def masked_crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_events(path: str) -> list:
    """The events of one file: each record is a little-endian uint64 length, the masked CRC32C
    of those 8 bytes, the payload (an Event protobuf) and the payload's masked CRC32C."""
    with open(path, "rb") as f:
        data = f.read()
    events, pos = [], 0
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        payload = data[pos + 12:pos + 12 + length]
        (payload_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert header_crc == masked_crc32c(header) and payload_crc == masked_crc32c(payload)
        events.append(event_pb2.Event.FromString(payload))
        pos += 16 + length
    return events


def event_files(logdir: str) -> list:
    """The event files of ``logdir`` in the order TensorBoard reads them (by name)."""
    return [os.path.join(logdir, n) for n in sorted(os.listdir(logdir)) if ".tfevents." in n]


def scalars(events) -> list:
    """``(tag, step, value)`` of each scalar, in file order."""
    return [(v.tag, e.step, v.simple_value) for e in events if e.HasField("summary")
            for v in e.summary.value]


def expected(records) -> list:
    """What the records should become: every numeric field (bools as 0/1) but the step and the
    time, as float32, in record order."""
    return [(f"{r['kind']}/{k}", r["step"], float(np.float32(v))) for r in records
            for k, v in r.items() if k not in NOT_SCALARS and isinstance(v, (bool, int, float))]


def shown(logdir: str, rule: str) -> list:
    """The scalars TensorBoard shows after reading the files in name order.

    ``"server"``: its data server keeps one series per tag, and a point at step s drops the
    points of that tag at steps >= s; ``"legacy"``: the Python loader (``--load_fast=false``)
    drops every point at steps >= s at a ``SessionLog.START`` event at step s."""
    kept = []
    for path in event_files(logdir):
        for e in read_events(path):
            if rule == "legacy" and e.HasField("session_log") \
                    and e.session_log.status == event_pb2.SessionLog.START:
                kept = [p for p in kept if p[1] < e.step]
            for tag, step, value in scalars([e]):
                if rule == "server":
                    kept = [p for p in kept if p[0] != tag or p[1] < step]
                kept.append((tag, step, value))
    return kept


def _records(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _untimed(records):
    return [{k: v for k, v in r.items() if k not in ("wall_s", "tokens_per_s", "seconds")}
            for r in records]


def _by_tag(points):
    return sorted(points, key=lambda p: (p[0], p[1]))


# ---- runs, trained once for the module ---------------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``whole``: a run written live to its event file; ``cut``: the same run killed in its
    second epoch and resumed from the end of the first, each part with its own writer;
    ``on_disk``: for each epoch record of ``whole``, whether its scalars were in the file as
    the writer returned."""
    root = tmp_path_factory.mktemp("tb")
    corpus = builtin_corpus(400)  # 17 windows an epoch
    whole, on_disk = str(root / "whole"), []
    with TensorBoardWriter(run_logdir(whole)) as tb:
        def write_and_look(record):
            tags = tb(record)
            if record["kind"] == "epoch":
                found = scalars(e for p in event_files(tb.logdir) for e in read_events(p))
                on_disk.append(all((t, record["step"]) in {(f[0], f[1]) for f in found} for t in tags))

        fit(CONFIG, corpus, whole, log_every=3, callbacks=Callbacks(on_metrics=write_and_look))

    class Killed(Exception):
        pass

    def kill_at_epoch_2_window_10(epoch, i, n, m, tok_s):
        if epoch == 1 and i == 9:  # no save: last.ckpt is epoch 1's, steps 20-26 are logged
            raise Killed

    cut = str(root / "cut")
    with TensorBoardWriter(run_logdir(cut)) as tb, pytest.raises(Killed):
        fit(CONFIG, corpus, cut, log_every=3,
            callbacks=Callbacks(on_metrics=tb, on_window=kill_at_epoch_2_window_10))
    resumed_at = int(ckpt.load_raw(os.path.join(cut, "last.ckpt"))[1]["step"])
    with TensorBoardWriter(run_logdir(cut), purge_step=resumed_at + 1) as tb:
        assert fit(None, corpus, cut, resume=True, log_every=3,
                   callbacks=Callbacks(on_metrics=tb)).complete
    return {"whole": whole, "cut": cut, "on_disk": on_disk, "resumed_at": resumed_at}


def test_the_crc_is_crc32c():
    crc = masked_crc32c(b"123456789")  # CRC-32C's check value is 0xE3069283
    unmasked = ((crc - 0xA282EAD8) & 0xFFFFFFFF)
    assert ((unmasked << 15) | (unmasked >> 17)) & 0xFFFFFFFF == 0xE3069283


@needs_tensorboardx
def test_live_scalars_are_the_records_of_metrics_jsonl(runs):
    records = _records(runs["whole"])
    assert [r["kind"] for r in records].count("epoch") == 2 and records[-1]["kind"] == "test"
    (path,) = event_files(run_logdir(runs["whole"]))
    events = read_events(path)
    assert events[0].file_version == "brain.Event:2"
    assert not any(e.HasField("session_log") for e in events)  # no purge_step: nothing hidden
    got = scalars(events)
    assert got == expected(records)
    assert {"train/loss", "train/grad_norm", "train/lr", "epoch/valid_ppl", "epoch/improved",
            "test/test_ppl"} <= {t for t, _, _ in got}
    # Each event has its record's time: wall_s after the start of the fit call, as a Unix time.
    times = [e.wall_time for e in events if e.HasField("summary")]
    walls = [r["wall_s"] for r in records for k, v in r.items()
             if k not in NOT_SCALARS and isinstance(v, (bool, int, float))]
    starts = np.asarray(times) - np.asarray(walls)
    assert np.ptp(starts) < 1e-5 and abs(starts[0] - os.path.getctime(path)) < 60
    assert runs["on_disk"] == [True, True]  # an epoch record is flushed as it is written


@needs_tensorboardx
def test_a_resumed_run_shows_its_records_once(runs):
    records = _records(runs["cut"])
    assert _untimed(records) == _untimed(_records(runs["whole"]))
    files = event_files(run_logdir(runs["cut"]))
    assert len(files) == 2
    second = read_events(files[1])
    start = [e for e in second if e.HasField("session_log")]
    assert [(e.session_log.status, e.step) for e in start] == \
        [(event_pb2.SessionLog.START, runs["resumed_at"] + 1)]
    logged = expected(records)
    both = scalars(read_events(files[0])) + scalars(second)
    assert len(both) > len(logged)  # the windows after the checkpoint are in both files
    stale = {step for _, step, _ in scalars(read_events(files[0])) if step > runs["resumed_at"]}
    assert len(stale) == 3 and stale <= {step for _, step, _ in scalars(second)}
    for rule in ("server", "legacy"):  # as TensorBoard shows them: each point once
        assert _by_tag(shown(run_logdir(runs["cut"]), rule)) == _by_tag(logged), rule


@needs_tensorboardx
@pytest.mark.parametrize("name", ["whole", "cut"])
def test_replay_gives_the_live_scalars(runs, name, tmp_path):
    logdir = replay_metrics(runs[name], str(tmp_path / "replay"))
    (path,) = event_files(logdir)
    events = read_events(path)
    records = _records(runs[name])
    assert scalars(events) == expected(records)
    start = [e for e in events if e.HasField("session_log")]
    assert [(e.session_log.status, e.step) for e in start] == [(event_pb2.SessionLog.START, 0)]
    times = [e.wall_time for e in events if e.HasField("summary")]
    assert times == sorted(times)  # a resume's records come after the interrupted part's
    assert times[-1] == pytest.approx(os.path.getmtime(os.path.join(runs[name], "metrics.jsonl")))
    # Replayed into the run's own folder, beside the live files: TensorBoard shows it once.
    run = shutil.copytree(runs[name], str(tmp_path / "run"))
    replay_metrics(os.path.join(run, "metrics.jsonl"))
    assert len(event_files(run_logdir(run))) == len(event_files(run_logdir(runs[name]))) + 1
    for rule in ("server", "legacy"):
        assert _by_tag(shown(run_logdir(run), rule)) == _by_tag(expected(records)), rule


@needs_tensorboardx
def test_replay_of_a_run_without_metrics_jsonl(tmp_path):
    """A run written before jrnn 0.4 has only summary.json: its epochs stand at their numbers."""
    history = [{"epoch": 1, "lr": 1.0, "train_ppl": 300.0, "valid_ppl": 250.0, "improved": True},
               {"epoch": 2, "lr": 0.5, "train_ppl": 200.0, "valid_ppl": None, "improved": False}]
    (tmp_path / "summary.json").write_text(json.dumps({"history": history, "test_ppl": 240.0}))
    events = read_events(*event_files(replay_metrics(str(tmp_path))))
    assert scalars(events) == [
        ("epoch/epoch", 1, 1.0), ("epoch/lr", 1, 1.0), ("epoch/train_ppl", 1, 300.0),
        ("epoch/valid_ppl", 1, 250.0), ("epoch/improved", 1, 1.0),
        ("epoch/epoch", 2, 2.0), ("epoch/lr", 2, 0.5), ("epoch/train_ppl", 2, 200.0),
        ("epoch/improved", 2, 0.0), ("test/test_ppl", 2, 240.0)]


@needs_tensorboardx
def test_writers_opened_in_one_second_keep_their_own_files(tmp_path):
    for step in range(3):
        with TensorBoardWriter(str(tmp_path)) as tb:
            tb.write({"kind": "train", "step": step, "loss": float(step)})
    assert [scalars(read_events(p)) for p in event_files(str(tmp_path))] == \
        [[("train/loss", step, float(step))] for step in range(3)]


@needs_tensorboardx
def test_one_writer_over_two_fit_calls(tmp_path):
    """Times follow wall_s within a fit call; a record whose wall_s went back starts a new call,
    anchored to the clock again."""
    with TensorBoardWriter(str(tmp_path)) as tb:
        for step, wall_s in ((3, 5.0), (6, 6.5), (9, 0.25)):
            tb({"kind": "train", "step": step, "wall_s": wall_s, "loss": 1.0})
        now = time.time()
    times = [e.wall_time for e in read_events(*event_files(str(tmp_path))) if e.HasField("summary")]
    assert times[1] - times[0] == pytest.approx(1.5) and abs(times[2] - now) < 1.0
    assert abs(times[0] - now) < 1.0  # the first record: its call started wall_s before now


def _hide_tensorboardx(monkeypatch):
    for name in [n for n in sys.modules if n == "tensorboardX" or n.startswith("tensorboardX.")] \
            + ["tensorboardX"]:
        monkeypatch.setitem(sys.modules, name, None)  # None: `import` raises ImportError


def test_without_tensorboardx_the_writer_fails_in_one_line(monkeypatch, tmp_path):
    _hide_tensorboardx(monkeypatch)
    with pytest.raises(ImportError) as e:
        TensorBoardWriter(str(tmp_path / "tb"))
    message = str(e.value)
    assert "\n" not in message and 'pip install "jrnn[tensorboard]"' in message, message
    assert "pip install tensorboardX" in message
    assert not os.path.exists(tmp_path / "tb")
    (tmp_path / "metrics.jsonl").write_text('{"kind": "test", "step": 3, "test_ppl": 120.5}\n')
    with pytest.raises(ImportError, match="tensorboardX"):
        replay_metrics(str(tmp_path))


def test_the_module_imports_without_tensorboardx(monkeypatch):
    _hide_tensorboardx(monkeypatch)
    monkeypatch.delitem(sys.modules, "jrnn.training.tensorboard")
    module = importlib.import_module("jrnn.training.tensorboard")
    assert module.record_scalars({"kind": "test", "step": 3, "test_ppl": 120.5}) == {"test/test_ppl": 120.5}


def test_the_writer_is_a_public_name():
    assert jrnn.TensorBoardWriter is TensorBoardWriter and "TensorBoardWriter" in jrnn.__all__


# ---- jrnn train --tensorboard ----------------------------------------------------------------

@needs_tensorboardx
def test_train_tensorboard_writes_the_metrics_and_a_resume_purges_what_it_logs_again(tmp_path, capsys):
    from jrnn.cli import main
    from tests.helpers import TINY_TRAIN

    out = str(tmp_path / "run")
    assert main(["train", *TINY_TRAIN, "--out", out, "--tensorboard"]) == 0
    assert "tensorboard" in capsys.readouterr().out  # named among the files saved
    logdir = run_logdir(out)
    assert expected(_records(out)) == shown(logdir, "server") == shown(logdir, "legacy")
    # A second run of more epochs, resumed: its first file is purged after the checkpoint.
    assert main(["train", "--out", out, "--resume", "--epochs", "2", "--tensorboard"]) == 0
    assert len(event_files(logdir)) == 2
    assert _by_tag(expected(_records(out))) == _by_tag(shown(logdir, "server")) \
        == _by_tag(shown(logdir, "legacy"))


def test_train_tensorboard_without_tensorboardx_is_one_line(monkeypatch, tmp_path, capsys):
    from jrnn.cli import main
    from tests.helpers import TINY_TRAIN

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tensorboardX" else find_spec(name, *a))
    assert main(["train", *TINY_TRAIN, "--out", str(tmp_path / "r"), "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and 'pip install "jrnn[tensorboard]"' in err, err
    assert not os.path.exists(tmp_path / "r" / "last.ckpt")


@needs_tensorboardx
def test_readme_tensorboard_command_runs(tmp_path):
    """The README's `jrnn train ... --tensorboard` line as written, shortened to 3 windows an epoch
    (the viewer itself, `tensorboard`, is a download of its own)."""
    import re
    import subprocess

    from tests.helpers import subprocess_env

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    text = open(os.path.join(root, "README.md"), encoding="utf-8").read()
    block = [b for b in re.findall(r"```bash\n(.*?)```", text, re.S) if "--tensorboard" in b][0]
    line = [ln for ln in block.splitlines() if ln.startswith("jrnn train")][0]
    command = line.replace("jrnn train ", f"{sys.executable} -m jrnn train --max-windows 3 --quiet ")
    r = subprocess.run(command, shell=True, cwd=tmp_path, env=subprocess_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    run = tmp_path / "runs" / "watched"
    assert expected(_records(run)) == shown(run_logdir(str(run)), "server")


@needs_tensorboardx
def test_train_tensorboard_overwrite_shows_only_the_new_run(tmp_path):
    """--overwrite swaps the new run in at its first save: the old run's event files go with
    the old run, and nothing is written beside it before that."""
    from jrnn.cli import main
    from tests.helpers import TINY_TRAIN

    out = str(tmp_path / "run")
    assert main(["train", *TINY_TRAIN, "--epochs", "2", "--out", out, "--tensorboard"]) == 0
    assert main(["train", *TINY_TRAIN, "--lr", "0.003", "--out", out, "--overwrite",
                 "--tensorboard"]) == 0
    logdir = run_logdir(out)
    assert len(event_files(logdir)) == 1
    assert expected(_records(out)) == shown(logdir, "server") == shown(logdir, "legacy")
    assert not [n for n in os.listdir(out) if n.startswith((".jrnn-new", ".jrnn-old"))]
