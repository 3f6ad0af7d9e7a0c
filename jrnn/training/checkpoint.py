"""Checkpoints: one msgpack file (flax serialization), written atomically.

A checkpoint holds the training state (params, optimizer state, step, PRNG
key) and a JSON header with the model config, the vocabulary and whatever
the caller adds (epoch, best validation perplexity, data path...).  It is
written to a temporary file in the same directory, flushed to disk and
renamed over the old one, so a crash mid-save leaves the previous checkpoint
intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

import jax
import numpy as np
from flax import serialization

__all__ = ["CheckpointError", "save", "load_raw", "restore_into", "FORMAT"]

FORMAT = "jrnn-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt or does not fit the model."""


def save(path: str, state: Any, meta: dict) -> None:
    """Write ``state`` (any pytree of arrays) and ``meta`` (JSON-able) to ``path`` atomically."""
    header = json.dumps({"format": FORMAT, **meta})
    payload = {
        "header": header,
        "state": serialization.to_state_dict(jax.device_get(state)),
    }
    data = serialization.msgpack_serialize(payload)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_raw(path: str) -> tuple[dict, dict]:
    """Read ``(meta, state_dict)`` from a checkpoint, or raise :class:`CheckpointError`."""
    if os.path.isdir(path):
        path = os.path.join(path, "best.ckpt")
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no checkpoint here; train one with `jrnn train --out DIR`")
    with open(path, "rb") as f:
        data = f.read()
    try:
        payload = serialization.msgpack_restore(data)
        meta = json.loads(payload["header"])
        state = payload["state"]
    except Exception:
        raise CheckpointError(f"{path}: corrupt or not a jrnn checkpoint") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown checkpoint format {meta.get('format')!r}")
    return meta, state


def restore_into(template: Any, state_dict: dict, path: str = "checkpoint") -> Any:
    """Fill ``template`` (a pytree shaped like the saved state) from ``state_dict``.

    Every leaf's shape must match: a checkpoint from another vocabulary or
    model size is refused with the first mismatch named.
    """
    try:
        restored = serialization.from_state_dict(template, state_dict)
    except Exception as e:
        raise CheckpointError(f"{path}: does not fit this model ({e})") from None
    t_leaves = jax.tree_util.tree_leaves_with_path(template)
    r_leaves = jax.tree_util.tree_leaves(restored)
    for (kp, t), r in zip(t_leaves, r_leaves):
        if np.shape(t) != np.shape(r):
            name = jax.tree_util.keystr(kp)
            raise CheckpointError(
                f"{path}: {name} has shape {np.shape(r)} but the model needs {np.shape(t)} "
                "(a checkpoint of another vocabulary or model size)"
            )
    return restored
