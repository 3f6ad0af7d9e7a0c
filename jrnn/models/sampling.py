"""Using a language model: sampling text (batched or streamed) and scoring many sentences.

* :func:`sample` -- ``int32[B, length]`` continuations of a batch of prompts:
  the prompt runs through the model in one unroll, then one ``jax.lax.scan``
  over the generated length carries the recurrent state, all in one
  ``jax.jit`` program.
* :func:`stream` -- the same draws one step at a time, a jitted step per
  token, for interactive use.
* :func:`score` -- the log-probability and token count of each of many
  sentences of different lengths, padded into a few shapes.

Each draw at temperature ``tau`` divides the logits by ``tau``, keeps the
``top_k`` most probable tokens, then the nucleus of what is left (the
smallest set of most probable tokens whose probability sums to at least
``top_p``), and samples from the renormalized rest:

.. math::
    p_\\tau(w) \\propto \\exp(\\text{logits}_w / \\tau)\\,[w \\in \\text{top-}k \\cap \\text{nucleus}_p]

``temperature=0`` is greedy decoding (the argmax).  Each row of the batch
draws from its own key, split once per step (``key, sub = split(key)``;
``sub`` draws), so a row's tokens depend only on its prompt and its key: a
batch gives the rows that sampling each row alone with the same key gives,
and :func:`stream` gives what :func:`sample` gives.  These functions work for
any :class:`~jrnn.models.lm.LanguageModel` (the RNN LM and the NNLM), and
run it without dropout.
"""

from __future__ import annotations

import functools
import math
from typing import Iterator, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jrnn.core.validation import check_tokens, is_concrete, positive_int
from jrnn.models.lm import LanguageModel
from jrnn.models.losses import token_log_probs

Array = jax.Array

__all__ = ["sample", "stream", "score", "Scores"]


# ---- checks at the boundary ------------------------------------------------------------


def _check_options(temperature, top_k, top_p, vocab_size: int):
    """``(temperature, top_k, top_p)`` checked; ``top_k`` capped at the vocabulary and
    ``top_p == 1`` (no nucleus cut) given as ``None``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.number)) \
            or not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None:
        top_k = min(positive_int("top_k", top_k), vocab_size)
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, (int, float, np.number)) \
                or not 0 < top_p <= 1:  # also False for NaN
            raise ValueError(f"top_p must be a number in (0, 1], got {top_p!r}")
        top_p = None if top_p == 1 else float(top_p)
    return float(temperature), top_k, top_p


def _check_prompt(model: LanguageModel, prompt) -> Array:
    prompt = check_tokens(prompt, model.config.vocab_size, "prompt")
    if prompt.shape[0] == 0 or prompt.shape[1] == 0:
        raise ValueError(f"prompt must hold at least one row of at least one token (the start "
                         f"symbol), got shape {prompt.shape}")
    return prompt.astype(jnp.int32)


def _row_keys(key, batch: int, needed: bool) -> Array:
    """One typed key per row: ``key`` split ``batch`` ways, or ``key`` itself if it holds one per row."""
    if key is None:
        if needed:
            raise ValueError("key is needed to sample (temperature > 0): pass key=jax.random.key(0)")
        key = jax.random.key(0)  # greedy: never drawn from
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32 or key.ndim not in (1, 2):
            raise ValueError(f"key must be a PRNG key or one per row, got dtype {key.dtype} "
                             f"shape {key.shape}")
        key = jax.random.wrap_key_data(key)
    if key.ndim == 0:
        return jax.random.split(key, batch)
    if key.shape != (batch,):
        raise ValueError(f"key must be one PRNG key or one per row ({batch}), got {key.shape[0]}")
    return key


# ---- one draw ---------------------------------------------------------------------------


class _Cut(NamedTuple):
    """What a draw keeps, as the compiled program sees it: ``top_k`` and ``top_p`` are traced
    (a new value compiles nothing); ``greedy``, ``by_rank`` and ``nucleus`` are static."""

    greedy: bool  # temperature 0: the argmax
    by_rank: bool  # top_k or top_p cuts anything: sort once per draw
    nucleus: bool  # top_p < 1


def _cut(temperature: float, top_k: Optional[int], top_p: Optional[float], V: int):
    """``(_Cut, top_k, top_p)``, the numbers filled in where not given."""
    cut = _Cut(temperature == 0, top_k is not None or top_p is not None, top_p is not None)
    return cut, V if top_k is None else top_k, 1.0 if top_p is None else top_p


def _allowed(scaled: Array, top_k: Array, top_p: Array, nucleus: bool) -> Array:
    """``bool[V]``: the ``top_k`` most probable tokens of ``scaled`` logits, cut to the nucleus."""
    V = scaled.shape[-1]
    order = jnp.argsort(-scaled)  # most probable first (ties: lower id first)
    keep = jnp.arange(V) < top_k
    if nucleus:
        probs = jax.nn.softmax(jnp.where(keep, scaled[order], -jnp.inf))
        before = jnp.concatenate([jnp.zeros(1, probs.dtype), jnp.cumsum(probs)[:-1]])
        keep = keep & (before < top_p)  # the first token whose mass reaches top_p stays
    return jnp.zeros(V, bool).at[order].set(keep)


def _draw_row(key: Array, logits: Array, temperature: Array, top_k: Array, top_p: Array,
              cut: _Cut):
    """One row: ``logits: float[V]`` -> ``(next key, token)``."""
    key, sub = jax.random.split(key)
    if cut.greedy:
        return key, jnp.argmax(logits).astype(jnp.int32)
    # Shifted so that the largest is 0: a tiny temperature sends the rest to -inf, never to nan.
    scaled = (logits - jnp.max(logits)) / temperature
    if cut.by_rank:
        scaled = jnp.where(_allowed(scaled, top_k, top_p, cut.nucleus), scaled, -jnp.inf)
    return key, jax.random.categorical(sub, scaled).astype(jnp.int32)


def _draw(keys, logits, opts, cut):
    """Every row from its own key: ``keys: key[B]``, ``logits: float[B, V]`` -> ``(keys, int32[B])``;
    ``opts``: the traced ``(temperature, top_k, top_p)``."""
    draw = functools.partial(_draw_row, cut=cut)
    return jax.vmap(draw, in_axes=(0, 0, None, None, None))(keys, logits, *opts)


# ---- the steps both sample and stream run ------------------------------------------------


def _first(model, params, prompt, keys, opts, *, cut):
    """The whole prompt in one unroll, then the first draw: ``(carry, keys, token, finite)``."""
    logits, carry = model.apply(params, prompt)
    keys, token = _draw(keys, logits[:, -1], opts, cut)
    return carry, keys, token, jnp.all(jnp.isfinite(logits))


def _next(model, params, carry, keys, token, opts, *, cut):
    """Feed the last token, draw the next: ``(carry, keys, token, finite)``."""
    logits, carry = model.apply(params, token[:, None], carry)
    keys, token = _draw(keys, logits[:, 0], opts, cut)
    return carry, keys, token, jnp.all(jnp.isfinite(logits))


@functools.partial(jax.jit, static_argnames=("model", "length", "cut"))
def _sample(model, params, prompt, keys, opts, *, length, cut):
    carry, keys, token, finite = _first(model, params, prompt, keys, opts, cut=cut)

    def step(state, _):
        carry, keys, token, finite = state
        carry, keys, token, ok = _next(model, params, carry, keys, token, opts, cut=cut)
        return (carry, keys, token, finite & ok), token

    (_, _, _, finite), rest = jax.lax.scan(step, (carry, keys, token, finite), None,
                                           length=length - 1)
    return jnp.concatenate([token[:, None], rest.T], axis=1), finite


_first_jit = jax.jit(_first, static_argnames=("model", "cut"))
_next_jit = jax.jit(_next, static_argnames=("model", "cut"))


def _not_finite() -> FloatingPointError:
    return FloatingPointError("the model's logits are not finite (parameters that are not finite, "
                              "or too large for float arithmetic on this input)")


def sample(
    model: LanguageModel,
    params,
    prompt: Array,
    length: int,
    *,
    key: Optional[Array] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
) -> Array:
    """``length`` tokens after each prompt, sampled from ``model``: ``int32[B, length]``.

    Args:
      model, params: a :class:`~jrnn.models.lm.LanguageModel` and its parameters.
      prompt: ``int[B, P]``, ``P >= 1``: the start symbol (``<eos>`` in the
        Penn Treebank convention) and the words to continue.  Rows share the
        length ``P``.
      length: how many tokens to draw (a positive int).
      key: a PRNG key (split into one key per row) or ``key[B]``, one per
        row; needed unless ``temperature == 0``.
      temperature: ``> 0`` divides the logits (below 1: surer, above 1: more
        varied); ``0`` takes the most probable token (greedy decoding).
      top_k: draw only among the ``top_k`` most probable tokens (capped at
        the vocabulary size).
      top_p: draw only from the nucleus: the smallest set of most probable
        tokens whose probability sums to at least ``top_p``, in ``(0, 1]``
        (computed after ``temperature`` and ``top_k``).

    The prompt runs in one unroll and the ``length`` draws in one
    ``jax.lax.scan``, all in one ``jax.jit`` program, compiled once per
    model, prompt shape, ``length`` and choice of cuts (greedy or not,
    ``top_k``/``top_p`` given or not): their values are traced, so a new
    temperature, ``top_k`` or ``top_p`` compiles nothing.  Each row draws
    from its own key, so rows sampled together equal rows sampled alone with
    the same keys.  Raises ``ValueError`` for bad arguments and
    ``FloatingPointError`` when the model's logits are not finite.  Under
    ``jax.jit`` or ``jax.vmap``, ``params``, ``prompt`` and ``key`` may be
    traced (then only their shapes are checked, and non-finite logits raise
    nothing); ``length``, ``temperature``, ``top_k`` and ``top_p`` are
    Python numbers.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> model = jrnn.rnn_lm(20, cell="gru", embed_size=8, hidden_size=8, num_layers=1)
      >>> params = model.init(jax.random.PRNGKey(0))
      >>> prompt = jnp.array([[0, 5, 7], [0, 2, 3]])          # start symbol, then words
      >>> out = jrnn.sample(model, params, prompt, 6, key=jax.random.key(1), top_k=5)
      >>> out.shape, out.dtype
      ((2, 6), dtype('int32'))
      >>> greedy = jrnn.sample(model, params, prompt, 6, temperature=0)
    """
    temperature, top_k, top_p = _check_options(temperature, top_k, top_p, model.config.vocab_size)
    prompt = _check_prompt(model, prompt)
    length = positive_int("length", length)
    cut, top_k, top_p = _cut(temperature, top_k, top_p, model.config.vocab_size)
    keys = _row_keys(key, prompt.shape[0], not cut.greedy)
    tokens, finite = _sample(model, params, prompt, keys, (temperature, top_k, top_p),
                             length=length, cut=cut)
    if is_concrete(finite) and not bool(finite):
        raise _not_finite()
    return tokens


def stream(
    model: LanguageModel,
    params,
    prompt: Array,
    *,
    key: Optional[Array] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    length: Optional[int] = None,
) -> Iterator[np.ndarray]:
    """The draws of :func:`sample`, one step at a time: yields ``int32[B]`` (a NumPy array, one
    token per row) per step, ``length`` times or, with ``length=None``, until you stop.

    The arguments are :func:`sample`'s; with the same ``key`` the tokens are
    :func:`sample`'s, in order.  The prompt runs in one jitted unroll, then
    each token is one jitted step (feed the last token, draw the next).
    Arguments are checked when the generator is made; non-finite logits raise
    ``FloatingPointError`` at the step they appear.

    Example:
      >>> import jax, jax.numpy as jnp, jrnn
      >>> model = jrnn.rnn_lm(20, cell="gru", embed_size=8, hidden_size=8, num_layers=1)
      >>> params = model.init(jax.random.PRNGKey(0))
      >>> tokens = jrnn.stream(model, params, jnp.array([[0, 5, 7]]), key=jax.random.key(1))
      >>> [int(next(tokens)[0]) for _ in range(4)] == jrnn.sample(
      ...     model, params, jnp.array([[0, 5, 7]]), 4, key=jax.random.key(1))[0].tolist()
      True
    """
    temperature, top_k, top_p = _check_options(temperature, top_k, top_p, model.config.vocab_size)
    prompt = _check_prompt(model, prompt)
    if length is not None:
        length = positive_int("length", length)
    cut, top_k, top_p = _cut(temperature, top_k, top_p, model.config.vocab_size)
    keys = _row_keys(key, prompt.shape[0], not cut.greedy)
    return _stream(model, params, prompt, keys, (temperature, top_k, top_p), length, cut)


def _stream(model, params, prompt, keys, opts, length, cut) -> Iterator[np.ndarray]:
    carry, keys, token, finite = _first_jit(model, params, prompt, keys, opts, cut=cut)
    step = 0
    while True:
        if not bool(finite):
            raise _not_finite()
        yield np.asarray(token)
        step += 1
        if length is not None and step >= length:
            return
        carry, keys, token, finite = _next_jit(model, params, carry, keys, token, opts, cut=cut)


# ---- scoring many sentences --------------------------------------------------------------


class Scores(NamedTuple):
    """What :func:`score` returns, one entry per sentence."""

    log_prob: np.ndarray  # float64[N]: log p of the tokens after each start symbol, summed
    num_tokens: np.ndarray  # int[N]: how many tokens that sum scores (length - 1)

    @property
    def perplexity(self) -> np.ndarray:
        """``exp(-log_prob / num_tokens)`` per sentence: ``float[N]`` (``inf`` past float range)."""
        with np.errstate(over="ignore"):
            return np.exp(-self.log_prob / self.num_tokens)


@functools.partial(jax.jit, static_argnums=0)
def _bucket(model, params, tokens, lengths):
    """``(float[B], int[B])``: summed log-probabilities and scored tokens of one padded batch."""
    return jnp.sum(token_log_probs(model, params, tokens, lengths), axis=1), lengths - 1


def _padded(n: int, limit: Optional[int] = None) -> int:
    """The padded size of ``n``: the next power of two, capped at ``limit`` (never below ``n``)."""
    size = 1 << (n - 1).bit_length()
    return max(n, size if limit is None else min(size, limit))


def score(model: LanguageModel, params, sentences: Sequence[Sequence[int]], *,
          batch_size: int = 64) -> Scores:
    """Log-probability and token count of each sentence: :class:`Scores` ``(log_prob: float[N],
    num_tokens: int[N])``, with ``.perplexity``.

    Each sentence is a sequence of token ids, start symbol first (``<eos>``
    in the Penn Treebank convention, as :meth:`jrnn.data.Vocabulary.encode_batch`
    writes it); the tokens after it are scored, so a sentence needs at least
    two ids.  Sentences of any lengths go together: they are padded to the
    next power of two of their length and batched ``batch_size`` at a time
    (the last batch of a length padded to a power of two), so the model
    compiles once per padded shape.  Padding comes after each sentence and
    is masked, so each sentence scores what :func:`jrnn.log_prob` gives it
    alone.

    Example:
      >>> import jax, jrnn
      >>> model = jrnn.rnn_lm(20, cell="gru", embed_size=8, hidden_size=8, num_layers=1)
      >>> params = model.init(jax.random.PRNGKey(0))
      >>> s = jrnn.score(model, params, [[0, 5, 7, 0], [0, 3, 0], [0, 1, 2, 3, 4, 5, 0]])
      >>> s.num_tokens.tolist(), s.log_prob.shape, bool((s.perplexity > 1).all())
      ([3, 2, 6], (3,), True)
    """
    batch_size = positive_int("batch_size", batch_size)
    if isinstance(sentences, (str, bytes)):
        raise TypeError("sentences must be a sequence of token-id sequences, not a string")
    rows = [np.asarray(s) for s in sentences]
    V = model.config.vocab_size
    for i, r in enumerate(rows):
        if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
            raise ValueError(f"sentences[{i}] must be a 1-D sequence of token ids, got shape "
                             f"{r.shape} dtype {r.dtype}")
        if r.size < 2:
            raise ValueError(f"sentences[{i}] needs a start symbol and at least one token to "
                             f"score, got {r.size} id(s)")
        if r.min() < 0 or r.max() >= V:
            raise ValueError(f"sentences[{i}] must hold ids in [0, vocab_size={V}), got values "
                             f"in [{r.min()}, {r.max()}]")
    log_prob, num_tokens = np.zeros(len(rows)), np.zeros(len(rows), np.int64)
    by_length: dict = {}
    for i, r in enumerate(rows):
        by_length.setdefault(_padded(r.size), []).append(i)
    for T, members in sorted(by_length.items()):
        for start in range(0, len(members), batch_size):
            chunk = members[start:start + batch_size]
            B = _padded(len(chunk), batch_size)
            tokens = np.zeros((B, T), np.int32)
            lengths = np.ones(B, np.int32)  # padding rows: a start symbol only, scoring nothing
            for j, i in enumerate(chunk):
                tokens[j, :rows[i].size], lengths[j] = rows[i], rows[i].size
            lp, n = _bucket(model, params, tokens, lengths)
            log_prob[chunk], num_tokens[chunk] = np.asarray(lp)[:len(chunk)], np.asarray(n)[:len(chunk)]
    return Scores(log_prob, num_tokens)
