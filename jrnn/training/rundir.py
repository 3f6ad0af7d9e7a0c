"""One run's directory as :func:`jrnn.training.fit.fit` uses it: choosing it, and writing into it.

:class:`RunDir` names the files of a run (``last.ckpt``, ``best.ckpt``,
``summary.json``, the ``snapshots`` folder); :func:`open_run_dir` chooses
the directory for a new, resumed or replaced run (:mod:`jrnn.training.runs`
keeps the numbering and the ``latest`` pointer); :class:`Writer` saves
checkpoints and the summary so that with several processes the state is
gathered by all of them and written once, by process 0.
(:mod:`jrnn.training.snapshots` writes the ``snapshots`` folder.)
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import tempfile
from typing import Any, NamedTuple, Optional

import jax

from jrnn.training import checkpoint as ckpt
from jrnn.training import distributed, runs

__all__ = ["RunDir", "RunDirError", "Claim", "open_run_dir", "Writer"]

LOCK_NAME = ".jrnn-lock"  # flock'd by the process that holds the run
_NEW, _OLD = ".jrnn-new-", ".jrnn-old-"  # a replacement being built; a replaced run set aside


class RunDirError(ValueError):
    """A run directory that cannot be used as asked, in one line."""


class SaveError(RunDirError):
    """A file of the run could not be written (a full disk, a lost mount); the files
    already there are intact: every save writes a new file and swaps it in."""


def _cannot_write(path: str, e: OSError) -> SaveError:
    return SaveError(f"cannot write {path} ({e.strerror or e}); the checkpoints already "
                     "there are intact")


class RunDir(NamedTuple):
    """The files of one run.

    Example:
      >>> RunDir("runs/3").last
      'runs/3/last.ckpt'
    """

    path: str

    @property
    def last(self) -> str:
        return os.path.join(self.path, "last.ckpt")

    @property
    def best(self) -> str:
        return os.path.join(self.path, "best.ckpt")

    @property
    def summary(self) -> str:
        return os.path.join(self.path, "summary.json")

    @property
    def settings(self) -> str:
        """The run's settings as ``jrnn train --config`` reads them (:mod:`jrnn.training.configfile`)."""
        return os.path.join(self.path, "config.toml")

    @property
    def snapshots(self) -> str:
        """The run's Orbax snapshots, ``snapshots/last/<step>`` and ``snapshots/best/<step>``
        (:mod:`jrnn.training.snapshots`; only when the run keeps them)."""
        return os.path.join(self.path, runs.SNAPSHOTS)

    @property
    def metrics(self) -> str:
        """One JSON record a line: windows, epochs and the test (see :meth:`Writer.log`)."""
        return os.path.join(self.path, "metrics.jsonl")

    def existing_best(self) -> Optional[str]:
        """``best.ckpt`` if it was written, else ``None``."""
        return self.best if os.path.exists(self.best) else None


def _directory(path: str, what: str) -> None:
    """Make ``path`` a directory (with its parents), or refuse it in one line."""
    try:
        os.makedirs(path, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise RunDirError(f"{what} {path} is not a directory (it, or a folder above it, is a "
                          "file); choose a directory") from None
    except OSError as e:
        raise RunDirError(f"{what} {path}: cannot create it ({e.strerror})") from None
    if not os.path.isdir(path):
        raise RunDirError(f"{what} {path} is not a directory (it, or a folder above it, is a "
                          "file); choose a directory")


class _Lock:
    """``flock`` on ``<run>/.jrnn-lock``: held by one process, gone when that process dies."""

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK_NAME)
        for _ in range(5):  # a holder may unlink the file between our open and our flock
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise RunDirError(f"{run_dir}: cannot write here ({e.strerror})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise RunDirError(f"{run_dir} is in use by another jrnn process (it holds "
                                  f"{self.path}); wait for it to end or choose another --out") from None
            try:
                same = os.lstat(self.path).st_ino == os.fstat(fd).st_ino
            except OSError:
                same = False
            if same:
                self.fd: Optional[int] = fd
                return
            os.close(fd)
        raise RunDirError(f"{run_dir} is in use by another jrnn process; try again")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.lstat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)  # while still held: a waiting opener sees another inode
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def _check_writable(run_dir: str) -> None:
    try:
        fd, probe = tempfile.mkstemp(prefix=".jrnn-probe-", dir=run_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise RunDirError(f"{run_dir}: cannot write here ({e.strerror})") from None


def _remove_own_files(folder: str, names=None) -> None:
    """Unlink the regular files (not links, not other folders) jrnn may have put in ``folder``
    and remove its ``snapshots`` and ``tensorboard`` folders (a link there is unlinked, never
    followed), then the folder if that left it empty."""
    try:
        entries = os.listdir(folder) if names is None else list(names)
    except OSError:
        return
    for name in entries:
        path = os.path.join(folder, name)
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            try:
                os.unlink(path)
            except OSError:
                pass
        elif name in (runs.SNAPSHOTS, runs.TENSORBOARD) and stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)  # a replaced run's snapshots or event files
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _recover(final: str) -> None:
    """Finish what a killed replacement left: an old run set aside comes back when no run took
    its place, otherwise it is removed; an uncommitted new run is removed."""
    for name in sorted(os.listdir(final)):
        path = os.path.join(final, name)
        if not os.path.isdir(path) or os.path.islink(path):
            continue
        if name.startswith(_OLD):
            if not runs.holds_run(final):
                for f in runs.REPLACED:
                    if os.path.lexists(os.path.join(path, f)):
                        os.rename(os.path.join(path, f), os.path.join(final, f))
            _remove_own_files(path)
        elif name.startswith(_NEW):
            _remove_own_files(path)


class Claim:
    """A run directory held by this process (process 0 of a group).

    ``final`` is where the run lives; until its first checkpoint a replaced
    run (``--overwrite``) is built in ``work``, a hidden folder inside it, and
    a new numbered run is not yet named by ``latest``.  :meth:`commit` (the
    first save) swaps the new run in and moves ``latest``; :meth:`close` ends
    the hold: an uncommitted start leaves everything as it found it.
    """

    def __init__(self, final: str, lock: _Lock, *, staged: bool = False,
                 latest_root: Optional[str] = None, created: bool = False,
                 committed: bool = False):
        self.final, self.lock = RunDir(final), lock
        self.work = RunDir(tempfile.mkdtemp(prefix=_NEW, dir=final)) if staged else self.final
        self.latest_root, self.created, self.committed = latest_root, created, committed

    @property
    def current(self) -> RunDir:
        return self.final if self.committed else self.work

    def commit(self) -> None:
        """The new run has a checkpoint: it replaces the old one, and ``latest`` names it."""
        if self.committed:
            return
        if self.work != self.final:
            old = tempfile.mkdtemp(prefix=_OLD, dir=self.final.path)
            for f in runs.REPLACED:  # set the old run aside (renames: nothing is copied)
                if os.path.lexists(os.path.join(self.final.path, f)):
                    os.rename(os.path.join(self.final.path, f), os.path.join(old, f))
            for f in os.listdir(self.work.path):
                if f in runs.REPLACED:
                    os.replace(os.path.join(self.work.path, f), os.path.join(self.final.path, f))
            _remove_own_files(self.work.path)
            _remove_own_files(old)
        if self.latest_root is not None:
            runs.write_latest(self.latest_root, self.final.path)
        self.committed = True

    def close(self) -> None:
        """Release the run directory; before a commit, undo the start."""
        if self.lock.fd is None:
            return
        if not self.committed:
            if self.work != self.final:
                _remove_own_files(self.work.path)
        self.lock.release()
        if not self.committed and self.created:
            try:
                os.rmdir(self.final.path)  # only if empty
            except OSError:
                pass


def _claim(final: str, overwrite: Optional[bool] = None, **kw) -> Claim:
    """Lock ``final``, check it can be written, then hold it (``overwrite``: for a new run in
    an ``--out`` that may hold one; ``None``: no such check)."""
    lock = _Lock(final)
    try:
        _check_writable(final)
        _recover(final)
        if overwrite is not None and runs.holds_run(final):
            if not overwrite:
                raise RunDirError(f"{final} already holds a run; continue it with --resume, replace "
                                  "it with --overwrite, or leave out --out for a new run directory")
            kw = {**kw, "staged": True, "created": False}
        return Claim(final, lock, **kw)
    except BaseException:
        lock.release()
        raise


def _choose(out: Optional[str], runs_root: str, resume: bool, overwrite: bool) -> Claim:
    if resume:
        try:
            run_dir = runs.resolve_run(out if out is not None else runs_root)
        except runs.RunPointerError as e:
            raise RunDirError(str(e)) from None
        if not os.path.exists(RunDir(run_dir).last):
            raise RunDirError(f"{run_dir}: no run to resume here (no last.ckpt)")
        return _claim(run_dir, committed=True)
    if out is None:
        _directory(runs_root, "--runs")
        return _claim(runs.new_run_dir(runs_root), latest_root=runs_root, created=True)
    created = not os.path.lexists(out)
    _directory(out, "--out")
    return _claim(out, overwrite, created=created)


def open_run_dir(out: Optional[str], runs_root: str = "runs", *, resume: bool = False,
                 overwrite: bool = False):
    """The directory of a run, held by this process: ``out``, the run to resume, or a new
    ``runs_root/<n>``.

    Returns a :class:`Claim` on process 0 (its :meth:`Claim.close` must be
    called when the run ends) and the :class:`RunDir` on the others.
    ``out=None`` makes a new numbered directory; ``runs_root/latest`` names
    it once it holds a checkpoint (with ``resume``: the run ``latest``
    names).  An ``out`` that holds a run is refused unless ``resume`` or
    ``overwrite``; a replacement is built beside the old run and swapped in
    at its first checkpoint.  A directory another process holds, or one this
    process cannot write, is refused.  With several processes, process 0
    decides and every process gets its answer (or its error).

    Raises:
      RunDirError: the directory cannot be used as asked.
    """
    if not distributed.is_multiprocess():
        try:
            return _choose(out, runs_root, resume, overwrite)
        except OSError as e:
            raise RunDirError(str(e)) from None
    decided, claim = "", None
    if jax.process_index() == 0:
        try:
            claim = _choose(out, runs_root, resume, overwrite)
            decided = "ok:" + claim.final.path
        except (RunDirError, OSError) as e:
            decided = "error:" + str(e)
    kind, _, text = distributed.broadcast_text(decided).partition(":")
    if kind == "error":
        raise RunDirError(text)
    return claim if claim is not None else RunDir(text)


def _write_json(path: str, obj: Any) -> None:
    """Write ``obj`` to ``path`` atomically, through a temporary file created exclusively."""
    _write_text(path, json.dumps(obj, indent=1))


def _write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` atomically, through a temporary file created exclusively."""
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp",
                               dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def read_metrics(path: str) -> list:
    """The records of a run's ``metrics.jsonl`` (``path``: the run directory or the file); a
    run without one (written before 0.4) gives its ``summary.json`` history as ``"epoch"``
    records and its test perplexity as a ``"test"`` record.  Lines a killed write cut short
    are skipped.

    Raises:
      RunDirError: neither file is there, or cannot be read.
    """
    run = RunDir(path if os.path.isdir(path) else os.path.dirname(path) or ".")
    metrics = path if not os.path.isdir(path) else run.metrics
    try:
        if os.path.exists(metrics):
            records = []
            with open(metrics) as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(record, dict):
                        records.append(record)
            return records
        if os.path.exists(run.summary):
            with open(run.summary) as f:
                summary = json.load(f)
            return ([{"kind": "epoch", **r} for r in summary.get("history", [])]
                    + [{"kind": "test", "test_ppl": summary.get("test_ppl")}])
    except (OSError, ValueError, AttributeError, TypeError) as e:
        raise RunDirError(f"{path}: cannot read its metrics ({e})") from None
    raise RunDirError(f"{path}: no metrics.jsonl or summary.json here; is it a run directory?")


class Writer:
    """Writes a run's checkpoints and summary: gathered by every process, written by process 0.

    Given a :class:`Claim`, the first write commits it (swaps a replacement
    in, moves ``latest``) and :meth:`close` releases it; use the writer as a
    context manager.
    """

    def __init__(self, run_dir):
        self.claim = run_dir if isinstance(run_dir, Claim) else None
        self._run_dir = None if self.claim is not None else run_dir
        self.multi = distributed.is_multiprocess()
        self.leader = jax.process_index() == 0
        self.settings: Optional[str] = None  # config.toml's text, written with the first checkpoint
        self._log: list = []  # metric records not yet in metrics.jsonl

    @property
    def run_dir(self) -> RunDir:
        """Where the run's files are now: a replacement's hidden folder until its first save."""
        return self.claim.current if self.claim is not None else self._run_dir

    @property
    def final(self) -> RunDir:
        """Where the run will live (``run_dir`` once it has a checkpoint)."""
        return self.claim.final if self.claim is not None else self._run_dir

    def save(self, path: str, state: Any, meta: dict, carry: Any = None) -> None:
        """``ckpt.save`` once for the whole group (every process must call it)."""
        if self.multi:  # gather the sharded state and carry (a collective), then write once
            state, carry = distributed.to_host(state), distributed.to_host(carry)
        if self.leader:
            try:
                ckpt.save(path, state, meta, carry=carry)
                if self.settings is not None:
                    _write_text(self.run_dir.settings, self.settings)
                    self.settings = None
                self._flush_log()
            except OSError as e:
                raise _cannot_write(path, e) from None
            if self.claim is not None:
                self.claim.commit()

    def log(self, record: dict) -> None:
        """Append ``record`` to the run's ``metrics.jsonl`` (one JSON object a line); kept in
        memory until the run's first checkpoint, so a start that never saved leaves no file."""
        if not self.leader:
            return
        self._log.append(json.dumps(record))
        if os.path.exists(self.run_dir.last):
            try:
                self._flush_log()
            except OSError as e:
                raise _cannot_write(self.run_dir.metrics, e) from None

    def _flush_log(self) -> None:
        if self._log:
            # Appended in place, never through a link planted there (O_NOFOLLOW).
            fd = os.open(self.run_dir.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666)
            with os.fdopen(fd, "a") as f:
                f.write("".join(line + "\n" for line in self._log))
            self._log = []

    def trim_log(self, step: int) -> None:
        """Drop the records after ``step`` (a resume runs those windows again and logs them
        anew) and any line a killed write cut short."""
        path = self.run_dir.metrics
        if not self.leader or not os.path.exists(path):
            return
        kept = []
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)  # never read through a planted link
        except OSError as e:
            raise _cannot_write(path, e) from None
        with os.fdopen(fd) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= step:
                    kept.append(line if line.endswith("\n") else line + "\n")
        try:
            _write_text(path, "".join(kept))
        except OSError as e:
            raise _cannot_write(path, e) from None

    def summary(self, obj: dict) -> None:
        if self.leader:
            try:
                _write_json(self.run_dir.summary, obj)
                self._flush_log()
            except OSError as e:
                raise _cannot_write(self.run_dir.summary, e) from None
            if self.claim is not None:
                self.claim.commit()

    def remove_stale(self) -> list[str]:
        """Temporary files a killed save left behind, removed (by process 0)."""
        return runs.remove_stale_temporaries(self.run_dir.path) if self.leader else []

    def close(self) -> None:
        if self.claim is not None:
            self.claim.close()

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
