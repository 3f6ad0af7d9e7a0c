"""bfloat16 operands for the output layer's matmuls: exactly that and nothing else, chosen per machine,
never in evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jrnn
from jrnn.core import backward, select
from jrnn.training.config import ConfigError, TrainConfig
from jrnn.training.step import make_eval_step


def _case(N=37, H=24, V=300, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    h = jax.random.normal(k[0], (N, H))
    W = 0.3 * jax.random.normal(k[1], (H, V))
    b = 0.1 * jax.random.normal(k[2], (V,))
    y = jax.random.randint(k[3], (N,), 0, V)
    w = jnp.where(jnp.arange(N) % 5 == 0, 0.0, 1.0)  # some rows dropped
    return h, W, b, y, w


def _bf16(x):
    return x.astype(jnp.bfloat16).astype(jnp.float32)


def test_bf16_output_layer_is_float32_math_on_bf16_rounded_operands():
    h, W, b, y, w = _case()

    def ref(h, W, b):  # every matmul operand rounded to bf16, everything else float32
        losses = optax.softmax_cross_entropy_with_integer_labels(_bf16(h) @ _bf16(W) + b, y)
        return jnp.sum(losses * w), losses

    (total, losses) = backward.softmax_cross_entropy(h, W, b, y, w, chunk_rows=8,
                                                     matmul_dtype="bfloat16")
    want_total, want_losses = ref(h, W, b)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(total, want_total, rtol=1e-5)

    # Gradients: dlogits = softmax - onehot (float32), then dh = bf16(dlogits) @ bf16(W).T and
    # dW = bf16(h).T @ bf16(dlogits), accumulated in float32.
    g = jax.grad(lambda h, W, b: backward.softmax_cross_entropy(
        h, W, b, y, w, chunk_rows=8, matmul_dtype="bfloat16")[0], argnums=(0, 1, 2))(h, W, b)
    logits = _bf16(h) @ _bf16(W) + b
    dlogits = (jax.nn.softmax(logits) - jax.nn.one_hot(y, W.shape[1])) * w[:, None]
    np.testing.assert_allclose(g[0], _bf16(dlogits) @ _bf16(W).T, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g[1], _bf16(h).T @ _bf16(dlogits), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g[2], dlogits.sum(0), rtol=1e-5, atol=1e-6)

    # And close to the float32 layer: the rounding is the only difference.
    g32 = jax.grad(lambda h, W: backward.softmax_cross_entropy(h, W, b, y, w)[0], argnums=(0, 1))(h, W)
    for a, c in zip(g[:2], g32):
        assert float(jnp.max(jnp.abs(a - c)) / jnp.max(jnp.abs(c))) < 2e-2
    with pytest.raises(ValueError, match="matmul_dtype must be"):
        backward.softmax_cross_entropy(h, W, b, y, w, matmul_dtype="float16")


def test_auto_picks_bf16_only_on_cpus_that_multiply_it_in_hardware():
    amx = frozenset({"avx2", "avx512f", "amx_tile", "amx_bf16"})
    assert select.output_matmul_dtype("cpu", amx).dtype == "bfloat16"
    assert select.output_matmul_dtype("cpu", frozenset({"avx2", "fma"})).dtype == "float32"
    assert select.output_matmul_dtype("cpu", frozenset({"avx512_bf16", "avx512f"})).dtype == "bfloat16"
    assert select.output_matmul_dtype("cpu", frozenset({"avx2", "avx512f", "avx512bw"})).dtype == "float32"
    assert select.output_matmul_dtype("gpu", amx).dtype == "float32"
    assert select.output_matmul_dtype("cpu", frozenset()).why  # every choice says why
    small = select.BF16_MIN_OUTPUT_WEIGHTS - 1
    assert select.output_matmul_dtype("cpu", amx, output_weights=small).dtype == "float32"
    # rnn_lm resolves "auto" with the same rule (H x V of its output layer), on this machine.
    for V, H in ((30, 4), (10_000, 200)):
        model = jrnn.rnn_lm(V, embed_size=4, hidden_size=H, num_layers=1, output_precision="auto")
        assert model.config.output_precision == select.output_matmul_dtype(
            output_weights=V * H).dtype
    assert jrnn.rnn_lm(30, embed_size=4, hidden_size=4).config.output_precision == "float32"
    with pytest.raises(ValueError, match="output_precision must be one of"):
        jrnn.rnn_lm(30, output_precision="fp8")
    with pytest.raises(ConfigError, match="output_precision must be one of"):
        TrainConfig().replace(output_precision="half")


def test_training_loss_uses_bf16_but_evaluation_stays_float32():
    kw = dict(embed_size=8, hidden_size=16, num_layers=1)
    f32 = jrnn.rnn_lm(50, **kw)
    bf16 = jrnn.rnn_lm(50, output_precision="bfloat16", **kw)
    params = f32.init(jax.random.PRNGKey(0))
    x = jax.random.randint(jax.random.PRNGKey(1), (3, 9), 0, 50)
    y = jnp.roll(x, -1, axis=1)
    l32 = jrnn.sequence_loss(f32, params, x, y)[1].losses
    l16 = jrnn.sequence_loss(bf16, params, x, y)[1].losses
    diff = float(jnp.max(jnp.abs(l16 - l32)))
    assert 0 < diff < 1e-2, diff  # rounded operands: different, but only just
    e32 = make_eval_step(f32)(params, x, y)
    e16 = make_eval_step(bf16)(params, x, y)
    assert float(e16[0]) == float(e32[0]) and int(e16[1]) == int(e32[1])


def test_bf16_weight_gradient_reads_a_real_transposed_copy_on_cpu():
    # The copy is the same values as the transpose; on a CPU, for bf16, it sits behind an
    # optimization barrier (so XLA cannot fold it back into the dW matmul), and only there.
    hc = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 4))
    for dtype in (jnp.bfloat16, jnp.float32):
        x = hc.astype(dtype)
        np.testing.assert_array_equal(backward._transposed_chunks(x), jnp.swapaxes(x, 1, 2))
        hlo = jax.jit(backward._transposed_chunks).lower(x).as_text()
        assert ("optimization_barrier" in hlo) == select.transposed_copies(dtype), dtype
    assert select.transposed_copies(jnp.bfloat16, "cpu") and not select.transposed_copies(
        jnp.float32, "cpu") and not select.transposed_copies(jnp.bfloat16, "gpu")
