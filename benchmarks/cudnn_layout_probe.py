"""Which gate order does cuDNN's LSTM (jax.experimental.rnn.lstm) expect on this GPU?

Runs the same jrnn LSTM weights through ``jax.experimental.rnn.lstm`` with the
four gate blocks of every matrix and bias permuted, and through jrnn's scan at
HIGHEST precision; prints the permutation that agrees (GPU only).

    python benchmarks/cudnn_layout_probe.py
"""
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import rnn  # noqa: E402

import jrnn  # noqa: E402
from jrnn.core import cudnn  # noqa: E402


def main():
    T, B, D, H = 6, 4, 5, 8
    cell = jrnn.lstm(H)
    p = cell.init(jax.random.PRNGKey(0), D)
    p["b"] = 0.3 * jax.random.normal(jax.random.PRNGKey(3), p["b"].shape)
    xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D))
    with jax.default_matmul_precision("highest"):
        _, want = jrnn.unroll(cell, p, xs, method="scan")
    seq = jnp.full((B,), T, jnp.int32)
    zeros = jnp.zeros((1, B, H))
    out = {}
    for perm in itertools.permutations(range(4)):
        def permute(a, axis):
            blocks = jnp.split(a, 4, axis=axis)
            return jnp.concatenate([blocks[i] for i in perm], axis=axis)
        q = {"W": permute(p["W"], 1), "W_h": permute(p["W_h"], 1), "b": permute(p["b"], 0)}
        y, _, _ = rnn.lstm(jnp.swapaxes(xs, 0, 1), zeros, zeros, cudnn.to_cudnn_weights(q), seq,
                           D, H, 1, 0.0, False, jax.lax.Precision.HIGHEST)
        out["".join("ifgo"[i] for i in perm)] = float(jnp.max(jnp.abs(jnp.swapaxes(y, 0, 1) - want)))
    best = min(out, key=out.get)
    print(json.dumps({"best_order": best, "diff": out[best]}))
    # The identity order with what else differs between callers: a non-zero start state,
    # odd sizes, and gradients.
    for (T, B, D, H, carry) in [(6, 4, 5, 8, True), (9, 20, 12, 40, False),
                                (9, 20, 12, 40, True), (35, 20, 200, 200, False)]:
        cell = jrnn.lstm(H)
        p = cell.init(jax.random.PRNGKey(0), D)
        xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D))
        h0 = 0.5 * jax.random.normal(jax.random.PRNGKey(4), (B, H)) if carry else jnp.zeros((B, H))
        c0 = 0.5 * jax.random.normal(jax.random.PRNGKey(5), (B, H)) if carry else jnp.zeros((B, H))
        seq = jnp.full((B,), T, jnp.int32)

        def via_scan(p, xs):
            return jrnn.unroll(cell, p, xs, jrnn.LSTMCarry(h0, c0), method="scan")[1]

        def via_cudnn(p, xs):
            y, _, _ = rnn.lstm(jnp.swapaxes(xs, 0, 1), h0[None], c0[None], cudnn.to_cudnn_weights(p),
                               seq, D, H, 1, 0.0, False, jax.lax.Precision.HIGHEST)
            return jnp.swapaxes(y, 0, 1)

        def via_method(p, xs):  # jrnn.unroll(method="cudnn"): default precision
            return jrnn.unroll(cell, p, xs, jrnn.LSTMCarry(h0, c0), method="cudnn")[1]

        with jax.default_matmul_precision("highest"):
            m = via_method(p, xs)
            gm = jax.grad(lambda p, x: jnp.sum(jnp.sin(via_method(p, x))), argnums=(0, 1))(p, xs)

        with jax.default_matmul_precision("highest"):
            a, b = via_scan(p, xs), via_cudnn(p, xs)
            ga = jax.grad(lambda p, x: jnp.sum(jnp.sin(via_scan(p, x))), argnums=(0, 1))(p, xs)
            gb = jax.grad(lambda p, x: jnp.sum(jnp.sin(via_cudnn(p, x))), argnums=(0, 1))(p, xs)
        print(json.dumps({"T": T, "B": B, "D": D, "H": H, "carry": carry,
                          "y": float(jnp.max(jnp.abs(a - b))),
                          "grads": {k: float(jnp.max(jnp.abs(ga[0][k] - gb[0][k]))) for k in p},
                          "dxs": float(jnp.max(jnp.abs(ga[1] - gb[1]))),
                          "method_y": float(jnp.max(jnp.abs(a - m))),
                          "method_grads": {k: float(jnp.max(jnp.abs(ga[0][k] - gm[0][k])))
                                           for k in p},
                          "grad_scale": {k: float(jnp.max(jnp.abs(ga[0][k]))) for k in p}}))


if __name__ == "__main__":
    main()
