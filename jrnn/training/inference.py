"""Loading a trained model to use it: :func:`load_for_inference`.

What ``jrnn eval``, ``score``, ``next``, ``generate`` and ``diagnose`` read
from a run: the model its configuration describes and its parameters, and
nothing else (no optimizer is built).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.data import Vocabulary
from jrnn.models.lm import build_model
from jrnn.training import checkpoint as ckpt
from jrnn.training import runs, snapshots
from jrnn.training.config import ConfigError, TrainConfig
from jrnn.training.step import leaf_names

__all__ = ["load_for_inference", "PARAM_LIMIT"]

# The largest parameter magnitude a model may have to be used: the square root of float32's
# largest number (about 1.8e19), so that no product of two parameters overflows.
PARAM_LIMIT = float(np.sqrt(np.finfo(np.float32).max))


def load_for_inference(path: str):
    """``(model, params, vocab, meta)`` from a checkpoint file, a run directory, a snapshot
    folder (``runs/3/snapshots/best/1200``, :mod:`jrnn.training.snapshots`), or a folder
    with a ``latest`` pointer.  Only the parameters are read (no optimizer is built); a
    header that does not describe a model, or parameters that are not finite, are a
    :class:`~jrnn.training.checkpoint.CheckpointError`."""
    path = runs.resolve_run(path)
    meta, raw = snapshots.load(path) if snapshots.is_snapshot(path) else ckpt.load_raw(path)
    if "model" in meta.get("given", ()):
        raise ckpt.CheckpointError(f"{path}: its model was given in Python, so only that code can "
                                   "rebuild it; load the parameters with jrnn.training.checkpoint")
    try:
        vocab = Vocabulary.from_dict(meta["vocab"])
        config = TrainConfig.from_dict(meta["config"] if "config" in meta else meta["settings"])
    except ConfigError as e:
        raise ckpt.CheckpointError(f"{path}: the saved configuration is invalid ({e})") from None
    except (KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{path}: header is incomplete ({e})") from None
    if config.model is None:
        raise ckpt.CheckpointError(f"{path}: its configuration describes no model")
    if "params" not in raw:
        raise ckpt.CheckpointError(f"{path}: holds no parameters")
    try:
        model = build_model(config.model, len(vocab))
        # The shapes the header implies, without allocating them: a header may describe a
        # model far larger than the arrays in the file (hidden_size 20000 in a 10 kB file).
        shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0))
    except (ConfigError, TypeError, ValueError, OverflowError) as e:
        raise ckpt.CheckpointError(f"{path}: its header describes no model jrnn can build "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                   ) from None
    kind = config.model.cell if isinstance(config.model.cell, str) else "custom"
    try:
        saved = ckpt.restore_into(shapes, raw["params"], path)
    except ckpt.CheckpointError as e:
        m = config.model
        raise ckpt.CheckpointError(f"{e}; its header says {kind!r}, hidden size "
                                   f"{getattr(m, 'hidden_size', '?')}, "
                                   f"{getattr(m, 'num_layers', '?')} layer(s)") from None
    # Only now, with every shape checked against the file, the arrays: what the file holds.
    params = jax.tree_util.tree_map(lambda t, x: jnp.asarray(x, t.dtype), shapes, saved)
    names, leaves = leaf_names(params), jax.tree_util.tree_leaves(params)
    bad = [n for n, x in zip(names, leaves) if not np.all(np.isfinite(np.asarray(x)))]
    if bad:
        raise ckpt.CheckpointError(f"{path}: parameters {', '.join(bad[:3])} hold NaN or infinite "
                                   "values; this checkpoint cannot score text")
    # Finite but past what float32 can multiply: the product of two such numbers overflows,
    # so eval, score, next and generate would each fail in its own way (NaN, overflow).
    huge = [(n, float(np.max(np.abs(np.asarray(x))))) for n, x in zip(names, leaves)
            if np.size(x) and np.issubdtype(np.asarray(x).dtype, np.floating)
            and float(np.max(np.abs(np.asarray(x)))) > PARAM_LIMIT]
    if huge:
        raise ckpt.CheckpointError(
            f"{path}: parameters {', '.join(n for n, _ in huge[:3])} reach "
            f"{max(v for _, v in huge):.3g}, beyond {PARAM_LIMIT:.3g} (past it the product of two "
            "parameters overflows float32); this checkpoint cannot score text")
    return model, params, vocab, meta
