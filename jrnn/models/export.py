"""A trained language model as serialized StableHLO (``jax.export``): two functions that
a program with JAX alone (no jrnn) loads and calls, the batch size left symbolic.

* ``token_log_probs(tokens: int32[b, t]) -> float32[b, t - 1]``: ``log p(tokens[:, i + 1] |
  tokens[:, :i + 1])``, the model started from its zero state; ``t`` is symbolic too.
  A sentence's log-probability is the sum over its own positions (padding after a
  sentence does not change the positions before it: the model reads left to right).
* ``next_log_probs(state, token: int32[b]) -> (state, float32[b, V])``: one step, for
  generation; ``state`` is a tuple of arrays (the recurrent state, flattened), whose
  zero value :func:`export_model` describes (``state_shapes``: each ``[b, ...]``).

The parameters are constants inside the functions.  The model is rebuilt for export
with the sequential scan (``method="scan"``, unrolled once) and a float32 output
layer, the forms whose program does not depend on the batch or sequence length; its
values are those of the trained model.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np, jrnn
  >>> from jax import export
  >>> model = jrnn.rnn_lm(20, cell="gru", embed_size=8, hidden_size=8, num_layers=1)
  >>> params = model.init(jax.random.PRNGKey(0))
  >>> out = export_model(model, params, platforms=("cpu",))
  >>> score = export.deserialize(out["token_log_probs"])
  >>> tokens = jnp.array([[0, 5, 7, 0], [0, 3, 2, 1]], jnp.int32)
  >>> score.call(tokens).shape, out["state_shapes"]
  ((2, 3), [[8]])
  >>> bool(np.allclose(score.call(tokens), jrnn.token_log_probs(model, params, tokens), atol=1e-5))
  True
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import export

from jrnn.models.lm import LanguageModel, build_model
from jrnn.models.losses import token_log_probs

__all__ = ["export_model", "EXPORT_FORMAT"]

EXPORT_FORMAT = "jrnn-export-1"


def _for_export(model: LanguageModel) -> LanguageModel:
    """The model rebuilt with the forms whose program does not depend on the shapes; a
    model of the user's own (no :class:`jrnn.ModelConfig`) is exported as it is."""
    config = model.config
    if not hasattr(config, "replace"):
        return model
    changes = {"output_precision": "float32"}
    if config.cell != "nnlm":
        changes.update(method="scan", scan_unroll=1)
    return build_model(config.replace(**changes))


def export_model(model: LanguageModel, params: Any, *,
                 platforms: Sequence[str] = ("cpu", "cuda")) -> dict:
    """Serialize ``model`` with ``params``: a dict with ``token_log_probs`` and
    ``next_log_probs`` (bytes of ``jax.export.Exported.serialize()``), ``state_shapes``
    and ``state_dtypes`` (the recurrent state's arrays, without the batch axis: their
    zeros start a sequence), ``vocab_size``, ``format`` and ``platforms``.

    A model made from the user's own cells (``jrnn.rnn_lm(V, cell=my_cell)``) is
    traced into the same files: the exported program needs no Python.
    """
    exported_model = _for_export(model)
    V = exported_model.config.vocab_size
    template = exported_model.initial_carry(1)
    leaves, treedef = jax.tree_util.tree_flatten(template)

    def score(tokens):
        return token_log_probs(exported_model, params, tokens)

    def step(state, token):
        carry = jax.tree_util.tree_unflatten(treedef, list(state))
        logits, carry = exported_model.apply(params, token[:, None], carry)
        log_p = jax.nn.log_softmax(logits[:, -1].astype(jnp.float32), axis=-1)
        return tuple(jax.tree_util.tree_leaves(carry)), log_p

    platforms = tuple(platforms)
    b, t = export.symbolic_shape("b, t", constraints=("t >= 2",))  # a start symbol and a token
    scored = export.export(jax.jit(score), platforms=platforms)(
        jax.ShapeDtypeStruct((b, t), jnp.int32))
    (b,) = export.symbolic_shape("b")
    state_spec = tuple(jax.ShapeDtypeStruct((b, *leaf.shape[1:]), leaf.dtype) for leaf in leaves)
    stepped = export.export(jax.jit(step), platforms=platforms)(
        state_spec, jax.ShapeDtypeStruct((b,), jnp.int32))
    return {"token_log_probs": bytes(scored.serialize()), "next_log_probs": bytes(stepped.serialize()),
            "state_shapes": [list(leaf.shape[1:]) for leaf in leaves],
            "state_dtypes": [str(leaf.dtype) for leaf in leaves], "vocab_size": V,
            "format": EXPORT_FORMAT, "platforms": list(platforms)}
