"""Does jax.experimental.rnn.lstm (cuDNN) give the same values under jax.jit as eagerly?

GPU only.  Compares, for one LSTM layer (B20 T9 D12 H40, jrnn's weights through
jrnn.core.cudnn), jrnn's scan with jrnn.unroll(method="cudnn") eagerly and under
jit, and the raw cuDNN call on batch-major data under jit with and without a
transpose in front of it (XLA may hand a custom call a transposed layout).

    python benchmarks/cudnn_probe_jit.py
"""
import json
import sys

sys.path.insert(0, ".")
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import rnn  # noqa: E402

import jrnn  # noqa: E402
from jrnn.core import cudnn  # noqa: E402

T, B, D, H = 9, 20, 12, 40
cell = jrnn.lstm(H)
p = cell.init(jax.random.PRNGKey(0), D)
xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D))
xb = jnp.asarray(jnp.swapaxes(xs, 0, 1))  # batch-major, materialized
z = jnp.zeros((1, B, H))
seq = jnp.full((B,), T, jnp.int32)
res = {}
with jax.default_matmul_precision("highest"):
    want = jrnn.unroll(cell, p, xs, method="scan")[1]
    raw = lambda w, x: rnn.lstm(x, z, z, w, seq, D, H, 1, 0.0, False)[0]
    wts = cudnn.to_cudnn_weights(p)
    cases = {
        "eager method": lambda: jrnn.unroll(cell, p, xs, method="cudnn")[1],
        "jit method": lambda: jax.jit(lambda p, x: jrnn.unroll(cell, p, x, method="cudnn")[1])(p, xs),
        "jit raw batch-major": lambda: jnp.swapaxes(jax.jit(raw)(wts, xb), 0, 1),
        "jit raw swapaxes inside": lambda: jnp.swapaxes(
            jax.jit(lambda w, x: raw(w, jnp.swapaxes(x, 0, 1)))(wts, xs), 0, 1),
        "jit raw weights built inside": lambda: jnp.swapaxes(
            jax.jit(lambda p, x: raw(cudnn.to_cudnn_weights(p), x))(p, xb), 0, 1),
        "jit swapaxes + optimization_barrier": lambda: jnp.swapaxes(jax.jit(
            lambda w, x: raw(w, jax.lax.optimization_barrier(jnp.swapaxes(x, 0, 1))))(wts, xs), 0, 1),
        "jit swapaxes + runtime zero": lambda: jnp.swapaxes(jax.jit(
            lambda w, x: raw(w, jnp.swapaxes(x, 0, 1) + 0 * w[0]))(wts, xs), 0, 1),
        "jit method output only transposed": lambda: jnp.swapaxes(jax.jit(
            lambda w, x: raw(w, x))(wts, jnp.swapaxes(xs, 0, 1)), 0, 1),
    }
    for name, f in cases.items():
        try:
            res[name] = float(jnp.max(jnp.abs(f() - want)))
        except Exception as e:  # noqa: BLE001
            res[name] = f"{type(e).__name__}: {str(e)[:200]}"
print(json.dumps(res))
