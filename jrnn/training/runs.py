"""Run directories: a new one per run, a ``latest`` pointer, and never a run overwritten.

Layout under a root (``runs/`` by default)::

    runs/1/  runs/2/ ...   one directory per run: best.ckpt, last.ckpt, summary.json,
                           snapshots/ (when it keeps them: jrnn.training.snapshots)
    runs/latest            a small text file naming the newest run directory

``latest`` is a plain file written atomically (temporary file + rename), not
a symlink, so it works on every file system and a crash never leaves it half
written.  Two runs started at once get different directories: each is taken
with ``os.mkdir``, which fails for the second.
"""

from __future__ import annotations

import glob
import os
import stat
import tempfile
from typing import Optional

from jrnn.training.checkpoint import CheckpointError

__all__ = [
    "RUN_FILES",
    "SNAPSHOTS",
    "TENSORBOARD",
    "REPLACED",
    "RunPointerError",
    "holds_run",
    "new_run_dir",
    "write_latest",
    "read_latest",
    "resolve_run",
    "remove_stale_temporaries",
]

SNAPSHOTS = "snapshots"  # the folder of a run's Orbax snapshots (jrnn.training.snapshots)
TENSORBOARD = "tensorboard"  # the folder of its event files (jrnn.training.tensorboard)

# Files (and the snapshots folder) whose presence means a directory holds a run.
RUN_FILES = ("last.ckpt", "best.ckpt", "summary.json", "config.toml", "metrics.jsonl",
             "learning_curve.png", "learning_curve.svg", SNAPSHOTS)
# What a replaced run takes with it: its files and its event files (a tensorboard folder alone,
# e.g. a TensorBoardWriter opened before fit, is not a run).
REPLACED = RUN_FILES + (TENSORBOARD,)


class RunPointerError(CheckpointError):
    """A ``latest`` pointer that names a directory outside its runs root."""


def holds_run(path: str) -> bool:
    """Whether ``path`` is a directory holding a run's files."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in RUN_FILES)


def new_run_dir(root: str) -> str:
    """Create and return ``root/<n>`` for the smallest free ``n`` above every existing one."""
    os.makedirs(root, exist_ok=True)
    taken = [int(d) for d in os.listdir(root) if d.isdigit()]
    n = max(taken, default=0) + 1
    while True:
        path = os.path.join(root, str(n))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:  # another run took it a moment ago
            n += 1


def write_latest(root: str, run_dir: str) -> None:
    """Point ``root/latest`` at ``run_dir`` (atomically)."""
    os.makedirs(root, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".latest.", suffix=".tmp", dir=root)
    with os.fdopen(fd, "w") as f:
        f.write(os.path.relpath(run_dir, root) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(root, "latest"))


def read_latest(root: str) -> Optional[str]:
    """The run directory ``root/latest`` names, or ``None`` when there is no pointer.

    Raises:
      RunPointerError: the pointer names a directory outside ``root`` (an
        absolute path, ``..``, or a link leading out): jrnn never follows it.
    """
    pointer = os.path.join(root, "latest")
    if not os.path.isfile(pointer):
        return None
    with open(pointer, errors="replace") as f:
        name = f.read(4096).strip()
    if not name:
        return None
    target = os.path.join(root, name)
    inside, real = os.path.realpath(root), os.path.realpath(target)
    if os.path.isabs(name) or real == inside or os.path.commonpath([inside, real]) != inside:
        raise RunPointerError(f"{pointer} names {name!r}, outside {root}; a latest pointer must "
                              "name a run inside its runs root (give the run directory itself)")
    return target


def resolve_run(path: str) -> str:
    """``path`` itself, or the run a ``latest`` pointer file (or a root holding one) names."""
    if os.path.isfile(path) and os.path.basename(path) == "latest":
        return read_latest(os.path.dirname(path) or ".") or path
    if os.path.isdir(path) and not holds_run(path):
        target = read_latest(path)
        if target is not None:
            return target
    return path


def remove_stale_temporaries(run_dir: str) -> list[str]:
    """Delete temporary checkpoint files a killed save left behind; return their names.

    Only regular files this user owns are removed (what ``checkpoint.save``'s
    ``mkstemp`` makes), never a link or what it points at."""
    stale = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), "*.ckpt.*.tmp")):
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid():
                os.unlink(path)
                stale.append(path)
        except OSError:
            pass
    return stale
