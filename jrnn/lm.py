"""Language models: an RNN LM and the fixed-window NNLM it replaces.

A language model says how probable a sentence is.  Both models here share one
interface, :class:`LanguageModel`, so the loss, the scoring functions and the
training code work for either:

* ``init(key) -> params``
* ``initial_carry(batch_size) -> carry``
* ``apply(params, tokens, carry=None, *, lengths=None, key=None) -> (logits, carry)``
  with ``tokens: int[B, T]`` and ``logits: float[B, T, V]``; ``logits[:, t]``
  scores the token that follows ``tokens[:, t]``.  The returned carry
  continues the text in the next call (truncated BPTT).
* ``encode(params, tokens, lengths=None) -> float[B, H]``: the final hidden
  state, a summary vector of each sequence.
* ``features(params, tokens, carry=None, *, lengths=None, key=None) ->
  (h: float[B, T, H], (W_out, b_out), carry)``: what ``apply`` computes
  before its output layer, so that :func:`sequence_loss` can run the output
  layer and the cross-entropy together without the ``[B, T, V]`` logits
  (:func:`jrnn.fused.softmax_cross_entropy`).  Optional (``None``).

Token arrays are batch-major ``[B, T]`` here; the recurrence itself runs
time-major inside :func:`jrnn.unroll`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jrnn import fused
from jrnn.cells import CELL_KINDS, make_cell
from jrnn.unrolling import remat as remat_cell
from jrnn.unrolling import unroll as unroll_cells

Array = jax.Array

__all__ = [
    "LMConfig",
    "NNLMConfig",
    "LanguageModel",
    "LossAux",
    "rnn_lm",
    "nnlm",
    "sequence_loss",
    "token_log_probs",
    "log_prob",
    "next_token_log_probs",
]


class LMConfig(NamedTuple):
    """Configuration of an RNN language model (hashable: safe as a jit static).

    ``init_scale=None`` keeps each cell's default init (U(+-1/sqrt(H)), as
    PyTorch) and U(+-0.1) for the embedding and output layer; a number ``s``
    draws every parameter from U(-s, s), as Zaremba et al. do.
    """

    vocab_size: int
    cell: str = "lstm"
    activation: str = "tanh"
    embed_size: int = 200
    hidden_size: int = 200
    num_layers: int = 2
    dropout: float = 0.0
    tie_embeddings: bool = False
    init_scale: Optional[float] = None
    forget_bias: float = 0.0
    unroll: Union[int, str] = "auto"
    remat: bool = False
    custom_vjp: bool = True


class NNLMConfig(NamedTuple):
    """Configuration of the fixed-window feed-forward NNLM (Bengio et al., 2003).

    ``context_size`` is n - 1 for an n-gram model: how many previous words
    the network sees.
    """

    vocab_size: int
    context_size: int = 4
    embed_size: int = 100
    hidden_size: int = 200
    dropout: float = 0.0
    init_scale: float = 0.1
    custom_vjp: bool = True


class LanguageModel(NamedTuple):
    """A language model as a config plus pure functions (see module doc)."""

    config: Any
    init: Callable[[Array], dict]
    initial_carry: Callable[..., Any]
    apply: Callable[..., tuple]
    encode: Callable[..., Array]
    # Optional, see the module doc.  Tied to ``apply`` (``features.apply is
    # apply``): a model whose apply was replaced is scored through its logits.
    features: Optional[Callable[..., tuple]] = None


class LossAux(NamedTuple):
    """What :func:`sequence_loss` returns next to the scalar loss."""

    losses: Array  # float[B, T]: cross-entropy of each timestep (0 where masked)
    carry: Any  # the carry after the window, for the next window
    num_tokens: Array  # number of unmasked timesteps


def _check_tokens(tokens, vocab_size: int, name: str = "tokens") -> Array:
    concrete = not isinstance(tokens, jax.core.Tracer)
    if concrete:  # checked on a host copy, also when closed over under jit
        host = np.asarray(tokens)
    tokens = jnp.asarray(tokens)
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise TypeError(f"{name} must be integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim != 2:
        raise ValueError(f"{name} must have shape [B, T], got shape {tokens.shape}")
    if concrete and tokens.size:
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= vocab_size:
            raise ValueError(
                f"{name} must be ids in [0, vocab_size={vocab_size}), got values in [{lo}, {hi}]"
            )
    return tokens


def _check_positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _dropout(key, rate: float, x: Array) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _uniform(key, shape, scale, dtype):
    return jax.random.uniform(key, shape, dtype, -scale, scale)


def rnn_lm(
    vocab_size: int,
    *,
    cell: str = "lstm",
    activation: str = "tanh",
    embed_size: int = 200,
    hidden_size: int = 200,
    num_layers: int = 2,
    dropout: float = 0.0,
    tie_embeddings: bool = False,
    init_scale: Optional[float] = None,
    forget_bias: float = 0.0,
    unroll: Union[int, str] = "auto",
    remat: bool = False,
    custom_vjp: bool = True,
) -> LanguageModel:
    """An RNN language model: embed -> stacked cells -> output layer -> logits.

    Dropout (rate ``dropout``, only when ``apply`` gets a ``key``) is applied
    to the embeddings, between layers and to the last layer's outputs, as in
    Zaremba et al. (2014).  The output layer runs on all timesteps at once,
    after the scan.  With ``tie_embeddings`` the output weights are the
    transposed embedding (needs ``embed_size == hidden_size``).  ``unroll`` is
    passed to :func:`jrnn.unroll` (``"auto"``: 1 on CPU, 8 on accelerators);
    ``remat`` recomputes each step in the backward pass (:func:`jrnn.remat`),
    trading time for memory on long sequences.  ``custom_vjp`` (default) uses
    jrnn's hand-written backward passes for the recurrence and for the
    softmax output layer (:mod:`jrnn.fused`): the same values and gradients,
    a faster and smaller train step; ``False`` keeps plain autodiff (needed
    for forward-mode ``jax.jvp`` through the model).

    Params: ``{"embed": [V, E], "layers": [cell params per layer],
    "out": {"W": [H, V], "b": [V]}}`` (``"out"`` has only ``"b"`` when tied).

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> model = jrnn.rnn_lm(50, cell="gru", embed_size=16, hidden_size=16, num_layers=1)
      >>> params = model.init(jax.random.PRNGKey(0))
      >>> logits, carry = model.apply(params, jnp.zeros((2, 7), jnp.int32))
      >>> logits.shape
      (2, 7, 50)
    """
    config = LMConfig(
        vocab_size, cell, activation, embed_size, hidden_size, num_layers,
        float(dropout), bool(tie_embeddings), init_scale, float(forget_bias), unroll, bool(remat),
        bool(custom_vjp),
    )
    for name in ("vocab_size", "embed_size", "hidden_size", "num_layers"):
        _check_positive(name, getattr(config, name))
    if cell not in CELL_KINDS:
        raise ValueError(f"unknown cell kind {cell!r}; expected one of {list(CELL_KINDS)}")
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if tie_embeddings and embed_size != hidden_size:
        raise ValueError(
            f"tie_embeddings needs embed_size == hidden_size, got {embed_size} and {hidden_size}"
        )
    cells = [
        make_cell(cell, hidden_size, activation=activation, forget_bias=forget_bias,
                  init_scale=init_scale)
        for _ in range(num_layers)
    ]
    if remat:
        cells = [remat_cell(c) for c in cells]
    V, E, H = vocab_size, embed_size, hidden_size

    def init(key: Array, dtype=jnp.float32) -> dict:
        k_embed, k_out, *k_layers = jax.random.split(key, 2 + num_layers)
        s = 0.1 if init_scale is None else init_scale
        layers = [
            c.init(k, E if i == 0 else H, dtype) for i, (c, k) in enumerate(zip(cells, k_layers))
        ]
        k_w, k_b = jax.random.split(k_out)
        out = {"b": _uniform(k_b, (V,), s, dtype) if init_scale is not None else jnp.zeros((V,), dtype)}
        if not tie_embeddings:
            out["W"] = _uniform(k_w, (H, V), s, dtype)
        return {"embed": _uniform(k_embed, (V, E), s, dtype), "layers": layers, "out": out}

    def initial_carry(batch_size: int, dtype=jnp.float32):
        return [c.initial_carry((batch_size,), dtype) for c in cells]

    def _hidden_states(params, tokens, carry, lengths, key):
        tokens = _check_tokens(tokens, V)
        k_in, k_mid, k_out = jax.random.split(key, 3) if key is not None else (None,) * 3
        # Gather straight into time-major [T, B, E]: transposing ids is free.
        xs = _dropout(k_in, config.dropout, params["embed"][tokens.T])
        carry, hs = unroll_cells(
            cells, params["layers"], xs, carry, lengths=lengths, unroll=unroll,
            dropout=config.dropout, key=k_mid, custom_vjp=config.custom_vjp,
        )
        return _dropout(k_out, config.dropout, hs), carry

    def features(params, tokens, carry=None, *, lengths=None, key=None):
        """``tokens: int[B, T]`` -> ``(h: float[B, T, H], (W_out [H, V], b_out [V]), carry)``."""
        hs, carry = _hidden_states(params, tokens, carry, lengths, key)
        W_out = params["out"]["W"] if not tie_embeddings else params["embed"].T
        return jnp.swapaxes(hs, 0, 1), (W_out, params["out"]["b"]), carry

    def apply(params, tokens, carry=None, *, lengths=None, key=None):
        """``tokens: int[B, T]`` -> ``(logits: float[B, T, V], carry)``."""
        h, (W_out, b_out), carry = features(params, tokens, carry, lengths=lengths, key=key)
        return h @ W_out + b_out, carry

    def encode(params, tokens, lengths=None):
        """The last layer's hidden state after each sequence's last valid token: ``[B, H]``."""
        _, carry = _hidden_states(params, tokens, None, lengths, None)
        return cells[-1].hidden(carry[-1])

    features.apply = apply
    return LanguageModel(config, init, initial_carry, apply, encode, features)


def nnlm(
    vocab_size: int,
    *,
    context_size: int = 4,
    embed_size: int = 100,
    hidden_size: int = 200,
    dropout: float = 0.0,
    init_scale: float = 0.1,
    custom_vjp: bool = True,
) -> LanguageModel:
    """The feed-forward fixed-window NNLM: n - 1 previous words -> next word.

    .. math::
        h_t = \\tanh([e(w_{t-n+2}); \\dots; e(w_t)]\\, W + b), \\qquad
        \\text{logits}_t = h_t W_{out} + b_{out}

    It sees exactly ``context_size`` words and nothing older: the lecture's
    "hard limit on the amount of context".  Its carry is the last
    ``context_size - 1`` token ids (``-1`` = before the text starts, embedded
    as zeros), so windows of a long text join up exactly as for the RNN LM and
    the same loss and training code apply.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> model = jrnn.nnlm(30, context_size=3, embed_size=8, hidden_size=16)
      >>> params = model.init(jax.random.PRNGKey(0))
      >>> logits, carry = model.apply(params, jnp.ones((2, 5), jnp.int32))
      >>> logits.shape, carry.shape
      ((2, 5, 30), (2, 2))
    """
    config = NNLMConfig(
        vocab_size, context_size, embed_size, hidden_size, float(dropout), init_scale, bool(custom_vjp)
    )
    for name in ("vocab_size", "context_size", "embed_size", "hidden_size"):
        _check_positive(name, getattr(config, name))
    if not 0.0 <= config.dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    V, E, H, n = vocab_size, embed_size, hidden_size, context_size

    def init(key: Array, dtype=jnp.float32) -> dict:
        ks = jax.random.split(key, 4)
        s = init_scale
        return {
            "embed": _uniform(ks[0], (V, E), s, dtype),
            "hidden": {"W": _uniform(ks[1], (n * E, H), s, dtype), "b": jnp.zeros((H,), dtype)},
            "out": {"W": _uniform(ks[2], (H, V), s, dtype), "b": jnp.zeros((V,), dtype)},
        }

    def initial_carry(batch_size: int, dtype=None):
        del dtype  # the carry holds token ids
        return jnp.full((batch_size, n - 1), -1, jnp.int32)

    def _hidden(params, tokens, carry, key):
        tokens = _check_tokens(tokens, V)
        B, T = tokens.shape
        if carry is None:
            carry = initial_carry(B)
        full = jnp.concatenate([carry.astype(tokens.dtype), tokens], axis=1)  # [B, n-1+T]
        emb = jnp.where((full >= 0)[..., None], params["embed"][jnp.maximum(full, 0)], 0)
        # Window t holds words t .. t+n-1 of `full`, i.e. the n words ending at tokens[t].
        windows = jnp.concatenate([emb[:, k : k + T] for k in range(n)], axis=-1)  # [B, T, n*E]
        k_in, k_h = jax.random.split(key) if key is not None else (None, None)
        windows = _dropout(k_in, config.dropout, windows)
        h = jnp.tanh(windows @ params["hidden"]["W"] + params["hidden"]["b"])
        new_carry = full[:, full.shape[1] - (n - 1) :].astype(jnp.int32)
        return _dropout(k_h, config.dropout, h), new_carry

    def features(params, tokens, carry=None, *, lengths=None, key=None):
        """``tokens: int[B, T]`` -> ``(h: float[B, T, H], (W_out, b_out), carry: int[B, n-1])``."""
        del lengths  # each position only looks back: padding never leaks into valid steps
        h, carry = _hidden(params, tokens, carry, key)
        return h, (params["out"]["W"], params["out"]["b"]), carry

    def apply(params, tokens, carry=None, *, lengths=None, key=None):
        """``tokens: int[B, T]`` -> ``(logits: float[B, T, V], carry: int[B, n-1])``."""
        h, (W_out, b_out), carry = features(params, tokens, carry, lengths=lengths, key=key)
        return h @ W_out + b_out, carry

    def encode(params, tokens, lengths=None):
        """The hidden layer at each sequence's last valid token: ``[B, H]``."""
        h, _ = _hidden(params, tokens, None, None)
        T = h.shape[1]
        last = (jnp.full((h.shape[0],), T) if lengths is None else jnp.asarray(lengths)) - 1
        return jnp.take_along_axis(h, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]

    features.apply = apply
    return LanguageModel(config, init, initial_carry, apply, encode, features)


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
    through :func:`jrnn.fused.softmax_cross_entropy`: the same loss and
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
    inputs = _check_tokens(inputs, V, "inputs")
    targets = _check_tokens(targets, V, "targets")
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
    use_fused = (
        getattr(model.config, "custom_vjp", False)
        and features is not None
        and getattr(features, "apply", None) is model.apply
    )
    if use_fused:
        # Output layer + cross-entropy chunk by chunk, never the [B, T, V] logits.
        h, (W_out, b_out), carry = features(params, inputs, carry, key=key)
        B, T, H = h.shape
        weights = jnp.full((B, T), scale, h.dtype)
        if mask is not None:
            weights = jnp.where(mask, weights, 0.0)
        loss, losses = fused.softmax_cross_entropy(
            h.reshape(B * T, H), W_out, b_out, targets.reshape(-1), weights.reshape(-1)
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
    concrete = not isinstance(lengths, jax.core.Tracer)
    host = np.asarray(lengths) if concrete else None
    lengths = jnp.asarray(lengths)
    if lengths.shape != (B,):
        raise ValueError(f"lengths must have shape [B]=({B},), got {lengths.shape}")
    if concrete and B:
        lo, hi = int(host.min()), int(host.max())
        if lo < 1 or hi > T:
            raise ValueError(f"lengths must lie in [1, T={T}], got values in [{lo}, {hi}]")
    return jnp.arange(T)[None, :] < lengths[:, None]


def token_log_probs(model: LanguageModel, params, tokens: Array, lengths=None) -> Array:
    """``log p(tokens[:, t] | tokens[:, :t])`` for ``t >= 1``: ``float[B, T-1]``.

    ``tokens[:, 0]`` is the start symbol (``<eos>`` in the Penn Treebank
    convention) and is not scored; steps at or past ``lengths`` are 0.
    """
    tokens = _check_tokens(tokens, model.config.vocab_size)
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
    context = _check_tokens(context, model.config.vocab_size, "context")
    B, T = context.shape
    _length_mask(lengths, B, T)  # validates
    last = (jnp.full((B,), T) if lengths is None else jnp.asarray(lengths)) - 1
    logits, _ = model.apply(params, context)
    logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
    return jax.nn.log_softmax(logits)
