"""Epoch snapshots of a run, kept through Orbax: the newest ``keep``, and the ``keep_best`` best.

``fit(..., keep=N, keep_best=M)`` (``jrnn train --keep N --keep-best M``)
keeps, besides ``last.ckpt`` and ``best.ckpt``, the training state of past
epoch ends in the run directory::

    runs/3/snapshots/last/<step>/   the newest N epoch ends
    runs/3/snapshots/best/<step>/   the M epoch ends of lowest validation perplexity
                                    (an epoch without a finite one is never among them)

``<step>`` is the number of updates at that epoch's end.  Each snapshot is
one step of an ``orbax.checkpoint.CheckpointManager`` (``max_to_keep``;
``best_fn``, ``best_mode="min"`` for ``best``) with two items: ``state``,
the training state exactly as that epoch's ``last.ckpt`` holds it (params,
opt_state, step and the PRNG key, a raw ``uint32[2]``: the dict
``flax.serialization.to_state_dict`` makes of it), and ``meta``, the JSON
header of that ``last.ckpt`` (format, config, vocabulary, epoch, best
validation perplexity, history).  :func:`load` reads a snapshot back as
:func:`jrnn.training.checkpoint.load_raw` reads a file, so ``jrnn eval``,
``score``, ``next``, ``generate`` and ``export`` take a snapshot folder
wherever they take a checkpoint.

Saves are asynchronous: :meth:`Snapshots.save` returns once the arrays are
in host memory, and Orbax writes them on a background thread while the next
epoch trains.  Orbax writes a snapshot into ``<step>.orbax-checkpoint-tmp``
and renames it when it is complete, so a killed save leaves only that
folder: the next run that keeps snapshots removes it (and says so), Orbax
never lists it, and :func:`load` refuses it in one line.  ``fit`` never
writes ``last.ckpt`` past an epoch whose snapshot is still being written
(:meth:`Snapshots.wait` first) and waits for them all before the run ends,
so a resumed run finds every earlier snapshot complete and remakes, from
``last.ckpt``, the one of the epoch end it resumes at if a kill lost it: an
interrupted and resumed run keeps what the uninterrupted one keeps.

With several processes every process calls :meth:`Snapshots.save` at the
same point, Orbax coordinates them and process 0 writes (the run directory
must be on a filesystem they share, as for ``--resume``).  Importing Orbax
costs about 0.2 s after JAX (1.8 s in a fresh process, JAX included, on a
2-core CPU), so it is imported only by a run that keeps snapshots or a
command given one.

Cost (Zaremba-small, 4.65M parameters and SGD: a 17.7 MiB state, 2-core
CPU): a synchronous Orbax save takes 138 ms; the asynchronous one blocks
training for 20 ms and finishes in the background.
"""

from __future__ import annotations

import copy
import math
import os
import shutil
from typing import Any, Callable, Optional

import jax
from flax import serialization

from jrnn.training import checkpoint as ckpt
from jrnn.training import distributed, runs
from jrnn.training.rundir import SaveError

__all__ = ["Snapshots", "load", "is_snapshot"]

ITEMS = ("state", "meta")
KINDS = ("last", "best")  # the folders under <run>/snapshots
# The file Orbax writes in every checkpoint folder it began (read here without importing Orbax).
_ORBAX_METADATA = "_CHECKPOINT_METADATA"


def _orbax():
    """``orbax.checkpoint``, imported on first use, which ``import jrnn`` and runs that keep
    no snapshots never pay for."""
    import orbax.checkpoint as ocp

    return ocp


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class Snapshots:
    """The snapshots one run keeps in ``folder`` (``<run>/snapshots``): none when ``keep``
    and ``keep_best`` are 0, and then Orbax is never imported.

    The Orbax managers are opened at the first :meth:`save` (after the run's
    first ``last.ckpt``, so a start that never saved leaves no folder), after
    removing the unfinished snapshots a killed save left; ``say`` is told
    what was removed.  Use it as a context manager: leaving it waits for the
    snapshots being written.

    Example (what ``fit`` does at the end of each epoch)::

        with Snapshots("runs/3/snapshots", keep=3, keep_best=1) as snaps:
            snaps.save(state, meta, valid_ppl=112.4)  # returns while Orbax writes
            snaps.wait()  # before last.ckpt moves past this epoch
    """

    def __init__(self, folder: str, keep: int = 0, keep_best: int = 0,
                 say: Optional[Callable[[str], None]] = None):
        self.folder, self.keep, self.keep_best = folder, keep, keep_best
        self.say = say or (lambda text: None)
        self._managers: Optional[dict] = None

    @property
    def enabled(self) -> bool:
        return bool(self.keep or self.keep_best)

    def _failed(self, e: Exception) -> SaveError:
        return SaveError(f"cannot write a snapshot in {self.folder} ({_first_line(e)}); the "
                         "checkpoints already there are intact")

    def _open(self) -> dict:
        """``{"last": manager, "best": manager}`` (those kept), opened once."""
        if self._managers is not None:
            return self._managers
        ocp, self._managers = _orbax(), {}
        for kind, n in zip(KINDS, (self.keep, self.keep_best)):
            if not n:
                continue
            where = os.path.join(self.folder, kind)
            if jax.process_index() == 0 and os.path.isdir(where):
                for name in ocp.path.step.tmp_checkpoints(where):  # Orbax's own test of a folder
                    shutil.rmtree(os.path.join(where, name))
                    self.say(f"removed {os.path.join(where, name)}, left by an interrupted save")
            best = (dict(best_fn=lambda metrics: metrics["valid_ppl"], best_mode="min",
                         keep_checkpoints_without_metrics=False) if kind == "best" else {})
            # Its own barrier names: the two managers' saves run at the same time in a group.
            group = ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f"jrnn-{kind}")
            options = ocp.CheckpointManagerOptions(max_to_keep=n, multiprocessing_options=group,
                                                   **best)
            self._managers[kind] = ocp.CheckpointManager(os.path.abspath(where), options=options,
                                                         item_names=ITEMS)
        return self._managers

    def save(self, state: Any, meta: dict, valid_ppl: Optional[float]) -> None:
        """Start saving an epoch end's snapshot under ``state.step``: in ``last``, and in
        ``best`` when ``valid_ppl`` is finite; where that step is already saved, nothing.

        ``state`` is the :class:`~jrnn.training.step.TrainState` (NumPy or
        replicated ``jax.Array`` leaves) and ``meta`` the header that epoch's
        ``last.ckpt`` gets.  Returns once the arrays are in host memory (on a
        CPU they are the state's own buffers, which JAX then does not donate
        to the next step); with several processes every process calls it.

        Raises:
          SaveError: the folders could not be made or Orbax could not start the save.
        """
        if not self.enabled:
            return
        ocp = _orbax()
        host = distributed.to_host(state)  # replicated leaves: no communication
        step = int(host.step)
        item = ocp.args.Composite(
            state=ocp.args.StandardSave(serialization.to_state_dict(host)),
            meta=ocp.args.JsonSave({"format": ckpt.FORMAT, **copy.deepcopy(meta)}))
        try:
            for kind, manager in self._open().items():
                best = kind == "best"
                if best and (valid_ppl is None or not math.isfinite(valid_ppl)):
                    continue
                if step in manager.all_steps():  # a resume at the epoch end that saved it
                    continue
                manager.save(step, args=item, metrics={"valid_ppl": valid_ppl} if best else None)
        except Exception as e:  # noqa: BLE001 -- Orbax's and the filesystem's, in one line
            raise self._failed(e) from None

    def wait(self) -> None:
        """Block until the snapshots being written are complete.

        Raises:
          SaveError: a snapshot could not be written (it is left unfinished).
        """
        for manager in (self._managers or {}).values():
            try:
                manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001 -- Orbax's and the filesystem's, in one line
                raise self._failed(e) from None

    def close(self) -> None:
        """Wait for the snapshots being written, then stop Orbax's threads."""
        managers, self._managers = self._managers or {}, None
        try:
            for manager in managers.values():
                manager.close()
        except Exception as e:  # noqa: BLE001 -- Orbax's and the filesystem's, in one line
            raise self._failed(e) from None

    def __enter__(self) -> "Snapshots":
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.close()
            return
        lost = isinstance(error, distributed.GroupLostError) or (
            distributed.is_multiprocess() and isinstance(error, jax.errors.JaxRuntimeError))
        if lost:  # Orbax would wait at its barriers for the dead process: the resume remakes
            return  # the snapshot this leaves unfinished
        try:  # an error ends the run: the snapshots it started are still finished
            self.close()
        except SaveError:
            pass  # the error in flight is the one to report


def is_snapshot(path: str) -> bool:
    """Whether ``path`` is a folder for :func:`load` rather than a run directory (checked
    without importing Orbax): an Orbax checkpoint, or a folder of a run's ``snapshots`` tree
    (``runs/3/snapshots``, ``runs/3/snapshots/best``, ``runs/3/snapshots/best/1200``)."""
    if not os.path.isdir(path) or runs.holds_run(path):
        return False
    parts = os.path.abspath(path).split(os.sep)
    return os.path.isfile(os.path.join(path, _ORBAX_METADATA)) or runs.SNAPSHOTS in parts[-3:]


def _inside(path: str) -> list[str]:
    """The finished snapshots in ``path`` and its ``last``/``best`` folders, by kind and step."""
    found = []
    for folder in (path, *(os.path.join(path, kind) for kind in KINDS)):
        try:
            names = sorted((n for n in os.listdir(folder) if n.isdigit()), key=int)
        except OSError:
            continue
        found += [os.path.join(folder, n) for n in names
                  if os.path.isfile(os.path.join(folder, n, _ORBAX_METADATA))]
    return found


def load(path: str) -> tuple[dict, dict]:
    """``(meta, state_dict)`` of the snapshot in the folder ``path``
    (``runs/3/snapshots/best/1200``), as :func:`~jrnn.training.checkpoint.load_raw`
    gives a checkpoint file's: the header, and the state's dict of NumPy arrays.

    Raises:
      CheckpointError: ``path`` is an unfinished snapshot, a folder of several,
        or not a jrnn snapshot.
    """
    ocp = _orbax()
    if os.path.basename(os.path.normpath(path)).endswith(ocp.path.step.TMP_DIR_SUFFIX):
        raise ckpt.CheckpointError(f"{path}: an unfinished snapshot (its save was interrupted); "
                                   "give a finished one")
    if not os.path.isfile(os.path.join(path, _ORBAX_METADATA)):
        found = _inside(path)
        if found:
            raise ckpt.CheckpointError(
                f"{path} is a folder of snapshots, not one: give one of them, e.g. {found[-1]}")
        raise ckpt.CheckpointError(f"{path}: not a snapshot (no Orbax checkpoint in it); give "
                                   "a run directory, a .ckpt file or a snapshot folder")
    if not all(os.path.isdir(os.path.join(path, item)) for item in ITEMS):
        raise ckpt.CheckpointError(f"{path}: an Orbax checkpoint, but not a jrnn snapshot (it "
                                   f"has no {' and '.join(ITEMS)} items)")
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        item = checkpointer.restore(os.path.abspath(path), args=ocp.args.Composite(
            state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
        meta, state = item["meta"], item["state"]
    except Exception as e:  # noqa: BLE001 -- whatever a damaged folder makes Orbax raise
        raise ckpt.CheckpointError(f"{path}: corrupt or not a jrnn snapshot "
                                   f"({_first_line(e)})") from None
    finally:
        checkpointer.close()
    if not isinstance(meta, dict) or meta.get("format") != ckpt.FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise ckpt.CheckpointError(f"{path}: unknown snapshot format {found!r} (this jrnn "
                                   f"reads {ckpt.FORMAT})")
    if not isinstance(state, dict):
        raise ckpt.CheckpointError(f"{path}: corrupt or not a jrnn snapshot (no state)")
    meta["_carry"] = None  # an epoch end: no carry
    return meta, state
