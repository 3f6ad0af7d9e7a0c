"""Checkpoints: one msgpack file (flax serialization), written atomically.

A checkpoint holds the training state (params, optimizer state, step, PRNG
key), optionally the recurrent carry at the window where it was taken (so a
run resumed mid-epoch continues exactly as the uninterrupted one), and a JSON
header with the training config, the vocabulary and whatever the caller adds
(epoch, window, best validation perplexity, history...).  It is written to a
temporary file in the same directory, flushed to disk and renamed over the
old one, so a crash mid-save leaves the previous checkpoint intact; the file
gets the usual ``0644`` permissions (less what the umask removes).

Formats: ``jrnn-checkpoint-v2`` (this release: carry, ``config``) and
``jrnn-checkpoint-v1`` (the first release), which still loads for
evaluation and scoring.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Optional

import jax
import numpy as np
from flax import serialization

from jrnn.data import NotARegularFile, read_file_bytes

__all__ = ["CheckpointError", "save", "load_raw", "load_carry", "restore_into", "FORMAT",
           "FORMATS"]

FORMAT = "jrnn-checkpoint-v2"
FORMATS = ("jrnn-checkpoint-v1", FORMAT)  # what load_raw reads


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


def save(path: str, state: Any, meta: dict, carry: Any = None) -> None:
    """Write ``state`` (a pytree of arrays), ``carry`` and ``meta`` (JSON-able) to ``path`` atomically."""
    header = json.dumps({"format": FORMAT, **meta})
    payload = {
        "header": header,
        "state": serialization.to_state_dict(jax.device_get(state)),
    }
    if carry is not None:
        payload["carry"] = serialization.to_state_dict(jax.device_get(carry))
    data = serialization.msgpack_serialize(payload)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_raw(path: str) -> tuple[dict, dict]:
    """Read ``(meta, state_dict)`` from a checkpoint, or raise :class:`CheckpointError`."""
    if os.path.isdir(path):  # a run: its best checkpoint, or its last while it has no best
        best, last = os.path.join(path, "best.ckpt"), os.path.join(path, "last.ckpt")
        path = best if os.path.exists(best) or not os.path.exists(last) else last
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no checkpoint here; train one with `jrnn train --out DIR`")
    try:
        data = read_file_bytes(path)  # a regular file, no more than it holds
    except NotARegularFile:
        raise CheckpointError(f"{path}: not a regular file; a checkpoint is a file "
                              "written by `jrnn train`") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    try:
        payload = serialization.msgpack_restore(data)
        meta = json.loads(payload["header"])
        state = payload["state"]
    except Exception:
        raise CheckpointError(f"{path}: corrupt or not a jrnn checkpoint") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: header is a JSON {type(meta).__name__}, not an object")
    if meta.get("format") not in FORMATS:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r} "
                              f"(this jrnn reads {', '.join(FORMATS)})")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: corrupt or not a jrnn checkpoint (no state)")
    meta["_carry"] = payload.get("carry")
    return meta, state


def load_carry(meta: dict, template: Any, path: str = "checkpoint") -> Any:
    """The carry saved with a checkpoint, shaped like ``template`` (``None`` if none was saved)."""
    saved = meta.get("_carry")
    if saved is None:
        return None
    return restore_into(template, saved, path)


def _keys_mismatch(template: Any, state_dict: Any, where: str = "") -> Optional[str]:
    """The first place where the saved dicts' keys differ from the template's, said in words."""
    if not isinstance(template, dict) or not isinstance(state_dict, dict):
        return None
    want = {str(k) for k in serialization.to_state_dict(template)}
    got = {str(k) for k in state_dict}
    if want != got:
        return (f"{where or 'the top level'} holds {', '.join(sorted(got)) or 'nothing'} where "
                f"the model has {', '.join(sorted(want)) or 'nothing'}")
    for k, v in serialization.to_state_dict(template).items():
        found = _keys_mismatch(v, state_dict[str(k)], f"{where}/{k}" if where else str(k))
        if found:
            return found
    return None


def _shape_dtype(leaf: Any) -> tuple:
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    a = np.asarray(leaf)
    return a.shape, a.dtype


def restore_into(template: Any, state_dict: dict, path: str = "checkpoint") -> Any:
    """Fill ``template`` (a pytree shaped like the saved state) from ``state_dict``.

    Every leaf's shape must match: a checkpoint from another vocabulary, model
    size or cell kind is refused with the first mismatch named.  ``template``
    may be abstract (``jax.eval_shape`` of the model's ``init``, leaves
    :class:`jax.ShapeDtypeStruct`): then the check runs before anything of
    the model's size is allocated, and the leaves returned are the file's
    arrays (NumPy) -- what a checkpoint makes jrnn allocate is what it holds.
    """
    try:
        restored = serialization.from_state_dict(template, state_dict)
    except Exception as e:
        where = _keys_mismatch(template, state_dict) or \
            (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path}: does not fit this model ({where}; a checkpoint of "
                              "another cell kind or model)") from None
    t_leaves = jax.tree_util.tree_leaves_with_path(template)
    r_leaves = jax.tree_util.tree_leaves(restored)
    if len(t_leaves) != len(r_leaves):
        raise CheckpointError(f"{path}: does not fit this model (it holds {len(r_leaves)} arrays "
                              f"where the model has {len(t_leaves)})")
    for (kp, t), r in zip(t_leaves, r_leaves):
        name = jax.tree_util.keystr(kp)
        (t_shape, t_dtype), r_shape = _shape_dtype(t), np.shape(r)
        if t_shape != r_shape:
            raise CheckpointError(
                f"{path}: {name} has shape {r_shape} but the model needs {t_shape} "
                "(a checkpoint of another vocabulary, model size or cell kind)"
            )
        r_kind = np.asarray(r).dtype.kind
        if t_dtype.kind == "f" and r_kind != "f":
            raise CheckpointError(f"{path}: {name} holds {np.asarray(r).dtype} values where the "
                                  "model needs floating point")
    return restored
