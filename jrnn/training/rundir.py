"""One run's directory as :func:`jrnn.training.fit.fit` uses it: choosing it, and writing into it.

:class:`RunDir` names the files of a run (``last.ckpt``, ``best.ckpt``,
``summary.json``); :func:`open_run_dir` chooses the directory for a new,
resumed or replaced run (:mod:`jrnn.training.runs` keeps the numbering and
the ``latest`` pointer); :class:`Writer` saves checkpoints and the summary
so that with several processes the state is gathered by all of them and
written once, by process 0.
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple, Optional

import jax

from jrnn.training import checkpoint as ckpt
from jrnn.training import distributed, runs

__all__ = ["RunDir", "RunDirError", "open_run_dir", "Writer"]


class RunDirError(ValueError):
    """A run directory that cannot be used as asked, in one line."""


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

    def existing_best(self) -> Optional[str]:
        """``best.ckpt`` if it was written, else ``None``."""
        return self.best if os.path.exists(self.best) else None


def _choose(out: Optional[str], runs_root: str, resume: bool, overwrite: bool) -> str:
    if resume:
        run_dir = runs.resolve_run(out if out is not None else runs_root)
        if not os.path.exists(RunDir(run_dir).last):
            raise RunDirError(f"{run_dir}: no run to resume here (no last.ckpt)")
        return run_dir
    if out is None:
        run_dir = runs.new_run_dir(runs_root)
        runs.write_latest(runs_root, run_dir)
        return run_dir
    if runs.holds_run(out):
        if not overwrite:
            raise RunDirError(f"{out} already holds a run; continue it with --resume, replace it "
                              "with --overwrite, or leave out --out for a new run directory")
        for f in runs.RUN_FILES:
            if os.path.exists(os.path.join(out, f)):
                os.unlink(os.path.join(out, f))
    os.makedirs(out, exist_ok=True)
    return out


def open_run_dir(out: Optional[str], runs_root: str = "runs", *, resume: bool = False,
                 overwrite: bool = False) -> RunDir:
    """The directory of a run: ``out``, the run to resume, or a new ``runs_root/<n>``.

    ``out=None`` makes a new numbered directory and points ``runs_root/latest``
    at it (with ``resume``: the run ``latest`` names).  An ``out`` that holds
    a run is refused unless ``resume`` or ``overwrite``.  With several
    processes, process 0 decides and every process gets its answer (or its
    error).

    Raises:
      RunDirError: the directory cannot be used as asked.
    """
    if not distributed.is_multiprocess():
        try:
            return RunDir(_choose(out, runs_root, resume, overwrite))
        except OSError as e:
            raise RunDirError(str(e)) from None
    decided = ""
    if jax.process_index() == 0:
        try:
            decided = "ok:" + _choose(out, runs_root, resume, overwrite)
        except (RunDirError, OSError) as e:
            decided = "error:" + str(e)
    kind, _, text = distributed.broadcast_text(decided).partition(":")
    if kind == "error":
        raise RunDirError(text)
    return RunDir(text)


def _write_json(path: str, obj: Any) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


class Writer:
    """Writes a run's checkpoints and summary: gathered by every process, written by process 0."""

    def __init__(self, run_dir: RunDir):
        self.run_dir = run_dir
        self.multi = distributed.is_multiprocess()
        self.leader = jax.process_index() == 0

    def save(self, path: str, state: Any, meta: dict, carry: Any = None) -> None:
        """``ckpt.save`` once for the whole group (every process must call it)."""
        if self.multi:  # gather the sharded state and carry (a collective), then write once
            state, carry = distributed.to_host(state), distributed.to_host(carry)
        if self.leader:
            ckpt.save(path, state, meta, carry=carry)

    def summary(self, obj: dict) -> None:
        if self.leader:
            _write_json(self.run_dir.summary, obj)

    def remove_stale(self) -> list[str]:
        """Temporary files a killed save left behind, removed (by process 0)."""
        return runs.remove_stale_temporaries(self.run_dir.path) if self.leader else []
