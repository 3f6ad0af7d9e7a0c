"""Loading a trained model to use it: :func:`load_for_inference`.

What ``jrnn eval``, ``score``, ``next``, ``generate`` and ``diagnose`` read
from a run: the model its configuration describes and its parameters, and
nothing else (no optimizer is built).
"""

from __future__ import annotations

import jax
import numpy as np

from jrnn.data import Vocabulary
from jrnn.models.lm import build_model
from jrnn.training import checkpoint as ckpt
from jrnn.training import runs
from jrnn.training.config import ConfigError, TrainConfig
from jrnn.training.step import leaf_names

__all__ = ["load_for_inference"]


def load_for_inference(path: str):
    """``(model, params, vocab, meta)`` from a checkpoint file, a run directory, or a folder
    with a ``latest`` pointer.  Only the parameters are read (no optimizer is built); a
    header that does not describe a model, or parameters that are not finite, are a
    :class:`~jrnn.training.checkpoint.CheckpointError`."""
    path = runs.resolve_run(path)
    meta, raw = ckpt.load_raw(path)
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
    model = build_model(config.model, len(vocab))
    if "params" not in raw:
        raise ckpt.CheckpointError(f"{path}: holds no parameters")
    params = ckpt.restore_into(model.init(jax.random.PRNGKey(0)), raw["params"], path)
    bad = [n for n, x in zip(leaf_names(params), jax.tree_util.tree_leaves(params))
           if not np.all(np.isfinite(np.asarray(x)))]
    if bad:
        raise ckpt.CheckpointError(f"{path}: parameters {', '.join(bad[:3])} hold NaN or infinite "
                                   "values; this checkpoint cannot score text")
    return model, params, vocab, meta
