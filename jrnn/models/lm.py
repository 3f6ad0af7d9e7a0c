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

Token arrays are batch-major ``[B, T]`` here; the recurrence itself runs
time-major inside :func:`jrnn.unroll`.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp

from jrnn.core.cells import CELL_KINDS, Cell, interned, make_cell
from jrnn.core.cells import remat as remat_cell
from jrnn.core.select import METHODS, PRECISIONS, output_matmul_dtype
from jrnn.core.unroll import unroll as unroll_cells
from jrnn.core.validation import check_rate, check_tokens, positive_int

Array = jax.Array

__all__ = [
    "LMConfig",
    "NNLMConfig",
    "LanguageModel",
    "rnn_lm",
    "nnlm",
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
    method: str = "auto"
    remat: bool = False
    custom_vjp: bool = True
    scan_unroll: Optional[int] = None
    variational: bool = False
    recurrent_dropout: float = 0.0
    weight_dropout: float = 0.0
    embedding_dropout: float = 0.0
    proj_size: Optional[int] = None  # LSTMP: each layer outputs this many features
    # Operand dtype of the output layer's matmuls ("float32" or "bfloat16"; rnn_lm resolves
    # "auto").
    output_precision: str = "float32"


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
    # Optional, see the module doc.
    features: Optional[Callable[..., tuple]] = None
    features_for: Optional[Callable[..., tuple]] = None  # the apply that features belongs to
    cells: tuple = ()
    recurrence: Optional[Callable[..., tuple]] = None
    readout: Optional[Callable[[dict], tuple]] = None


def _dropout(key, rate: float, x: Array) -> Array:
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _locked_dropout(key, rate: float, x: Array) -> Array:
    """Dropout on time-major ``x: [T, B, F]`` with one mask per sequence, shared over time."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, (1, *x.shape[1:]))
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _recurrent_dropout(cell, key, rate: float, batch: int, dtype):
    """``cell`` whose step sees ``h_{t-1}`` times one mask per sequence (variational)."""
    keep = jax.random.bernoulli(key, 1.0 - rate, (batch, cell.hidden_size))
    mask = jnp.where(keep, 1.0 / (1.0 - rate), 0.0).astype(dtype)

    def step(params, carry, x):
        masked = carry._replace(h=carry.h * mask) if hasattr(carry, "h") else carry * mask
        new_carry, h = cell.step(params, masked, x)
        # For the LSTM the memory cell passes on unmasked; for Elman h is the state itself.
        return new_carry, h

    return cell._replace(step=step)


def _uniform(key, shape, scale, dtype):
    return jax.random.uniform(key, shape, dtype, -scale, scale)


def _output_precision(value: str, output_weights: int) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"output_precision must be one of {list(PRECISIONS)}, got {value!r}")
    return output_matmul_dtype(output_weights=output_weights).dtype if value == "auto" else value


def _layer_cells(cell, num_layers, *, hidden_size, activation, forget_bias, init_scale,
                 proj_size) -> tuple:
    """The cell of each layer: ``num_layers`` cells of a kind named, or the cells given."""
    if isinstance(cell, str):
        if cell not in CELL_KINDS:
            raise ValueError(f"unknown cell kind {cell!r}; expected one of {list(CELL_KINDS)}")
        hidden_size = 200 if hidden_size is None else positive_int("hidden_size", hidden_size)
        if proj_size is not None and (cell != "lstm" or positive_int("proj_size", proj_size)
                                      >= hidden_size):
            raise ValueError(f"proj_size is for LSTM cells and must be smaller than hidden_size "
                             f"({hidden_size}), got {proj_size} with cell {cell!r}")
        num_layers = positive_int("num_layers", 2 if num_layers is None else num_layers)
        one = make_cell(cell, hidden_size, activation=activation or "tanh",
                        forget_bias=forget_bias, init_scale=init_scale, proj_size=proj_size)
        return (one,) * num_layers
    cells = (cell,) if isinstance(cell, Cell) else tuple(cell) if isinstance(cell, (list, tuple)) else ()
    if not cells or not all(isinstance(c, Cell) for c in cells):
        raise ValueError(f"cell must be a cell kind ({', '.join(CELL_KINDS)}), a jrnn.Cell or a "
                         f"sequence of them, got {type(cell).__name__}")
    fixed = {"hidden_size": hidden_size, "activation": activation, "proj_size": proj_size,
             "forget_bias": forget_bias or None}
    set_here = [name for name, v in fixed.items() if v is not None]
    if set_here:
        verb = "belongs" if len(set_here) == 1 else "belong"
        raise ValueError(f"{', '.join(set_here)} {verb} to the cell when cells are given; "
                         f"set them where the cell is made (e.g. jrnn.lstm(H, proj_size=P))")
    if len(cells) == 1:
        return cells * positive_int("num_layers", 2 if num_layers is None else num_layers)
    if num_layers is not None and num_layers != len(cells):
        raise ValueError(f"num_layers is {num_layers} but {len(cells)} cells were given")
    return cells


@interned
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
    output_precision: str = "float32",
) -> LanguageModel:
    """An RNN language model: embed -> stacked cells -> output layer -> logits.

    ``cell`` is a cell kind (``"lstm"``, ``"gru"``, ``"elman"``, ``"linear"``,
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
    ``dW``; accumulation, softmax and losses stay float32): ``"float32"``
    (default), ``"bfloat16"``, or ``"auto"`` -- bfloat16 where the CPU
    multiplies it in hardware and the output layer is large
    (:func:`jrnn.core.select.output_matmul_dtype`), resolved here, so
    ``model.config.output_precision`` says which.
    ``model.apply``'s logits are always float32.

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
    choice of :func:`jrnn.core.select.choose_method`; ``unroll`` is the first
    release's deprecated form of both); ``remat`` recomputes each step in the backward pass (:func:`jrnn.remat`),
    trading time for memory on long sequences.  ``custom_vjp`` (default) uses
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
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if scan_unroll is not None:
        scan_unroll = positive_int("scan_unroll", scan_unroll)
    layer_cells = _layer_cells(cell, num_layers, hidden_size=hidden_size, activation=activation,
                               forget_bias=forget_bias, init_scale=init_scale, proj_size=proj_size)
    last = layer_cells[-1]
    out_size = last.hidden_size  # what the last layer outputs: the output layer's input
    config = LMConfig(
        vocab_size, "+".join(dict.fromkeys(c.kind for c in layer_cells)),
        activation or ("tanh" if isinstance(cell, str) else last.activation or "custom"), embed_size, last.cell_size or out_size,
        len(layer_cells), check_rate("dropout", dropout), bool(tie_embeddings), init_scale,
        float(forget_bias), method, bool(remat), bool(custom_vjp), scan_unroll, bool(variational),
        check_rate("recurrent_dropout", recurrent_dropout),
        check_rate("weight_dropout", weight_dropout),
        check_rate("embedding_dropout", embedding_dropout),
        out_size if last.cell_size else None,
        _output_precision(output_precision, out_size * vocab_size),
    )
    if config.recurrent_dropout and any(c.kind == "gru" for c in layer_cells):
        raise ValueError("recurrent_dropout is for the LSTM, Elman and linear cells: the GRU "
                         "reuses h_{t-1} in its update gate, where a mask would change the state")
    for name in ("vocab_size", "embed_size"):
        positive_int(name, getattr(config, name))
    if tie_embeddings and embed_size != out_size:
        what = "proj_size" if last.cell_size else "hidden_size"
        raise ValueError(
            f"tie_embeddings needs embed_size == {what}, got {embed_size} and {out_size}"
        )
    if remat:
        layer_cells = tuple(remat_cell(c) for c in layer_cells)
    num_layers = len(layer_cells)
    V, E = vocab_size, embed_size
    inputs = [E] + [c.hidden_size for c in layer_cells[:-1]]  # what each layer reads

    def init(key: Array, dtype=jnp.float32) -> dict:
        k_embed, k_out, *k_layers = jax.random.split(key, 2 + num_layers)
        s = 0.1 if init_scale is None else init_scale
        layers = [c.init(k, d, dtype) for c, k, d in zip(layer_cells, k_layers, inputs)]
        k_w, k_b = jax.random.split(k_out)
        out = {"b": _uniform(k_b, (V,), s, dtype) if init_scale is not None else jnp.zeros((V,), dtype)}
        if not tie_embeddings:
            out["W"] = _uniform(k_w, (out_size, V), s, dtype)
        return {"embed": _uniform(k_embed, (V, E), s, dtype), "layers": layers, "out": out}

    def initial_carry(batch_size: int, dtype=jnp.float32):
        return [c.initial_carry((batch_size,), dtype) for c in layer_cells]

    regularized = config.variational or config.recurrent_dropout or config.weight_dropout

    def recurrence(params, xs, carry=None, *, lengths=None, key=None, cells=None):
        """``xs: float[T, B, E]`` embedded inputs -> ``(hs: float[T, B, H], carry)``."""
        cells = list(layer_cells if cells is None else cells)
        if key is None or not regularized:
            carry, hs = unroll_cells(
                cells, params["layers"], xs, carry, lengths=lengths, method=config.method,
                scan_unroll=config.scan_unroll, dropout=config.dropout, key=key,
                custom_vjp=config.custom_vjp,
            )
            return hs, carry
        # Layer by layer, with the masks of the regularization options.
        carries = [None] * len(cells) if carry is None else list(carry)
        finals, hs = [], xs
        for layer, (c, p, c0, k) in enumerate(zip(cells, params["layers"], carries,
                                                   jax.random.split(key, len(cells)))):
            k_in, k_rec, k_w = jax.random.split(k, 3)
            if layer > 0:
                hs = (_locked_dropout(k_in, config.dropout, hs) if config.variational
                      else _dropout(k_in, config.dropout, hs))
            if config.weight_dropout:
                p = {**p, "W_h": _dropout(k_w, config.weight_dropout, p["W_h"])}
            if config.recurrent_dropout:
                c = _recurrent_dropout(c, k_rec, config.recurrent_dropout, hs.shape[1], hs.dtype)
            final, hs = unroll_cells(c, p, hs, c0, lengths=lengths, method=config.method,
                                     scan_unroll=config.scan_unroll, custom_vjp=config.custom_vjp)
            finals.append(final)
        return hs, finals

    def readout(params):
        """The output layer: ``(W_out [H, V], b_out [V])``."""
        W_out = params["out"]["W"] if not tie_embeddings else params["embed"].T
        return W_out, params["out"]["b"]

    def _hidden_states(params, tokens, carry, lengths, key):
        tokens = check_tokens(tokens, V)
        k_in, k_mid, k_out, k_emb = (jax.random.split(key, 4) if key is not None
                                     else (None,) * 4)
        embed = params["embed"]
        if k_emb is not None and config.embedding_dropout:
            # Whole words: one keep/drop per row of the embedding matrix.
            keep = jax.random.bernoulli(k_emb, 1.0 - config.embedding_dropout, (embed.shape[0], 1))
            embed = jnp.where(keep, embed / (1.0 - config.embedding_dropout), 0).astype(embed.dtype)
        drop = _locked_dropout if config.variational else _dropout
        # Gather straight into time-major [T, B, E]: transposing ids is free.
        xs = drop(k_in, config.dropout, embed[tokens.T])
        hs, carry = recurrence(params, xs, carry, lengths=lengths, key=k_mid)
        return drop(k_out, config.dropout, hs), carry

    def features(params, tokens, carry=None, *, lengths=None, key=None):
        """``tokens: int[B, T]`` -> ``(h: float[B, T, H], (W_out [H, V], b_out [V]), carry)``."""
        hs, carry = _hidden_states(params, tokens, carry, lengths, key)
        return jnp.swapaxes(hs, 0, 1), readout(params), carry

    def apply(params, tokens, carry=None, *, lengths=None, key=None):
        """``tokens: int[B, T]`` -> ``(logits: float[B, T, V], carry)``."""
        h, (W_out, b_out), carry = features(params, tokens, carry, lengths=lengths, key=key)
        return h @ W_out + b_out, carry

    def encode(params, tokens, lengths=None):
        """The last layer's hidden state after each sequence's last valid token: ``[B, H]``."""
        _, carry = _hidden_states(params, tokens, None, lengths, None)
        return layer_cells[-1].hidden(carry[-1])

    return LanguageModel(config, init, initial_carry, apply, encode, features,
                         features_for=apply, cells=layer_cells, recurrence=recurrence,
                         readout=readout)


@interned
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
        vocab_size, context_size, embed_size, hidden_size, check_rate("dropout", dropout),
        init_scale, bool(custom_vjp),
    )
    for name in ("vocab_size", "context_size", "embed_size", "hidden_size"):
        positive_int(name, getattr(config, name))
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
        tokens = check_tokens(tokens, V)
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

    return LanguageModel(config, init, initial_carry, apply, encode, features, features_for=apply)


