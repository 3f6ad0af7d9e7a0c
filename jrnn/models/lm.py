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
  before its output layer, so that :func:`jrnn.sequence_loss` can run the
  output layer and the cross-entropy together without the ``[B, T, V]``
  logits (:func:`jrnn.core.backward.softmax_cross_entropy`).  Optional
  (``None``); ``features_for`` names the ``apply`` it belongs to, so a model
  whose ``apply`` was replaced is scored through its own logits.

The RNN LM also exposes its parts, so that analysis code reuses them instead
of rebuilding the forward pass: ``cells`` (one per layer), ``recurrence(params,
xs: float[T, B, E], carry=None, *, lengths=None, key=None, cells=None) ->
(hs: float[T, B, H], carry)`` (the stack of recurrent layers on embedded
inputs; ``cells`` may replace the model's own, e.g. with probed cells) and
``readout(params) -> (W_out [H, V], b_out [V])``.

Both models are built from one :class:`~jrnn.models.config.ModelConfig`
(:func:`build_model`; ``rnn_lm`` and ``nnlm`` make it from their keyword
arguments), which the model keeps as ``config``.  Equal configurations give
the same model object: a value, equal and hashable, so ``jax.jit`` compiles
once for it.  The pieces of each model are module-level functions bound to
the configuration, so each can be read on its own.

Token arrays are batch-major ``[B, T]`` here; the recurrence itself runs
time-major inside :func:`jrnn.unroll`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from jrnn.core.cells import Cell, interned, make_cell
from jrnn.core.cells import remat as remat_cell
from jrnn.core.masking import dropout as drop
from jrnn.core.select import output_matmul_dtype
from jrnn.core.unroll import over_layers
from jrnn.core.unroll import unroll as unroll_cells
from jrnn.core.validation import ConfigError, check_tokens
from jrnn.models.config import ModelConfig

Array = jax.Array

__all__ = [
    "ModelConfig",
    "LanguageModel",
    "build_model",
    "rnn_lm",
    "nnlm",
]


class LanguageModel(NamedTuple):
    """A language model as a config plus pure functions (see module doc)."""

    config: Any
    init: Callable[[Array], dict]
    initial_carry: Callable[..., Any]
    apply: Callable[..., tuple]
    encode: Callable[..., Array]
    # Optional, see the module doc.
    features: Optional[Callable[..., tuple]] = None
    features_for: Optional[Callable[..., tuple]] = None  # the apply that features belongs to
    cells: tuple = ()
    recurrence: Optional[Callable[..., tuple]] = None
    readout: Optional[Callable[[dict], tuple]] = None


def build_model(config: ModelConfig, vocab_size: Optional[int] = None) -> LanguageModel:
    """The language model ``config`` describes, for ``vocab_size`` words (or ``config.vocab_size``).

    ``output_precision="auto"`` is resolved here, so the model's
    ``config.output_precision`` says which precision it runs.  Equal
    configurations give the same model.

    Example:
      >>> import jrnn
      >>> from jrnn.models.config import ModelConfig
      >>> cfg = ModelConfig(cell="gru", embed_size=8, hidden_size=8, num_layers=1)
      >>> model = build_model(cfg, 50)
      >>> model.config.vocab_size, model is build_model(cfg, 50)
      (50, True)
    """
    if vocab_size is not None:
        config = config.replace(vocab_size=vocab_size)
    if config.vocab_size is None:
        raise ConfigError("vocab_size is needed to build a model: build_model(config, vocab_size)")
    if config.output_precision == "auto":
        weights = None if config.cell == "nnlm" else config.out_size * config.vocab_size
        config = config.replace(output_precision="float32" if weights is None else
                                output_matmul_dtype(output_weights=weights).dtype)
    return _build(config)


@interned
def _build(config: ModelConfig) -> LanguageModel:
    return _nnlm_model(config) if config.cell == "nnlm" else _rnn_model(config)


def _uniform(key, shape, scale, dtype):
    return jax.random.uniform(key, shape, dtype, -scale, scale)


# ---- the RNN language model ----------------------------------------------------------


def _layer_cells(config: ModelConfig) -> tuple:
    """The cell of each layer: ``num_layers`` cells of the kind named, or the cells given."""
    if isinstance(config.cell, str):
        one = make_cell(config.cell, config.hidden_size, activation=config.activation or "tanh",
                        forget_bias=config.forget_bias, init_scale=config.init_scale,
                        proj_size=config.proj_size)
        cells = (one,) * config.num_layers
    elif isinstance(config.cell, Cell):
        cells = (config.cell,) * config.num_layers
    else:
        cells = config.cell
    return tuple(remat_cell(c) for c in cells) if config.remat else cells


def _recurrent_dropout(cell, key, rate: float, batch: int, dtype):
    """``cell`` whose step sees ``h_{t-1}`` times one mask per sequence (variational)."""
    mask = drop(key, rate, jnp.ones((batch, cell.hidden_size), dtype))

    def step(params, carry, x):
        masked = carry._replace(h=carry.h * mask) if hasattr(carry, "h") else carry * mask
        new_carry, h = cell.step(params, masked, x)
        # For the LSTM the memory cell passes on unmasked; for Elman h is the state itself.
        return new_carry, h

    return cell._replace(step=step)


def _rnn_init(config: ModelConfig, cells: tuple, key: Array, dtype=jnp.float32) -> dict:
    """Params: ``{"embed": [V, E], "layers": [...], "out": {"W": [H, V], "b": [V]}}``."""
    V, E, s = config.vocab_size, config.embed_size, config.init_scale
    k_embed, k_out, *k_layers = jax.random.split(key, 2 + len(cells))
    inputs = [E] + [c.hidden_size for c in cells[:-1]]  # what each layer reads
    layers = [c.init(k, d, dtype) for c, k, d in zip(cells, k_layers, inputs)]
    k_w, k_b = jax.random.split(k_out)
    scale = 0.1 if s is None else s
    out = {"b": _uniform(k_b, (V,), scale, dtype) if s is not None else jnp.zeros((V,), dtype)}
    if not config.tie_embeddings:
        out["W"] = _uniform(k_w, (cells[-1].hidden_size, V), scale, dtype)
    return {"embed": _uniform(k_embed, (V, E), scale, dtype), "layers": layers, "out": out}


def _rnn_initial_carry(cells: tuple, batch_size: int, dtype=jnp.float32) -> list:
    return [c.initial_carry((batch_size,), dtype) for c in cells]


def _recurrence(config: ModelConfig, own_cells: tuple, params, xs, carry=None, *, lengths=None,
                key=None, cells=None):
    """``xs: float[T, B, E]`` embedded inputs -> ``(hs: float[T, B, H], carry)``."""
    cells = list(own_cells if cells is None else cells)
    run = functools.partial(unroll_cells, lengths=lengths, method=config.method,
                            precision=config.recurrence_precision,
                            scan_unroll=config.scan_unroll, custom_vjp=config.custom_vjp)
    if key is None or not (config.variational or config.recurrent_dropout
                           or config.weight_dropout):
        carry, hs = run(cells, params["layers"], xs, carry, dropout=config.dropout, key=key)
        return hs, carry
    # Layer by layer, with the masks of the regularization options.
    keys = jax.random.split(key, len(cells))

    def layer(i, hs, c0):
        c, p = cells[i], params["layers"][i]
        k_in, k_rec, k_w = jax.random.split(keys[i], 3)
        if i > 0:
            hs = drop(k_in, config.dropout, hs, shared_axes=(0,) if config.variational else ())
        if config.weight_dropout:
            p = {**p, "W_h": drop(k_w, config.weight_dropout, p["W_h"])}
        if config.recurrent_dropout:
            c = _recurrent_dropout(c, k_rec, config.recurrent_dropout, hs.shape[1], hs.dtype)
        return run(c, p, hs, c0)

    finals, hs = over_layers(layer, xs, [None] * len(cells) if carry is None else list(carry))
    return hs, finals


def _readout(config: ModelConfig, params) -> tuple:
    """The output layer: ``(W_out [H, V], b_out [V])``."""
    W_out = params["out"]["W"] if not config.tie_embeddings else params["embed"].T
    return W_out, params["out"]["b"]


def _rnn_hidden_states(config: ModelConfig, cells: tuple, params, tokens, carry, lengths, key):
    tokens = check_tokens(tokens, config.vocab_size)
    k_in, k_mid, k_out, k_emb = (jax.random.split(key, 4) if key is not None else (None,) * 4)
    # Whole words dropped: one keep/drop per row of the embedding matrix.
    embed = drop(k_emb, config.embedding_dropout, params["embed"], shared_axes=(1,))
    shared = (0,) if config.variational else ()
    # Gather straight into time-major [T, B, E]: transposing ids is free.
    xs = drop(k_in, config.dropout, embed[tokens.T], shared_axes=shared)
    hs, carry = _recurrence(config, cells, params, xs, carry, lengths=lengths, key=k_mid)
    return drop(k_out, config.dropout, hs, shared_axes=shared), carry


def _rnn_features(config, cells, params, tokens, carry=None, *, lengths=None, key=None):
    """``tokens: int[B, T]`` -> ``(h: float[B, T, H], (W_out [H, V], b_out [V]), carry)``."""
    hs, carry = _rnn_hidden_states(config, cells, params, tokens, carry, lengths, key)
    return jnp.swapaxes(hs, 0, 1), _readout(config, params), carry


def _rnn_encode(config, cells, params, tokens, lengths=None):
    """The last layer's hidden state after each sequence's last valid token: ``[B, H]``."""
    _, carry = _rnn_hidden_states(config, cells, params, tokens, None, lengths, None)
    return cells[-1].hidden(carry[-1])


def _logits(features: Callable, params, tokens, carry=None, *, lengths=None, key=None):
    """``tokens: int[B, T]`` -> ``(logits: float[B, T, V], carry)``: the output layer on features."""
    h, (W_out, b_out), carry = features(params, tokens, carry, lengths=lengths, key=key)
    return h @ W_out + b_out, carry


def _rnn_model(config: ModelConfig) -> LanguageModel:
    cells = _layer_cells(config)
    bind = lambda fn: functools.partial(fn, config, cells)
    features = bind(_rnn_features)
    apply = functools.partial(_logits, features)
    return LanguageModel(config, bind(_rnn_init), functools.partial(_rnn_initial_carry, cells),
                         apply, bind(_rnn_encode), features, features_for=apply, cells=cells,
                         recurrence=bind(_recurrence), readout=functools.partial(_readout, config))


def rnn_lm(
    vocab_size: int,
    *,
    cell: Union[str, Cell, Sequence[Cell]] = "lstm",
    activation: Optional[str] = None,
    embed_size: int = 200,
    hidden_size: Optional[int] = None,
    num_layers: Optional[int] = None,
    dropout: float = 0.0,
    tie_embeddings: bool = False,
    init_scale: Optional[float] = None,
    forget_bias: float = 0.0,
    method: str = "auto",
    scan_unroll: Optional[int] = None,
    remat: bool = False,
    custom_vjp: bool = True,
    variational: bool = False,
    recurrent_dropout: float = 0.0,
    weight_dropout: float = 0.0,
    embedding_dropout: float = 0.0,
    proj_size: Optional[int] = None,
    output_precision: str = "auto",
    recurrence_precision: str = "float32",
) -> LanguageModel:
    """An RNN language model: embed -> stacked cells -> output layer -> logits.

    ``cell`` is a cell kind (``"lstm"``, ``"gru"``, ``"elman"``, ``"linear"``,
    ``"mingru"``, ``"minlstm"``, ``"rglru"``, ``"slstm"`` or ``"mlstm"`` --
    :data:`jrnn.CELL_KINDS`; the xLSTM cells with one head --
    made ``num_layers`` times (default 2) with ``hidden_size`` (default 200),
    ``activation``, ``forget_bias`` and ``proj_size``), or your own cells: one
    :class:`jrnn.Cell` (repeated ``num_layers`` times) or a sequence of them,
    one per layer -- any cell with jrnn's interface, e.g.
    ``jrnn.elman(64, activation=jnp.sin)`` or one you wrote.  Each layer
    reads what the one below outputs (``cell.hidden_size``); the sizes then
    belong to the cells, so ``hidden_size``, ``activation``, ``proj_size``
    and ``forget_bias`` are refused beside them.  Equal arguments give the
    same model (a value: equal, hashable, one ``jax.jit`` compilation).

    ``output_precision`` sets the operand dtype of the output layer's three
    matmuls in :func:`jrnn.sequence_loss`'s chunked path (logits, ``dh``,
    ``dW``; accumulation, softmax and losses stay float32): ``"float32"``,
    ``"bfloat16"``, or ``"auto"`` (default) -- bfloat16 where the CPU
    multiplies it in hardware and the output layer is large
    (:func:`jrnn.core.select.output_matmul_dtype`), resolved here, so
    ``model.config.output_precision`` says which.
    ``model.apply``'s logits are always float32.  ``recurrence_precision``
    (``"float32"`` or ``"bfloat16"``) is :func:`jrnn.unroll`'s ``precision``:
    bf16 operands in the recurrence, for ``method="pallas"`` only.

    ``proj_size`` (LSTM only, ``0 < proj_size < hidden_size``) makes every
    layer an LSTM with projections (``jrnn.lstm(H, proj_size=P)``, PyTorch's
    ``proj_size``): each layer outputs ``P`` features, so the next layer and
    the output layer read ``P`` (``out["W"]: [P, V]``; tying needs
    ``embed_size == P``).

    Regularization inside the recurrence (all off by default, all only when
    ``apply`` gets a ``key``, so evaluation is deterministic; the same key
    gives the same masks):

    * ``variational``: the ``dropout`` masks on the embeddings, between layers
      and on the outputs are drawn once per sequence and shared by every
      timestep (Gal & Ghahramani 2016's locked dropout) instead of afresh
      per element;
    * ``recurrent_dropout``: one mask per sequence on the state ``h_{t-1}`` fed
      to ``W_h`` (LSTM, Elman and linear cells; a wrapped step, so the
      recurrence runs with autodiff instead of the hand-written pass);
    * ``weight_dropout``: DropConnect on each layer's ``W_h``, one mask per
      forward pass (Merity et al. 2017's weight-dropped LSTM; the hand-written
      pass still applies);
    * ``embedding_dropout``: whole words dropped from the embedding matrix,
      one mask per forward pass (Merity et al. 2017).

    Dropout (rate ``dropout``, only when ``apply`` gets a ``key``) is applied
    to the embeddings, between layers and to the last layer's outputs, as in
    Zaremba et al. (2014).  The output layer runs on all timesteps at once,
    after the scan.  With ``tie_embeddings`` the output weights are the
    transposed embedding (needs ``embed_size == hidden_size``).  ``method``
    and ``scan_unroll`` are passed to :func:`jrnn.unroll` (``"auto"``: the
    choice of :func:`jrnn.core.select.choose_method`); ``remat`` recomputes
    each step in the backward pass (:func:`jrnn.remat`), trading time for
    memory on long sequences.  ``custom_vjp`` (default) uses
    jrnn's hand-written backward passes for the recurrence and for the
    softmax output layer (:mod:`jrnn.core.backward`): the same values and gradients,
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
    if isinstance(cell, list):
        cell = tuple(cell)
    if isinstance(cell, str) and cell == "nnlm":
        raise ConfigError("cell 'nnlm' is the fixed-window model: use jrnn.nnlm")
    try:
        config = ModelConfig(
            cell=cell, activation=activation, num_layers=num_layers, embed_size=embed_size,
            hidden_size=hidden_size, dropout=dropout, tie_embeddings=tie_embeddings,
            init_scale=init_scale, forget_bias=forget_bias, method=method,
            scan_unroll=scan_unroll, remat=remat, custom_vjp=custom_vjp, variational=variational,
            recurrent_dropout=recurrent_dropout, weight_dropout=weight_dropout,
            embedding_dropout=embedding_dropout, proj_size=proj_size,
            output_precision=output_precision, recurrence_precision=recurrence_precision,
            vocab_size=vocab_size)
    except TypeError as e:  # an unhashable value where a hashable one belongs
        raise ConfigError(str(e)) from None
    return build_model(config)


# ---- the fixed-window NNLM -----------------------------------------------------------


def _nnlm_init(config: ModelConfig, key: Array, dtype=jnp.float32) -> dict:
    V, E, H, n = config.vocab_size, config.embed_size, config.hidden_size, config.context_size
    s = 0.1 if config.init_scale is None else config.init_scale
    ks = jax.random.split(key, 4)
    return {
        "embed": _uniform(ks[0], (V, E), s, dtype),
        "hidden": {"W": _uniform(ks[1], (n * E, H), s, dtype), "b": jnp.zeros((H,), dtype)},
        "out": {"W": _uniform(ks[2], (H, V), s, dtype), "b": jnp.zeros((V,), dtype)},
    }


def _nnlm_initial_carry(config: ModelConfig, batch_size: int, dtype=None):
    del dtype  # the carry holds token ids
    return jnp.full((batch_size, config.context_size - 1), -1, jnp.int32)


def _nnlm_hidden(config: ModelConfig, params, tokens, carry, key):
    n = config.context_size
    tokens = check_tokens(tokens, config.vocab_size)
    B, T = tokens.shape
    if carry is None:
        carry = _nnlm_initial_carry(config, B)
    full = jnp.concatenate([carry.astype(tokens.dtype), tokens], axis=1)  # [B, n-1+T]
    emb = jnp.where((full >= 0)[..., None], params["embed"][jnp.maximum(full, 0)], 0)
    # Window t holds words t .. t+n-1 of `full`, i.e. the n words ending at tokens[t].
    windows = jnp.concatenate([emb[:, k : k + T] for k in range(n)], axis=-1)  # [B, T, n*E]
    k_in, k_h = jax.random.split(key) if key is not None else (None, None)
    windows = drop(k_in, config.dropout, windows)
    h = jnp.tanh(windows @ params["hidden"]["W"] + params["hidden"]["b"])
    new_carry = full[:, full.shape[1] - (n - 1) :].astype(jnp.int32)
    return drop(k_h, config.dropout, h), new_carry


def _nnlm_features(config, params, tokens, carry=None, *, lengths=None, key=None):
    """``tokens: int[B, T]`` -> ``(h: float[B, T, H], (W_out, b_out), carry: int[B, n-1])``."""
    del lengths  # each position only looks back: padding never leaks into valid steps
    h, carry = _nnlm_hidden(config, params, tokens, carry, key)
    return h, (params["out"]["W"], params["out"]["b"]), carry


def _nnlm_encode(config, params, tokens, lengths=None):
    """The hidden layer at each sequence's last valid token: ``[B, H]``."""
    h, _ = _nnlm_hidden(config, params, tokens, None, None)
    T = h.shape[1]
    last = (jnp.full((h.shape[0],), T) if lengths is None else jnp.asarray(lengths)) - 1
    return jnp.take_along_axis(h, jnp.maximum(last, 0)[:, None, None], axis=1)[:, 0]


def _nnlm_model(config: ModelConfig) -> LanguageModel:
    bind = lambda fn: functools.partial(fn, config)
    features = bind(_nnlm_features)
    apply = functools.partial(_logits, features)
    return LanguageModel(config, bind(_nnlm_init), bind(_nnlm_initial_carry), apply,
                         bind(_nnlm_encode), features, features_for=apply)


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
    return build_model(ModelConfig(
        cell="nnlm", context_size=context_size, embed_size=embed_size, hidden_size=hidden_size,
        dropout=dropout, init_scale=init_scale, custom_vjp=custom_vjp, vocab_size=vocab_size))
