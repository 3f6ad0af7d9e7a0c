"""The language-model API: apply, log_prob, next-token distribution, encode, NNLM."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jrnn
from jrnn import reference as ref
from jrnn.data import Vocabulary
from tests.helpers import KINDS, to_np

V = 9


@pytest.mark.parametrize("kind", KINDS)
def test_apply_matches_reference_forward(kind):
    model = jrnn.rnn_lm(V, cell=kind, embed_size=4, hidden_size=5, num_layers=2)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, V)
    logits, _ = model.apply(params, tokens)
    want, _, _ = ref.lm_forward(kind, to_np(params), tokens)
    chex.assert_trees_all_close(logits, want, atol=1e-12)


def test_carry_continues_text():
    model = jrnn.rnn_lm(V, cell="lstm", embed_size=4, hidden_size=5, num_layers=2)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 10), 0, V)
    full, _ = model.apply(params, tokens)
    a, carry = model.apply(params, tokens[:, :4])
    b, _ = model.apply(params, tokens[:, 4:], carry)
    chex.assert_trees_all_close(jnp.concatenate([a, b], 1), full, atol=1e-12)


def test_log_prob_is_sum_of_conditionals_and_lengths_ignore_padding():
    model = jrnn.rnn_lm(V, cell="gru", embed_size=4, hidden_size=5, num_layers=1)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    seq = jnp.array([[0, 3, 4, 5, 0]])
    lp = float(jrnn.log_prob(model, params, seq)[0])
    # chain rule by hand, one next-token distribution at a time
    manual = sum(float(jrnn.next_token_log_probs(model, params, seq[:, :t])[0, seq[0, t]])
                 for t in range(1, 5))
    np.testing.assert_allclose(lp, manual, rtol=1e-12)
    padded = jnp.array([[0, 3, 4, 5, 0, 7, 7], [0, 3, 4, 5, 0, 1, 2]])
    lps = jrnn.log_prob(model, params, padded, lengths=jnp.array([5, 5]))
    np.testing.assert_allclose(np.asarray(lps), [lp, lp], rtol=1e-12)
    # next-token distribution respects lengths too and is normalised
    nt = jrnn.next_token_log_probs(model, params, padded, lengths=jnp.array([3, 3]))
    chex.assert_trees_all_close(nt[0], nt[1])
    np.testing.assert_allclose(np.exp(nt).sum(-1), 1.0, rtol=1e-12)


def test_encode_is_final_hidden_state_respecting_lengths():
    model = jrnn.rnn_lm(V, cell="lstm", embed_size=4, hidden_size=5, num_layers=2)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    tokens = jnp.array([[1, 2, 3, 4, 5], [1, 2, 3, 8, 8]])
    z = model.encode(params, tokens, lengths=jnp.array([5, 3]))
    assert z.shape == (2, 5)
    z_short = model.encode(params, tokens[1:, :3])
    chex.assert_trees_all_close(z[1], z_short[0], atol=1e-12)
    _, carry = model.apply(params, tokens[:1])
    chex.assert_trees_all_close(z[0], carry[-1].h[0], atol=1e-12)


def test_car_beats_cat_in_two_lines_with_a_trained_model():
    """The lecture's question on a model that learned 'driving a' -> vehicle."""
    lines = ["john is driving a car", "mary is driving a car", "john is feeding a cat",
             "mary is feeding a cat"] * 8
    vocab = Vocabulary.build(lines)
    ids = np.concatenate([vocab.encode(l) for l in lines])
    model = jrnn.rnn_lm(len(vocab), cell="lstm", embed_size=16, hidden_size=16, num_layers=1)
    import optax
    opt = optax.adam(0.05)
    state = jrnn.init_train_state(model.init(jax.random.PRNGKey(0)), opt, jax.random.PRNGKey(1))
    step = jrnn.make_train_step(model, opt, clip_norm=5.0)
    x, y = ids[None, :-1], ids[None, 1:]
    for _ in range(60):
        state, _, m = step(state, x, y)
    tokens, lengths = vocab.encode_batch(["john is driving a car", "john is driving a cat"])
    lp = jrnn.log_prob(model, state.params, tokens, lengths)
    assert lp[0] > lp[1] + 2.0, lp


def test_nnlm_sees_only_its_window():
    model = jrnn.nnlm(V, context_size=2, embed_size=3, hidden_size=4)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    a = jnp.array([[1, 2, 3, 4, 5]])
    b = jnp.array([[7, 2, 3, 4, 5]])  # differs only 4 words before the end
    la, _ = model.apply(params, a)
    lb, _ = model.apply(params, b)
    chex.assert_trees_all_close(la[:, 2:], lb[:, 2:])  # positions 2.. never see token 0
    assert not np.allclose(la[:, :2], lb[:, :2])


def test_nnlm_carry_joins_windows_and_trains_with_same_code():
    import optax
    model = jrnn.nnlm(V, context_size=3, embed_size=3, hidden_size=8)
    params = model.init(jax.random.PRNGKey(0), jnp.float64)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, V)
    full, _ = model.apply(params, tokens)
    a, carry = model.apply(params, tokens[:, :5])
    b, _ = model.apply(params, tokens[:, 5:], carry)
    chex.assert_trees_all_close(jnp.concatenate([a, b], 1), full, atol=1e-12)
    opt = optax.adam(0.05)
    state = jrnn.init_train_state(params, opt, jax.random.PRNGKey(2))
    step = jrnn.make_train_step(model, opt)
    seq = jnp.tile(jnp.arange(V), (2, 3))
    first = None
    for _ in range(40):
        state, _, m = step(state, seq[:, :-1], seq[:, 1:])
        first = float(m["token_nll"]) if first is None else first
    assert float(m["token_nll"]) < 0.25 * first


# ---- bad input --------------------------------------------------------------

def test_bad_tokens_and_configs():
    model = jrnn.rnn_lm(V, cell="elman", embed_size=3, hidden_size=3, num_layers=1)
    params = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"ids in \[0, vocab_size=9\)"):
        model.apply(params, jnp.array([[1, 9]]))
    with pytest.raises(ValueError, match=r"ids in \[0, vocab_size=9\)"):
        model.apply(params, jnp.array([[-1, 2]]))
    with pytest.raises(TypeError, match="integer token ids"):
        model.apply(params, jnp.array([[1.0, 2.0]]))
    with pytest.raises(ValueError, match=r"shape \[B, T\]"):
        model.apply(params, jnp.array([1, 2]))
    with pytest.raises(ValueError, match="one shape"):
        jrnn.sequence_loss(model, params, jnp.zeros((2, 3), int), jnp.zeros((2, 4), int))
    with pytest.raises(ValueError, match="cell must be one of"):
        jrnn.rnn_lm(V, cell="transformer")
    with pytest.raises(ValueError, match="activation must be one of"):
        jrnn.rnn_lm(V, cell="elman", activation="gelu-ish")
    with pytest.raises(ValueError, match="tie_embeddings"):
        jrnn.rnn_lm(V, embed_size=3, hidden_size=4, tie_embeddings=True)
    with pytest.raises(ValueError, match="dropout"):
        jrnn.rnn_lm(V, dropout=1.0)
    with pytest.raises(ValueError, match="vocab_size"):
        jrnn.rnn_lm(0)
    with pytest.raises(ValueError, match=r"lengths must lie in \[1, T=3\]"):
        jrnn.log_prob(model, params, jnp.zeros((1, 3), int), lengths=jnp.array([4]))
    with pytest.raises(ValueError, match="T >= 2"):
        jrnn.log_prob(model, params, jnp.zeros((1, 1), int))
