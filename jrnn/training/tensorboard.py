"""A run's metric records as TensorBoard event files: live, or replayed from ``metrics.jsonl``.

:class:`TensorBoardWriter` is a callable for ``Callbacks(on_metrics=...)``:
each record :func:`jrnn.training.fit.fit` appends to the run's
``metrics.jsonl`` becomes scalars tagged ``<kind>/<field>`` (``train/loss``,
``epoch/valid_ppl``, ``test/test_ppl``) at the record's ``step``::

    from jrnn.training.tensorboard import TensorBoardWriter, run_logdir

    with TensorBoardWriter(run_logdir("runs/demo")) as tb:
        fit(config, corpus, "runs/demo", callbacks=Callbacks(on_metrics=tb))

and :func:`replay_metrics` writes a finished (or older) run's records the
same way, so any run can be viewed with ``tensorboard --logdir runs``.
:func:`record_scalars` is the rule both follow, as a plain function.

The event files are written with tensorboardX, an optional dependency
(``pip install "jrnn[tensorboard]"``): this module imports without it, and
only constructing a writer needs it.
"""

from __future__ import annotations

import numbers
import os
import time
from typing import Optional

from jrnn.training import runs
from jrnn.training.rundir import RunDir, read_metrics

__all__ = ["TensorBoardWriter", "record_scalars", "replay_metrics", "LOGDIR_NAME", "run_logdir"]

LOGDIR_NAME = runs.TENSORBOARD  # a run's event files go to <run>/tensorboard/
# Fields that are not scalars of their own: the kind names the tag, the step is the x axis
# and wall_s the event's time.
_NOT_SCALARS = ("kind", "step", "wall_s")


def run_logdir(run_dir: str) -> str:
    """Where a run's event files go.

    Example:
      >>> run_logdir("runs/3")
      'runs/3/tensorboard'
    """
    return os.path.join(run_dir, LOGDIR_NAME)


def record_scalars(record: dict) -> dict:
    """The scalars a metric record becomes: ``{"<kind>/<field>": float}``.

    Every numeric field except ``step`` and ``wall_s``; a bool is 0 or 1 (so
    ``epoch/improved`` marks the epochs that saved ``best.ckpt``); ``None``
    (a value the run could not compute, e.g. a non-finite loss) and other
    types are left out.  Non-finite floats are kept (TensorBoard shows them).

    Example:
      >>> record_scalars({"kind": "epoch", "step": 40, "wall_s": 3.0, "epoch": 1,
      ...                 "valid_ppl": 180.25, "improved": True, "lr": None})
      {'epoch/epoch': 1.0, 'epoch/valid_ppl': 180.25, 'epoch/improved': 1.0}
    """
    kind = record.get("kind", "metrics")
    return {f"{kind}/{field}": float(value) for field, value in record.items()
            if field not in _NOT_SCALARS and isinstance(value, numbers.Real)}


def _event_file(logdir: str):
    """``(EventsWriter, Event, SessionLog, Summary)`` from tensorboardX, or one clear ImportError."""
    try:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event, SessionLog
        from tensorboardX.proto.summary_pb2 import Summary
    except ImportError as e:  # an optional dependency: only a writer needs it
        missing = e.name or "tensorboardX"
        raise ImportError(f"TensorBoard event files need tensorboardX ({missing} cannot be "
                          'imported): pip install "jrnn[tensorboard]" (or pip install tensorboardX)'
                          ) from None
    os.makedirs(logdir, exist_ok=True)
    # The file is named by the second it was opened and the host, and a file of that name would be
    # truncated: the sub-second suffix keeps two writers of one second apart, in the order TensorBoard
    # reads them (by name), which decides which of two values at one step it shows.
    suffix = f".{time.time_ns() % 10**9:09d}"
    return EventsWriter(os.path.join(logdir, "events"), suffix), Event, SessionLog, Summary


class TensorBoardWriter:
    """Writes metric records (``Callbacks(on_metrics=...)``) to a TensorBoard event file.

    Each record becomes the scalars :func:`record_scalars` gives, at the
    record's ``step``, with the record's time: ``wall_s`` (seconds since its
    ``fit`` call started) after that call's start as a Unix time.  Events are
    written as they come (tensorboardX's synchronous ``EventsWriter``: no
    thread) and the file is flushed to disk at each ``"epoch"`` and ``"test"``
    record; :meth:`close` (or the ``with`` block) flushes the rest.

    Args:
      logdir: the folder of the event file (created if missing); a run's own
        is :func:`run_logdir`.  Each writer opens a new file in it.
      purge_step: a resume's first step (its checkpoint's step + 1): events
        already in ``logdir`` at this step or later are stale, written by the
        run before it was interrupted, and TensorBoard hides them (the
        resumed run logs those windows again).  ``None``: hide nothing.

    Raises:
      ImportError: tensorboardX is not installed (one line saying how to get it).

    Example:
      >>> import os, tempfile
      >>> logdir = tempfile.mkdtemp()
      >>> with TensorBoardWriter(logdir) as tb:
      ...     tb({"kind": "train", "step": 20, "wall_s": 1.5, "epoch": 1, "window": 20,
      ...         "loss": 4.25, "grad_norm": None})
      ['train/epoch', 'train/window', 'train/loss']
      >>> [name.startswith("events.out.tfevents.") for name in os.listdir(logdir)]
      [True]
    """

    def __init__(self, logdir: str, *, purge_step: Optional[int] = None):
        self.logdir = logdir
        self._file, self._Event, SessionLog, self._Summary = _event_file(logdir)
        self._start: Optional[float] = None  # Unix time at wall_s = 0 of the current fit call
        self._wall_s = 0.0  # the latest record's
        if purge_step is not None:  # what TensorBoard reads as a restart at purge_step
            self._file.write_event(self._Event(step=purge_step, wall_time=time.time(),
                                               session_log=SessionLog(status=SessionLog.START)))
            self._file.flush()

    def __call__(self, record: dict) -> list:
        """Write one record as ``fit`` makes it; returns the tags written."""
        wall_s = record.get("wall_s")
        if not isinstance(wall_s, numbers.Real):
            return self.write(record)
        if self._start is None or wall_s < self._wall_s:  # the first record of a fit call
            self._start = time.time() - wall_s
        self._wall_s = wall_s
        return self.write(record, walltime=self._start + wall_s)

    def write(self, record: dict, walltime: Optional[float] = None) -> list:
        """Write ``record``'s scalars (it needs a ``step``) with ``walltime`` (a Unix time;
        ``None``: now); returns the tags written."""
        scalars, step = record_scalars(record), int(record["step"])
        walltime = time.time() if walltime is None else walltime
        for tag, value in scalars.items():
            summary = self._Summary(value=[self._Summary.Value(tag=tag, simple_value=value)])
            self._file.write_event(self._Event(step=step, wall_time=walltime, summary=summary))
        if record.get("kind") in ("epoch", "test"):
            self.flush()
        return list(scalars)

    def flush(self) -> None:
        """Put what was written on disk (``fsync``)."""
        self._file.flush()

    def close(self) -> None:
        """Flush and close the event file (again: nothing)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> "TensorBoardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _with_steps(records: list) -> list:
    """Records with a ``step``: one from ``summary.json`` (a run written before jrnn 0.4) has
    none, and stands at its epoch number (the test at the last epoch)."""
    out, last = [], 0
    for record in records:
        last = record.get("step", record.get("epoch", last))
        out.append({**record, "step": last})
    return out


def _replay_times(records: list, end: float) -> list:
    """A Unix time for each record: each fit call's ``wall_s`` (which starts again from 0 at a
    resume) laid end to end, the last record at ``end``."""
    times, before, last = [], 0.0, None
    for record in records:
        wall_s = record.get("wall_s")
        wall_s = float(wall_s) if isinstance(wall_s, numbers.Real) else (last or 0.0)
        if last is not None and wall_s < last:  # a resumed call: it starts where the last ended
            before += last
        times.append(before + wall_s)
        last = wall_s
    shift = end - times[-1] if times else 0.0
    return [t + shift for t in times]


def _written_at(path: str) -> float:
    """When the run's metrics were last written (now, if that cannot be told)."""
    run = RunDir(path)
    for candidate in [run.metrics, run.summary] if os.path.isdir(path) else [path]:
        try:
            return os.path.getmtime(candidate)
        except OSError:
            continue
    return time.time()


def replay_metrics(path: str, logdir: Optional[str] = None) -> str:
    """Write a run's ``metrics.jsonl`` to TensorBoard event files, as if it were being trained.

    Each record becomes the scalars :class:`TensorBoardWriter` writes live.
    The records' times are the run's own (``wall_s``, its resumes laid end to
    end), placed so that the last is when the file was last written.  A run
    without ``metrics.jsonl`` (written before jrnn 0.4) gives its
    ``summary.json`` epochs and test (:func:`jrnn.training.rundir.read_metrics`),
    each epoch at its epoch number for a step.  TensorBoard hides whatever
    events ``logdir`` held before (the replay starts with a purge at step 0),
    so a replay can be run again, or beside a live writer's file.

    Args:
      path: the run directory, or its ``metrics.jsonl``.
      logdir: where the event files go; default: the run's :func:`run_logdir`.

    Returns:
      ``logdir``.

    Raises:
      RunDirError: no metrics can be read at ``path``.
      ImportError: tensorboardX is not installed.

    Example:
      >>> import json, os, tempfile
      >>> run = tempfile.mkdtemp()
      >>> with open(os.path.join(run, "metrics.jsonl"), "w") as f:
      ...     for record in ({"kind": "train", "step": 5, "wall_s": 0.8, "loss": 5.1},
      ...                    {"kind": "epoch", "step": 10, "wall_s": 1.9, "valid_ppl": 150.0}):
      ...         print(json.dumps(record), file=f)
      >>> logdir = replay_metrics(run)
      >>> logdir == run_logdir(run) and len(os.listdir(logdir))
      1
    """
    records = _with_steps(read_metrics(path))
    run_dir = path if os.path.isdir(path) else os.path.dirname(path) or "."
    logdir = run_logdir(run_dir) if logdir is None else logdir
    with TensorBoardWriter(logdir, purge_step=0) as tb:
        for record, walltime in zip(records, _replay_times(records, _written_at(path))):
            tb.write(record, walltime)
    return logdir
