"""The one place where jrnn chooses how to run: ``method="auto"`` and chunk sizes.

Every choice that depends on the machine is made here, at run time, from a
table keyed by the cell, a shape class and the backend -- never hard-coded in
the code that runs the choice.  Each entry says where its figure was measured
(``benchmarks/RESULTS.md``); an entry without a measurement says so.

The choices:

* :func:`choose_method` -- how :func:`jrnn.unroll` runs a layer: the method
  (``"scan"``, ``"associative"``, ``"doubling"``, the GPU kernels
  ``"pallas"`` (with ``precision="bfloat16"`` too) and ``"cudnn"``) and ``lax.scan``'s unroll
  factor.  A kernel chosen here that cannot run a layer (too large for its
  on-chip budget, ``lengths``, another backend) gives way to the scan;
* :func:`cross_entropy_chunk_rows` -- rows per chunk of the chunked softmax
  output layer (:func:`jrnn.core.backward.softmax_cross_entropy`);
* :func:`output_matmul_dtype` -- the operand dtype of the output layer's
  three matmuls (``output_precision="auto"``), from the CPU's instruction
  set (:func:`cpu_features`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from jrnn.core import names

__all__ = [
    "METHODS",
    "RECURRENCE_PRECISIONS",
    "Choice",
    "RULES",
    "choose_method",
    "shape_class",
    "cross_entropy_chunk_rows",
    "PRECISIONS",
    "PrecisionChoice",
    "cpu_features",
    "vector_extensions",
    "BF16_MIN_OUTPUT_WEIGHTS",
    "output_matmul_dtype",
]

# Every value ``method=`` accepts, "auto" included.
METHODS = ("auto", "scan", "associative", "doubling", "pallas", "persistent", "cudnn",
           "wavefront")
# Operand precision of the recurrence's matmuls (jrnn.unroll(precision=...)): the state and
# the accumulation stay float32; "bfloat16" is implemented by method="pallas" (the kernels).
RECURRENCE_PRECISIONS = ("float32", "bfloat16")


class Choice(NamedTuple):
    """How to run one layer: the method and ``lax.scan``'s unroll factor."""

    method: str
    scan_unroll: int
    why: str  # the measurement behind it (see benchmarks/RESULTS.md) or "not measured"


class Rule(NamedTuple):
    """One row of the table: the first row that matches a layer decides."""

    backend: str  # "cpu", "gpu", "tpu" or "*"
    kind: str  # a cell kind or "*"
    shape: str  # a :func:`shape_class` or "*"
    choice: Choice


# The table.  Rows are tried in order; the last row matches everything.
RULES: tuple[Rule, ...] = (
    # The mLSTM's recurrent form carries a [heads, d, d] memory per step, which the backward
    # pass keeps for every step; its quadratic parallel form does not.
    Rule("*", "mlstm", "*", Choice(
        "associative", 1,
        "2-core AMD EPYC Zen 4, one mLSTM layer B16 H256 forward + backward: parallel form "
        "14.0 ms against 251 ms for the scan at T = 35, 2.02 s against 14.1 s at T = 1024 "
        "(benchmarks/cell_speed.py, benchmarks/RESULTS.md 2026-12-06); the minGRU, minLSTM and "
        "RG-LRU's associative scans ranged from 18 % faster to 12 % slower than their sequential "
        "scans there (no consistent gain), so they keep the scan")),
    # A stack of LSTM layers as a wavefront (method="wavefront", jrnn/core/wavefront.py) is not
    # picked: the Zaremba-small step took 84.5 ms against 80.6 layered (bf16 output layer),
    # 107.3 against 108.5 in float32, on the 2-core Zen 4 (benchmarks/cpu_schedules.py,
    # benchmarks/RESULTS.md 2026-12-06) -- within the spread.
    Rule("cpu", "*", "*", Choice(
        "scan", 1,
        "2-core CPU, Zaremba-small step: unroll 1/2/4/8 within 7 % of each other with the "
        "hand-written backward passes, compile time growing with the factor "
        "(benchmarks/RESULTS.md, 'unroll' sweep); 1 is the cheapest to compile")),
    # GPU kernels, measured against the scan on an H100 (benchmarks/RESULTS.md, "GPU: one
    # H100", second run).  The fused Pallas kernels win only where W_h fits on chip, and
    # clearly only with bfloat16 matmul operands, which auto does not pick for a float32
    # model; cuDNN (jax.experimental.rnn) was slower than the scan on every LM shape and is
    # not safe under jit (jrnn.core.cudnn.UNDER_JIT).  So auto stays with the scan.
    Rule("gpu", "lstm", "long", Choice(
        "scan", 8,
        "H100: LSTM B64 T1024 H64 fwd+bwd: scan u=8 10.96 ms, pallas 10.21 ms (1.07x, and its "
        "values not yet checked on the GPU), pallas-bf16 7.81 ms (bf16 operands: opt-in), "
        "cuDNN via jax.experimental.rnn 36.7 ms, PyTorch cuDNN 1.92 ms")),
    Rule("gpu", "elman", "long", Choice(
        "scan", 8,
        "H100: tanh RNN B64 T1024 H128 fwd+bwd: scan u=8 6.69 ms, pallas 88.3 ms (one 64 KiB "
        "W_h block: now over the per-block budget), pallas-bf16 3.13 ms (opt-in), PyTorch "
        "cuDNN 1.69 ms")),
    Rule("gpu", "*", "*", Choice(
        "scan", 8,
        "H100, jax 0.11: unroll 8 beat 1 on every shape measured (zaremba-small 500k vs 378k "
        "tok/s, medium 292k vs 228k, tanh B64 T1024 H256 7.7 vs 14.7 ms, LSTM B16 T1024 H768 "
        "18.2 vs 24.2 ms), the hand-written backward pass beat autodiff, and cuDNN through "
        "jax.experimental.rnn was slower (zaremba-small 278k tok/s) (benchmarks/RESULTS.md, "
        "'GPU: one H100')")),
    Rule("*", "*", "*", Choice(
        "scan", 8,
        "TPU: not measured in this repository; the GPU's factor (latency-bound recurrence, "
        "XLA fuses across steps)")),
)


def shape_class(seq_len: Optional[int], batch: Optional[int], hidden_size: int) -> str:
    """A coarse class of a layer's shape: ``"long"`` (T >= 512), ``"wide"`` (H >= 512) or ``"small"``.

    Example:
      >>> shape_class(35, 20, 200), shape_class(1024, 64, 256), shape_class(64, 128, 1024)
      ('small', 'long', 'wide')
    """
    del batch  # not used by any rule yet
    if seq_len is not None and seq_len >= 512:
        return "long"
    if hidden_size >= 512:
        return "wide"
    return "small"


def choose_method(kind: str, *, seq_len: Optional[int] = None, batch: Optional[int] = None,
                  hidden_size: int = 0, backend: Optional[str] = None) -> Choice:
    """What ``method="auto"`` runs for a layer of ``kind`` on ``backend``.

    Example:
      >>> choose_method("lstm", seq_len=35, batch=20, hidden_size=200, backend="cpu")[:2]
      ('scan', 1)
      >>> choose_method("mlstm", seq_len=35, batch=20, hidden_size=200, backend="cpu")[:2]
      ('associative', 1)
    """
    backend = backend or jax.default_backend()
    cls = shape_class(seq_len, batch, hidden_size)
    for rule in RULES:
        if (rule.backend in ("*", backend) and rule.kind in ("*", kind)
                and rule.shape in ("*", cls)):
            return rule.choice
    raise AssertionError("the last rule matches everything")  # pragma: no cover


def cross_entropy_chunk_rows(num_rows: int, vocab_size: int, backend: Optional[str] = None) -> int:
    """Rows per chunk of the chunked softmax output layer: about 1.5M logits on a CPU.

    1.5M float32 logits (6 MB) stay in a CPU's L3 cache; 140 rows x 10k was the
    fastest of 70 / 140 / 350 / 700 on the 2-core machine of
    ``benchmarks/RESULTS.md``.  On GPU/TPU the chunk is 64M logits (usually
    one chunk); not yet measured in this repository.

    Example:
      >>> cross_entropy_chunk_rows(700, 10_000, backend="cpu")
      140
    """
    backend = backend or jax.default_backend()
    budget = 1_500_000 if backend == "cpu" else 64_000_000
    per_chunk = max(1, min(num_rows, budget // max(vocab_size, 1)))
    chunks = -(-num_rows // per_chunk)
    return -(-num_rows // chunks)  # balanced: the same chunk count, less padding


# ---- weight-gradient matmul layout --------------------------------------------------


def transposed_copies(dtype, backend: Optional[str] = None) -> bool:
    """Whether a weight gradient ``x^T dy`` with ``dtype`` operands should read a transposed copy of ``x``.

    XLA folds a plain transpose into the matmul that reads it, as a
    contraction over the left operand's leading axis.  On a CPU its fast
    matmul library (YNNPACK) does not take that layout, so the matmul falls
    back to Eigen -- with bfloat16 operands upcast to float32 first.  For
    bfloat16 on a CPU a real row-major copy of ``x^T`` pays:
    ``[200, 700] x [700, 10000]`` took 6.1 ms from the copy against 31.4 ms
    folded, and the Zaremba-small output layer 39.7 ms against 53.9 ms, on the
    2-core Sapphire Rapids VM of ``benchmarks/RESULTS.md``.  In float32 Eigen
    is as fast (the output layer 62.1 ms folded, 63.7 ms with the copy), and
    GPUs and TPUs read transposed operands natively: no copy.

    Example:
      >>> import jax.numpy as jnp
      >>> transposed_copies(jnp.bfloat16, "cpu"), transposed_copies(jnp.float32, "cpu")
      (True, False)
      >>> transposed_copies(jnp.bfloat16, "gpu")
      False
    """
    backend = backend or jax.default_backend()
    return backend == "cpu" and jnp.dtype(dtype) == jnp.dtype(jnp.bfloat16)


# ---- the output layer's matmul precision ----------------------------------------------

# Every value ``output_precision=`` accepts.
PRECISIONS = names.PRECISIONS


class PrecisionChoice(NamedTuple):
    """The operand dtype of the output layer's matmuls, and why."""

    dtype: str  # "float32" or "bfloat16"
    why: str


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset:
    """The instruction-set flags of this machine's CPU (Linux ``/proc/cpuinfo``), or an empty set.

    Example:
      >>> isinstance(cpu_features(), frozenset)
      True
    """
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def vector_extensions(features: Optional[frozenset] = None) -> list:
    """The vector-instruction flags among :func:`cpu_features` (AVX*, AMX*, FMA, SSE4*), sorted.

    What every CPU timing records next to the CPU model: the speed of the
    step depends on them (``benchmarks/RESULTS.md``).

    Example:
      >>> vector_extensions(frozenset({"avx2", "fma", "sse2", "amx_bf16"}))
      ['amx_bf16', 'avx2', 'fma']
    """
    features = cpu_features() if features is None else features
    return sorted(f for f in features if f.startswith(("avx", "amx", "fma", "sse4")))


# The smallest output layer (inputs x vocabulary) for which bfloat16 was measured to pay.
BF16_MIN_OUTPUT_WEIGHTS = 1_000_000


def output_matmul_dtype(backend: Optional[str] = None, features: Optional[frozenset] = None, *,
                        output_weights: Optional[int] = None) -> PrecisionChoice:
    """What ``output_precision="auto"`` uses for the output layer's three matmuls.

    bfloat16 operands with float32 accumulation where the CPU multiplies
    bfloat16 in hardware -- Intel AMX (flag ``amx_bf16``) or AVX-512 BF16
    dot products (``avx512_bf16``: AMD Zen 4 and later, Intel Cooper Lake) --
    and the output layer is large (``output_weights``, its ``H * V``, at
    least :data:`BF16_MIN_OUTPUT_WEIGHTS`; ``None``: assume large); float32
    everywhere else: CPUs without either (AVX2, AVX-512 without BF16), small
    output layers and accelerators (not measured here).  Each rule cites its
    measurement; PTB perplexity was checked with the bfloat16 output layer on
    both kinds of CPU (``benchmarks/RESULTS.md``).

    Example:
      >>> output_matmul_dtype("cpu", frozenset({"avx2", "amx_bf16"})).dtype
      'bfloat16'
      >>> output_matmul_dtype("cpu", frozenset({"avx2", "avx512f", "avx512_bf16"})).dtype
      'bfloat16'
      >>> output_matmul_dtype("cpu", frozenset({"avx2", "amx_bf16"}), output_weights=64 * 500).dtype
      'float32'
      >>> output_matmul_dtype("cpu", frozenset({"avx2", "avx512f"})).dtype
      'float32'
    """
    backend = backend or jax.default_backend()
    features = cpu_features() if features is None else features
    if output_weights is not None and output_weights < BF16_MIN_OUTPUT_WEIGHTS:
        return PrecisionChoice("float32", (
            f"output layer of {output_weights:,} weights: below the {BF16_MIN_OUTPUT_WEIGHTS:,} "
            "where bfloat16 was measured to pay"))
    if backend == "cpu" and "amx_bf16" in features:
        return PrecisionChoice("bfloat16", (
            "CPU with AMX: the output layer's logits matmul (700 x 200 @ 200 x 10k) took 4.40 ms "
            "with bf16 operands against 12.41 ms in float32 on the 2-core Sapphire Rapids VM "
            "(benchmarks/RESULTS.md, 'Where the CPU step goes'); PTB perplexity checked there"))
    if backend == "cpu" and "avx512_bf16" in features:
        return PrecisionChoice("bfloat16", (
            "CPU with AVX-512 BF16 (no AMX): the Zaremba-small output layer, forward and backward, "
            "took 34.6 ms with bf16 operands against 53.4 ms in float32, and the whole train step "
            "67.5 against 91.9 ms, on the 2-core AMD EPYC Zen 4 VM (benchmarks/RESULTS.md, "
            "2026-12-06); PTB perplexity checked there"))
    if backend == "cpu":
        return PrecisionChoice("float32", (
            "CPU without AMX or AVX-512 BF16: bfloat16 matmuls would run through conversions"))
    return PrecisionChoice("float32", f"{backend}: bfloat16 output layer not measured here")
