"""Losses and scores of a language model: the summed per-timestep cross-entropy and log-probabilities."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from jrnn.core.backward import softmax_cross_entropy
from jrnn.core.validation import check_lengths, check_tokens
from jrnn.models.lm import LanguageModel

Array = jax.Array

__all__ = [
    "LossAux",
    "sequence_loss",
    "token_log_probs",
    "log_prob",
    "next_token_log_probs",
]


class LossAux(NamedTuple):
    """What :func:`sequence_loss` returns next to the scalar loss."""

    losses: Array  # float[B, T]: cross-entropy of each timestep (0 where masked)
    carry: Any  # the carry after the window, for the next window
    num_tokens: Array  # number of unmasked timesteps


def sequence_loss(
    model: LanguageModel,
    params,
    inputs: Array,
    targets: Array,
    carry=None,
    *,
    mask: Optional[Array] = None,
    batch_mean: bool = False,
    key: Optional[Array] = None,
):
    """Cross-entropy at every timestep, summed over time into one scalar.

    As in the lecture, the network makes one output and so one loss per
    timestep, and the losses are added up; ``jax.grad`` of this scalar is
    backpropagation through time.  With ``model.config.custom_vjp`` (the
    default) the output layer and the cross-entropy run chunk by chunk
    through :func:`jrnn.core.backward.softmax_cross_entropy`: the same loss and
    gradient without the ``[B, T, V]`` logits.

    Args:
      model: a :class:`LanguageModel`.
      params: its parameters.
      inputs, targets: ``int[B, T]``; ``targets[:, t]`` is the token after ``inputs[:, t]``.
      carry: carry from the previous window (``None``: start of text).
      mask: optional ``bool/float[B, T]``; masked (0) steps add nothing.
      batch_mean: divide by B (Zaremba et al.: summed over time, averaged
        over the batch); otherwise the sum over batch and time.
      key: PRNG key for dropout (training only).

    Returns:
      ``(loss, LossAux(losses: float[B, T], carry, num_tokens))``.
    """
    V = model.config.vocab_size
    inputs = check_tokens(inputs, V, "inputs")
    targets = check_tokens(targets, V, "targets")
    if inputs.shape != targets.shape:
        raise ValueError(f"inputs {inputs.shape} and targets {targets.shape} must have one shape")
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != inputs.shape:
            raise ValueError(f"mask must have shape {inputs.shape}, got {mask.shape}")
        mask = mask.astype(bool)
        num_tokens = jnp.sum(mask.astype(jnp.int32))
    else:
        num_tokens = jnp.asarray(inputs.size, jnp.int32)
    scale = 1.0 / inputs.shape[0] if batch_mean else 1.0
    features = model.features
    use_chunked = (
        getattr(model.config, "custom_vjp", False)
        and features is not None
        and model.features_for is model.apply
    )
    if use_chunked:
        # Output layer + cross-entropy chunk by chunk, never the [B, T, V] logits.
        h, (W_out, b_out), carry = features(params, inputs, carry, key=key)
        B, T, H = h.shape
        weights = jnp.full((B, T), scale, h.dtype)
        if mask is not None:
            weights = jnp.where(mask, weights, 0.0)
        loss, losses = softmax_cross_entropy(
            h.reshape(B * T, H), W_out, b_out, targets.reshape(-1), weights.reshape(-1),
            matmul_dtype=getattr(model.config, "output_precision", None),
        )
        losses = losses.reshape(B, T)
        if mask is not None:
            losses = jnp.where(mask, losses, 0.0)
        return loss, LossAux(losses, carry, num_tokens)
    logits, carry = model.apply(params, inputs, carry, key=key)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    if mask is not None:
        losses = jnp.where(mask, losses, 0.0)
    loss = jnp.sum(losses)
    if batch_mean:
        loss = loss / inputs.shape[0]
    return loss, LossAux(losses, carry, num_tokens)


def _length_mask(lengths, B: int, T: int) -> Array:
    if lengths is None:
        return jnp.ones((B, T), bool)
    lengths = check_lengths(lengths, T, B, min_length=1)
    return jnp.arange(T)[None, :] < lengths[:, None]


def token_log_probs(model: LanguageModel, params, tokens: Array, lengths=None) -> Array:
    """``log p(tokens[:, t] | tokens[:, :t])`` for ``t >= 1``: ``float[B, T-1]``.

    ``tokens[:, 0]`` is the start symbol (``<eos>`` in the Penn Treebank
    convention) and is not scored; steps at or past ``lengths`` are 0.
    """
    tokens = check_tokens(tokens, model.config.vocab_size)
    B, T = tokens.shape
    if T < 2:
        raise ValueError("tokens need a start symbol plus at least one token to score (T >= 2)")
    valid = _length_mask(lengths, B, T)[:, 1:]
    logits, _ = model.apply(params, tokens[:, :-1])
    lp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1)[..., 0]
    return jnp.where(valid, lp, 0.0)


def log_prob(model: LanguageModel, params, tokens: Array, lengths=None) -> Array:
    """Log-probability of each whole sequence after its start symbol: ``float[B]``.

    Example -- the lecture's question, in two lines (ids from a vocabulary)::

        lp = jrnn.log_prob(model, params, vocab.encode_batch(
            ["john is driving a car", "john is driving a cat"]))
        print("car" if lp[0] > lp[1] else "cat")
    """
    return jnp.sum(token_log_probs(model, params, tokens, lengths), axis=1)


def next_token_log_probs(model: LanguageModel, params, context: Array, lengths=None) -> Array:
    """Log-distribution of the word after each context: ``float[B, V]``.

    ``context: int[B, T]`` (start symbol first); with ``lengths`` the word
    after ``context[b, :lengths[b]]``.
    """
    context = check_tokens(context, model.config.vocab_size, "context")
    B, T = context.shape
    _length_mask(lengths, B, T)  # validates
    last = (jnp.full((B,), T) if lengths is None else jnp.asarray(lengths)) - 1
    logits, _ = model.apply(params, context)
    logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(logits)
