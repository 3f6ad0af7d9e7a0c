"""jrnn's LSTM weights in ``jax.experimental.rnn``'s cuDNN layout, and a check.

``jax.experimental.rnn.lstm`` (JAX's binding of cuDNN's LSTM) takes one flat
float32 weight vector: for every layer ``l`` the matrices ``W_ih^l`` ``[4H, D_l]``
and ``W_hh^l`` ``[4H, H]``, all layers' matrices first, then every layer's
``b_ih^l`` and ``b_hh^l`` ``[4H]`` -- PyTorch's names, gate order (i, f, g, o),
row-major.  jrnn's LSTM has ``W: [D, 4H]``, ``W_h: [H, 4H]``, ``b: [4H]`` in
the same gate order, so ``W_ih = W.T``, ``W_hh = W_h.T`` and the two cuDNN
biases sum to ``b``.

:func:`check` runs the same weights and inputs through ``jrnn.unroll`` and
``jax.experimental.rnn.lstm_ref`` (JAX's pure-JAX reference of the cuDNN
call; any backend) and, on a CUDA GPU, through ``jax.experimental.rnn.lstm``
itself (cuDNN, at HIGHEST precision and at the default, which lets cuDNN use
TF32), and reports the largest absolute differences of the outputs, final
carries and gradients.  ``--emulate`` (CPU only, for the smoke test) also
registers a CPU lowering of the cuDNN primitives built from ``lstm_ref`` and
runs ``benchmarks/peers.py``'s ``jax-cudnn`` runner for two steps, to check
its plumbing (custom_vjp, layouts) before a GPU is lent; its timings would
mean nothing.

    python benchmarks/jax_cudnn.py [--emulate] [--out check.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import jrnn  # noqa: E402

TOL_REF = 2e-5  # float32 at HIGHEST precision, two layers of a short sequence: same math
TOL_CUDNN = 2e-4  # cuDNN's own kernels (other summation orders), also at HIGHEST


def _highest():
    """Float32 matmuls at full precision for the comparison (no TF32 on a GPU)."""
    try:
        return jax.default_matmul_precision("highest")
    except Exception:  # noqa: BLE001 -- an API change must not stop the check
        return contextlib.nullcontext()


def jrnn_to_cudnn_weights(layers: Sequence[dict]) -> jax.Array:
    """jrnn LSTM params (one dict per layer) -> ``jax.experimental.rnn``'s flat weights.

    ``W_ih = W.T``, ``W_hh = W_h.T``, ``b_ih = b``, ``b_hh = 0``.  Linear in
    the params, so gradients flow back through it.
    """
    mats, biases = [], []
    for p in layers:
        mats += [p["W"].T.reshape(-1), p["W_h"].T.reshape(-1)]
        biases += [p["b"], jnp.zeros_like(p["b"])]
    return jnp.concatenate(mats + biases)


def cudnn_to_jrnn_weights(weights: jax.Array, input_size: int, hidden_size: int,
                          num_layers: int) -> list[dict]:
    """The inverse direction: ``W = W_ih.T``, ``W_h = W_hh.T``, ``b = b_ih + b_hh``."""
    from jax.experimental import rnn

    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(weights, input_size, hidden_size,
                                                     num_layers, False)
    return [{"W": W_ih[l].T, "W_h": W_hh[l].T, "b": b_ih[l] + b_hh[l]} for l in range(num_layers)]


def _max_abs(a, b) -> float:
    leaves = jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x, y: jnp.max(jnp.abs(x - y)),
                                                              a, b))
    return float(max(leaves))


def check(B: int = 3, T: int = 7, D: int = 5, H: int = 6, L: int = 2, seed: int = 0,
          cudnn: bool | None = None) -> dict:
    """Max abs differences between jrnn and jax.experimental.rnn on the same weights.

    ``D != H`` so that a transposed first-layer matrix cannot pass.  Keys:
    ``ref_*`` (``lstm_ref``, weights from jrnn), ``roundtrip`` (cuDNN ->
    jrnn -> cuDNN weights with both biases), and on a GPU ``cudnn_*``.
    """
    from jax.experimental import rnn

    if cudnn is None:
        cudnn = jax.default_backend() == "gpu"
    cells = [jrnn.lstm(H) for _ in range(L)]
    keys = jax.random.split(jax.random.PRNGKey(seed), L + 4)
    params = [c.init(k, D if i == 0 else H) for i, (c, k) in enumerate(zip(cells, keys[:L]))]
    # Biases away from zero and a nonzero initial carry, so that neither can hide.
    params = [dict(p, b=p["b"] + 0.3 * jax.random.normal(k, p["b"].shape))
              for p, k in zip(params, jax.random.split(keys[L], L))]
    xs = jax.random.normal(keys[L + 1], (T, B, D))  # jrnn is time-major
    h0 = 0.5 * jax.random.normal(keys[L + 2], (L, B, H))
    c0 = 0.5 * jax.random.normal(keys[L + 3], (L, B, H))
    seq = jnp.full((B,), T, jnp.int32)
    n_params = rnn.get_num_params_in_lstm(D, H, L, False)

    def via_jrnn(params, xs):
        carry0 = [jrnn.LSTMCarry(h0[l], c0[l]) for l in range(L)]
        carries, hs = jrnn.unroll(cells, params, xs, carry0)
        return hs, jnp.stack([c.h for c in carries]), jnp.stack([c.c for c in carries])

    def via_ref(params, xs):
        w = jrnn_to_cudnn_weights(params)
        W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, H, L, False)
        y, h_n, c_n = rnn.lstm_ref(jnp.swapaxes(xs, 0, 1), h0, c0, W_ih, W_hh, b_ih, b_hh, seq,
                                   D, H, L, 0.0, False)
        return jnp.swapaxes(y, 0, 1), h_n, c_n

    def via_cudnn(params, xs, precision=None):
        w = jrnn_to_cudnn_weights(params)
        extra = () if precision is None else (precision,)
        y, h_n, c_n = rnn.lstm(jnp.swapaxes(xs, 0, 1), h0, c0, w, seq, D, H, L, 0.0, False,
                               *extra)
        return jnp.swapaxes(y, 0, 1), h_n, c_n

    def loss(f):  # every output enters the loss, weighted so that no sign cancels
        def fn(params, xs):
            y, h_n, c_n = f(params, xs)
            return jnp.sum(jnp.sin(3.0 * y)) + jnp.sum(h_n * h_n) + jnp.sum(jnp.cos(c_n))
        return jax.jit(jax.grad(fn, argnums=(0, 1)))

    out: dict = {"shape": {"B": B, "T": T, "D": D, "H": H, "L": L},
                 "backend": jax.default_backend(),
                 "n_params": n_params, "n_params_ok": n_params == int(
                     jrnn_to_cudnn_weights(params).size)}
    with _highest():
        want = jax.jit(via_jrnn)(params, xs)
        want_g = loss(via_jrnn)(params, xs)
        got = jax.jit(via_ref)(params, xs)
        got_g = loss(via_ref)(params, xs)
    names = ("y", "h_n", "c_n")
    for n, a, b in zip(names, want, got):
        out[f"ref_{n}"] = _max_abs(a, b)
    out["ref_grad_params"] = _max_abs(want_g[0], got_g[0])
    out["ref_grad_xs"] = _max_abs(want_g[1], got_g[1])
    # The other direction, with cuDNN's two biases both nonzero.
    w = rnn.init_lstm_weight(jax.random.PRNGKey(seed + 1), D, H, L, False)
    out["roundtrip_cudnn_jrnn_cudnn"] = _max_abs(
        jrnn_to_cudnn_weights(cudnn_to_jrnn_weights(w, D, H, L)),
        _fold_biases(w, D, H, L))
    if cudnn:
        for label, precision in (("cudnn_highest", jax.lax.Precision.HIGHEST),
                                 ("cudnn_default", None)):
            try:  # "default": outside the HIGHEST context, so cuDNN may use TF32
                with _highest() if precision is not None else contextlib.nullcontext():
                    got = jax.jit(lambda p, x: via_cudnn(p, x, precision))(params, xs)
                    got_g = loss(lambda p, x: via_cudnn(p, x, precision))(params, xs)
                for n, a, b in zip(names, want, got):
                    out[f"{label}_{n}"] = _max_abs(a, b)
                out[f"{label}_grad_params"] = _max_abs(want_g[0], got_g[0])
                out[f"{label}_grad_xs"] = _max_abs(want_g[1], got_g[1])
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                out[f"{label}_error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
    else:
        out["cudnn_note"] = ("jax.experimental.rnn.lstm (cuDNN) needs a CUDA GPU: skipped; "
                             "the weight layout was checked through lstm_ref")
    ref = [v for k, v in out.items()
           if isinstance(v, float) and (k.startswith("ref_") or k.startswith("roundtrip"))]
    cud = [v for k, v in out.items() if isinstance(v, float) and k.startswith("cudnn_highest")]
    out["max_abs_diff"] = max(ref + cud)
    out["ok"] = bool(out["n_params_ok"] and max(ref) < TOL_REF and max(cud, default=0) < TOL_CUDNN
                     and not any(k.endswith("_error") for k in out))
    return out


def _fold_biases(w, D, H, L):
    """cuDNN weights with ``b_ih + b_hh`` in ``b_ih`` and zeros in ``b_hh`` (jrnn's one bias)."""
    from jax.experimental import rnn

    W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, D, H, L, False)
    return jnp.concatenate([a.reshape(-1) for l in range(L) for a in (W_ih[l], W_hh[l])]
                           + [a for l in range(L) for a in (b_ih[l] + b_hh[l],
                                                            jnp.zeros_like(b_hh[l]))])


# --------------------------------------------------------------------------
# CPU emulation of the cuDNN primitives (smoke test only).


def emulate_on_cpu() -> None:
    """Give ``jax.experimental.rnn``'s cuDNN primitives a CPU lowering made of ``lstm_ref``.

    For checking code that calls ``rnn.lstm`` (shapes, custom_vjp, layouts)
    on a machine without a GPU.  The reserve space is a dummy; nothing about
    speed carries over.  Marks the module with ``_jrnn_emulated_on_cpu``.
    """
    from jax.experimental import rnn
    from jax.interpreters import mlir

    if getattr(rnn, "_jrnn_emulated_on_cpu", False):
        return

    class _Sizes:  # stands in for jaxlib.gpu_rnn where no CUDA plugin is loaded
        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            return getattr(self._real, name)

        @staticmethod
        def compute_rnn_workspace_reserve_space_sizes(*args):
            return 0, 1

    rnn.gpu_rnn = _Sizes(rnn.gpu_rnn)

    def ref(x, h_0, c_0, w, seq_lengths, *, input_size, hidden_size, num_layers, bidirectional):
        W_ih, W_hh, b_ih, b_hh = rnn.unpack_lstm_weights(w, input_size, hidden_size, num_layers,
                                                         bidirectional)
        return rnn.lstm_ref(x, h_0, c_0, W_ih, W_hh, b_ih, b_hh, seq_lengths, input_size,
                            hidden_size, num_layers, 0.0, bidirectional)

    def fwd(x, h_0, c_0, w, seq_lengths, *, input_size, hidden_size, num_layers, dropout,
            bidirectional, cudnn_allow_tf32):
        y, h_n, c_n = ref(x, h_0, c_0, w, seq_lengths, input_size=input_size,
                          hidden_size=hidden_size, num_layers=num_layers,
                          bidirectional=bidirectional)
        return y, h_n, c_n, jnp.zeros((1,), jnp.float32)

    def bwd(dy, dh_n, dc_n, x, h_0, c_0, w, y, reserve_space, seq_lengths, *, input_size,
            hidden_size, num_layers, dropout, bidirectional, cudnn_allow_tf32):
        def f(x, h_0, c_0, w):
            return ref(x, h_0, c_0, w, seq_lengths, input_size=input_size,
                       hidden_size=hidden_size, num_layers=num_layers, bidirectional=bidirectional)

        _, vjp = jax.vjp(f, x, h_0, c_0, w)
        return list(vjp((dy, dh_n, dc_n)))

    mlir.register_lowering(rnn.rnn_fwd_p, mlir.lower_fun(fwd, multiple_results=True),
                           platform="cpu")
    mlir.register_lowering(rnn.rnn_bwd_p, mlir.lower_fun(bwd, multiple_results=True),
                           platform="cpu")
    rnn._jrnn_emulated_on_cpu = True


def emulated_runner_check() -> dict:
    """Two steps of peers.py's jax-cudnn runner on the tiny shapes, on the CPU emulation."""
    import peers

    emulate_on_cpu()
    out = {}
    for name in ("tiny-lm", "tiny-rec"):
        shape = peers.SHAPES[name]
        try:
            runner = peers.jax_cudnn_runner(shape, peers.make_data(shape))
            runner.compile()
            runner.run(2)
            runner.sync()
            if runner.forward is not None:
                runner.forward(1)
            out[name] = "ok"
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            out[name] = f"err: {type(e).__name__}: {' '.join(str(e).split())[:300]}"
    # The emulated cuDNN call against jrnn, with the converted weights.
    res = check(B=2, T=5, D=4, H=3, L=2, cudnn=True)
    out["emulated_cudnn_max_abs_diff"] = max(v for k, v in res.items()
                                             if k.startswith("cudnn_highest_")
                                             and isinstance(v, float))
    return out


# The largest difference from the scan at HIGHEST precision that passes, per method class:
# the kernels' float32 operands are TF32 in wgmma (10-bit mantissa), bf16 has 8 bits.
TOLERANCE = {"pallas": 2e-2, "persistent": 2e-2, "pallas-bf16": 1e-1, "persistent-bf16": 1e-1,
             "cudnn": 1e-3}


def verdict(name: str, value) -> str:
    """``"ok"`` or ``"FAILED (...)"`` for one :func:`check_backends` entry: a method whose values
    fail on the card must not be timed as if it worked (nor picked by ``auto``)."""
    if isinstance(value, str):
        return f"FAILED ({value[:120]})"
    tol = TOLERANCE[name.split("/")[0]]
    return "ok" if value <= tol else f"FAILED (max abs diff {value:.2e} > {tol:.0e})"


def check_backends(T: int = 9, B: int = 20, D: int = 12, H: int = 40, on_result=None) -> dict:
    """jrnn's GPU methods against its own scan, values and gradients: ``{name: max abs diff}``.

    ``pallas`` for every cell (compiled on a GPU, interpret mode elsewhere),
    ``pallas-bf16`` for the LSTM, and ``cudnn`` (``jrnn.unroll(method="cudnn")``,
    the layout of :mod:`jrnn.core.cudnn`) on a GPU.  At HIGHEST precision.
    """
    import warnings

    out: dict = {}
    # (method, cell kind); "pallas-bf16" names method="pallas" with precision="bfloat16".
    cases = ([("pallas", k) for k in ("elman", "lstm", "gru")] + [("pallas-bf16", "lstm")]
             + [("persistent", k) for k in ("elman", "lstm")] + [("persistent-bf16", "lstm")])
    if jax.default_backend() == "gpu":
        cases.append(("cudnn", "lstm"))
    for method, kind in cases:
        name = f"{method}/{kind}"
        try:
            cell = jrnn.make_cell(kind, H)
            params = cell.init(jax.random.PRNGKey(0), D)
            xs = jax.random.normal(jax.random.PRNGKey(1), (T, B, D))
            w = jax.random.normal(jax.random.PRNGKey(2), (T, B, H))

            def loss(m):
                m, _, bf16 = m.partition("-")  # "pallas-bf16": method pallas, bf16 operands
                # (the kernels' float32 operands are TF32 on a GPU: wgmma has no float32)
                prec = "bfloat16" if bf16 else "float32"
                f = jax.value_and_grad(
                    lambda p, x: jnp.sum(jrnn.unroll(cell, p, x, method=m, precision=prec)[1] * w),
                    argnums=(0, 1))
                # cuDNN eagerly: under jit jrnn refuses it (jrnn.core.cudnn.UNDER_JIT).
                return f if m == "cudnn" else jax.jit(f)

            with warnings.catch_warnings():
                # jrnn's fallback warning would make this compare the scan with itself.
                warnings.simplefilter("error", RuntimeWarning)
                with _highest():
                    want = loss("scan")(params, xs)
                    got = loss(method)(params, xs)
            out[name] = max(_max_abs(a, b) for a, b in zip(jax.tree_util.tree_leaves(got),
                                                           jax.tree_util.tree_leaves(want)))
        except Exception as e:  # noqa: BLE001
            out[name] = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
        if on_result is not None:  # e.g. save: a case that hangs on the card keeps the others
            on_result(dict(out))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--emulate", action="store_true",
                   help="CPU only: also run peers.py's jax-cudnn runner on an lstm_ref emulation")
    p.add_argument("--out", default=None, help="write the results here as JSON")
    args = p.parse_args(argv)
    t = time.perf_counter()
    res: dict = {"jax": jax.__version__, "backend": jax.default_backend()}
    try:
        res["check"] = check()
        c = res["check"]
        print(f"jrnn LSTM -> jax.experimental.rnn weights: max abs diff {c['max_abs_diff']:.2e} "
              f"({'ok' if c['ok'] else 'MISMATCH'}; lstm_ref y {c['ref_y']:.1e}, "
              f"grad {max(c['ref_grad_params'], c['ref_grad_xs']):.1e})", flush=True)
        for k, v in c.items():
            if k.startswith("cudnn_"):
                print(f"  {k}: {v if isinstance(v, str) else format(v, '.2e')}")
        # A GPU-sized shape too: the layer shapes of the benchmark, one short sequence.
        if jax.default_backend() == "gpu":
            res["check_large"] = check(B=16, T=16, D=768, H=768, L=1, seed=1)
            print(f"  H=768: max abs diff {res['check_large']['max_abs_diff']:.2e}")
    except Exception as e:  # noqa: BLE001
        traceback.print_exc()
        res["error"] = f"{type(e).__name__}: {' '.join(str(e).split())[:400]}"
        print(f"check failed: {res['error']}")
    def save(backends: dict) -> None:
        res["backends"] = backends
        res["verdicts"] = {k: verdict(k, v) for k, v in backends.items()}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(res, indent=1))

    res["backends"] = check_backends(on_result=save)
    res["verdicts"] = {k: verdict(k, v) for k, v in res["backends"].items()}
    for k, v in res["backends"].items():
        print(f"  jrnn method {k} vs scan: {v if isinstance(v, str) else format(v, '.2e')} "
              f"-> {res['verdicts'][k]}")
    if args.emulate:
        if jax.default_backend() != "cpu":
            res["emulated"] = "skipped: --emulate is for the CPU"
        else:
            res["emulated"] = emulated_runner_check()
            print(f"peers.py jax-cudnn runner on the CPU emulation of cuDNN: {res['emulated']}")
    res["seconds"] = time.perf_counter() - t
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=1))
    return 0 if "error" not in res else 1


if __name__ == "__main__":
    sys.exit(main())
